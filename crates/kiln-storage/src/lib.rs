//! Object storage for artifacts: a local directory or S3, atomic and immutable.
//!
//! Workers upload, the API serves and the janitor expires through one type,
//! [`Storage`], built from the configuration's `storage` section. It sits on
//! `object_store` with two backends: `local` (a directory) and `s3` (any
//! S3-compatible service).
//!
//! Callers never spell an object key. They name a build by a validated
//! [`kiln_domain::BuildKey`] and an object by the closed set [`ObjectName`];
//! the storage layer alone joins them into `[prefix/]<key>/<file name>`, so
//! nothing a user sends can reach a path or an object key. The shared objects
//! of images are named by a validated [`kiln_domain::OciDigest`] alone:
//! `blobs/sha256/<hex>` ([`ObjectKey::blob`]), `indexes/<hex>`
//! ([`ObjectKey::index`]) and `bases/<hex>.json` ([`ObjectKey::base`]). Text that comes
//! from outside goes through [`ObjectKey::parse`], which refuses anything but
//! a well-formed key before any I/O.
//!
//! Writes are atomic on both backends: a reader sees the previous object or
//! the whole new one. The local backend writes to a staging file beside the
//! target and renames it; S3 makes an object visible only when its `PUT` or
//! its `CompleteMultipartUpload` succeeds.

mod error;
mod key;
mod store;

pub use error::StorageError;
pub use key::{ObjectKey, ObjectName};
pub use store::{ByteRange, ObjectInfo, ObjectStream, PutOutcome, SharedObject, Storage};
