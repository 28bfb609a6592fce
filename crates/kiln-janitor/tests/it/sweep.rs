//! The sweep of shared image objects, on a local directory and on s3s-fs:
//! what no build with a row names goes once older than the grace period;
//! what a live build, a kept index or base record names stays; a mark that
//! fails deletes nothing. Ages are real: the files' modification times are
//! set back, and both stores list them as the objects' last-modified times.

use std::path::Path;
use std::time::{Duration, SystemTime};

use kiln_domain::manifest::{OciImageRecord, SignatureRecord};
use kiln_domain::{BuildKey, BuildState, OciDigest, Platform};
use kiln_image::{BaseDefaults, BaseImage, Descriptor, Layer, MEDIA_TYPE_MANIFEST, OciPlatform};
use kiln_janitor::Task;
use kiln_storage::{ObjectKey, Storage};
use kiln_testkit::TestDb;
use kiln_testkit::s3::S3Server;

use crate::support::{HOUR, files_under, finished, janitor, local_storage};

/// Store `bytes` as the blob of their digest.
async fn blob(storage: &Storage, bytes: &str) -> OciDigest {
    let digest = OciDigest::of(bytes.as_bytes());
    storage.put_bytes(&ObjectKey::blob(&digest), bytes.as_bytes().to_vec()).await.unwrap();
    digest
}

/// A build's image: its manifest, config and `layers`, recorded in its row
/// as the worker's `build.json` would.
async fn give_image(db: &TestDb, storage: &Storage, key: &BuildKey, layers: Vec<OciDigest>) -> OciImageRecord {
    let manifest = format!("manifest of {key}");
    let record = OciImageRecord {
        media_type: MEDIA_TYPE_MANIFEST.into(),
        manifest_digest: blob(storage, &manifest).await,
        manifest_size: manifest.len() as u64,
        config_digest: blob(storage, &format!("config of {key}")).await,
        layers,
        size: 0,
        signature: SignatureRecord { name: "image.minisig".into(), key_id: "0".into(), trusted_comment: "-".into() },
    };
    sqlx::query("UPDATE builds SET artifact = jsonb_set(artifact, '{oci_image}', $2) WHERE key = $1")
        .bind(key.as_str())
        .bind(serde_json::to_value(&record).unwrap())
        .execute(db.pool())
        .await
        .unwrap();
    record
}

/// The index over `images` (one per platform), stored as the API stores it:
/// its record and its blob. Returns the record's key and the blob's digest.
async fn index(storage: &Storage, images: &[(&OciImageRecord, &str)]) -> (ObjectKey, OciDigest) {
    let children: Vec<Descriptor> = images
        .iter()
        .map(|(image, platform)| {
            let mut d = Descriptor::new(MEDIA_TYPE_MANIFEST, image.manifest_digest.clone(), image.manifest_size);
            d.platform = Some(OciPlatform::of(&platform.parse::<Platform>().unwrap()).unwrap());
            d
        })
        .collect();
    let made = kiln_image::image_index(&children).unwrap();
    let record = ObjectKey::index(&kiln_image::index_key(&children));
    storage.put_bytes(&record, made.bytes.clone()).await.unwrap();
    storage.put_bytes(&ObjectKey::blob(&made.descriptor.digest), made.bytes).await.unwrap();
    (record, made.descriptor.digest)
}

/// A converted base image's record over `layers`, as a worker stores it.
async fn base(storage: &Storage, id: &str, layers: &[OciDigest]) -> ObjectKey {
    let record = BaseImage {
        name: format!("base-{id}"),
        id: OciDigest::of(id.as_bytes()),
        platform: OciPlatform::of(&"linux/amd64".parse::<Platform>().unwrap()).unwrap(),
        defaults: BaseDefaults::default(),
        layers: layers.iter().map(|d| Layer { digest: d.clone(), size: 1, diff_id: d.clone() }).collect(),
    };
    let key = ObjectKey::base(&record.id);
    storage.put_bytes(&key, serde_json::to_vec(&record).unwrap()).await.unwrap();
    key
}

/// Set every file under `dir` back two days, except those whose path contains `keep`.
fn age_files(dir: &Path, keep: &str) {
    let then = SystemTime::now() - Duration::from_secs(48 * 3600);
    for f in files_under(dir) {
        if !f.contains(keep) {
            std::fs::File::options().write(true).open(dir.join(&f)).unwrap().set_modified(then).unwrap();
        }
    }
}

/// The scenario, on `storage` whose files are under `dir`.
async fn sweep_scenario(storage: Storage, dir: &Path) {
    let db = TestDb::new().await.unwrap();
    let j = janitor(&db, storage.clone());
    let q = j.queue();
    let shared_layer = blob(&storage, "a base layer both builds use").await;
    let live_key = finished(&db, q, "long", 1, BuildState::Succeeded, 3).await;
    let live_layer = blob(&storage, "the live build's own layer").await;
    let live = give_image(&db, &storage, &live_key, vec![shared_layer.clone(), live_layer.clone()]).await;
    let dead_key = finished(&db, q, "long", 2, BuildState::Succeeded, 25).await;
    let dead_layer = blob(&storage, "the expired build's own layer").await;
    let dead = give_image(&db, &storage, &dead_key, vec![shared_layer.clone(), dead_layer.clone()]).await;
    let (live_index, live_index_blob) = index(&storage, &[(&live, "linux/amd64")]).await;
    let (dead_index, dead_index_blob) = index(&storage, &[(&live, "linux/amd64"), (&dead, "linux/arm64")]).await;
    let used_base = base(&storage, "used", std::slice::from_ref(&shared_layer)).await;
    let unused_layer = blob(&storage, "a layer of a base no build uses").await;
    let unused_base = base(&storage, "unused", std::slice::from_ref(&unused_layer)).await;
    let old_orphan = blob(&storage, "an old blob nothing names").await;
    let fresh_orphan = blob(&storage, "a fresh blob, maybe of a build still uploading").await;
    age_files(dir, fresh_orphan.hex());

    assert!(j.run(Task::Expiry).await.ok);
    assert!(q.get(&dead_key).await.unwrap().is_none(), "expiry removed the row of the expired build");

    let stored = |key: ObjectKey| {
        let storage = storage.clone();
        async move { storage.exists(&key).await.unwrap() }
    };
    let kept = [
        ObjectKey::blob(&shared_layer),
        ObjectKey::blob(&live_layer),
        ObjectKey::blob(&live.manifest_digest),
        ObjectKey::blob(&live.config_digest),
        live_index.clone(),
        ObjectKey::blob(&live_index_blob),
        used_base.clone(),
        ObjectKey::blob(&fresh_orphan),
    ];
    let swept = [
        ObjectKey::blob(&dead_layer),
        ObjectKey::blob(&dead.manifest_digest),
        ObjectKey::blob(&dead.config_digest),
        dead_index.clone(),
        ObjectKey::blob(&dead_index_blob),
        unused_base.clone(),
        ObjectKey::blob(&unused_layer),
        ObjectKey::blob(&old_orphan),
    ];
    let swept_bytes: u64 = {
        let mut n = 0;
        for key in &swept {
            n += storage.head(key).await.unwrap().size;
        }
        n
    };

    let r = j.run(Task::Sweep).await;
    assert!(r.ok, "{r:?}");
    assert_eq!(r.counts.get("live_images"), 1, "{r:?}");
    assert_eq!(r.counts.get("swept"), swept.len() as i64, "{r:?}");
    assert_eq!(r.counts.get("bytes_swept"), swept_bytes as i64, "{r:?}");
    assert_eq!(r.counts.get("kept_young"), 1, "only the fresh orphan is kept for its age: {r:?}");
    assert_eq!(r.counts.get("kept"), kept.len() as i64 - 1, "{r:?}");
    for key in kept {
        assert!(stored(key.clone()).await, "{key} was swept but is still named");
    }
    for key in swept {
        assert!(!stored(key.clone()).await, "{key} is named by nothing live but stayed");
    }

    // Idempotent, and the run is recorded for /metrics.
    let r = j.run(Task::Sweep).await;
    assert_eq!((r.ok, r.counts.get("swept")), (true, 0), "{r:?}");
    let runs = q.janitor_runs().await.unwrap();
    let run = runs.iter().find(|r| r.task == "sweep").expect("a sweep run is recorded");
    assert_eq!((run.runs, run.totals["swept"].as_i64()), (2, Some(8)));
}

#[tokio::test]
async fn sweep_on_a_local_directory() {
    let (storage, dir) = local_storage();
    sweep_scenario(storage, dir.path()).await;
}

#[tokio::test]
async fn sweep_on_s3() {
    let s3 = S3Server::start();
    let storage = Storage::from_config(&s3.storage_config("farm")).unwrap();
    sweep_scenario(storage, &s3.bucket_dir()).await;
}

/// Everything is old and nothing is named; one thing cannot be read.
async fn failed_mark_deletes_nothing(break_it: impl AsyncFnOnce(&TestDb, &Storage)) {
    let db = TestDb::new().await.unwrap();
    let (storage, dir) = local_storage();
    let j = janitor(&db, storage.clone());
    let orphans = [blob(&storage, "orphan one").await, blob(&storage, "orphan two").await];
    let unused_base = base(&storage, "unused", &orphans[..1]).await;
    break_it(&db, &storage).await;
    age_files(dir.path(), "no file has this in its name");
    let before = files_under(dir.path());

    let r = j.run(Task::Sweep).await;
    assert!(!r.ok, "a mark that fails fails the run: {r:?}");
    assert!(r.error.as_deref().unwrap().contains("nothing swept"), "{r:?}");
    assert_eq!(r.counts.get("swept"), 0);
    assert_eq!(files_under(dir.path()), before, "nothing was deleted");
    assert!(storage.exists(&unused_base).await.unwrap());
    let runs = j.queue().janitor_runs().await.unwrap();
    assert_eq!(runs.iter().find(|r| r.task == "sweep").map(|r| (r.ok, r.failures)), Some((false, 1)));
}

#[tokio::test]
async fn an_unreadable_index_deletes_nothing() {
    failed_mark_deletes_nothing(async |_, storage| {
        let key = ObjectKey::index(&OciDigest::of(b"some children"));
        storage.put_bytes(&key, b"{\"manifests\": \"not a list\"}".to_vec()).await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn an_unreadable_image_record_deletes_nothing() {
    failed_mark_deletes_nothing(async |db, _| {
        let q = db.queue(crate::support::queue_settings());
        let key = finished(db, &q, "long", 1, BuildState::Succeeded, 1).await;
        sqlx::query(
            "UPDATE builds SET artifact = jsonb_set(artifact, '{oci_image}', '{\"layers\": 3}') WHERE key = $1",
        )
        .bind(key.as_str())
        .execute(db.pool())
        .await
        .unwrap();
    })
    .await;
}

#[tokio::test]
async fn the_grace_period_counts_from_the_last_write() {
    let db = TestDb::new().await.unwrap();
    let (storage, dir) = local_storage();
    let mut settings = crate::support::settings();
    settings.image_grace = 72 * HOUR;
    let j = crate::support::janitor_with(&db, storage.clone(), settings);
    let orphan = blob(&storage, "two days old").await;
    age_files(dir.path(), "no file has this in its name");
    let r = j.run(Task::Sweep).await;
    assert_eq!((r.ok, r.counts.get("swept"), r.counts.get("kept_young")), (true, 0, 1), "{r:?}");
    assert!(storage.exists(&ObjectKey::blob(&orphan)).await.unwrap());
}

/// The race the image lock closes: a worker finds an old blob no build names
/// already stored and reuses it without an upload. A sweep started meanwhile
/// neither deletes it nor marks before the worker's build is recorded: it
/// waits for the worker's share of the lock, then keeps what the build names
/// and sweeps the rest.
#[tokio::test]
async fn a_sweep_waits_for_a_worker_reusing_an_old_blob_and_keeps_it() {
    let db = TestDb::new().await.unwrap();
    let (storage, dir) = local_storage();
    let j = janitor(&db, storage.clone());
    let q = j.queue();
    let reused = blob(&storage, "an old layer a new build reuses").await;
    let unused = blob(&storage, "an old layer nothing reuses").await;
    age_files(dir.path(), "no file has this in its name");
    let key = finished(&db, q, "long", 1, BuildState::Succeeded, 0).await;

    // The worker takes its share, then finds the blob stored and skips its upload.
    let worker = q.use_images().await.unwrap();
    assert!(storage.exists(&ObjectKey::blob(&reused)).await.unwrap());
    let worker_side = async {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while db.advisory_waiters().await == 0 {
            assert!(
                storage.exists(&ObjectKey::blob(&reused)).await.unwrap(),
                "the sweep deleted a blob a worker had found stored and was about to name"
            );
            assert!(std::time::Instant::now() < deadline, "the sweep never waited for the worker");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // The sweep waits; the worker's build is recorded naming the blob, then it lets go.
        give_image(&db, &storage, &key, vec![reused.clone()]).await;
        worker.release().await;
    };
    let (r, ()) = tokio::join!(j.run(Task::Sweep), worker_side);
    assert!(r.ok, "{r:?}");
    assert!(storage.exists(&ObjectKey::blob(&reused)).await.unwrap(), "the blob the build names was swept");
    assert!(!storage.exists(&ObjectKey::blob(&unused)).await.unwrap(), "the sweep did run");
    assert_eq!(r.counts.get("swept"), 1, "{r:?}");
}
