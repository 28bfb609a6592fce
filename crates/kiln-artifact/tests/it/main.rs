//! Integration tests of kiln-artifact: packing real directories, signing, and
//! checking signatures with the stock `minisign` tool.

mod image_sig;
mod pack;
mod sign;

use std::process::Command;

/// The `minisign` binary, or a failure that says how to get it.
pub fn minisign() -> Command {
    let found = Command::new("minisign").arg("-v").output().map(|o| o.status.success()).unwrap_or(false);
    assert!(found, "`minisign` is not installed: run scripts/test (it installs it), or `apt-get install minisign`");
    Command::new("minisign")
}
