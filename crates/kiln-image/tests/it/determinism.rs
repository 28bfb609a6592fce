//! The same inputs give the same bytes: config, manifest, layers and
//! archive, in two directories of one process and in another process with
//! another time zone, locale, umask and temporary directory.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::Command;

use crate::{Made, make_hello, shipped_recipe};

const CHILD_OUT: &str = "KILN_IMAGE_DIGESTS_OUT";
const CHILD_TEST: &str = "determinism::writes_its_bytes_for_another_process";

/// Everything an image is, by name: config, manifest, each blob, the archive.
fn everything(made: &Made) -> BTreeMap<String, Vec<u8>> {
    let mut all = BTreeMap::new();
    all.insert("config".to_owned(), made.image.config.clone());
    all.insert("manifest".to_owned(), made.image.manifest.clone());
    for d in made.image.record.blobs() {
        all.insert(format!("blob {d}"), fs::read(made.blobs.path(d)).unwrap());
    }
    all.insert("image.tar".to_owned(), made.archive(&["kiln/hello:v1.0.0-linux-arm-v7".to_owned()]));
    all
}

fn build_in(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let oci = shipped_recipe("hello").oci.unwrap();
    everything(&make_hello(dir, "linux/arm/7", &oci, None))
}

fn assert_same(a: &BTreeMap<String, Vec<u8>>, b: &BTreeMap<String, Vec<u8>>) {
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>(), "the same blobs");
    for (name, bytes) in a {
        assert!(bytes == &b[name], "{name} differs between two builds of the same inputs");
    }
}

#[test]
fn two_directories_give_identical_bytes() {
    let first = tempfile::tempdir().unwrap();
    let a = build_in(first.path());
    // Later, elsewhere: other mtimes, other inodes, another path.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let second = tempfile::Builder::new().prefix("other-place").tempdir().unwrap();
    let b = build_in(&second.path().join("deeper/still"));
    assert_same(&a, &b);
}

#[test]
fn another_process_gives_identical_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let ours = build_in(&tmp.path().join("here"));
    let out = tmp.path().join("theirs.json");
    let child_tmp = tmp.path().join("child-tmp");
    fs::create_dir_all(&child_tmp).unwrap();
    let status = Command::new("/bin/sh")
        .arg("-c")
        .arg("umask 077 && exec \"$0\" \"$@\"")
        .arg(std::env::current_exe().unwrap())
        .args([CHILD_TEST, "--exact", "--ignored", "--nocapture", "--test-threads=1"])
        .env(CHILD_OUT, &out)
        .env("TMPDIR", &child_tmp)
        .env("TZ", "Pacific/Kiritimati")
        .env("LC_ALL", "C")
        .status()
        .unwrap();
    assert!(status.success(), "the child process failed");
    let theirs: BTreeMap<String, Vec<u8>> = serde_json::from_slice(&fs::read(&out).unwrap()).unwrap();
    assert_same(&ours, &theirs);
}

/// Run by `another_process_gives_identical_bytes` in a child process.
#[test]
#[ignore = "run by another_process_gives_identical_bytes in a process of its own"]
fn writes_its_bytes_for_another_process() {
    let out = std::env::var_os(CHILD_OUT).expect("run by another_process_gives_identical_bytes");
    let tmp = tempfile::tempdir().unwrap();
    let all = build_in(tmp.path());
    fs::write(out, serde_json::to_vec(&all).unwrap()).unwrap();
}
