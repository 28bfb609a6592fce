//! Deterministic packing and extraction.

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;
use std::process::Command;

use kiln_artifact::{ArtifactError, EntryKind, extract_file, pack_dir};
use tar::{Archive, EntryType};

/// A small `out/` tree: a binary, a nested file, a directory and a symlink.
fn make_tree(dir: &Path) {
    fs::create_dir_all(dir.join("share/doc")).unwrap();
    fs::write(dir.join("caddy"), b"#!/bin/sh\necho caddy\n").unwrap();
    fs::set_permissions(dir.join("caddy"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(dir.join("share/doc/README"), b"read me").unwrap();
    fs::set_permissions(dir.join("share/doc/README"), fs::Permissions::from_mode(0o640)).unwrap();
    fs::write(dir.join("a-first"), vec![7u8; 3000]).unwrap();
    symlink("caddy", dir.join("link-to-caddy")).unwrap();
    symlink("../../caddy", dir.join("share/doc/up")).unwrap();
    let long = "n".repeat(150);
    fs::write(dir.join(&long), b"long name").unwrap();
}

#[test]
fn packing_the_same_tree_twice_gives_identical_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    make_tree(&out);
    let first = pack_dir(&out, &tmp.path().join("1.tar")).unwrap();

    // Same contents at another path, written later (other mtimes, other inodes).
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let other = tmp.path().join("elsewhere/out");
    make_tree(&other);
    let second = pack_dir(&other, &tmp.path().join("2.tar")).unwrap();

    let a = fs::read(tmp.path().join("1.tar")).unwrap();
    let b = fs::read(tmp.path().join("2.tar")).unwrap();
    assert!(a == b, "two packs of the same tree differ");
    assert_eq!(first, second);
    assert_eq!(first.size, a.len() as u64);
}

#[test]
fn the_reported_sha256_is_what_sha256sum_says() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    make_tree(&out);
    let dest = tmp.path().join("artifact.tar");
    let packed = pack_dir(&out, &dest).unwrap();

    let res = Command::new("sha256sum").arg(&dest).output().expect("sha256sum runs");
    assert!(res.status.success());
    let text = String::from_utf8(res.stdout).unwrap();
    assert_eq!(text.split_whitespace().next().unwrap(), packed.sha256);
}

#[test]
fn entries_are_sorted_owned_by_nobody_dated_zero_with_modes_kept_and_links_as_links() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    make_tree(&out);
    let dest = tmp.path().join("artifact.tar");
    let packed = pack_dir(&out, &dest).unwrap();

    let names: Vec<&str> = packed.entries.iter().map(|e| e.path.as_str()).collect();
    let long = "n".repeat(150);
    assert_eq!(
        names,
        ["a-first", "caddy", "link-to-caddy", &long, "share", "share/doc", "share/doc/README", "share/doc/up"]
    );

    let mut archive = Archive::new(fs::File::open(&dest).unwrap());
    let mut seen = Vec::new();
    for entry in archive.entries().unwrap() {
        let entry = entry.unwrap();
        let h = entry.header();
        let path = entry.path().unwrap().to_string_lossy().into_owned();
        assert!(!path.starts_with('/') && !path.split('/').any(|c| c == ".."), "{path}");
        assert_eq!(h.mtime().unwrap(), 0, "{path}");
        assert_eq!(h.uid().unwrap(), 0, "{path}");
        assert_eq!(h.gid().unwrap(), 0, "{path}");
        assert_eq!(h.username().unwrap(), Some(""), "{path}");
        assert_eq!(h.groupname().unwrap(), Some(""), "{path}");
        match path.as_str() {
            "caddy" => assert_eq!(h.mode().unwrap(), 0o755),
            "share/doc/README" => assert_eq!(h.mode().unwrap(), 0o640),
            "link-to-caddy" => {
                assert_eq!(h.entry_type(), EntryType::Symlink);
                assert_eq!(entry.link_name().unwrap().unwrap().to_str(), Some("caddy"));
            }
            "share/doc/up" => {
                assert_eq!(h.entry_type(), EntryType::Symlink);
                assert_eq!(entry.link_name().unwrap().unwrap().to_str(), Some("../../caddy"));
            }
            _ => {}
        }
        seen.push(path.trim_end_matches('/').to_owned());
    }
    assert_eq!(seen, names);

    let link = packed.entries.iter().find(|e| e.path == "link-to-caddy").unwrap();
    assert_eq!(link.kind, EntryKind::Symlink);
    assert_eq!(link.link_target.as_deref(), Some("caddy"));
}

#[test]
fn the_system_tar_reads_the_archive() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    make_tree(&out);
    let dest = tmp.path().join("artifact.tar");
    pack_dir(&out, &dest).unwrap();

    let unpacked = tmp.path().join("unpacked");
    fs::create_dir(&unpacked).unwrap();
    let st = Command::new("tar").arg("-xf").arg(&dest).arg("-C").arg(&unpacked).status().expect("tar runs");
    assert!(st.success());
    assert_eq!(fs::read(unpacked.join("caddy")).unwrap(), fs::read(out.join("caddy")).unwrap());
    assert_eq!(fs::read_link(unpacked.join("link-to-caddy")).unwrap().to_str(), Some("caddy"));
    assert_eq!(fs::metadata(unpacked.join("caddy")).unwrap().permissions().mode() & 0o777, 0o755);
}

#[test]
fn one_file_can_be_read_back_out_of_the_archive() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    make_tree(&out);
    let dest = tmp.path().join("artifact.tar");
    pack_dir(&out, &dest).unwrap();

    let bytes = extract_file(fs::File::open(&dest).unwrap(), "share/doc/README").unwrap();
    assert_eq!(bytes, b"read me");
    let long = "n".repeat(150);
    assert_eq!(extract_file(fs::File::open(&dest).unwrap(), &long).unwrap(), b"long name");
    for missing in ["nope", "link-to-caddy", "share"] {
        let err = extract_file(fs::File::open(&dest).unwrap(), missing).unwrap_err();
        assert!(matches!(err, ArtifactError::NotInArchive(_)), "{missing}: {err}");
    }
}

#[test]
fn links_that_leave_the_tree_are_refused() {
    for target in ["/etc/passwd", "../outside", "sub/../../outside"] {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("out");
        fs::create_dir_all(out.join("sub")).unwrap();
        symlink(target, out.join("bad")).unwrap();
        let err = pack_dir(&out, &tmp.path().join("a.tar")).unwrap_err();
        assert!(matches!(err, ArtifactError::Unpackable { .. }), "{target}: {err}");
    }
}

#[test]
fn a_link_chain_that_resolves_outside_is_refused() {
    // `x -> .` stays inside, but `x/x/..` climbs above the root once `x` is resolved.
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    fs::create_dir_all(&out).unwrap();
    fs::write(tmp.path().join("secret"), b"outside").unwrap();
    symlink(".", out.join("x")).unwrap();
    symlink("x/x/../secret", out.join("y")).unwrap();
    let err = pack_dir(&out, &tmp.path().join("a.tar")).unwrap_err();
    assert!(matches!(err, ArtifactError::Unpackable { .. }), "{err}");
}

#[test]
fn sockets_and_archives_inside_the_tree_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    fs::create_dir_all(&out).unwrap();
    let _sock = std::os::unix::net::UnixListener::bind(out.join("sock")).unwrap();
    let err = pack_dir(&out, &tmp.path().join("a.tar")).unwrap_err();
    assert!(matches!(err, ArtifactError::Unpackable { .. }), "{err}");

    let err = pack_dir(&out, &out.join("a.tar")).unwrap_err();
    assert!(err.to_string().contains("inside the directory"), "{err}");
}
