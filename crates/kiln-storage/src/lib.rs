//! Object storage for artifacts: a local directory or S3, atomic and immutable.
