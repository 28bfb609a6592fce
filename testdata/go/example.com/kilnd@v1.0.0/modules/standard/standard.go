// Package standard holds the modules every kilnd binary has.
package standard

import "example.com/kilnd"

type static struct{}

func (static) ID() string       { return "static" }
func (static) Describe() string { return "serves files (kilnd @VERSION@)" }

func init() { kilnd.RegisterModule(static{}) }
