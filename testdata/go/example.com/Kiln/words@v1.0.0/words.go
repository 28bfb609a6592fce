// Package words is a library a kilnd plugin depends on: it has an upper-case
// letter in its path, which the Go module proxy protocol escapes.
package words

// Hello is how greet greets.
const Hello = "hello (words v1.0.0)"
