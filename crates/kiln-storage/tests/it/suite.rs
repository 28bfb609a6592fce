//! The storage contract, run against each backend by `both_backends!`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use futures::StreamExt;
use kiln_storage::{ByteRange, ObjectKey, ObjectName, StorageError};

use crate::{Fixture, build_key, pattern};

pub async fn put_get_head_exists_list_delete_round_trip(f: &Fixture) {
    let s = &f.storage;
    let build = build_key(1);
    for (i, name) in ObjectName::ALL.into_iter().enumerate() {
        let key = ObjectKey::new(&build, name);
        assert!(!s.exists(&key).await.unwrap());
        let data = pattern(1000 + i, i as u64);
        let put = s.put_bytes(&key, data.clone()).await.unwrap();
        assert_eq!((put.size, put.parts), (data.len() as u64, 1));

        assert!(s.exists(&key).await.unwrap());
        assert_eq!(s.get_bytes(&key).await.unwrap(), data);
        let info = s.head(&key).await.unwrap();
        assert_eq!(info.name, name);
        assert_eq!(info.size, data.len() as u64);
        assert_eq!(info.content_type, name.content_type());
        assert!(info.etag.is_some());
        assert_eq!(info.etag, put.etag);
        // The object sits exactly where the layout says.
        assert_eq!(std::fs::read(f.object_file(&build, name.file_name())).unwrap(), data);
    }

    let listed: Vec<ObjectName> = s.list(&build).await.unwrap().into_iter().map(|i| i.name).collect();
    assert_eq!(listed, ObjectName::ALL);
    assert!(s.list(&build_key(2)).await.unwrap().is_empty());

    // Rewriting replaces the object and changes its ETag.
    let log = ObjectKey::new(&build, ObjectName::Log);
    let before = s.head(&log).await.unwrap();
    s.put_bytes(&log, Bytes::from_static(b"second version")).await.unwrap();
    let after = s.head(&log).await.unwrap();
    assert_eq!(s.get_bytes(&log).await.unwrap(), &b"second version"[..]);
    assert_ne!(before.etag, after.etag);

    s.delete(&log).await.unwrap();
    assert!(!s.exists(&log).await.unwrap());
    s.delete(&log).await.expect("deleting a missing object is fine");
    let err = s.get(&log, None).await.unwrap_err();
    assert!(err.is_not_found(), "{err}");
    assert!(s.head(&log).await.unwrap_err().is_not_found());
}

pub async fn put_from_a_file_and_from_a_reader(f: &Fixture) {
    let s = &f.storage;
    let build = build_key(3);
    let tmp = tempfile::tempdir().unwrap();
    let data = pattern(3 * 1024 * 1024 + 17, 3);
    let path = tmp.path().join("artifact.tar");
    std::fs::write(&path, &data).unwrap();

    let art = ObjectKey::new(&build, ObjectName::Artifact);
    let put = s.put_file(&art, &path).await.unwrap();
    assert_eq!(put.size, data.len() as u64);
    assert_eq!(s.get_bytes(&art).await.unwrap(), data);

    let bin = ObjectKey::new(&build, ObjectName::Binary);
    s.put_reader(&bin, std::io::Cursor::new(data.clone())).await.unwrap();
    let got = s.get(&bin, None).await.unwrap();
    assert_eq!(got.range, 0..data.len() as u64);
    let mut stream = got.into_stream();
    let mut collected = Vec::new();
    while let Some(chunk) = stream.next().await {
        collected.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(collected, data);

    let err = s.put_file(&bin, &tmp.path().join("missing")).await.unwrap_err();
    assert!(matches!(err, StorageError::Source { .. }), "{err}");
}

pub async fn a_large_object_goes_through_multipart(f: &Fixture) {
    let s = &f.storage;
    let key = ObjectKey::new(&build_key(4), ObjectName::Artifact);
    let data = pattern(64 * 1024 * 1024 + 3, 4);
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("big");
    std::fs::write(&path, &data).unwrap();

    let put = s.put_file(&key, &path).await.unwrap();
    assert_eq!(put.size, data.len() as u64);
    assert_eq!(put.parts, 5, "64 MiB + 3 bytes in 16 MiB parts");
    if f.is_s3() {
        let etag = put.etag.clone().unwrap();
        assert!(etag.trim_matches('"').ends_with("-5"), "not a multipart ETag: {etag}");
    }
    assert_eq!(s.head(&key).await.unwrap().size, data.len() as u64);
    let got = s.get_bytes(&key).await.unwrap();
    assert!(got == data, "the large object came back different");

    // A range across a part boundary.
    let at = 16 * 1024 * 1024 - 10;
    let part = s.get(&key, Some(ByteRange::Bounded(at..at + 20))).await.unwrap();
    assert_eq!(part.range, at..at + 20);
    assert_eq!(part.bytes().await.unwrap(), data[at as usize..at as usize + 20]);
}

pub async fn byte_ranges(f: &Fixture) {
    let s = &f.storage;
    let key = ObjectKey::new(&build_key(5), ObjectName::Binary);
    let data = pattern(100_000, 5);
    s.put_bytes(&key, data.clone()).await.unwrap();

    let cases = [
        (ByteRange::Bounded(0..1), 0..1),
        (ByteRange::Bounded(1000..2000), 1000..2000),
        (ByteRange::Bounded(99_990..200_000), 99_990..100_000),
        (ByteRange::From(50_000), 50_000..100_000),
        (ByteRange::Suffix(10), 99_990..100_000),
    ];
    for (range, expect) in cases {
        let got = s.get(&key, Some(range.clone())).await.unwrap();
        assert_eq!(got.range, expect, "{range:?}");
        assert_eq!(got.info.size, 100_000);
        let bytes = got.bytes().await.unwrap();
        assert_eq!(bytes, data[expect.start as usize..expect.end as usize], "{range:?}");
    }

    for bad in [ByteRange::From(100_000), ByteRange::Bounded(200_000..300_000)] {
        let err = s.get(&key, Some(bad.clone())).await.unwrap_err();
        assert!(matches!(err, StorageError::RangeNotSatisfiable { size: 100_000, .. }), "{bad:?}: {err}");
    }
}

pub async fn list_builds_and_delete_a_whole_build(f: &Fixture) {
    let s = &f.storage;
    let (a, b) = (build_key(6), build_key(7));
    assert!(s.list_builds().await.unwrap().is_empty());
    for build in [&a, &b] {
        for name in ObjectName::ALL {
            s.put_bytes(&ObjectKey::new(build, name), Bytes::from_static(b"x")).await.unwrap();
        }
    }
    assert_eq!(s.list_builds().await.unwrap(), [a.clone(), b.clone()]);

    assert_eq!(s.delete_build(&a).await.unwrap(), ObjectName::ALL.len());
    assert!(s.list(&a).await.unwrap().is_empty());
    assert_eq!(s.list(&b).await.unwrap().len(), ObjectName::ALL.len());
    assert_eq!(s.list_builds().await.unwrap(), std::slice::from_ref(&b));
    if !f.is_s3() {
        assert!(!f.object_file(&a, "").exists(), "the build's directory is left behind");
    }
    assert_eq!(s.delete_build(&a).await.unwrap(), 0);
}

pub async fn concurrent_writers_leave_one_complete_object(f: &Fixture) {
    // Small parts so that both single PUTs and multipart uploads race.
    let s = f.storage.clone().with_part_size(5 * 1024 * 1024);
    for (round, len) in [(0u8, 1024 * 1024), (1, 12 * 1024 * 1024)] {
        let key = ObjectKey::new(&build_key(8 + round), ObjectName::Artifact);
        let one = Bytes::from(vec![b'a'; len]);
        let two = Bytes::from(vec![b'b'; len]);
        let (r1, r2) = tokio::join!(
            tokio::spawn({
                let (s, key, one) = (s.clone(), key.clone(), one.clone());
                async move { s.put_bytes(&key, one).await }
            }),
            tokio::spawn({
                let (s, key, two) = (s.clone(), key.clone(), two.clone());
                async move { s.put_bytes(&key, two).await }
            }),
        );
        let (p1, p2) = (r1.unwrap().unwrap(), r2.unwrap().unwrap());
        if len > 5 * 1024 * 1024 {
            assert!(p1.parts > 1 && p2.parts > 1);
        }
        let got = s.get_bytes(&key).await.unwrap();
        assert!(got == one || got == two, "a mix of two writers: {} bytes", got.len());
        assert_eq!(s.list(key.build().unwrap()).await.unwrap().len(), 1);
    }
}

pub async fn a_reader_during_writes_never_sees_a_partial_object(f: &Fixture) {
    let s = f.storage.clone().with_part_size(5 * 1024 * 1024);
    let key = ObjectKey::new(&build_key(10), ObjectName::Artifact);
    let len = 7 * 1024 * 1024;
    s.put_bytes(&key, vec![0u8; len]).await.unwrap();

    let done = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn({
        let (s, key, done) = (s.clone(), key.clone(), done.clone());
        async move {
            for i in 1..=16u8 {
                s.put_bytes(&key, vec![i; len]).await.unwrap();
            }
            done.store(true, Ordering::SeqCst);
        }
    });
    let mut reads = 0;
    let mut versions = std::collections::BTreeSet::new();
    while !done.load(Ordering::SeqCst) || reads == 0 {
        let got = s.get_bytes(&key).await.unwrap();
        assert_eq!(got.len(), len, "read {reads} saw a partial object");
        let first = got[0];
        assert!(got.iter().all(|&b| b == first), "read {reads} saw a mix of versions");
        versions.insert(first);
        reads += 1;
    }
    writer.await.unwrap();
    println!("{reads} reads saw versions {versions:?}");
    assert_eq!(s.get_bytes(&key).await.unwrap()[0], 16);
}

pub async fn a_failed_upload_leaves_the_previous_object(f: &Fixture) {
    let s = f.storage.clone().with_part_size(5 * 1024 * 1024);
    let key = ObjectKey::new(&build_key(11), ObjectName::Artifact);
    s.put_bytes(&key, Bytes::from_static(b"the good one")).await.unwrap();

    // Two full parts, then the source fails.
    let chunks: Vec<std::io::Result<Bytes>> = vec![
        Ok(Bytes::from(vec![1u8; 6 * 1024 * 1024])),
        Ok(Bytes::from(vec![2u8; 6 * 1024 * 1024])),
        Err(std::io::Error::other("the build's disk went away")),
    ];
    let err = s.put_stream(&key, futures::stream::iter(chunks)).await.unwrap_err();
    assert!(matches!(err, StorageError::Upload { .. }), "{err}");
    assert_eq!(s.get_bytes(&key).await.unwrap(), &b"the good one"[..]);

    let err = s.put_stream(&key, futures::stream::iter([Err(std::io::Error::other("at once"))])).await.unwrap_err();
    assert!(matches!(err, StorageError::Upload { .. }), "{err}");
    assert_eq!(s.get_bytes(&key).await.unwrap(), &b"the good one"[..]);
}

pub async fn keys_from_outside_are_refused_before_any_io(f: &Fixture) {
    let s = &f.storage;
    let good = build_key(12);
    s.put_bytes(&ObjectKey::new(&good, ObjectName::Log), Bytes::from_static(b"log")).await.unwrap();
    let before = f.backing_files();

    let long = "a".repeat(10 * 1024);
    let bad_builds = [
        "..".to_owned(),
        format!("{}/../{}", good, good),
        format!("{}/x", &good.as_str()[..62]),
        format!("{}\0", &good.as_str()[..63]),
        long.clone(),
        good.as_str().to_uppercase(),
        String::new(),
    ];
    for bad in &bad_builds {
        let err = ObjectKey::parse(bad, "log.txt").unwrap_err();
        assert!(matches!(err, StorageError::InvalidKey(_)), "{bad:?}");
        assert!(err.to_string().len() < 400, "the error echoes the whole input");
    }
    let bad_names = ["..", "../log.txt", "log.txt/..", "a/b", "log.txt\0", &long, "", "LOG.TXT", "artifact.tar "];
    for bad in bad_names {
        let err = ObjectKey::parse(good.as_str(), bad).unwrap_err();
        assert!(matches!(err, StorageError::InvalidKey(_)), "{bad:?}");
    }

    assert_eq!(f.backing_files(), before, "refused keys touched the store");
    let parsed = ObjectKey::parse(good.as_str(), "log.txt").unwrap();
    assert_eq!(s.get_bytes(&parsed).await.unwrap(), &b"log"[..]);
}

pub async fn shared_objects_are_listed_with_size_and_date(f: &Fixture) {
    use kiln_domain::OciDigest;
    let s = &f.storage;
    assert!(s.list_shared().await.unwrap().is_empty(), "an empty store lists nothing");
    let build = build_key(1);
    s.put_bytes(&ObjectKey::new(&build, ObjectName::Log), "log").await.unwrap();
    let d = OciDigest::of(b"shared");
    let mut expected = vec![
        (ObjectKey::blob(&d), 4u64),
        (ObjectKey::blob(&OciDigest::of(b"other")), 5),
        (ObjectKey::index(&d), 6),
        (ObjectKey::base(&d), 7),
    ];
    for (key, size) in &expected {
        s.put_bytes(key, vec![b'x'; *size as usize]).await.unwrap();
    }
    // A file Kiln did not write among the blobs is left out.
    let root = f.object_file(&build, "log.txt").parent().unwrap().parent().unwrap().to_path_buf();
    std::fs::write(root.join("blobs").join("sha256").join("not-a-digest"), b"?").unwrap();

    let before = chrono::Utc::now() - chrono::Duration::minutes(5);
    let mut listed = s.list_shared().await.unwrap();
    assert!(listed.iter().all(|o| o.last_modified > before && o.last_modified <= chrono::Utc::now()), "{listed:?}");
    listed.sort_by(|a, b| a.key.cmp(&b.key));
    expected.sort();
    let listed: Vec<(ObjectKey, u64)> = listed.into_iter().map(|o| (o.key, o.size)).collect();
    assert_eq!(listed, expected);
}
