//! [`Storage`]: the one way Kiln reads and writes objects, on either backend.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use chrono::{DateTime, Utc};
use futures::stream::{self, BoxStream};
use futures::{Stream, StreamExt, TryStreamExt};
use kiln_config::{S3StorageConfig, StorageConfig, StorageKind};
use kiln_domain::BuildKey;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::local::LocalFileSystem;
use object_store::path::Path as StorePath;
use object_store::signer::Signer as _;
use object_store::{
    Attribute, Attributes, ClientOptions, GetOptions, GetRange, GetResultPayload, ObjectStore, PutMultipartOptions,
    PutOptions, PutPayload, WriteMultipart,
};
use tokio::io::AsyncRead;
use tokio_util::io::ReaderStream;

use crate::{ObjectKey, ObjectName, StorageError};

/// Uploads larger than this go through multipart upload, in parts of this size.
const DEFAULT_PART_SIZE: usize = 16 * 1024 * 1024;
/// S3 refuses parts smaller than 5 MiB (except the last).
const MIN_PART_SIZE: usize = 5 * 1024 * 1024;
/// Parts in flight at once during a multipart upload.
const MAX_CONCURRENT_PARTS: usize = 4;
/// Read size of upload sources (each read is a trip to the blocking pool).
const READ_CHUNK: usize = 4 * 1024 * 1024;
/// Chunks of a local file read ahead of the consumer.
const READ_AHEAD: usize = 4;
/// Chunk size of local-file reads: small enough that a chunk is still in the
/// CPU cache when it is copied out again to a socket or a file.
const LOCAL_READ_CHUNK: usize = 256 * 1024;
/// The longest lifetime S3 allows a presigned URL.
const MAX_PRESIGN_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// Whole-request limit for S3 calls. A GET is one request however long its
/// body streams, so this is generous; connecting has its own short timeout.
const S3_REQUEST_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// A byte range of an object, as an HTTP `Range` header asks for one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ByteRange {
    /// `start..end`, end exclusive; an end past the object's end is clamped.
    Bounded(Range<u64>),
    /// Everything from this offset on.
    From(u64),
    /// The last this many bytes.
    Suffix(u64),
}

impl ByteRange {
    /// The absolute range this asks for in an object of `size` bytes, or
    /// `None` when it is not satisfiable (empty, or starting past the end).
    pub(crate) fn resolve(&self, size: u64) -> Option<Range<u64>> {
        let r = match *self {
            ByteRange::Bounded(ref r) => r.start..r.end.min(size),
            ByteRange::From(start) => start..size,
            ByteRange::Suffix(n) => size.saturating_sub(n)..size,
        };
        (r.start < r.end).then_some(r)
    }

    fn to_get_range(&self) -> GetRange {
        match *self {
            ByteRange::Bounded(ref r) => GetRange::Bounded(r.clone()),
            ByteRange::From(start) => GetRange::Offset(start),
            ByteRange::Suffix(n) => GetRange::Suffix(n),
        }
    }
}

/// What the store knows about one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub name: ObjectName,
    pub size: u64,
    /// Opaque; changes whenever the object is rewritten.
    pub etag: Option<String>,
    pub content_type: String,
    pub last_modified: DateTime<Utc>,
}

/// A shared object of images (blob, index, base record) as the store lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedObject {
    pub key: ObjectKey,
    pub size: u64,
    pub last_modified: DateTime<Utc>,
}

/// The result of a write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutOutcome {
    pub size: u64,
    pub etag: Option<String>,
    /// 1 for a single `PUT`; the number of parts for a multipart upload.
    pub parts: u32,
}

/// An object being read: what it is, which bytes are coming, and the bytes.
pub struct ObjectStream {
    pub info: ObjectInfo,
    /// The byte range of the object that the stream yields.
    pub range: Range<u64>,
    stream: BoxStream<'static, Result<Bytes, StorageError>>,
}

impl std::fmt::Debug for ObjectStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectStream").field("info", &self.info).field("range", &self.range).finish_non_exhaustive()
    }
}

impl ObjectStream {
    pub fn into_stream(self) -> BoxStream<'static, Result<Bytes, StorageError>> {
        self.stream
    }

    /// Collect the whole stream. For small objects (signatures, manifests).
    pub async fn bytes(self) -> Result<Bytes, StorageError> {
        let mut buf = BytesMut::with_capacity(usize::try_from(self.range.end - self.range.start).unwrap_or(0));
        let mut s = self.stream;
        while let Some(chunk) = s.next().await {
            buf.extend_from_slice(&chunk?);
        }
        Ok(buf.freeze())
    }
}

/// Artifact storage over a local directory or an S3 bucket. Cheap to clone.
#[derive(Clone)]
pub struct Storage {
    store: Arc<dyn ObjectStore>,
    kind: StorageKind,
    /// Key prefix inside the bucket (S3); empty for local storage.
    prefix: StorePath,
    /// The directory of local storage.
    local_root: Option<PathBuf>,
    /// The S3 client, which also presigns.
    s3: Option<Arc<AmazonS3>>,
    part_size: usize,
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Storage")
            .field("kind", &self.kind)
            .field("prefix", &self.prefix.as_ref())
            .field("local_root", &self.local_root)
            .finish_non_exhaustive()
    }
}

impl Storage {
    /// Storage as the configuration's `storage` section says.
    pub fn from_config(config: &StorageConfig) -> Result<Self, StorageError> {
        match config.kind {
            StorageKind::Local => {
                let local = config
                    .local
                    .as_ref()
                    .ok_or_else(|| StorageError::Config("kind is local but storage.local is not set".into()))?;
                Self::local(&local.path)
            }
            StorageKind::S3 => {
                let s3 = config
                    .s3
                    .as_ref()
                    .ok_or_else(|| StorageError::Config("kind is s3 but storage.s3 is not set".into()))?;
                Self::s3(s3)
            }
        }
    }

    /// Storage in the directory `root`, created if missing.
    pub fn local(root: &Path) -> Result<Self, StorageError> {
        std::fs::create_dir_all(root).map_err(|e| StorageError::Config(format!("{}: {e}", root.display())))?;
        let root = root.canonicalize().map_err(|e| StorageError::Config(format!("{}: {e}", root.display())))?;
        let fs = LocalFileSystem::new_with_prefix(&root)
            .map_err(|e| StorageError::Config(format!("{}: {e}", root.display())))?;
        Ok(Self {
            store: Arc::new(fs),
            kind: StorageKind::Local,
            prefix: StorePath::default(),
            local_root: Some(root),
            s3: None,
            part_size: DEFAULT_PART_SIZE,
        })
    }

    /// Storage in an S3 bucket. Credentials, region and endpoint left unset
    /// (or empty) in the configuration come from the usual `AWS_*` variables.
    pub fn s3(config: &S3StorageConfig) -> Result<Self, StorageError> {
        let set = |s: &str| !s.trim().is_empty();
        let mut b = AmazonS3Builder::from_env()
            .with_bucket_name(&config.bucket)
            .with_region(&config.region)
            .with_virtual_hosted_style_request(!config.path_style)
            .with_allow_http(config.allow_http)
            .with_client_options(
                ClientOptions::new().with_allow_http(config.allow_http).with_timeout(S3_REQUEST_TIMEOUT),
            );
        if let Some(endpoint) = config.endpoint.as_deref().filter(|e| set(e)) {
            b = b.with_endpoint(endpoint.trim_end_matches('/'));
        }
        if let Some(id) = config.access_key_id.as_ref().filter(|s| set(s.expose())) {
            b = b.with_access_key_id(id.expose());
        }
        if let Some(secret) = config.secret_access_key.as_ref().filter(|s| set(s.expose())) {
            b = b.with_secret_access_key(secret.expose());
        }
        let s3 = Arc::new(b.build().map_err(|e| StorageError::Config(format!("storage.s3: {e}")))?);
        Ok(Self {
            store: s3.clone(),
            kind: StorageKind::S3,
            prefix: parse_prefix(&config.prefix)?,
            local_root: None,
            s3: Some(s3),
            part_size: DEFAULT_PART_SIZE,
        })
    }

    /// Use parts of `bytes` (at least 5 MiB) for multipart uploads; objects up
    /// to this size are written with one `PUT`.
    pub fn with_part_size(mut self, bytes: usize) -> Self {
        self.part_size = bytes.max(MIN_PART_SIZE);
        self
    }

    pub fn kind(&self) -> StorageKind {
        self.kind
    }

    /// The file that holds the object `key` on local storage (`None` on S3),
    /// for a caller that sends it with the kernel's help (`sendfile`).
    pub fn local_path(&self, key: &ObjectKey) -> Option<PathBuf> {
        self.local_root.as_ref().map(|root| key.segments().iter().fold(root.clone(), |p, s| p.join(s)))
    }

    /// Whether [`presigned_get`](Self::presigned_get) can work (S3 only).
    pub fn can_presign(&self) -> bool {
        self.s3.is_some()
    }

    /// The one place object keys are made: `[prefix/]<build key>/<file name>`,
    /// or `[prefix/]blobs/sha256/<hex>` and the like for shared objects.
    fn path(&self, key: &ObjectKey) -> StorePath {
        key.segments().into_iter().fold(self.prefix.clone(), |p, s| p.child(s))
    }

    fn build_prefix(&self, build: &BuildKey) -> StorePath {
        self.prefix.child(build.as_str())
    }

    fn attributes(&self, name: ObjectName) -> Attributes {
        let mut attrs = Attributes::new();
        // The local backend keeps no attributes; its content type comes from the name.
        if self.kind == StorageKind::S3 {
            attrs.insert(Attribute::ContentType, name.content_type().into());
        }
        attrs
    }

    /// Write `data` as the object `key`, replacing any previous one atomically.
    pub async fn put_bytes(&self, key: &ObjectKey, data: impl Into<Bytes>) -> Result<PutOutcome, StorageError> {
        let data: Bytes = data.into();
        if data.len() <= self.part_size {
            return self.put_single(key, data).await;
        }
        self.put_stream(key, stream::iter([Ok(data)])).await
    }

    /// Upload the file at `path` as the object `key`.
    pub async fn put_file(&self, key: &ObjectKey, path: &Path) -> Result<PutOutcome, StorageError> {
        let source = |source| StorageError::Source { path: path.to_path_buf(), source };
        let file = tokio::fs::File::open(path).await.map_err(source)?;
        let len = file.metadata().await.map_err(source)?.len();
        self.put_stream(key, file_chunks(file.into_std().await, 0..len)).await
    }

    /// Upload everything `reader` yields as the object `key`.
    pub async fn put_reader(
        &self,
        key: &ObjectKey,
        reader: impl AsyncRead + Send + Unpin,
    ) -> Result<PutOutcome, StorageError> {
        self.put_stream(key, ReaderStream::with_capacity(reader, READ_CHUNK)).await
    }

    /// Upload a stream of chunks as the object `key`: one `PUT` when it ends
    /// within one part, a multipart upload otherwise. If the stream fails,
    /// the upload is aborted and the previous object, if any, stays.
    pub async fn put_stream(
        &self,
        key: &ObjectKey,
        data: impl Stream<Item = std::io::Result<Bytes>> + Send + Unpin,
    ) -> Result<PutOutcome, StorageError> {
        let mut data = data;
        let read_err = |source| StorageError::Upload { key: key.to_string(), source };

        // Buffer the first part; if the stream ends inside it, one PUT does.
        let mut first = BytesMut::new();
        while first.len() <= self.part_size {
            match data.next().await {
                Some(chunk) => first.extend_from_slice(&chunk.map_err(read_err)?),
                None => return self.put_single(key, first.freeze()).await,
            }
        }

        let path = self.path(key);
        let opts = PutMultipartOptions { attributes: self.attributes(key.name()), ..Default::default() };
        let upload = self.store.put_multipart_opts(&path, opts).await.map_err(StorageError::backend(key))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, self.part_size);
        let mut size = first.len() as u64;
        writer.put(first.freeze());
        let streamed: Result<(), StorageError> = async {
            while let Some(chunk) = data.next().await {
                let chunk = chunk.map_err(read_err)?;
                size += chunk.len() as u64;
                writer.wait_for_capacity(MAX_CONCURRENT_PARTS).await.map_err(StorageError::backend(key))?;
                writer.put(chunk);
            }
            Ok(())
        }
        .await;
        if let Err(e) = streamed {
            if let Err(abort) = writer.abort().await {
                tracing::warn!(%key, error = %abort, "aborting a failed multipart upload failed");
            }
            return Err(e);
        }
        let done = writer.finish().await.map_err(StorageError::backend(key))?;
        let parts = size.div_ceil(self.part_size as u64) as u32;
        Ok(PutOutcome { size, etag: done.e_tag, parts })
    }

    async fn put_single(&self, key: &ObjectKey, data: Bytes) -> Result<PutOutcome, StorageError> {
        let size = data.len() as u64;
        let opts = PutOptions { attributes: self.attributes(key.name()), ..Default::default() };
        let done = self
            .store
            .put_opts(&self.path(key), PutPayload::from_bytes(data), opts)
            .await
            .map_err(StorageError::backend(key))?;
        Ok(PutOutcome { size, etag: done.e_tag, parts: 1 })
    }

    /// Read the object `key`, or the part of it `range` asks for, as a stream.
    pub async fn get(&self, key: &ObjectKey, range: Option<ByteRange>) -> Result<ObjectStream, StorageError> {
        let opts = GetOptions { range: range.as_ref().map(ByteRange::to_get_range), ..Default::default() };
        let res = match self.store.get_opts(&self.path(key), opts).await {
            Ok(res) => res,
            Err(e) => return Err(self.explain_get_error(key, range.as_ref(), e).await),
        };
        let info = object_info(key.name(), &res.meta, &res.attributes);
        let range = res.range.clone();
        let stream = match res.payload {
            // object_store reads local files 8 KiB per blocking task; read larger chunks.
            GetResultPayload::File(file, path) => local_file_stream(file, path, range.clone()),
            GetResultPayload::Stream(_) => {
                let key = key.to_string();
                res.into_stream().map_err(move |e| StorageError::Backend { key: key.clone(), source: e }).boxed()
            }
        };
        Ok(ObjectStream { info, range, stream })
    }

    /// A failed ranged read says whether the range was the problem.
    async fn explain_get_error(
        &self,
        key: &ObjectKey,
        range: Option<&ByteRange>,
        e: object_store::Error,
    ) -> StorageError {
        let err = StorageError::backend(key)(e);
        if let (Some(range), StorageError::Backend { .. }) = (range, &err)
            && let Ok(info) = self.head(key).await
            && range.resolve(info.size).is_none()
        {
            return StorageError::RangeNotSatisfiable { key: key.to_string(), size: info.size };
        }
        err
    }

    /// The whole object `key` in memory. For small objects.
    pub async fn get_bytes(&self, key: &ObjectKey) -> Result<Bytes, StorageError> {
        self.get(key, None).await?.bytes().await
    }

    /// Size, ETag, content type and date of the object `key`.
    pub async fn head(&self, key: &ObjectKey) -> Result<ObjectInfo, StorageError> {
        // A GET with `head` carries the attributes (content type) that `ObjectStore::head` drops.
        let opts = GetOptions { head: true, ..Default::default() };
        let res = self.store.get_opts(&self.path(key), opts).await.map_err(StorageError::backend(key))?;
        Ok(object_info(key.name(), &res.meta, &res.attributes))
    }

    pub async fn exists(&self, key: &ObjectKey) -> Result<bool, StorageError> {
        match self.store.head(&self.path(key)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(StorageError::backend(key)(e)),
        }
    }

    /// Remove the object `key`; removing a missing object is not an error.
    pub async fn delete(&self, key: &ObjectKey) -> Result<(), StorageError> {
        match self.store.delete(&self.path(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(StorageError::backend(key)(e)),
        }
    }

    /// The objects of one build, in [`ObjectName`] order. Objects under the
    /// build's prefix that Kiln does not name are logged and left out.
    pub async fn list(&self, build: &BuildKey) -> Result<Vec<ObjectInfo>, StorageError> {
        let prefix = self.build_prefix(build);
        let metas: Vec<_> = self.store.list(Some(&prefix)).try_collect().await.map_err(StorageError::backend(build))?;
        let mut out = Vec::with_capacity(metas.len());
        for meta in metas {
            let file = meta.location.filename().unwrap_or_default();
            match ObjectName::from_file_name(file) {
                Some(name) if meta.location == prefix.child(file) => {
                    out.push(object_info(name, &meta, &Attributes::new()))
                }
                _ => tracing::warn!(location = %meta.location, "an object Kiln did not write is in a build's prefix"),
            }
        }
        out.sort_by_key(|i| i.name);
        Ok(out)
    }

    /// The builds that have at least one object, sorted. Entries that are not
    /// build keys are left out.
    pub async fn list_builds(&self) -> Result<Vec<BuildKey>, StorageError> {
        let prefix = (!self.prefix.as_ref().is_empty()).then_some(&self.prefix);
        let listing =
            self.store.list_with_delimiter(prefix).await.map_err(StorageError::backend(self.prefix.as_ref()))?;
        let mut keys: Vec<BuildKey> = listing
            .common_prefixes
            .iter()
            .filter_map(|p| p.parts().last().and_then(|part| BuildKey::parse(part.as_ref()).ok()))
            .collect();
        keys.sort();
        Ok(keys)
    }

    /// Every shared object of images (`blobs/sha256/`, `indexes/`, `bases/`),
    /// with its size and last-modified time. Entries Kiln did not write
    /// there are logged and left out.
    pub async fn list_shared(&self) -> Result<Vec<SharedObject>, StorageError> {
        let mut out = Vec::new();
        for dir in ["blobs", "indexes", "bases"] {
            let prefix = self.prefix.child(dir);
            let metas: Vec<_> =
                self.store.list(Some(&prefix)).try_collect().await.map_err(StorageError::backend(prefix.as_ref()))?;
            let skip = self.prefix.parts().count();
            for meta in metas {
                let parts: Vec<_> = meta.location.parts().skip(skip).collect();
                let parts: Vec<&str> = parts.iter().map(|p| p.as_ref()).collect();
                match ObjectKey::parse_shared(&parts) {
                    Some(key) => out.push(SharedObject { key, size: meta.size, last_modified: meta.last_modified }),
                    None => {
                        tracing::warn!(location = %meta.location, "an object Kiln did not write is among images' objects")
                    }
                }
            }
        }
        Ok(out)
    }

    /// Remove every object under a build's prefix; returns how many were removed.
    pub async fn delete_build(&self, build: &BuildKey) -> Result<usize, StorageError> {
        let prefix = self.build_prefix(build);
        let locations = self.store.list(Some(&prefix)).map_ok(|m| m.location).boxed();
        // An object that vanished meanwhile (a concurrent delete) is as good as deleted.
        let deleted = self
            .store
            .delete_stream(locations)
            .filter_map(|r| {
                futures::future::ready(match r {
                    Ok(_) => Some(Ok(1usize)),
                    Err(object_store::Error::NotFound { .. }) => None,
                    Err(e) => Some(Err(e)),
                })
            })
            .try_fold(0usize, |n, one| futures::future::ready(Ok(n + one)))
            .await
            .map_err(StorageError::backend(build))?;
        if let Some(root) = &self.local_root {
            // Files are gone; the now-empty directory (and any staging file a
            // crashed writer left behind) goes too.
            let dir = root.join(build.as_str());
            if let Err(e) = tokio::fs::remove_dir_all(&dir).await
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(dir = %dir.display(), error = %e, "could not remove a build's directory");
            }
        }
        Ok(deleted)
    }

    /// A URL that lets anyone `GET` the object `key` for `ttl` (S3 only).
    /// The object need not exist yet; the URL is only signed, not checked.
    pub async fn presigned_get(&self, key: &ObjectKey, ttl: Duration) -> Result<String, StorageError> {
        let s3 = self.s3.as_ref().ok_or(StorageError::PresignUnsupported)?;
        if ttl.is_zero() || ttl > MAX_PRESIGN_TTL {
            return Err(StorageError::Config(format!("a presigned URL lives 1 s to 7 days, not {ttl:?}")));
        }
        let url = s3.signed_url(http::Method::GET, &self.path(key), ttl).await.map_err(StorageError::backend(key))?;
        Ok(url.into())
    }
}

/// The configured S3 prefix as a path: `/`-separated segments of letters,
/// digits, `.`, `_` and `-`, none of them `.` or `..`.
fn parse_prefix(prefix: &str) -> Result<StorePath, StorageError> {
    let mut path = StorePath::default();
    for seg in prefix.split('/').filter(|s| !s.is_empty()) {
        let ok = seg != "."
            && seg != ".."
            && seg.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !ok {
            return Err(StorageError::Config(format!("storage.s3.prefix: invalid segment {seg:?}")));
        }
        path = path.child(seg);
    }
    Ok(path)
}

fn object_info(name: ObjectName, meta: &object_store::ObjectMeta, attrs: &Attributes) -> ObjectInfo {
    let content_type = attrs
        .get(&Attribute::ContentType)
        .map(|v| v.as_ref().to_owned())
        .unwrap_or_else(|| name.content_type().to_owned());
    ObjectInfo { name, size: meta.size, etag: meta.e_tag.clone(), content_type, last_modified: meta.last_modified }
}

/// `range` of a local file as a stream of large chunks, read with positioned
/// reads on the blocking pool, [`READ_AHEAD`] chunks in flight: reading runs
/// ahead of the consumer, and no thread is held while the consumer is slow.
fn file_chunks(file: std::fs::File, range: Range<u64>) -> impl Stream<Item = std::io::Result<Bytes>> + Send + Unpin {
    use std::os::unix::fs::FileExt;

    let file = Arc::new(file);
    let offsets = (range.start..range.end).step_by(LOCAL_READ_CHUNK);
    stream::iter(offsets)
        .map(move |offset| {
            let file = file.clone();
            let len = (range.end - offset).min(LOCAL_READ_CHUNK as u64) as usize;
            async move {
                tokio::task::spawn_blocking(move || {
                    let mut buf = vec![0u8; len];
                    file.read_exact_at(&mut buf, offset)?;
                    Ok(Bytes::from(buf))
                })
                .await
                .map_err(std::io::Error::other)?
            }
        })
        .buffered(READ_AHEAD)
}

/// Stream `range` of a local object's file.
fn local_file_stream(
    file: std::fs::File,
    path: PathBuf,
    range: Range<u64>,
) -> BoxStream<'static, Result<Bytes, StorageError>> {
    file_chunks(file, range).map_err(move |source| StorageError::Source { path: path.clone(), source }).boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_resolve_like_http() {
        assert_eq!(ByteRange::Bounded(0..10).resolve(100), Some(0..10));
        assert_eq!(ByteRange::Bounded(90..200).resolve(100), Some(90..100));
        assert_eq!(ByteRange::Bounded(100..200).resolve(100), None);
        assert_eq!(ByteRange::Bounded(5..5).resolve(100), None);
        assert_eq!(ByteRange::From(99).resolve(100), Some(99..100));
        assert_eq!(ByteRange::From(100).resolve(100), None);
        assert_eq!(ByteRange::Suffix(10).resolve(100), Some(90..100));
        assert_eq!(ByteRange::Suffix(1000).resolve(100), Some(0..100));
        assert_eq!(ByteRange::Suffix(0).resolve(100), None);
    }

    #[test]
    fn prefixes_are_plain_segments() {
        assert_eq!(parse_prefix("").unwrap().as_ref(), "");
        assert_eq!(parse_prefix("builds/").unwrap().as_ref(), "builds");
        assert_eq!(parse_prefix("/a/b-c_d.e/").unwrap().as_ref(), "a/b-c_d.e");
        for bad in ["..", "a/../b", "a/./b", "a b", "a%2f", "é"] {
            assert!(parse_prefix(bad).is_err(), "{bad}");
        }
    }
}
