//! `kiln verify`, beside the stock `minisign`, in both directions.

use std::path::{Path, PathBuf};
use std::process::Command;

use kiln_artifact::{Signer, build_comment, pack_dir};
use kiln_domain::BuildKey;

use crate::{kiln, path, text};

/// The `minisign` binary, or a failure that says how to get it.
fn minisign() -> Command {
    let found = Command::new("minisign").arg("-v").output().map(|o| o.status.success()).unwrap_or(false);
    assert!(found, "`minisign` is not installed: run scripts/test (it installs it), or `apt-get install minisign`");
    Command::new("minisign")
}

struct Signed {
    _dir: tempfile::TempDir,
    artifact: PathBuf,
    signature: PathBuf,
    public: PathBuf,
    comment: String,
}

/// An artifact packed and signed the way a worker does it, with `kiln keygen`'s key.
fn signed() -> Signed {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("hello"), b"#!/bin/sh\necho hello\n").unwrap();
    let artifact = dir.path().join("artifact.tar");
    let packed = pack_dir(&out, &artifact).unwrap();

    let key = dir.path().join("kiln.key");
    assert!(kiln(&["keygen", "-o", path(&key)]).status.success());
    let build = BuildKey::parse(&"5e".repeat(32)).unwrap();
    let comment = build_comment(&build, &packed.sha256);
    let sig = Signer::load(&key).unwrap().sign_file(&artifact, &comment).unwrap();
    let signature = dir.path().join("artifact.tar.minisig");
    std::fs::write(&signature, sig).unwrap();
    Signed { artifact, signature, public: dir.path().join("kiln.key.pub"), comment, _dir: dir }
}

fn base64_key(public: &Path) -> String {
    std::fs::read_to_string(public).unwrap().lines().nth(1).unwrap().to_owned()
}

#[test]
fn a_good_signature_passes_kiln_verify_and_minisign() {
    let s = signed();
    for key in [path(&s.public).to_owned(), base64_key(&s.public)] {
        let out = kiln(&["verify", path(&s.artifact), path(&s.signature), "--key", &key]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        let stdout = text(&out.stdout);
        assert!(stdout.contains(&format!("Trusted comment: {}", s.comment)), "{stdout}");
        assert!(stdout.contains(&format!("Build {}", "5e".repeat(32))), "{stdout}");
    }
    let m = minisign().arg("-Vm").arg(&s.artifact).arg("-x").arg(&s.signature).arg("-p").arg(&s.public).output();
    assert!(m.unwrap().status.success());
}

#[test]
fn a_tampered_artifact_fails_kiln_verify_and_minisign() {
    let s = signed();
    let mut bytes = std::fs::read(&s.artifact).unwrap();
    bytes[520] ^= 0x20;
    std::fs::write(&s.artifact, bytes).unwrap();

    let out = kiln(&["verify", path(&s.artifact), path(&s.signature), "--key", path(&s.public)]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("bad signature"), "{stderr}");
    assert!(text(&out.stdout).is_empty());
    let m = minisign().arg("-Vm").arg(&s.artifact).arg("-x").arg(&s.signature).arg("-p").arg(&s.public).output();
    assert!(!m.unwrap().status.success());
}

#[test]
fn another_key_or_a_garbage_signature_is_a_bad_signature() {
    let s = signed();
    let other = s.public.with_file_name("other.key");
    assert!(kiln(&["keygen", "-o", path(&other)]).status.success());
    let out = kiln(&["verify", path(&s.artifact), path(&s.signature), "--key", path(&other.with_extension("key.pub"))]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));

    std::fs::write(&s.signature, "untrusted comment: x\nnot base64\n").unwrap();
    let out = kiln(&["verify", path(&s.artifact), path(&s.signature), "--key", path(&s.public)]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
}

#[test]
fn kiln_verify_accepts_what_minisign_itself_signs() {
    let dir = tempfile::tempdir().unwrap();
    let (sk, pk) = (dir.path().join("m.key"), dir.path().join("m.pub"));
    let g = minisign().arg("-GW").arg("-s").arg(&sk).arg("-p").arg(&pk).output().unwrap();
    assert!(g.status.success(), "{}", text(&g.stderr));
    let file = dir.path().join("file");
    std::fs::write(&file, b"signed by minisign").unwrap();
    let s = minisign().arg("-Sm").arg(&file).arg("-s").arg(&sk).arg("-t").arg("made by minisign").output().unwrap();
    assert!(s.status.success(), "{}", text(&s.stderr));

    let sig = dir.path().join("file.minisig");
    let out = kiln(&["verify", path(&file), path(&sig), "--key", path(&pk)]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("Trusted comment: made by minisign"));
}

#[test]
fn without_a_key_or_a_reachable_server_verify_says_what_to_do() {
    let s = signed();
    let out = kiln(&["verify", path(&s.artifact), path(&s.signature), "--server", "http://127.0.0.1:1"]);
    assert_eq!(out.status.code(), Some(3), "an unreachable server is exit 3, as everywhere in kiln");
    let stderr = text(&out.stderr);
    assert!(stderr.contains("signing key") && stderr.contains("--key"), "{stderr}");

    let out = kiln(&["verify", path(&s.artifact), path(&s.signature), "--key", "/no/such/key.pub"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("neither a minisign public key nor an existing file"));

    let out = kiln(&["verify", "/no/such/artifact", path(&s.signature), "--key", path(&s.public)]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("/no/such/artifact"));
}
