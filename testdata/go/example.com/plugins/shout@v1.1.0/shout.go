// Package shout is a kilnd plugin used by Kiln's tests.
package shout

import (
	"example.com/kilnd"
)

type module struct{}

func (module) ID() string       { return "shout" }
func (module) Describe() string { return "SHOUTS (shout v1.1.0)" }

var volume int = "eleven"

func init() { kilnd.RegisterModule(module{}) }
