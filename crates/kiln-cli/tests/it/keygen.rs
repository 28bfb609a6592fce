//! `kiln keygen`.

use std::os::unix::fs::PermissionsExt;

use crate::{kiln, path, text};

#[test]
fn keygen_writes_both_keys_and_keeps_existing_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let key = tmp.path().join("kiln.key");
    let out = kiln(&["keygen", "-o", path(&key)]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("kiln.key.pub"));
    assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
    let public = std::fs::read_to_string(tmp.path().join("kiln.key.pub")).unwrap();
    assert!(public.starts_with("untrusted comment: minisign public key "), "{public}");
    kiln_artifact::Signer::load(&key).expect("the secret key loads");

    let again = kiln(&["keygen", "-o", path(&key)]);
    assert_eq!(again.status.code(), Some(2));
    assert!(text(&again.stderr).contains("already exists"), "{}", text(&again.stderr));
    assert_eq!(std::fs::read_to_string(tmp.path().join("kiln.key.pub")).unwrap(), public);

    let forced = kiln(&["keygen", "-o", path(&key), "--force"]);
    assert!(forced.status.success());
    assert_ne!(std::fs::read_to_string(tmp.path().join("kiln.key.pub")).unwrap(), public);
}

#[test]
fn keygen_without_a_path_is_a_usage_error() {
    let out = kiln(&["keygen"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("--output"), "{}", text(&out.stderr));
}
