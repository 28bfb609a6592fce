//! Keys, signatures, and their acceptance by the stock `minisign` tool.

use std::fs;
use std::io::Cursor;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use kiln_artifact::{
    ArtifactError, PublicKey, Signer, build_comment, keygen, pack_dir, parse_build_comment, public_key_path, verify,
};
use kiln_domain::BuildKey;

use crate::minisign;

fn key() -> BuildKey {
    BuildKey::parse(&"c0".repeat(32)).unwrap()
}

/// A packed artifact, its signature file, and the key pair, all in `dir`.
fn signed_artifact(dir: &Path) -> (Signer, String) {
    let out = dir.join("out");
    fs::create_dir_all(&out).unwrap();
    fs::write(out.join("hello"), b"#!/bin/sh\necho hello\n").unwrap();
    let packed = pack_dir(&out, &dir.join("artifact.tar")).unwrap();
    keygen(&dir.join("kiln.key"), false).unwrap();
    let signer = Signer::load(&dir.join("kiln.key")).unwrap();
    let comment = build_comment(&key(), &packed.sha256);
    let sig = signer.sign_file(&dir.join("artifact.tar"), &comment).unwrap();
    fs::write(dir.join("artifact.tar.minisig"), &sig).unwrap();
    (signer, comment)
}

#[test]
fn minisign_accepts_the_signature_and_rejects_a_tampered_artifact() {
    let tmp = tempfile::tempdir().unwrap();
    let (signer, comment) = signed_artifact(tmp.path());
    let artifact = tmp.path().join("artifact.tar");

    let ok = minisign().arg("-Vm").arg(&artifact).arg("-P").arg(signer.public_key().to_base64()).output().unwrap();
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert!(ok.status.success(), "minisign refused: {stdout} {}", String::from_utf8_lossy(&ok.stderr));
    assert!(stdout.contains(&format!("Trusted comment: {comment}")), "{stdout}");

    // The public key file works as well as the bare key.
    let ok = minisign().arg("-Vm").arg(&artifact).arg("-p").arg(public_key_path(&tmp.path().join("kiln.key"))).output();
    assert!(ok.unwrap().status.success());

    let mut bytes = fs::read(&artifact).unwrap();
    bytes[600] ^= 1;
    fs::write(&artifact, bytes).unwrap();
    let bad = minisign().arg("-Vm").arg(&artifact).arg("-P").arg(signer.public_key().to_base64()).output().unwrap();
    assert!(!bad.status.success(), "minisign accepted a tampered artifact");
}

#[test]
fn minisign_rejects_a_tampered_trusted_comment() {
    let tmp = tempfile::tempdir().unwrap();
    let (signer, comment) = signed_artifact(tmp.path());
    let sig_path = tmp.path().join("artifact.tar.minisig");
    let sig = fs::read_to_string(&sig_path).unwrap();
    let forged = sig.replace(&comment, &build_comment(&BuildKey::parse(&"d1".repeat(32)).unwrap(), &"0".repeat(64)));
    assert_ne!(sig, forged);
    fs::write(&sig_path, &forged).unwrap();

    let artifact = tmp.path().join("artifact.tar");
    let bad = minisign().arg("-Vm").arg(&artifact).arg("-P").arg(signer.public_key().to_base64()).output().unwrap();
    assert!(!bad.status.success(), "minisign accepted a forged trusted comment");
    let err = verify(signer.public_key(), fs::File::open(&artifact).unwrap(), &forged).unwrap_err();
    assert!(matches!(err, ArtifactError::BadSignature(_)), "{err}");
}

#[test]
fn verify_accepts_good_signatures_and_names_the_build() {
    let tmp = tempfile::tempdir().unwrap();
    let (signer, comment) = signed_artifact(tmp.path());
    let sig = fs::read_to_string(tmp.path().join("artifact.tar.minisig")).unwrap();
    let data = fs::read(tmp.path().join("artifact.tar")).unwrap();

    let pk = PublicKey::parse(&signer.public_key_text()).unwrap();
    let v = verify(&pk, Cursor::new(&data), &sig).unwrap();
    assert_eq!(v.trusted_comment, comment);
    assert_eq!(v.key_id, pk.key_id());
    let parsed = parse_build_comment(&v.trusted_comment).unwrap();
    assert_eq!(parsed.key, key());
    assert_eq!(parsed.sha256, kiln_artifact::sha256_reader(&data[..]).unwrap().0);

    // The bare base64 form and the .pub file name the same key.
    assert_eq!(PublicKey::parse(&pk.to_base64()).unwrap(), pk);
    assert_eq!(PublicKey::from_file(&public_key_path(&tmp.path().join("kiln.key"))).unwrap(), pk);
}

#[test]
fn verify_rejects_tampered_data_another_key_and_garbage() {
    let tmp = tempfile::tempdir().unwrap();
    let (signer, _) = signed_artifact(tmp.path());
    let sig = fs::read_to_string(tmp.path().join("artifact.tar.minisig")).unwrap();
    let mut data = fs::read(tmp.path().join("artifact.tar")).unwrap();

    let other = keygen(&tmp.path().join("other.key"), false).unwrap();
    let err = verify(&other, Cursor::new(&data), &sig).unwrap_err();
    assert!(matches!(err, ArtifactError::BadSignature(_)), "{err}");

    let err = verify(signer.public_key(), Cursor::new(&data), "not a signature").unwrap_err();
    assert!(matches!(err, ArtifactError::BadSignature(_)), "{err}");

    data.push(0);
    let err = verify(signer.public_key(), Cursor::new(&data), &sig).unwrap_err();
    assert!(matches!(err, ArtifactError::BadSignature(_)), "{err}");
}

#[test]
fn keygen_writes_a_private_secret_key_and_never_overwrites_by_default() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("kiln.key");
    let pk = keygen(&path, false).unwrap();
    assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(fs::read_to_string(public_key_path(&path)).unwrap(), pk.to_text());
    assert_eq!(Signer::load(&path).unwrap().public_key(), &pk);

    let err = keygen(&path, false).unwrap_err();
    assert!(matches!(err, ArtifactError::KeyExists(_)), "{err}");
    let replaced = keygen(&path, true).unwrap();
    assert_ne!(replaced, pk);
}

#[test]
fn a_signer_whose_public_key_file_does_not_match_refuses_to_load() {
    let tmp = tempfile::tempdir().unwrap();
    keygen(&tmp.path().join("a.key"), false).unwrap();
    keygen(&tmp.path().join("b.key"), false).unwrap();
    fs::copy(tmp.path().join("b.key.pub"), tmp.path().join("a.key.pub")).unwrap();
    let err = Signer::load(&tmp.path().join("a.key")).unwrap_err();
    assert!(err.to_string().contains("does not belong"), "{err}");
}

#[test]
fn a_trusted_comment_must_be_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    keygen(&tmp.path().join("k"), false).unwrap();
    let signer = Signer::load(&tmp.path().join("k")).unwrap();
    let err = signer.sign(&b"data"[..], "two\nlines").unwrap_err();
    assert!(matches!(err, ArtifactError::InvalidComment(_)), "{err}");
}
