// Package kilnd is a tiny server core shaped like Caddy's: plugins join its
// module registry from init(), and the binary reports what it was built from.
package kilnd

import (
	"reflect"
	"sort"
)

// Module is what a plugin registers.
type Module interface {
	// ID names the module, e.g. "echo".
	ID() string
	// Describe says what it does.
	Describe() string
}

var modules = map[string]Module{}

// RegisterModule adds a module to the registry; plugins call it from init().
func RegisterModule(m Module) {
	if _, dup := modules[m.ID()]; dup {
		panic("kilnd: module registered twice: " + m.ID())
	}
	modules[m.ID()] = m
}

// Modules lists the registered modules by ID.
func Modules() []Module {
	out := make([]Module, 0, len(modules))
	for _, m := range modules {
		out = append(out, m)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID() < out[j].ID() })
	return out
}

// PackagePath is the Go package a module is defined in.
func PackagePath(m Module) string {
	t := reflect.TypeOf(m)
	for t.Kind() == reflect.Ptr {
		t = t.Elem()
	}
	return t.PkgPath()
}
