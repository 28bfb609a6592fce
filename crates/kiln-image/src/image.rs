//! One platform's image of a build: the base's layers, the build's layer,
//! the config and the manifest, written into a [`BlobDir`], and the record
//! of it that `build.json` keeps.

use std::collections::BTreeMap;
use std::path::Path;

use kiln_domain::{BuildKey, BuildSpec, OciDigest, OciSpec};
use serde::{Deserialize, Serialize};

use crate::ImageError;
use crate::app::AppLayerPlan;
use crate::base::BaseImage;
use crate::blob::BlobDir;
use crate::layer::Layer;
use crate::manifest::{
    CREATED, Descriptor, Empty, ImageConfig, ImageManifest, JsonBlob, MEDIA_TYPE_CONFIG, MEDIA_TYPE_LAYER,
    MEDIA_TYPE_MANIFEST, OciPlatform, RootFs, RunConfig,
};

/// Labels every image carries, so `docker inspect` leads back to the build.
pub const LABEL_BUILD: &str = "kiln.build";
pub const LABEL_RECIPE: &str = "kiln.recipe";
pub const LABEL_PLUGINS: &str = "kiln.plugins";
pub const LABEL_VERSION: &str = "org.opencontainers.image.version";

/// What one image is made of.
#[derive(Debug, Clone, Copy)]
pub struct ImageInputs<'a> {
    /// The resolved build; its key, recipe, version, platform and plugins
    /// go into the config's labels.
    pub spec: &'a BuildSpec,
    /// The recipe's `oci` section.
    pub oci: &'a OciSpec,
    /// The main binary's name in `out/` (`Recipe::binary_file`).
    pub binary_file: &'a str,
    /// The base image, already imported into the same [`BlobDir`].
    pub base: Option<&'a BaseImage>,
}

/// What `build.json` records of a build's image (its `image` field), and
/// what the API reads to serve it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// The platform manifest: media type, digest, size and platform, as an
    /// index lists it.
    pub manifest: Descriptor,
    pub config: Descriptor,
    /// Bottom first; the last one is the build's own.
    pub layers: Vec<Layer>,
    /// The base the lower layers came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<BaseRecord>,
}

/// Which base image an image was made over.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaseRecord {
    pub name: String,
    pub id: OciDigest,
    pub platform: OciPlatform,
}

impl ImageRecord {
    /// Every blob the image needs in the store: layers, config, manifest.
    pub fn blobs(&self) -> Vec<&OciDigest> {
        let mut all: Vec<&OciDigest> = self.layers.iter().map(|l| &l.digest).collect();
        all.push(&self.config.digest);
        all.push(&self.manifest.digest);
        all
    }
}

/// A freshly made image: its record and the exact bytes of its config and
/// manifest (also in the [`BlobDir`]); the manifest's bytes are what the
/// image signature covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltImage {
    pub record: ImageRecord,
    pub config: Vec<u8>,
    pub manifest: Vec<u8>,
}

/// Make the image of a linux build from its artifact TAR at `artifact`,
/// writing the build's layer, the config and the manifest into `blobs`.
/// The base's layers are only referred to: they are wherever
/// [`crate::import_docker_archive`] put them (and the worker uploaded them),
/// possibly long ago by another build.
pub fn build_image(inputs: &ImageInputs, artifact: &Path, blobs: &BlobDir) -> Result<BuiltImage, ImageError> {
    let platform = OciPlatform::of(&inputs.spec.platform)?;
    if let Some(base) = inputs.base
        && !inputs.oci.base_any_platform
        && !base.platform.same_as(&platform)
    {
        return Err(ImageError::BasePlatform {
            base: base.name.clone(),
            found: base.platform.to_string(),
            wanted: platform.to_string(),
        });
    }
    let plan = AppLayerPlan::new(inputs.oci, inputs.binary_file)?;
    let app = plan.write(artifact, blobs)?;
    let mut layers: Vec<Layer> = inputs.base.map(|b| b.layers.clone()).unwrap_or_default();
    layers.push(app);

    let config = JsonBlob::of(MEDIA_TYPE_CONFIG, &image_config(inputs, &platform, &layers)?);
    let manifest = ImageManifest {
        schema_version: 2,
        media_type: MEDIA_TYPE_MANIFEST.to_owned(),
        config: config.descriptor.clone(),
        layers: layers.iter().map(|l| Descriptor::new(MEDIA_TYPE_LAYER, l.digest.clone(), l.size)).collect(),
    };
    let mut manifest = JsonBlob::of(MEDIA_TYPE_MANIFEST, &manifest);
    blobs.put(&config.bytes)?;
    blobs.put(&manifest.bytes)?;
    manifest.descriptor.platform = Some(platform);

    Ok(BuiltImage {
        record: ImageRecord {
            manifest: manifest.descriptor,
            config: config.descriptor,
            layers,
            base: inputs.base.map(|b| BaseRecord {
                name: b.name.clone(),
                id: b.id.clone(),
                platform: b.platform.clone(),
            }),
        },
        config: config.bytes,
        manifest: manifest.bytes,
    })
}

/// The config: the recipe's settings over the base's defaults.
fn image_config(inputs: &ImageInputs, platform: &OciPlatform, layers: &[Layer]) -> Result<ImageConfig, ImageError> {
    let oci = inputs.oci;
    let defaults = inputs.base.map(|b| b.defaults.clone()).unwrap_or_default();
    let invalid = |e: kiln_domain::ValidationError| ImageError::Path(e.to_string());

    // The base's variables in their order, each replaced by the recipe's of
    // the same name; then the recipe's new ones, sorted by name.
    let mut recipe_env = oci.env.clone();
    let mut env: Vec<String> = defaults
        .env
        .iter()
        .map(|kv| {
            let name = kv.split_once('=').map_or(kv.as_str(), |(k, _)| k);
            match recipe_env.remove(name) {
                Some(v) => format!("{name}={v}"),
                None => kv.clone(),
            }
        })
        .collect();
    env.extend(recipe_env.into_iter().map(|(k, v)| format!("{k}={v}")));

    let mut exposed_ports: BTreeMap<String, Empty> =
        defaults.exposed_ports.into_iter().map(|p| (p, Empty {})).collect();
    exposed_ports.extend(oci.ports.iter().map(|p| (p.to_string(), Empty {})));

    let spec = inputs.spec;
    let mut labels = defaults.labels;
    labels.insert(LABEL_BUILD.into(), spec.key().to_string());
    labels.insert(LABEL_RECIPE.into(), spec.recipe.clone());
    labels.insert(LABEL_VERSION.into(), spec.version.to_string());
    if spec.plugins.is_empty() {
        labels.remove(LABEL_PLUGINS);
    } else {
        let mut plugins = spec.plugins.clone();
        plugins.sort();
        labels.insert(LABEL_PLUGINS.into(), plugins.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(","));
    }

    let entrypoint = oci.entrypoint(inputs.binary_file).map_err(invalid)?;
    Ok(ImageConfig {
        created: CREATED.to_owned(),
        architecture: platform.architecture.clone(),
        os: platform.os.clone(),
        variant: platform.variant.clone(),
        config: RunConfig {
            user: oci.user.clone().or(defaults.user),
            exposed_ports,
            env,
            entrypoint: (!entrypoint.is_empty()).then_some(entrypoint),
            cmd: oci.cmd.clone().filter(|c| !c.is_empty()),
            working_dir: oci.workdir.as_ref().map(|w| w.to_string()).or(defaults.working_dir),
            labels,
            stop_signal: defaults.stop_signal,
        },
        rootfs: RootFs { kind: "layers".to_owned(), diff_ids: layers.iter().map(|l| l.diff_id.clone()).collect() },
    })
}

/// The key of the build whose image a config belongs to, from its labels.
pub fn build_of_config(config: &ImageConfig) -> Option<BuildKey> {
    config.config.labels.get(LABEL_BUILD).and_then(|k| BuildKey::parse(k).ok())
}
