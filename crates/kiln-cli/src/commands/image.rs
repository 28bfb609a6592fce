//! `kiln image RECIPE [--version V] [--with MODULE]…`: the reference to
//! `docker pull` for a recipe's image with those plugins, and its digest
//! once every platform of it is built; and the image half of `kiln verify`
//! (`--image REF`: every platform manifest's signature).
//!
//! Nothing is built: the builds are looked up with `/api/resolve`; a pull
//! of the printed reference builds what is missing. Exit 0 printed (built
//! or not), 1 a platform's build failed or a signature did not verify, 2 a
//! request to fix, 3 no answer.

use std::process::ExitCode;

use anyhow::{Context, bail};
use kiln_artifact::PublicKey;
use kiln_domain::image_ref::{ImageName, Reference, Tag};
use kiln_domain::{BuildKey, ModulePath, OciDigest, VersionWanted};
use serde_json::{Value, json};

use super::EXIT_FAILED;
use crate::error::Failure;
use crate::server::Server;

const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const INDEX: &str = "application/vnd.oci.image.index.v1+json";

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The recipe, e.g. `caddy` (its `oci` section makes the images).
    recipe: String,
    /// The product's version, e.g. v2.8.4. Default: `latest`.
    #[arg(long = "version", value_name = "V")]
    product_version: Option<String>,
    /// A plugin to build in, at its newest release; repeat for more.
    #[arg(long = "with", value_name = "MODULE")]
    with: Vec<String>,
}

pub async fn run(args: Args, server: Server, json: bool) -> anyhow::Result<ExitCode> {
    let modules = args
        .with
        .iter()
        .map(|m| {
            if m.contains('@') {
                bail!(
                    "--with {m}: an image name takes each plugin at its newest release; for pinned versions, \
                     `kiln build` the build and pull its bk-<key> tag"
                );
            }
            ModulePath::parse("--with", m).map_err(|e| anyhow::anyhow!("--with {m}: {}", e.message))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let name = ImageName::new(&args.recipe, &modules).map_err(|e| anyhow::anyhow!("{}", e.message))?;
    let version = VersionWanted::parse("--version", args.product_version.as_deref())
        .map_err(|e| anyhow::anyhow!("--version: {}", e.message))?;
    let tag = Tag::Version { version, platform: None }.to_string();
    let reference = format!("{}/{name}:{tag}", registry_host(&server)?);

    // Each linux platform's build, looked up without building anything.
    let (recipe, _): (Value, Value) = server.send_json(server.get(&format!("api/recipes/{}", args.recipe))?).await?;
    if recipe["images"] != json!(true) {
        bail!("recipe {} makes no images (it has no oci section)", args.recipe);
    }
    let mut platforms = Vec::new();
    for platform in recipe["platforms"].as_array().into_iter().flatten().filter_map(Value::as_str) {
        if !platform.starts_with("linux/") {
            continue;
        }
        let mut query = vec![("recipe", args.recipe.clone()), ("platform", platform.to_owned())];
        if let Some(v) = &args.product_version {
            query.push(("version", v.clone()));
        }
        query.extend(modules.iter().map(|m| ("p", m.to_string())));
        let (resolved, _): (Value, Value) = server.send_json(server.get("api/resolve")?.query(&query)).await?;
        platforms.push(json!({
            "platform": platform,
            "key": resolved["key"],
            "version": resolved["version"],
            "state": resolved["state"],
        }));
    }
    let failed: Vec<&Value> =
        platforms.iter().filter(|p| p["state"] == "failed" || p["state"] == "cancelled").collect();
    let built = platforms.iter().all(|p| p["state"] == "succeeded");
    let digest = if built && !platforms.is_empty() {
        let path = format!("v2/{name}/manifests/{tag}");
        let res = server.send(server.get(&path)?.header("accept", format!("{INDEX}, {MANIFEST}"))).await?;
        res.headers().get("docker-content-digest").and_then(|v| v.to_str().ok()).map(str::to_owned)
    } else {
        None
    };
    if json {
        let out = json!({"reference": reference, "digest": digest, "platforms": platforms});
        println!("{out}");
    } else {
        println!("{reference}");
        match &digest {
            Some(d) => println!("{}/{name}@{d}", registry_host(&server)?),
            None if failed.is_empty() => {
                let done = platforms.iter().filter(|p| p["state"] == "succeeded").count();
                eprintln!("kiln: {done} of {} platforms built; `docker pull` builds the rest", platforms.len());
            }
            None => {}
        }
        for p in &failed {
            eprintln!("kiln: the build of {} {} (`kiln status {}`)", p["platform"], p["state"], p["key"]);
        }
    }
    Ok(if failed.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(EXIT_FAILED) })
}

/// `host[:port]` of the server, as image references name its registry.
fn registry_host(server: &Server) -> anyhow::Result<String> {
    let url = server.url("")?;
    let host = url.host_str().context("the server URL has no host")?;
    Ok(match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    })
}

/// `kiln verify --image REF`: REF is `[host/]name:tag` or `[host/]name@digest`
/// (the host, if any, is ignored: the server is `--server`'s). Every
/// platform manifest it names (one, or each of an index's) must carry a
/// good signature from `key` whose comment names its build and digest.
pub async fn verify(server: &Server, key: &PublicKey, reference: &str) -> anyhow::Result<ExitCode> {
    let (name, reference) = split_reference(reference)?;
    let (bytes, media_type, digest) = manifest(server, &name, &text(&reference)).await?;
    let children: Vec<(OciDigest, Vec<u8>)> = if media_type == INDEX {
        let index: Value = serde_json::from_slice(&bytes).context("reading the index")?;
        let mut children = Vec::new();
        for m in index["manifests"].as_array().into_iter().flatten() {
            let d =
                OciDigest::parse(m["digest"].as_str().unwrap_or_default()).map_err(|e| anyhow::anyhow!(e.message))?;
            let (bytes, _, _) = manifest(server, &name, d.as_str()).await?;
            children.push((d, bytes));
        }
        children
    } else {
        vec![(digest, bytes)]
    };
    let mut bad = 0;
    for (digest, bytes) in children {
        let parsed: Value = serde_json::from_slice(&bytes).context("reading a manifest")?;
        let config = parsed["config"]["digest"].as_str().unwrap_or_default();
        let config = OciDigest::parse(config).map_err(|e| anyhow::anyhow!("the manifest's config: {}", e.message))?;
        let res = server.send(server.get(&format!("v2/{name}/blobs/{config}"))?).await?;
        let config: Value = res.json().await.map_err(|e| Failure::Protocol(format!("the image config: {e}")))?;
        let build = config["config"]["Labels"]["kiln.build"].as_str().unwrap_or_default();
        let build =
            BuildKey::parse(build).map_err(|_| Failure::Unverified(format!("{digest} has no kiln.build label")))?;
        let res = server.send(server.get(&format!("api/builds/{build}/image.minisig"))?).await?;
        let signature = res.text().await.map_err(|e| Failure::Protocol(format!("image.minisig: {e}")))?;
        match kiln_artifact::verify_image(key, &bytes, &signature) {
            Ok(c) if c.key == build && c.manifest == digest => {
                println!("{digest} {} of build {build}: signature verified (key {})", c.platform, key.key_id());
            }
            Ok(c) => {
                eprintln!("kiln: {digest}: the signature names build {} and {}, not {build}", c.key, c.manifest);
                bad += 1;
            }
            Err(e) => {
                eprintln!("kiln: {digest} of build {build}: bad signature: {e}");
                bad += 1;
            }
        }
    }
    Ok(if bad == 0 { ExitCode::SUCCESS } else { ExitCode::from(EXIT_FAILED) })
}

/// A manifest or index as served: its bytes, media type and digest (checked).
async fn manifest(server: &Server, name: &ImageName, reference: &str) -> anyhow::Result<(Vec<u8>, String, OciDigest)> {
    let path = format!("v2/{name}/manifests/{reference}");
    let res = server.send(server.get(&path)?.header("accept", format!("{INDEX}, {MANIFEST}"))).await?;
    let media_type = res.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let bytes = res.bytes().await.map_err(|e| Failure::Protocol(format!("{path}: {e}")))?.to_vec();
    let digest = OciDigest::of(&bytes);
    if let Ok(asked) = OciDigest::parse(reference)
        && asked != digest
    {
        return Err(Failure::Unverified(format!("{path} served bytes of {digest}")).into());
    }
    Ok((bytes, media_type, digest))
}

/// A reference as a URL path segment.
fn text(reference: &Reference) -> String {
    match reference {
        Reference::Tag(t) => t.to_string(),
        Reference::Digest(d) => d.to_string(),
    }
}

/// `[host/]name(:tag|@digest)` → the name and the reference.
fn split_reference(text: &str) -> anyhow::Result<(ImageName, Reference)> {
    let (path, reference) = match text.rsplit_once('@') {
        Some((p, d)) => (p, d.to_owned()),
        None => match text.rsplit_once(':').filter(|(_, t)| !t.contains('/')) {
            Some((p, t)) => (p, t.to_owned()),
            None => bail!("--image {text:?} needs a :tag or an @sha256:digest"),
        },
    };
    let mut parts: Vec<&str> = path.split('/').collect();
    if parts.len() > 1 && (parts[0].contains(['.', ':']) || parts[0] == "localhost") {
        parts.remove(0);
    }
    let name = ImageName::parse(&parts.join("/")).map_err(|e| anyhow::anyhow!("--image: {}", e.message))?;
    let reference = Reference::parse(&reference).map_err(|e| anyhow::anyhow!("--image: {}", e.message))?;
    Ok((name, reference))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_split_into_name_and_tag_or_digest() {
        let d = format!("sha256:{}", "a".repeat(64));
        let (n, r) = split_reference(&format!("farm:8234/hello/example.com__greet@{d}")).unwrap();
        assert_eq!((n.to_string(), text(&r)), ("hello/example.com__greet".to_owned(), d));
        let (n, r) = split_reference("hello:v1.0.0-linux-amd64").unwrap();
        assert_eq!((n.to_string(), text(&r)), ("hello".to_owned(), "v1.0.0-linux-amd64".to_owned()));
        let (n, _) = split_reference("localhost/hello:latest").unwrap();
        assert_eq!(n.to_string(), "hello");
        assert!(split_reference("hello").is_err());
        assert!(split_reference("Hello:v1").is_err());
    }
}
