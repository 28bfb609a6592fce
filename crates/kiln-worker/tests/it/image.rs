//! A build's OCI image: made by the worker with the build, its blobs
//! stored content-addressed, recorded in build.json and the build's row,
//! and its manifest signed.

use kiln_domain::BuildState;
use kiln_image::{ImageConfig, ImageManifest};
use kiln_storage::{ObjectKey, ObjectName};
use kiln_worker::{Exit, JobEnd};

use crate::farm::Farm;

#[tokio::test]
async fn a_linux_build_makes_a_signed_image_whose_blobs_are_stored_once() {
    let Some(farm) = Farm::new("image").await else { return };
    let mut spec = farm.spec("hello", "v1.1.0", &[("example.com/greet", "v0.2.0")]);
    spec.platform = "linux/arm/7".parse().unwrap();
    let key = farm.enqueue(&spec).await;
    let id = format!("image-{}", std::process::id());
    assert_eq!(farm.run_once(&id).await, Exit::Once(JobEnd::Succeeded));
    let build = farm.build(&key).await;
    assert_eq!(build.state, BuildState::Succeeded, "{:?}", build.error);

    // build.json and the row record the image.
    let manifest = build.artifact.clone().unwrap();
    assert_eq!(manifest.schema_version, 2);
    let image = manifest.oci_image.clone().expect("an image record");
    let stored: kiln_domain::BuildManifest =
        serde_json::from_slice(&farm.object(&key, ObjectName::Manifest).await).unwrap();
    assert_eq!(stored.oci_image.as_ref(), Some(&image));

    // The manifest's stored bytes are what its digest names, and name the config and layers.
    let blob = |d: &kiln_domain::OciDigest| {
        let d = d.clone();
        let storage = farm.storage.clone();
        async move { storage.get_bytes(&ObjectKey::blob(&d)).await.unwrap().to_vec() }
    };
    let manifest_bytes = blob(&image.manifest_digest).await;
    assert_eq!(kiln_domain::OciDigest::of(&manifest_bytes), image.manifest_digest);
    assert_eq!(manifest_bytes.len() as u64, image.manifest_size);
    let m = ImageManifest::parse(&manifest_bytes).unwrap();
    assert_eq!(m.config.digest, image.config_digest);
    assert_eq!(m.layers.iter().map(|l| l.digest.clone()).collect::<Vec<_>>(), image.layers);
    assert!(image.layers.len() >= 2, "the base's layers and the build's own: {:?}", image.layers);
    let mut total = m.config.size;
    for l in &m.layers {
        let bytes = blob(&l.digest).await;
        assert_eq!(kiln_domain::OciDigest::of(&bytes), l.digest);
        total += bytes.len() as u64;
    }
    assert_eq!(total, image.size);

    // The config is true to the platform and leads back to the build.
    let config: ImageConfig = serde_json::from_slice(&blob(&image.config_digest).await).unwrap();
    assert_eq!((config.os.as_str(), config.architecture.as_str()), ("linux", "arm"));
    assert_eq!(config.variant.as_deref(), Some("v7"));
    assert_eq!(kiln_image::build_of_config(&config), Some(key.clone()));
    assert_eq!(config.config.entrypoint, Some(vec!["/usr/bin/hello".to_owned()]));

    // The signature covers the manifest and names the build and platform.
    let sig = String::from_utf8(farm.object(&key, ObjectName::ImageSignature).await).unwrap();
    let comment = kiln_artifact::verify_image(&farm.public_key, &manifest_bytes, &sig).unwrap();
    assert_eq!((comment.key, comment.manifest.clone()), (key.clone(), image.manifest_digest.clone()));
    assert_eq!(comment.platform, spec.platform);
    assert_eq!(image.signature.trusted_comment, kiln_artifact::image_comment(&key, &spec.platform, &comment.manifest));
    let mut tampered = manifest_bytes.clone();
    tampered[0] = b' ';
    assert!(kiln_artifact::verify_image(&farm.public_key, &tampered, &sig).is_err());

    // The base was converted once: a second build over it reuses its record
    // and its layers, and adds only its own layer, config and manifest.
    let base_id = manifest.image.id.clone();
    let base_record = ObjectKey::base(&kiln_domain::OciDigest::parse(&base_id).unwrap());
    assert!(farm.storage.exists(&base_record).await.unwrap(), "bases/ record of {base_id}");
    let blobs_before = count_blobs(&farm);
    let mut other = farm.spec("hello", "v1.1.0", &[]);
    other.platform = "linux/arm64".parse().unwrap();
    let other_key = farm.enqueue(&other).await;
    assert_eq!(farm.run_once(&format!("{id}-2")).await, Exit::Once(JobEnd::Succeeded));
    let other_image = farm.build(&other_key).await.artifact.unwrap().oci_image.unwrap();
    let n = image.layers.len();
    assert_eq!(other_image.layers[..n - 1], image.layers[..n - 1], "shared base layers");
    assert_ne!(other_image.layers[n - 1], image.layers[n - 1]);
    assert_eq!(count_blobs(&farm), blobs_before + 3, "one layer, one config, one manifest more");

    // A build for another OS has no image.
    let mut windows = farm.spec("hello", "v1.1.0", &[]);
    windows.platform = "windows/amd64".parse().unwrap();
    let windows_key = farm.enqueue(&windows).await;
    assert_eq!(farm.run_once(&format!("{id}-3")).await, Exit::Once(JobEnd::Succeeded));
    assert_eq!(farm.build(&windows_key).await.artifact.unwrap().oci_image, None);
    assert!(!farm.has_object(&windows_key, ObjectName::ImageSignature).await);
}

/// While the janitor's sweep holds the image lock, a worker making an image
/// waits before it looks at the shared objects (so it cannot find a blob
/// that the sweep is about to delete), and finishes once the sweep lets go.
#[tokio::test]
async fn a_worker_waits_for_a_sweep_before_it_looks_at_shared_objects() {
    let Some(farm) = Farm::new("image-lock").await else { return };
    let spec = farm.spec("hello", "v1.1.0", &[]);
    let key = farm.enqueue(&spec).await;
    let sweep = farm.queue.sweep_images().await.unwrap();
    let id = format!("image-lock-{}", std::process::id());
    let run = farm.run_once(&id);
    tokio::pin!(run);
    let waiting = async {
        while farm.db.advisory_waiters().await == 0 {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    };
    tokio::select! {
        end = &mut run => panic!("the build ended while a sweep held the image lock: {end:?}"),
        () = waiting => {}
    }
    let build = farm.build(&key).await;
    assert_eq!(build.state, BuildState::Running, "{:?}", build.error);
    assert!(build.artifact.is_none());
    sweep.release().await;
    assert_eq!(run.await, Exit::Once(JobEnd::Succeeded));
    assert!(farm.build(&key).await.artifact.unwrap().oci_image.is_some());
}

fn count_blobs(farm: &Farm) -> usize {
    let dir = farm.dir.path().join("artifacts/blobs/sha256");
    std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())).count()
}
