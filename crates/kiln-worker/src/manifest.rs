//! The build's manifest as the worker records it: what was built, from
//! what, where, how long each step took, and the size and SHA-256 of every
//! stored object. Stored as `build.json` beside the artifact and in the
//! queue's `artifact` column; the type and its compatibility rules are
//! kiln-domain's ([`BuildManifest`]).

use chrono::{DateTime, Utc};
use kiln_artifact::PackedTar;
use kiln_domain::manifest::{
    self as m, AttemptRecord, EntryRecord, FileRecord, SignatureRecord, StepRecord, WorkerRecord,
};
use kiln_domain::{BuildManifest, Sha256Hex};
use kiln_queue::Claim;
use kiln_storage::ObjectName;

use crate::docker::ImageInfo;
use crate::failure::Failure;
use crate::job::JobContext;

/// What an attempt learnt while it ran, for its manifest.
#[derive(Debug)]
pub(crate) struct Facts<'a> {
    pub image: &'a ImageInfo,
    pub packed: &'a PackedTar,
    pub binary: FileRecord,
    pub steps: Vec<StepRecord>,
    pub started_at: DateTime<Utc>,
    pub steps_finished_at: DateTime<Utc>,
    /// The stored log's size, SHA-256 and dropped bytes.
    pub log: (u64, Sha256Hex, u64),
}

/// A hex SHA-256 computed by this worker, typed.
pub(crate) fn digest(hex: &str) -> Result<Sha256Hex, Failure> {
    Sha256Hex::parse(hex).map_err(|e| Failure::Infra(format!("a SHA-256 of this worker's: {e}")))
}

/// The manifest of `claim`'s build, finished now.
pub(crate) fn manifest(ctx: &JobContext, claim: &Claim, facts: Facts<'_>) -> Result<BuildManifest, Failure> {
    let key = &claim.lease.key;
    let spec = &claim.spec;
    let artifact_sha256 = digest(&facts.packed.sha256)?;
    let mut plugins = spec.plugins.clone();
    plugins.sort();
    let mut replacements = spec.replacements.clone();
    replacements.sort();
    let (log_size, log_sha256, dropped_bytes) = facts.log;
    Ok(BuildManifest {
        schema_version: m::SCHEMA_VERSION,
        key: key.clone(),
        request: spec.clone(),
        recipe: spec.recipe.clone(),
        recipe_revision: spec.recipe_revision.clone(),
        version: spec.version.clone(),
        platform: spec.platform.clone(),
        os: spec.platform.os.clone(),
        arch: spec.platform.arch.clone(),
        arm: spec.platform.arm.map(|a| a.to_string()).unwrap_or_default(),
        plugins,
        replacements,
        image: m::StepImageRecord {
            name: facts.image.name.clone(),
            id: facts.image.id.clone(),
            repo_digests: facts.image.repo_digests.clone(),
        },
        worker: WorkerRecord {
            id: ctx.worker_id.clone(),
            host: ctx.host.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
        },
        attempt: AttemptRecord { id: claim.lease.attempt_id, number: claim.attempt_no },
        started_at: facts.started_at,
        steps_finished_at: facts.steps_finished_at,
        finished_at: Utc::now(),
        steps: facts.steps,
        artifact: m::ArtifactRecord {
            name: ObjectName::Artifact.file_name().into(),
            size: facts.packed.size,
            sha256: artifact_sha256.clone(),
            entries: facts
                .packed
                .entries
                .iter()
                .map(|e| EntryRecord {
                    path: e.path.clone(),
                    kind: format!("{:?}", e.kind).to_lowercase(),
                    size: e.size,
                    mode: format!("{:o}", e.mode),
                    link_target: e.link_target.clone(),
                })
                .collect(),
        },
        binary: facts.binary,
        signature: SignatureRecord {
            name: ObjectName::Signature.file_name().into(),
            key_id: ctx.signer.public_key().key_id(),
            trusted_comment: kiln_artifact::build_comment(key, artifact_sha256.as_str()),
        },
        log: m::LogRecord {
            name: ObjectName::Log.file_name().into(),
            size: log_size,
            sha256: log_sha256,
            dropped_bytes,
        },
        oci_image: None,
        extra: Default::default(),
    })
}
