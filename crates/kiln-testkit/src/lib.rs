//! Test helpers: a database per test from a migrated template, spawned binaries, s3s-fs.
