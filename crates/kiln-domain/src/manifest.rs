//! The build manifest: what a worker stored for a succeeded build, and
//! how. Written by the worker as `K/build.json` and into the queue's
//! `artifact` column; read by the API (ETags, the build's JSON) and by the
//! `kiln` CLI (the main binary's name).
//!
//! **Compatibility.** `schema_version` says which fields a writer knew
//! ([`SCHEMA_VERSION`]); manifests stored before the field existed have the
//! version 1 shape and read as 1. A newer writer may *add* fields, never
//! remove or retype one, so an older reader still finds everything it
//! knows: readers ignore fields they do not know, and keep unknown
//! top-level ones in [`BuildManifest::extra`], so a reader that passes a
//! manifest on (the API's build JSON) passes them on too. New facts
//! therefore go in new top-level fields, optional for readers (the image
//! work adds its OCI digests so).

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{BuildKey, BuildSpec, OciDigest, Platform, PluginSpec, Replacement, ValidationError, Version};

/// The schema version this crate writes. 2 added `oci_image`.
pub const SCHEMA_VERSION: u32 = 2;

/// Manifests stored before `schema_version` existed have version 1's shape.
fn legacy_schema() -> u32 {
    1
}

/// Everything known about a succeeded build.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BuildManifest {
    /// Which fields the writer knew; see the module's compatibility rules.
    #[serde(default = "legacy_schema")]
    pub schema_version: u32,
    pub key: BuildKey,
    /// The resolved request the key was made from.
    pub request: BuildSpec,
    // The request's main facts again, flat, for readers of the JSON.
    pub recipe: String,
    pub recipe_revision: String,
    pub version: Version,
    pub platform: Platform,
    pub os: String,
    pub arch: String,
    /// The ARM version, empty when the platform has none.
    pub arm: String,
    /// Sorted by module.
    pub plugins: Vec<PluginSpec>,
    /// Sorted by module.
    pub replacements: Vec<Replacement>,
    /// The Docker image the steps ran in (not an image the build makes:
    /// those belong in a field of their own).
    pub image: StepImageRecord,
    /// The worker that built it.
    pub worker: WorkerRecord,
    pub attempt: AttemptRecord,
    pub started_at: DateTime<Utc>,
    pub steps_finished_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub steps: Vec<StepRecord>,
    /// `artifact.tar`: the packed `out/`.
    pub artifact: ArtifactRecord,
    /// The recipe's main binary, also stored on its own.
    pub binary: FileRecord,
    /// `artifact.tar.minisig`.
    pub signature: SignatureRecord,
    /// `log.txt`.
    pub log: LogRecord,
    /// The OCI image the build made (schema 2; linux builds of recipes with
    /// an `oci` section only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oci_image: Option<OciImageRecord>,
    /// Top-level fields of a newer schema, kept as they are.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// The OCI image a build made: its platform manifest and what it names,
/// each blob stored as `blobs/sha256/<hex>`, and the manifest's signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OciImageRecord {
    /// The manifest's media type (OCI's image manifest).
    pub media_type: String,
    /// The digest of the manifest's stored bytes: what `name@digest` pulls.
    pub manifest_digest: OciDigest,
    /// The manifest's length in bytes.
    pub manifest_size: u64,
    pub config_digest: OciDigest,
    /// The layers, bottom first (the base's, then the build's own).
    pub layers: Vec<OciDigest>,
    /// The config's and the layers' bytes together, as pulled.
    pub size: u64,
    /// `image.minisig`: the manifest's signature, whose trusted comment is
    /// `kiln image <key> <platform> sha256:<manifest>`.
    pub signature: SignatureRecord,
}

/// The Docker image a build's steps ran in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepImageRecord {
    /// The image as the recipe names it.
    pub name: String,
    /// The local image id (`sha256:…`).
    pub id: String,
    /// The registry digests (`repo@sha256:…`), empty for locally built images.
    pub repo_digests: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerRecord {
    pub id: String,
    pub host: String,
    /// The worker's Kiln version.
    pub version: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptRecord {
    /// The attempt row's id (the lease's fencing token).
    pub id: i64,
    /// 1 for the first attempt at the build.
    pub number: i32,
}

/// One step as it ran.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    pub name: String,
    pub started_at: DateTime<Utc>,
    pub seconds: f64,
    /// The container's exit code; none when it was killed or never ran.
    pub exit_code: Option<i64>,
    /// `ok`, `failed`, `out_of_memory`, `timed_out`, `disk_limit_exceeded`,
    /// `stopped` or `error`
    /// (a string, so that a newer worker's outcomes still read).
    pub outcome: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactRecord {
    /// The object's file name.
    pub name: String,
    pub size: u64,
    pub sha256: Sha256Hex,
    /// The archive's entries in order.
    pub entries: Vec<EntryRecord>,
}

/// One entry of the artifact TAR.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryRecord {
    pub path: String,
    /// `file`, `dir` or `symlink`.
    pub kind: String,
    pub size: u64,
    /// Permission bits in octal, e.g. `755`.
    pub mode: String,
    pub link_target: Option<String>,
}

/// A stored file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    /// The file's name (for the binary: its name in `out/`, a plain file name).
    pub name: String,
    pub size: u64,
    pub sha256: Sha256Hex,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignatureRecord {
    pub name: String,
    /// The signing key's id, as minisign prints it.
    pub key_id: String,
    /// `kiln build <key> sha256:<hex>`.
    pub trusted_comment: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRecord {
    pub name: String,
    pub size: u64,
    pub sha256: Sha256Hex,
    /// Output past the log's cap, not kept.
    pub dropped_bytes: u64,
}

/// A SHA-256 as 64 lowercase hex characters (checked, so it is safe in a
/// header such as an `ETag`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct Sha256Hex(String);

impl Sha256Hex {
    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        if crate::key::is_sha256_hex(s) {
            Ok(Self(s.to_owned()))
        } else {
            Err(ValidationError::new("sha256", "invalid_digest", "a SHA-256 is 64 lowercase hex characters"))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Sha256Hex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Sha256Hex {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Sha256Hex::parse(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    /// A manifest as workers wrote it before `schema_version` existed.
    fn legacy() -> Value {
        let sha = "ab".repeat(32);
        let key = "cd".repeat(32);
        let spec = json!({"recipe": "hello", "recipe_revision": "r1", "version": "v1.1.0",
            "platform": "linux/arm/7", "plugins": [{"module": "example.com/greet", "version": "v0.2.0"}],
            "replacements": []});
        json!({
            "key": key, "request": spec, "recipe": "hello", "recipe_revision": "r1", "version": "v1.1.0",
            "platform": "linux/arm/7", "os": "linux", "arch": "arm", "arm": "7",
            "plugins": [{"module": "example.com/greet", "version": "v0.2.0"}], "replacements": [],
            "image": {"name": "kiln-test/busybox:latest", "id": "sha256:00", "repo_digests": []},
            "worker": {"id": "w1", "host": "h", "version": "0.1.0"},
            "attempt": {"id": 7, "number": 1},
            "started_at": "2025-01-01T00:00:00Z", "steps_finished_at": "2025-01-01T00:00:01Z",
            "finished_at": "2025-01-01T00:00:02Z",
            "steps": [{"name": "build", "started_at": "2025-01-01T00:00:00Z", "seconds": 0.5,
                       "exit_code": 0, "outcome": "ok"}],
            "artifact": {"name": "artifact.tar", "size": 10240, "sha256": sha,
                         "entries": [{"path": "hello", "kind": "file", "size": 40, "mode": "755", "link_target": null}]},
            "binary": {"name": "hello", "size": 40, "sha256": sha},
            "signature": {"name": "artifact.tar.minisig", "key_id": "0123456789ABCDEF",
                          "trusted_comment": format!("kiln build {key} sha256:{sha}")},
            "log": {"name": "log.txt", "size": 100, "sha256": sha, "dropped_bytes": 0},
        })
    }

    #[test]
    fn a_manifest_stored_before_schema_versions_reads_as_version_1_and_writes_back_the_same() {
        let m: BuildManifest = serde_json::from_value(legacy()).unwrap();
        assert_eq!(m.schema_version, 1);
        assert_eq!(m.binary.name, "hello");
        assert_eq!(m.platform.arm, Some(7));
        assert_eq!(m.request.key().as_str().len(), 64);
        assert_eq!(m.oci_image, None);
        let mut again = serde_json::to_value(&m).unwrap();
        assert_eq!(again.as_object_mut().unwrap().remove("schema_version"), Some(json!(1)));
        assert_eq!(again, legacy());
    }

    #[test]
    fn fields_of_a_newer_schema_are_read_past_and_kept_at_the_top_level() {
        let mut newer = legacy();
        newer["schema_version"] = json!(2);
        newer["oci"] = json!({"manifest_digest": "sha256:ff"});
        newer["binary"]["mode"] = json!("755");
        let m: BuildManifest = serde_json::from_value(newer.clone()).unwrap();
        assert_eq!(m.schema_version, 2);
        assert_eq!(m.extra["oci"]["manifest_digest"], "sha256:ff");
        let passed_on = serde_json::to_value(&m).unwrap();
        assert_eq!(passed_on["oci"], newer["oci"]);
        assert_eq!(passed_on["schema_version"], 2);
    }

    #[test]
    fn an_image_record_round_trips() {
        let d = |b: &[u8]| OciDigest::of(b);
        let mut v = legacy();
        v["schema_version"] = json!(SCHEMA_VERSION);
        v["oci_image"] = json!({
            "media_type": "application/vnd.oci.image.manifest.v1+json",
            "manifest_digest": d(b"m"), "manifest_size": 400, "config_digest": d(b"c"),
            "layers": [d(b"l1"), d(b"l2")], "size": 1234,
            "signature": {"name": "image.minisig", "key_id": "0123456789ABCDEF", "trusted_comment": "kiln image x"},
        });
        let m: BuildManifest = serde_json::from_value(v.clone()).unwrap();
        let image = m.oci_image.as_ref().unwrap();
        assert_eq!(image.manifest_digest, d(b"m"));
        assert_eq!(image.layers.len(), 2);
        assert!(m.extra.is_empty());
        assert_eq!(serde_json::to_value(&m).unwrap(), v);
        v["oci_image"]["manifest_digest"] = json!("sha256:nothex");
        assert!(serde_json::from_value::<BuildManifest>(v).is_err());
    }

    #[test]
    fn digests_are_checked() {
        let mut bad = legacy();
        bad["binary"]["sha256"] = json!("\"injected\r\nx: y");
        assert!(serde_json::from_value::<BuildManifest>(bad).is_err());
        assert!(Sha256Hex::parse(&"AB".repeat(32)).is_err());
        assert_eq!(Sha256Hex::parse(&"ab".repeat(32)).unwrap().as_str(), "ab".repeat(32));
    }
}
