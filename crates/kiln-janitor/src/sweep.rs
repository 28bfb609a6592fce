//! The sweep of shared image objects: mark and sweep over `blobs/sha256/`,
//! `indexes/` and `bases/`, which expiry (a build's own prefix only) never
//! removes.
//!
//! 1. **List** every shared object with its size and last-modified time,
//!    first, so an object written later is not a candidate at all.
//! 2. **Mark**, after the listing: the manifest, config and layers of every
//!    build that still has a row (`Queue::live_images`; queued and running
//!    builds have no image yet, expired builds no row); every index whose
//!    platform manifests are all marked manifests (and its blob: the same
//!    bytes, by their digest); every base record whose layers are all marked,
//!    with those layers. An object younger than `janitor.image_grace_secs`
//!    is kept whatever it is (the uploads of builds still running), and a
//!    young index or base record marks what it names too, so a kept record
//!    never points at a deleted blob.
//! 3. **Sweep** the rest: records (bases, then indexes) before blobs, so a
//!    reader never finds a record whose blobs are gone but a worker's retry
//!    converts the base again.
//!
//! Any failure to list, read or decode while marking ends the run before
//! anything is deleted: a partial mark never deletes.
//!
//! Steps 2 and 3 hold the image lock alone (`Queue::sweep_images`): a worker
//! holds its share from its first look at the shared objects until its
//! build, which names what it found, is recorded. Without it a worker could
//! find an old unnamed blob stored, skip its upload, and have it deleted
//! before its build named it. A sweep that cannot take the lock within a
//! minute deletes nothing and is tried again at its next tick.

use std::collections::HashSet;

use chrono::{DateTime, TimeDelta, Utc};
use kiln_domain::OciDigest;
use kiln_storage::{ObjectKey, ObjectName, SharedObject};
use serde::Deserialize;

use crate::Janitor;
use crate::janitor::{MAX_STORAGE_FAILURES_IN_A_ROW, Partial};
use crate::task::Counts;

/// What the sweep reads of a stored index (`kiln_image::image_index`).
#[derive(Deserialize)]
struct IndexDoc {
    manifests: Vec<Named>,
}

/// What the sweep reads of a base record (`kiln_image::BaseImage`).
#[derive(Deserialize)]
struct BaseDoc {
    layers: Vec<Named>,
}

#[derive(Deserialize)]
struct Named {
    digest: OciDigest,
}

impl Janitor {
    /// Mark and sweep the shared objects of images (see the module docs).
    pub(crate) async fn sweep(&self) -> Result<Counts, Partial> {
        let mut counts = Counts::new();
        for name in ["live_images", "kept", "kept_young", "swept", "bytes_swept", "storage_errors"] {
            counts.set(name, 0);
        }
        let fail = |counts: &Counts, e: String| Partial { counts: counts.clone(), error: e };
        let grace = TimeDelta::from_std(self.settings.image_grace).unwrap_or(TimeDelta::MAX);
        let cutoff = Utc::now().checked_sub_signed(grace).unwrap_or(DateTime::<Utc>::MIN_UTC);
        let listed = self
            .in_time_shared("listing shared objects", self.storage.list_shared())
            .await
            .map_err(|e| fail(&counts, e.to_string()))?;
        // From the mark to the last delete, no worker may be between finding
        // a shared object stored and recording the build that names it.
        let lock = self
            .queue
            .sweep_images()
            .await
            .map_err(|e| fail(&counts, format!("nothing swept: no hold of the image lock: {e}")))?;
        let result = self.mark_and_sweep(listed, cutoff, counts).await;
        lock.release().await;
        result
    }

    /// Steps 2 and 3, under the image lock.
    async fn mark_and_sweep(
        &self,
        listed: Vec<SharedObject>,
        cutoff: DateTime<Utc>,
        mut counts: Counts,
    ) -> Result<Counts, Partial> {
        let fail = |counts: &Counts, e: String| Partial { counts: counts.clone(), error: e };
        let live = self.queue.live_images().await.map_err(|e| fail(&counts, format!("nothing swept: {e}")))?;
        counts.set("live_images", live.len() as i64);

        let mut manifests: HashSet<OciDigest> = HashSet::new();
        let mut blobs: HashSet<OciDigest> = HashSet::new();
        for (_, image) in &live {
            manifests.insert(image.manifest_digest.clone());
            blobs.insert(image.manifest_digest.clone());
            blobs.insert(image.config_digest.clone());
            blobs.extend(image.layers.iter().cloned());
        }
        let of_builds = blobs.clone();

        // Records: read each, decide, and mark what a kept one names.
        let mut kept_records: HashSet<&ObjectKey> = HashSet::new();
        for object in &listed {
            let Some((kind, _)) = object.key.shared() else { continue };
            if kind == ObjectName::Blob {
                continue;
            }
            let bytes = match self.in_time_shared("reading a record", self.storage.get_bytes(&object.key)).await {
                Ok(bytes) => bytes,
                Err(e) if e.is_not_found() => continue,
                Err(e) => return Err(fail(&counts, format!("nothing swept: {}: {e}", object.key))),
            };
            let young = object.last_modified > cutoff;
            let unreadable =
                |e: serde_json::Error| fail(&counts, format!("nothing swept: {} is unreadable: {e}", object.key));
            let names: Vec<OciDigest> = if kind == ObjectName::Index {
                let doc: IndexDoc = serde_json::from_slice(&bytes).map_err(unreadable)?;
                doc.manifests.into_iter().map(|n| n.digest).collect()
            } else {
                let doc: BaseDoc = serde_json::from_slice(&bytes).map_err(unreadable)?;
                doc.layers.into_iter().map(|n| n.digest).collect()
            };
            let referenced = !names.is_empty()
                && if kind == ObjectName::Index {
                    names.iter().all(|d| manifests.contains(d))
                } else {
                    names.iter().all(|d| of_builds.contains(d))
                };
            if young || referenced {
                if kind == ObjectName::Index {
                    blobs.insert(OciDigest::of(&bytes));
                }
                blobs.extend(names);
                kept_records.insert(&object.key);
            }
        }

        // What goes: records first, then blobs.
        let mut doomed: Vec<&SharedObject> = Vec::new();
        for object in &listed {
            let Some((kind, digest)) = object.key.shared() else { continue };
            let marked =
                if kind == ObjectName::Blob { blobs.contains(digest) } else { kept_records.contains(&object.key) };
            if marked {
                counts.add("kept", 1);
            } else if object.last_modified > cutoff {
                counts.add("kept_young", 1);
            } else {
                doomed.push(object);
            }
        }
        doomed.sort_by_key(|o| match o.key.shared().map(|(k, _)| k) {
            Some(ObjectName::Base) => 0,
            Some(ObjectName::Index) => 1,
            _ => 2,
        });

        let mut failures_in_a_row = 0;
        let mut first_error = None;
        for object in doomed {
            match self.in_time_shared("deleting", self.storage.delete(&object.key)).await {
                Ok(()) => {
                    failures_in_a_row = 0;
                    counts.add("swept", 1);
                    counts.add("bytes_swept", i64::try_from(object.size).unwrap_or(i64::MAX));
                    tracing::debug!(key = %object.key, size = object.size, "swept");
                }
                Err(e) => {
                    counts.add("storage_errors", 1);
                    failures_in_a_row += 1;
                    tracing::warn!(key = %object.key, error = %e, "sweep: could not delete; tried again next run");
                    first_error.get_or_insert_with(|| format!("{}: {e}", object.key));
                    if failures_in_a_row >= MAX_STORAGE_FAILURES_IN_A_ROW {
                        break;
                    }
                }
            }
        }
        match first_error {
            None => Ok(counts),
            Some(e) => {
                let n = counts.get("storage_errors");
                Err(Partial { error: format!("{n} object(s) not deleted after storage errors, first: {e}"), counts })
            }
        }
    }
}
