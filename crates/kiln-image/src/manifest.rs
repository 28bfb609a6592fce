//! The OCI JSON documents: descriptors, the image config, the image
//! manifest and the image index, as structs so that field order is fixed.
//! Their bytes are made once, stored, and served as stored; nothing here is
//! ever re-serialised to answer a request.

use std::collections::BTreeMap;

use kiln_domain::{OciDigest, Platform};
use serde::{Deserialize, Serialize};

use crate::ImageError;

pub const MEDIA_TYPE_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_TYPE_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_TYPE_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MEDIA_TYPE_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// The `created` of every config: the epoch, like every mtime in the layers.
pub const CREATED: &str = "1970-01-01T00:00:00Z";

/// An image's platform as OCI spells it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct OciPlatform {
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl OciPlatform {
    /// The platform of a Kiln build: `arm/6` → `arm` `v6`, `arm/7` → `arm`
    /// `v7`, `arm64` → `arm64` `v8` (the OCI spec's and Docker Hub's
    /// spelling; containerd, docker and containers/image treat `v8` and no
    /// variant alike for arm64), any other arch as Go names it, no variant.
    /// Only linux builds have images.
    pub fn of(platform: &Platform) -> Result<Self, ImageError> {
        if platform.os != kiln_domain::image_ref::IMAGE_OS {
            return Err(ImageError::Platform(format!("{platform} has no image: images are made for linux only")));
        }
        let variant = match (platform.arch.as_str(), platform.arm) {
            ("arm", Some(v)) => Some(format!("v{v}")),
            ("arm64", _) => Some("v8".to_owned()),
            _ => None,
        };
        Ok(Self { architecture: platform.arch.clone(), os: platform.os.clone(), variant })
    }

    /// Whether two platforms run the same binaries, as containerd compares
    /// them: arm64 with or without `v8`, arm without a variant as `v7`.
    pub fn same_as(&self, other: &OciPlatform) -> bool {
        let norm = |p: &OciPlatform| {
            let variant = match (p.architecture.as_str(), p.variant.as_deref()) {
                ("arm64", None | Some("v8" | "8")) => None,
                ("arm", None | Some("7")) => Some("v7".to_owned()),
                (_, v) => v.map(|v| if v.starts_with('v') { v.to_owned() } else { format!("v{v}") }),
            };
            (p.os.clone(), p.architecture.clone(), variant)
        };
        norm(self) == norm(other)
    }
}

impl std::fmt::Display for OciPlatform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// A content descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Descriptor {
    #[serde(rename = "mediaType")]
    pub media_type: String,
    pub digest: OciDigest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<OciPlatform>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Descriptor {
    pub fn new(media_type: &str, digest: OciDigest, size: u64) -> Self {
        Self { media_type: media_type.to_owned(), digest, size, platform: None, annotations: BTreeMap::new() }
    }
}

/// An empty JSON object, as `ExposedPorts` maps each port to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Empty {}

/// The runtime part of an image config (the OCI spec's field names).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RunConfig {
    #[serde(rename = "User", default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(rename = "ExposedPorts", default, skip_serializing_if = "BTreeMap::is_empty")]
    pub exposed_ports: BTreeMap<String, Empty>,
    #[serde(rename = "Env", default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    #[serde(rename = "Entrypoint", default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(rename = "Cmd", default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    #[serde(rename = "WorkingDir", default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(rename = "Labels", default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(rename = "StopSignal", default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
}

/// `rootfs`: the layers' diff_ids, bottom first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootFs {
    #[serde(rename = "type")]
    pub kind: String,
    pub diff_ids: Vec<OciDigest>,
}

/// An image config (`application/vnd.oci.image.config.v1+json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    pub created: String,
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    pub config: RunConfig,
    pub rootfs: RootFs,
}

/// An image manifest (`application/vnd.oci.image.manifest.v1+json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageManifest {
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
    #[serde(rename = "mediaType")]
    pub media_type: String,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

impl ImageManifest {
    /// Read a stored manifest (to list its blobs, never to serve it again).
    pub fn parse(bytes: &[u8]) -> Result<Self, ImageError> {
        let m: ImageManifest = serde_json::from_slice(bytes)
            .map_err(|e| ImageError::BadManifest(format!("not an image manifest: {e}")))?;
        if m.schema_version != 2 || m.media_type != MEDIA_TYPE_MANIFEST || m.config.media_type != MEDIA_TYPE_CONFIG {
            return Err(ImageError::BadManifest("not an OCI image manifest of schema version 2".into()));
        }
        Ok(m)
    }
}

/// An image index (`application/vnd.oci.image.index.v1+json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageIndex {
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
    #[serde(rename = "mediaType")]
    pub media_type: String,
    pub manifests: Vec<Descriptor>,
}

/// A JSON document's bytes, made once, and its descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonBlob {
    pub descriptor: Descriptor,
    pub bytes: Vec<u8>,
}

impl JsonBlob {
    pub(crate) fn of(media_type: &str, value: &impl Serialize) -> Self {
        let bytes = serde_json::to_vec(value).expect("OCI documents always serialize");
        Self { descriptor: Descriptor::new(media_type, OciDigest::of(&bytes), bytes.len() as u64), bytes }
    }
}

/// The index over several platforms' manifests (each descriptor with its
/// platform), for a `<version>` tag. Children are sorted by platform, so
/// the index depends only on the set of manifests; two children of one
/// platform are refused.
pub fn image_index(children: &[Descriptor]) -> Result<JsonBlob, ImageError> {
    let mut manifests = children.to_vec();
    if let Some(d) = manifests.iter().find(|d| d.platform.is_none() || d.media_type != MEDIA_TYPE_MANIFEST) {
        return Err(ImageError::BadManifest(format!("{} is not a platform's image manifest", d.digest)));
    }
    manifests.sort_by(|a, b| a.platform.cmp(&b.platform).then_with(|| a.digest.cmp(&b.digest)));
    if let Some(w) = manifests.windows(2).find(|w| w[0].platform == w[1].platform) {
        let p = w[0].platform.as_ref().expect("checked above");
        return Err(ImageError::BadManifest(format!("two manifests for {p}")));
    }
    if manifests.is_empty() {
        return Err(ImageError::BadManifest("an index needs at least one manifest".into()));
    }
    let index = ImageIndex { schema_version: 2, media_type: MEDIA_TYPE_INDEX.to_owned(), manifests };
    Ok(JsonBlob::of(MEDIA_TYPE_INDEX, &index))
}

/// What names the index over `children`, whatever their order: the digest
/// of their sorted manifest digests, one per line. The API keeps the index's
/// bytes under `indexes/<hex of this>` when it first makes them and serves
/// those afterwards, so a later library cannot change a published index.
pub fn index_key(children: &[Descriptor]) -> OciDigest {
    let mut digests: Vec<&str> = children.iter().map(|d| d.digest.as_str()).collect();
    digests.sort_unstable();
    let text: String = digests.iter().map(|d| format!("{d}\n")).collect();
    OciDigest::of(text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Platform {
        s.parse().unwrap()
    }

    #[test]
    fn kiln_platforms_map_to_oci_platforms() {
        let show = |s: &str| OciPlatform::of(&p(s)).unwrap().to_string();
        assert_eq!(show("linux/amd64"), "linux/amd64");
        assert_eq!(show("linux/arm64"), "linux/arm64/v8");
        assert_eq!(show("linux/arm/6"), "linux/arm/v6");
        assert_eq!(show("linux/arm/7"), "linux/arm/v7");
        assert_eq!(show("linux/riscv64"), "linux/riscv64");
        assert!(matches!(OciPlatform::of(&p("windows/amd64")), Err(ImageError::Platform(_))));
        let json = serde_json::to_string(&OciPlatform::of(&p("linux/arm/7")).unwrap()).unwrap();
        assert_eq!(json, r#"{"architecture":"arm","os":"linux","variant":"v7"}"#);
        let json = serde_json::to_string(&OciPlatform::of(&p("linux/amd64")).unwrap()).unwrap();
        assert_eq!(json, r#"{"architecture":"amd64","os":"linux"}"#);
    }

    #[test]
    fn platforms_compare_as_containerd_normalises_them() {
        let o = |a: &str, v: Option<&str>| OciPlatform {
            architecture: a.into(),
            os: "linux".into(),
            variant: v.map(Into::into),
        };
        assert!(o("arm64", None).same_as(&o("arm64", Some("v8"))));
        assert!(o("arm", None).same_as(&o("arm", Some("v7"))));
        assert!(o("arm", Some("6")).same_as(&o("arm", Some("v6"))));
        assert!(!o("arm", Some("v6")).same_as(&o("arm", Some("v7"))));
        assert!(!o("amd64", None).same_as(&o("arm64", None)));
    }

    #[test]
    fn an_index_is_sorted_by_platform_whatever_the_order_given() {
        let child = |plat: &str, data: &[u8]| {
            let mut d = Descriptor::new(MEDIA_TYPE_MANIFEST, OciDigest::of(data), data.len() as u64);
            d.platform = Some(OciPlatform::of(&p(plat)).unwrap());
            d
        };
        let a = [child("linux/arm64", b"a"), child("linux/amd64", b"b"), child("linux/arm/7", b"c")];
        let mut b = a.clone();
        b.reverse();
        let (ia, ib) = (image_index(&a).unwrap(), image_index(&b).unwrap());
        assert_eq!(ia, ib);
        assert_eq!(ia.descriptor.digest, OciDigest::of(&ia.bytes));
        let text = String::from_utf8(ia.bytes).unwrap();
        assert!(text.starts_with(r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:"#), "{text}");
        let order: Vec<_> = ["\"amd64\"", "\"arm\"", "\"arm64\""].iter().map(|a| text.find(a).unwrap()).collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{text}");

        assert_eq!(index_key(&a), index_key(&b));
        assert_ne!(index_key(&a), index_key(&a[..2]));
        assert!(image_index(&[child("linux/amd64", b"a"), child("linux/amd64", b"b")]).is_err());
        assert!(image_index(&[]).is_err());
        let mut no_platform = child("linux/amd64", b"a");
        no_platform.platform = None;
        assert!(image_index(&[no_platform]).is_err());
    }
}
