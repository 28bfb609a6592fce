//! Integration tests of the built `kiln` binary.

mod client;
mod farm;
mod image;
mod keygen;
mod manifest;
mod verify;

use std::path::Path;
use std::process::{Command, Output};

/// Run `kiln` with `args`, with no server configured from the environment.
pub fn kiln(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiln")).args(args).env_remove("KILN_SERVER").output().expect("kiln runs")
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

pub fn path(p: &Path) -> &str {
    p.to_str().expect("temp paths are UTF-8")
}
