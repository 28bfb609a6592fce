//! Building storage from the configuration.

use kiln_config::{StorageConfig, StorageKind};
use kiln_storage::{Storage, StorageError};
use kiln_testkit::s3::S3Server;

#[test]
fn local_storage_creates_its_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("a/b/artifacts");
    let config = StorageConfig {
        kind: StorageKind::Local,
        local: Some(kiln_config::LocalStorageConfig { path: dir.clone() }),
        s3: None,
    };
    let s = Storage::from_config(&config).unwrap();
    assert_eq!(s.kind(), StorageKind::Local);
    assert!(dir.is_dir());
}

#[test]
fn a_kind_without_its_section_or_a_bad_prefix_is_a_config_error() {
    let config = StorageConfig { kind: StorageKind::S3, local: None, s3: None };
    assert!(matches!(Storage::from_config(&config), Err(StorageError::Config(_))));

    let server = S3Server::start();
    for prefix in ["../escape", "a/./b", "a b"] {
        let err = Storage::from_config(&server.storage_config(prefix)).unwrap_err();
        assert!(matches!(err, StorageError::Config(_)), "{prefix}: {err}");
    }
}

#[tokio::test]
async fn wrong_credentials_are_refused_by_the_server() {
    let server = S3Server::start();
    let mut s3 = server.s3_config("");
    s3.secret_access_key = Some(kiln_config::Secret::new("not-the-secret"));
    let config = StorageConfig { kind: StorageKind::S3, local: None, s3: Some(s3) };
    let storage = Storage::from_config(&config).unwrap();
    let key = kiln_storage::ObjectKey::new(&crate::build_key(30), kiln_storage::ObjectName::Log);
    let err = storage.put_bytes(&key, bytes::Bytes::from_static(b"x")).await.unwrap_err();
    assert!(matches!(err, StorageError::Backend { .. }), "{err}");
    assert!(server.files().iter().all(|f| !f.contains("log.txt")));
}
