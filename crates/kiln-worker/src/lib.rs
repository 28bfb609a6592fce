//! The build worker: claims jobs, runs isolated Docker steps, uploads signed artifacts.
