//! The OCI image of a build, made when the build is made (the steps and
//! the signed artifact are done) and published with it.
//!
//! For a linux build of a recipe with an `oci` section, [`make`]:
//!
//! 1. gets the base image, if the recipe names one (`oci.base`, rendered
//!    like a step argument): from the engine, pulled only if the recipe may
//!    pull; converted once per image id and remembered in the store as
//!    `bases/<id hex>.json`, so later builds (on any worker) skip the
//!    `docker save`; its layers are uploaded as shared blobs at once;
//! 2. makes the build's layer from the signed artifact TAR, the config and
//!    the manifest ([`kiln_image::build_image`], deterministic);
//! 3. signs the manifest's bytes (`image.minisig`, trusted comment
//!    `kiln image <key> <platform> sha256:<manifest>`).
//!
//! From before step 1 until the build is recorded, the worker holds its
//! share of the image lock (`Queue::use_images`), so the janitor's sweep
//! cannot delete a shared object this build found stored and reuses.
//!
//! [`publish`] then uploads, behind the upload fence and before
//! `build.json` and the `succeeded` state: every blob the manifest names
//! and the manifest itself (`blobs/sha256/<hex>`, skipped when already
//! stored), then `image.minisig`. A recipe or an output that cannot make
//! an image (a missing file, a base of the wrong platform) fails the build;
//! anything else (Docker, the disk, the store) is the farm's and retried.

use std::path::Path;

use futures::StreamExt;
use kiln_domain::manifest::{OciImageRecord, SignatureRecord};
use kiln_domain::{BuildKey, BuildSpec, OciDigest, Recipe};
use kiln_image::{BaseImage, BlobDir, BuiltImage, ImageError, ImageInputs};
use kiln_queue::ImageLock;
use kiln_storage::{ObjectKey, ObjectName, Storage};
use tokio::io::AsyncWriteExt;

use crate::failure::{Failure, io_failure};
use crate::job::JobContext;
use crate::render::{self, Params};

/// A build's image, made and signed, not yet uploaded.
#[derive(Debug)]
pub(crate) struct Made {
    blobs: BlobDir,
    built: BuiltImage,
    signature: String,
    /// What `build.json` records of it.
    pub record: OciImageRecord,
    /// This worker's share of the image lock, from before it first looked
    /// at the shared objects until its build, which names them, is recorded.
    lock: Option<ImageLock>,
}

impl Made {
    /// The image lock, for the caller to release once the build is recorded.
    pub(crate) fn take_lock(&mut self) -> Option<ImageLock> {
        self.lock.take()
    }
}

impl From<ImageError> for Failure {
    fn from(e: ImageError) -> Self {
        if e.is_build_failure() { Failure::Build(format!("image: {e}")) } else { Failure::Infra(format!("image: {e}")) }
    }
}

/// Make the image of the build `spec` of `recipe`, whose signed artifact is
/// at `artifact`, using `root` (the attempt's directory) for its files.
/// `None` when the build has no image (no `oci` section, or not linux).
pub(crate) async fn make(
    ctx: &JobContext,
    key: &BuildKey,
    recipe: &Recipe,
    spec: &BuildSpec,
    root: &Path,
    artifact: &Path,
) -> Result<Option<Made>, Failure> {
    let Some(oci) = recipe.oci.clone() else { return Ok(None) };
    if spec.platform.os != kiln_domain::image_ref::IMAGE_OS {
        return Ok(None);
    }
    // Shared objects found stored from here on may be reused without an
    // upload: the sweep must not delete them until the build names them.
    let lock = ctx.queue.use_images().await.map_err(|e| Failure::Infra(format!("the image lock: {e}")))?;
    let blobs = BlobDir::create(&root.join("image"))?;
    let base = match &oci.base {
        Some(template) => {
            let name = render::render_text(&spec.recipe, "oci.base", template, &Params::new(recipe, spec))
                .map_err(|e| Failure::Build(e.to_string()))?;
            Some(base_image(ctx, &name, recipe.pull, root, &blobs).await?)
        }
        None => None,
    };
    let binary_file = recipe.binary_file(&spec.platform);
    let (spec, artifact, signer, key) = (spec.clone(), artifact.to_owned(), ctx.signer.clone(), key.clone());
    let dir = blobs.clone();
    tokio::task::spawn_blocking(move || -> Result<_, Failure> {
        let inputs = ImageInputs { spec: &spec, oci: &oci, binary_file: &binary_file, base: base.as_ref() };
        let built = kiln_image::build_image(&inputs, &artifact, &dir)?;
        let digest = &built.record.manifest.digest;
        let comment = kiln_artifact::image_comment(&key, &spec.platform, digest);
        let signature = signer.sign(&built.manifest[..], &comment)?;
        let r = &built.record;
        let record = OciImageRecord {
            media_type: r.manifest.media_type.clone(),
            manifest_digest: digest.clone(),
            manifest_size: r.manifest.size,
            config_digest: r.config.digest.clone(),
            layers: r.layers.iter().map(|l| l.digest.clone()).collect(),
            size: r.config.size + r.layers.iter().map(|l| l.size).sum::<u64>(),
            signature: SignatureRecord {
                name: ObjectName::ImageSignature.file_name().into(),
                key_id: signer.public_key().key_id(),
                trusted_comment: comment,
            },
        };
        Ok((dir, built, signature, record))
    })
    .await
    .map_err(|e| Failure::Infra(format!("image task: {e}")))?
    .map(|(blobs, built, signature, record)| Some(Made { blobs, built, signature, record, lock: Some(lock) }))
}

/// Upload the image's blobs (those not stored yet), then its signature.
/// Base layers are not in the attempt's blob directory when the base was
/// converted before: they were uploaded then, before its record.
pub(crate) async fn publish(storage: &Storage, key: &BuildKey, made: &Made) -> Result<(), Failure> {
    for digest in made.built.record.blobs() {
        let path = made.blobs.path(digest);
        upload_blob(storage, digest, &path, !made.blobs.contains(digest)).await?;
    }
    storage.put_bytes(&ObjectKey::new(key, ObjectName::ImageSignature), made.signature.clone().into_bytes()).await?;
    Ok(())
}

/// Store `path` as the blob `digest` unless it is stored already. A blob
/// that is neither here nor stored (`elsewhere`: it should have been
/// uploaded by whoever converted its base) is an infrastructure failure.
async fn upload_blob(storage: &Storage, digest: &OciDigest, path: &Path, elsewhere: bool) -> Result<(), Failure> {
    let object = ObjectKey::blob(digest);
    if storage.exists(&object).await? {
        return Ok(());
    }
    if elsewhere {
        return Err(Failure::Infra(format!("blob {digest} of a converted base image is not stored")));
    }
    storage.put_file(&object, path).await?;
    Ok(())
}

/// The base image `name`, converted: from its record in the store when
/// this image id was converted before, else exported from the engine,
/// converted, its layers uploaded, and its record stored.
async fn base_image(
    ctx: &JobContext,
    name: &str,
    pull: bool,
    root: &Path,
    blobs: &BlobDir,
) -> Result<BaseImage, Failure> {
    let info = ctx.engine.ensure_image(name, pull).await?;
    let id = OciDigest::parse(&info.id)
        .map_err(|e| Failure::Infra(format!("base image {name} has an id Docker should not give: {}", e.message)))?;
    let record = ObjectKey::base(&id);
    match ctx.storage.get_bytes(&record).await {
        Ok(bytes) => match serde_json::from_slice::<BaseImage>(&bytes) {
            Ok(base) if base.id == id => return Ok(BaseImage { name: name.to_owned(), ..base }),
            _ => tracing::warn!(%id, "a stored base image record is unreadable; converting the image again"),
        },
        Err(e) if e.is_not_found() => {}
        Err(e) => return Err(e.into()),
    }

    // Export to a file first (the engine's stream is async, the import is not).
    let export = root.join("base-export.tar");
    let mut file = tokio::fs::File::create(&export).await.map_err(io_failure("creating", &export))?;
    let mut stream = ctx.engine.export_image(info.id.as_str());
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| Failure::Infra(format!("docker save {name}: {e}")))?;
        file.write_all(&chunk).await.map_err(io_failure("writing", &export))?;
    }
    file.flush().await.map_err(io_failure("writing", &export))?;
    drop(file);
    let (dir, scratch, archive, owned) = (blobs.clone(), root.join("base-scratch"), export.clone(), name.to_owned());
    let base = tokio::task::spawn_blocking(move || -> Result<BaseImage, Failure> {
        let file = std::fs::File::open(&archive).map_err(io_failure("reading", &archive))?;
        let base = kiln_image::import_docker_archive(&owned, std::io::BufReader::new(file), &scratch, &dir)?;
        let _ = std::fs::remove_dir_all(&scratch);
        let _ = std::fs::remove_file(&archive);
        Ok(base)
    })
    .await
    .map_err(|e| Failure::Infra(format!("base image task: {e}")))??;
    for layer in &base.layers {
        upload_blob(&ctx.storage, &layer.digest, &blobs.path(&layer.digest), false).await?;
    }
    let text = serde_json::to_vec(&base).expect("a base image record serializes");
    ctx.storage.put_bytes(&record, text).await?;
    Ok(base)
}
