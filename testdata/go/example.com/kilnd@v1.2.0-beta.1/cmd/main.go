// Package cmd is kilnd's command line: `version` and `list-modules`.
package cmd

import (
	"fmt"
	"os"
	"runtime/debug"
	"strings"

	"example.com/kilnd"
)

const core = "example.com/kilnd"

// Main runs the command named by the first argument.
func Main() {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		fmt.Fprintln(os.Stderr, "kilnd: no build information in this binary")
		os.Exit(1)
	}
	cmd := ""
	if len(os.Args) > 1 {
		cmd = os.Args[1]
	}
	switch cmd {
	case "version":
		fmt.Println(describe(find(info, core)))
	case "list-modules":
		fmt.Printf("main %s %s\n", info.Main.Path, info.Main.Version)
		fmt.Printf("core %s\n", describe(find(info, core)))
		for _, m := range kilnd.Modules() {
			fmt.Printf("module %s %s: %s\n", m.ID(), describe(find(info, kilnd.PackagePath(m))), m.Describe())
		}
	default:
		fmt.Fprintln(os.Stderr, "usage: kilnd version | list-modules")
		os.Exit(2)
	}
}

// find is the module that holds package pkg.
func find(info *debug.BuildInfo, pkg string) *debug.Module {
	var best *debug.Module
	for _, m := range append([]*debug.Module{&info.Main}, info.Deps...) {
		if (pkg == m.Path || strings.HasPrefix(pkg, m.Path+"/")) && (best == nil || len(m.Path) > len(best.Path)) {
			best = m
		}
	}
	return best
}

func describe(m *debug.Module) string {
	if m == nil {
		return "unknown"
	}
	s := m.Path + " " + m.Version
	if m.Replace != nil {
		s += " => " + m.Replace.Path + " " + m.Replace.Version
	}
	return s
}
