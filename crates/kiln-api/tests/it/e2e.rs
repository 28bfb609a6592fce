//! End-to-end tests with real binaries.
