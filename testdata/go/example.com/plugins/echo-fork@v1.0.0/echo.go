// Package echo is a kilnd plugin used by Kiln's tests.
package echo

import (
	"example.com/kilnd"
)

type module struct{}

func (module) ID() string       { return "echo" }
func (module) Describe() string { return "says it twice (the echo-fork)" }

func init() { kilnd.RegisterModule(module{}) }
