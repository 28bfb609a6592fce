// Package echo is a kilnd plugin used by Kiln's tests.
package echo

import (
	"example.com/kilnd"
)

type module struct{}

func (module) ID() string       { return "echo" }
func (module) Describe() string { return "says what it hears (echo v1.1.0)" }

func init() { kilnd.RegisterModule(module{}) }
