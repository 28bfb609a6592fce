//! The janitor against a real Postgres, real storage (a local directory and
//! s3s-fs) and, for the end-to-end tests, real `kiln-janitor` and
//! `kiln-worker` processes and Docker. Run through `scripts/test`.

mod expiry;
mod processes;
mod support;
mod sweep;
mod tasks;
