//! Integration tests of kiln-image: images of the shipped `hello` recipe
//! built from a real artifact TAR, over the real busybox test image exported
//! with `docker save`, checked byte for byte and with the real clients
//! (`docker load`/`docker run`, `skopeo inspect`/`skopeo copy`).

mod base;
mod build;
mod clients;
mod determinism;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use kiln_artifact::pack_dir;
use kiln_domain::{BuildSpec, OciSpec, Platform, PluginSpec, Recipe};
use kiln_image::{ArchivePlan, BaseImage, BlobDir, BuiltImage, ImageInputs, build_image, import_docker_archive};

/// The local test image every base-image test uses (made by `scripts/test-image`).
pub const BUSYBOX: &str = "kiln-test/busybox:latest";

/// A recipe of the shipped `config.test.yml`.
pub fn shipped_recipe(name: &str) -> Recipe {
    let path = kiln_testkit::repo_root().join("config.test.yml");
    let text = fs::read_to_string(&path).unwrap();
    let env = |k: &str| (k == "DATABASE_URL").then(|| "postgres://unused@localhost/unused".to_owned());
    let mut config = kiln_config::Config::parse(&text, "config.test.yml", &env).unwrap();
    config.recipes.remove(name).unwrap_or_else(|| panic!("config.test.yml has no recipe {name}"))
}

/// The resolved build of `recipe` at v1.0.0 for `platform` with `plugins`.
pub fn spec(recipe: &Recipe, platform: &str, plugins: &[(&str, &str)]) -> BuildSpec {
    BuildSpec {
        recipe: "hello".into(),
        recipe_revision: recipe.revision(),
        version: "v1.0.0".parse().unwrap(),
        platform: platform.parse().unwrap(),
        plugins: plugins
            .iter()
            .map(|(m, v)| PluginSpec {
                module: kiln_domain::ModulePath::parse("m", m).unwrap(),
                version: v.parse().unwrap(),
            })
            .collect(),
        replacements: vec![],
    }
}

/// What the hello recipe's step writes to `out/hello`, packed as the
/// worker packs it. Returns the artifact's path.
pub fn hello_artifact(dir: &Path, spec: &BuildSpec) -> PathBuf {
    let out = dir.join("out");
    fs::create_dir_all(&out).unwrap();
    let p: &Platform = &spec.platform;
    let mut script = format!("#!/bin/sh\necho 'hello from kiln {} {}/{}'\n", spec.version, p.os, p.arch_label());
    for plugin in &spec.plugins {
        script.push_str(&format!("echo 'plugin {plugin}'\n"));
    }
    fs::write(out.join("hello"), script).unwrap();
    fs::set_permissions(out.join("hello"), fs::Permissions::from_mode(0o755)).unwrap();
    let tar = dir.join("artifact.tar");
    pack_dir(&out, &tar).unwrap();
    tar
}

/// The lines `docker run` of the hello image prints.
pub fn hello_lines(spec: &BuildSpec) -> String {
    let p = &spec.platform;
    let mut text = format!("hello from kiln {} {}/{}\n", spec.version, p.os, p.arch_label());
    for plugin in &spec.plugins {
        text.push_str(&format!("plugin {plugin}\n"));
    }
    text
}

/// `docker save` of `image` streamed into the importer.
pub fn import_base(image: &str, work: &Path, blobs: &BlobDir) -> BaseImage {
    ensure_test_image();
    let mut child = Command::new("docker").args(["save", image]).stdout(Stdio::piped()).spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let base = import_docker_archive(image, stdout, &work.join("scratch"), blobs).unwrap();
    assert!(child.wait().unwrap().success(), "docker save {image} failed");
    base
}

/// Build the test image when it is missing (`scripts/test` normally has).
pub fn ensure_test_image() {
    let present = Command::new("docker").args(["image", "inspect", BUSYBOX]).output().unwrap().status.success();
    if !present {
        let script = kiln_testkit::repo_root().join("scripts/test-image");
        assert!(Command::new(script).status().unwrap().success(), "scripts/test-image failed");
    }
}

/// One platform's image of the hello recipe, in `dir/blobs`.
pub struct Made {
    pub spec: BuildSpec,
    pub blobs: BlobDir,
    pub image: BuiltImage,
}

/// Build the hello image for `platform` in `dir`, over `base` if given
/// (already imported into `dir`'s blobs).
pub fn make_hello(dir: &Path, platform: &str, oci: &OciSpec, base: Option<&BaseImage>) -> Made {
    let recipe = shipped_recipe("hello");
    let spec = spec(&recipe, platform, &[("example.com/greet", "v0.1.0")]);
    let blobs = BlobDir::create(&dir.join("layout")).unwrap();
    let artifact = hello_artifact(dir, &spec);
    let inputs = ImageInputs { spec: &spec, oci, binary_file: "hello", base };
    let image = build_image(&inputs, &artifact, &blobs).unwrap();
    Made { spec, blobs, image }
}

impl Made {
    /// The `image.tar` bytes, read from the blob directory.
    pub fn archive(&self, tags: &[String]) -> Vec<u8> {
        let plan = ArchivePlan::new(&self.image.manifest, &self.image.record.manifest, tags).unwrap();
        let out = plan.write_to(Vec::new(), |d| fs::File::open(self.blobs.path(d))).unwrap();
        assert_eq!(out.len() as u64, plan.len());
        out
    }
}

/// True when `tool --version` runs; otherwise a loud SKIPPED line.
pub fn tool_available(tool: &str, test: &str) -> bool {
    let ok = Command::new(tool).arg("--version").output().is_ok_and(|o| o.status.success());
    if !ok {
        let line = format!("SKIPPED: {tool} unavailable: {test} did not run (scripts/test installs it)");
        println!("{line}");
        eprintln!("{line}");
    }
    ok
}
