//! Deterministic OCI images of a build: layers, config, manifests, the
//! index, and the `image.tar` archive. Files and readers only: no network,
//! database, object store or Docker API (the worker and the API do that I/O
//! and hand this crate readers, paths and bytes).
//!
//! # What an image is
//!
//! A linux build of a recipe with an `oci` section ([`kiln_domain::OciSpec`])
//! has one image: the base image's layers, if the recipe names one, then one
//! layer of the build's own ([`AppLayerPlan`]: the main binary at
//! `oci.binary_path`, default `/usr/bin/<binary>`, mode 0755, and the
//! `oci.files`, read out of the signed artifact TAR, with their parent
//! directories and the working directory), a config ([`ImageConfig`]:
//! `os`/`architecture`/`variant` true to the platform, see
//! [`OciPlatform::of`]; entrypoint, cmd, env, ports, user and working
//! directory over the base's defaults; labels `kiln.build`, `kiln.recipe`,
//! `kiln.plugins`, `org.opencontainers.image.version`; `created` the epoch)
//! and a manifest ([`ImageManifest`]). A `<version>` tag is an index
//! ([`image_index`]) over the platforms' manifests. Media types are OCI's
//! only ([`MEDIA_TYPE_MANIFEST`] and friends).
//!
//! Everything is deterministic: layer TARs are plain USTAR, sorted, mtime 0,
//! owner 0 with empty names, no PAX or xattrs; gzip is pinned ([`layer`]);
//! JSON comes from structs in a fixed field order. The bytes are made once,
//! when the build is made, stored content-addressed, and served as stored.
//! A base image's layers keep their uncompressed bytes (checked against the
//! base's diff_ids) and are compressed again with the same pinned settings,
//! so one base image always gives the same blobs, shared by every build
//! over it ([`import_docker_archive`]).
//!
//! # Stored objects
//!
//! In the object store (both backends), beside the per-build prefixes:
//!
//! | object | holds | written by |
//! | --- | --- | --- |
//! | `blobs/sha256/<hex>` | every layer, config, platform manifest and index, named by its digest, shared by all builds | the worker (layers, config, manifest), the API (indexes); only when absent, never overwritten |
//! | `indexes/<hex>` | the bytes of the index over a set of manifests, `<hex>` from [`index_key`] | the API, the first time a `<version>` tag is answered |
//! | `bases/<hex>.json` | a [`BaseImage`] by its Docker image id, so workers skip `docker save` of a base they (or others) converted before | the worker |
//! | `<key>/image.minisig` | the image signature (below) | the worker |
//! | `<key>/build.json` | gains `"oci_image"` (schema 2): `kiln_domain::manifest::OciImageRecord` (manifest digest and size, config, layers, total size, and the `image.minisig` record with its trusted comment); absent for builds without an image | the worker |
//!
//! A blob is uploaded before anything that names it: layers and config,
//! then the manifest, then `image.minisig` and `build.json`, so whoever can
//! find a manifest can fetch all of it. Build expiry deletes `<key>/` only;
//! the janitor's `sweep` task removes the shared objects: it marks what the
//! image record of every build with a row names, the `indexes/` records over
//! marked manifests and the `bases/` records over marked layers, and deletes
//! what is unmarked and older than `janitor.image_grace_secs` (a day by
//! default), so a blob being uploaded for a build in progress is not taken.
//! `Storage::list_builds` skips these prefixes (they are not build keys).
//!
//! # The signed record covers the image
//!
//! The worker signs the platform manifest's bytes with the farm's key
//! (`Signer::sign(&built.manifest[..], &kiln_artifact::image_comment(key,
//! platform, digest))`): trusted comment `kiln image <key> <platform>
//! sha256:<manifest hex>`, stored as `<key>/image.minisig`. The manifest
//! names the config and every layer by digest, so the signature covers the
//! whole image, and the key ties it to the build whose artifact signature
//! (`kiln build <key> sha256:<tar>`, unchanged, so existing signatures and
//! clients keep working) covers the binary. Anyone with the public key and
//! stock tools checks an image digest `D` of build `K`:
//!
//! ```text
//! skopeo inspect --raw --tls-verify=false docker://farm:8234/hello@D > manifest.json
//! curl -fsSo image.minisig http://farm:8234/api/builds/K/image.minisig
//! minisign -Vm manifest.json -x image.minisig -P <public key>   # Trusted comment: kiln image K linux/amd64 D
//! sha256sum manifest.json                                        # D
//! ```
//!
//! `kiln_artifact::verify_image` does all of that in one call, and
//! `kiln verify --image REF` does it for every platform manifest REF names
//! (comparing the comment's key and digest with the ones asked about). `K` is in the image's `kiln.build` label
//! ([`build_of_config`]). An index is not signed (the API holds no key);
//! each platform manifest it lists is.
//!
//! # For the worker (`kiln-worker`'s `image.rs`, called from `job.rs`)
//!
//! After `pack_dir` and the artifact's signature, in the same blocking task,
//! for a linux build of a recipe with `oci`:
//!
//! 1. `let blobs = BlobDir::create(&attempt_root.join("image"))?` (beside
//!    `out/`, not in it).
//! 2. If `oci.base` is set: render it like a step argument (`render.rs`,
//!    same parameters), inspect it in the engine for its id, read
//!    `bases/<id hex>.json` from storage; on a miss, stream bollard's
//!    `export_image` through `SyncIoBridge` into
//!    [`import_docker_archive`]`(name, reader, &attempt_root.join("base-scratch"), &blobs)`,
//!    upload its layers (`blobs/sha256/<hex>` if absent) and the record.
//! 3. `let built = build_image(&ImageInputs { spec, oci, binary_file, base }, &tar, &blobs)?`;
//!    an error with [`ImageError::is_build_failure`] fails the build (final),
//!    any other is an infrastructure failure (retried).
//! 4. Sign `built.manifest` as above.
//! 5. In `publish`, after the artifact, its signature and the binary: for
//!    each digest of `built.record.blobs()` in order, upload
//!    `blobs.path(d)` unless present; then `image.minisig`; then
//!    `build.json` with the `image` fields.
//!
//! # For the API (`kiln-api`'s `registry/` and `routes/image.rs`)
//!
//! Names, tags and digests are parsed by `kiln_domain::image_ref`
//! (`ImageName::parse`, `Reference::parse`, `ImageName::check`,
//! `Tag::platforms`, `ImageName::build_request`, `ImageName::check_build`);
//! an `ImageRefError` is the registry's error body
//! `{"errors":[{"code": code.as_str(), "message", "detail": null}]}` with
//! `code.http_status()`.
//!
//! - Manifest by tag: for each platform of `Tag::platforms`, the usual
//!   validate → resolve → key → enqueue → wait (concurrently), then each
//!   build's `ImageRecord`. A platform tag serves `blobs/sha256/<manifest>`;
//!   a version tag serves `indexes/<index_key(children)>`, made with
//!   [`image_index`] and stored there and in `blobs/` the first time.
//!   `bk-<key>`: the build's own record after `check_build`.
//! - Manifest or blob by digest: `blobs/sha256/<hex>`; a manifest's
//!   `Content-Type` is its own `mediaType` field. `Docker-Content-Digest`
//!   is the digest asked for (or, by tag, the record's).
//! - `image.tar`: `ArchivePlan::new(&manifest_bytes, &record.manifest,
//!   &[format!("{host}/{name}:{tag}")])`; send `Content-Length: plan.len()`,
//!   then each [`ArchivePart`]: literal bytes as they are, a blob streamed
//!   from `blobs/sha256/<hex>` (exactly `size` bytes).

mod app;
mod archive;
mod base;
mod blob;
mod error;
mod image;
pub mod layer;
mod manifest;
mod ustar;

pub use app::{AppLayerPlan, PlannedFile};
pub use archive::{ANNOTATION_IMAGE_NAME, ANNOTATION_REF_NAME, ArchivePart, ArchivePlan, OCI_LAYOUT};
pub use base::{BaseDefaults, BaseImage, import_docker_archive};
pub use blob::{BlobDir, BlobWriter};
pub use error::ImageError;
pub use image::{
    BaseRecord, BuiltImage, ImageInputs, ImageRecord, LABEL_BUILD, LABEL_PLUGINS, LABEL_RECIPE, LABEL_VERSION,
    build_image, build_of_config,
};
pub use layer::{GZIP_LEVEL, Layer, LayerWriter, gzip};
pub use manifest::{
    CREATED, Descriptor, Empty, ImageConfig, ImageIndex, ImageManifest, JsonBlob, MEDIA_TYPE_CONFIG, MEDIA_TYPE_INDEX,
    MEDIA_TYPE_LAYER, MEDIA_TYPE_MANIFEST, OciPlatform, RootFs, RunConfig, image_index, index_key,
};
