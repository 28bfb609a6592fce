//! Presigned GET URLs: S3 only, fetched by a plain HTTP client, refused after their TTL.

use std::time::Duration;

use bytes::Bytes;
use kiln_storage::{ObjectKey, ObjectName, StorageError};

use crate::{Fixture, build_key};

#[tokio::test]
async fn a_presigned_url_serves_the_object_until_its_ttl_runs_out() {
    let f = Fixture::s3();
    let key = ObjectKey::new(&build_key(20), ObjectName::Binary);
    f.storage.put_bytes(&key, Bytes::from_static(b"\x7fELF the binary")).await.unwrap();
    assert!(f.storage.can_presign());

    let url = f.storage.presigned_get(&key, Duration::from_secs(2)).await.unwrap();
    assert!(url.contains("X-Amz-Signature="), "{url}");
    let http = reqwest::Client::new();
    let res = http.get(&url).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], ObjectName::Binary.content_type());
    assert_eq!(res.bytes().await.unwrap(), &b"\x7fELF the binary"[..]);

    // Without its signature the same URL is refused: the bucket is not public.
    let unsigned = url.split('?').next().unwrap();
    assert_eq!(http.get(unsigned).send().await.unwrap().status(), 403);

    tokio::time::sleep(Duration::from_secs(4)).await;
    let res = http.get(&url).send().await.unwrap();
    assert_eq!(res.status(), 403, "an expired URL still works");
}

#[tokio::test]
async fn presigning_needs_s3_and_a_sane_ttl() {
    let f = Fixture::local();
    let key = ObjectKey::new(&build_key(21), ObjectName::Binary);
    assert!(!f.storage.can_presign());
    let err = f.storage.presigned_get(&key, Duration::from_secs(60)).await.unwrap_err();
    assert!(matches!(err, StorageError::PresignUnsupported), "{err}");

    let f = Fixture::s3();
    for ttl in [Duration::ZERO, Duration::from_secs(8 * 24 * 3600)] {
        let err = f.storage.presigned_get(&key, ttl).await.unwrap_err();
        assert!(matches!(err, StorageError::Config(_)), "{ttl:?}: {err}");
    }
}
