//! Integration tests of kiln-storage. One suite runs against both backends:
//! a local directory and a real s3s-fs (started by kiln-testkit; the S3 half
//! fails, saying to run scripts/test, when s3s-fs is not available).

mod config;
mod presign;
mod suite;

use std::path::Path;

use kiln_config::{LocalStorageConfig, StorageConfig, StorageKind};
use kiln_domain::BuildKey;
use kiln_storage::Storage;
use kiln_testkit::s3::S3Server;

/// What a storage under test is backed by.
pub enum Backend {
    Local(tempfile::TempDir),
    S3(S3Server),
}

/// A storage and what backs it, alive for one test.
pub struct Fixture {
    pub storage: Storage,
    pub backend: Backend,
}

impl Fixture {
    pub fn local() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = StorageConfig {
            kind: StorageKind::Local,
            local: Some(LocalStorageConfig { path: dir.path().join("artifacts") }),
            s3: None,
        };
        Fixture { storage: Storage::from_config(&config).unwrap(), backend: Backend::Local(dir) }
    }

    pub fn s3() -> Self {
        let server = S3Server::start();
        let storage = Storage::from_config(&server.storage_config("kiln/builds/")).unwrap();
        Fixture { storage, backend: Backend::S3(server) }
    }

    pub fn is_s3(&self) -> bool {
        matches!(self.backend, Backend::S3(_))
    }

    /// Every file that backs the store, relative to its root, sorted.
    pub fn backing_files(&self) -> Vec<String> {
        match &self.backend {
            Backend::S3(server) => server.files(),
            Backend::Local(dir) => {
                let mut out = Vec::new();
                walk(&dir.path().join("artifacts"), Path::new(""), &mut out);
                out.sort();
                out
            }
        }
    }

    /// Where the object `build/name` lives on disk.
    pub fn object_file(&self, build: &BuildKey, name: &str) -> std::path::PathBuf {
        match &self.backend {
            Backend::S3(server) => server.bucket_dir().join("kiln/builds").join(build.as_str()).join(name),
            Backend::Local(dir) => dir.path().join("artifacts").join(build.as_str()).join(name),
        }
    }
}

fn walk(dir: &Path, rel: &Path, out: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let r = rel.join(e.file_name());
        if e.path().is_dir() {
            walk(&e.path(), &r, out);
        } else {
            out.push(r.to_string_lossy().into_owned());
        }
    }
}

/// A build key made from a small number.
pub fn build_key(n: u8) -> BuildKey {
    BuildKey::from_digest(&[n; 32])
}

/// `len` pseudo-random bytes that differ for each `seed`.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Runs each named test of `suite` once against a local directory and once against s3s-fs.
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod local {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    crate::suite::$name(&crate::Fixture::local()).await;
                }
            )*
        }
        mod s3 {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    crate::suite::$name(&crate::Fixture::s3()).await;
                }
            )*
        }
    };
}

both_backends!(
    put_get_head_exists_list_delete_round_trip,
    put_from_a_file_and_from_a_reader,
    a_large_object_goes_through_multipart,
    byte_ranges,
    list_builds_and_delete_a_whole_build,
    concurrent_writers_leave_one_complete_object,
    a_reader_during_writes_never_sees_a_partial_object,
    a_failed_upload_leaves_the_previous_object,
    keys_from_outside_are_refused_before_any_io,
    shared_objects_are_listed_with_size_and_date,
);
