// Package greet is a kilnd plugin used by Kiln's tests.
package greet

import (
	"example.com/Kiln/words"
	"example.com/kilnd"
)

type module struct{}

func (module) ID() string       { return "greet" }
func (module) Describe() string { return "greets with " + words.Hello }

func init() { kilnd.RegisterModule(module{}) }
