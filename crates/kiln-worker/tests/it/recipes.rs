//! The shipped recipes as the worker renders them: the real `caddy` recipe
//! of `config.example.yml` follows xcaddy's flow, and `config.test.yml`'s
//! `kilnd` recipe (which the Go tests build end to end) is that recipe step
//! for step.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use bytes::Bytes;
use kiln_config::Config;
use kiln_domain::{BuildSpec, ModulePath, PluginSpec, Replacement};
use kiln_worker::docker::{ContainerSpec, Engine, Exit};
use kiln_worker::render::{RenderedStep, render_steps};
use tokio_util::sync::CancellationToken;

fn example_config() -> Config {
    let path = kiln_testkit::repo_root().join("config.example.yml");
    let text = std::fs::read_to_string(&path).unwrap();
    let env = |k: &str| match k {
        "DATABASE_URL" => Some("postgres://kiln@localhost/kiln".to_owned()),
        "KILN_S3_BUCKET" => Some("kiln".to_owned()),
        "KILN_ADMIN_TOKEN" => Some("t".to_owned()),
        _ => None,
    };
    Config::parse(&text, "config.example.yml", &env).expect("config.example.yml loads")
}

fn test_config() -> Config {
    let path = kiln_testkit::repo_root().join("config.test.yml");
    let text = std::fs::read_to_string(&path).unwrap();
    let env = |k: &str| (k == "DATABASE_URL").then(|| "postgres://kiln@localhost/kiln".to_owned());
    Config::parse(&text, "config.test.yml", &env).expect("config.test.yml loads")
}

fn caddy_spec(config: &Config, platform: &str) -> BuildSpec {
    let m = |p: &str| ModulePath::parse("m", p).unwrap();
    BuildSpec {
        recipe: "caddy".into(),
        recipe_revision: config.recipes["caddy"].revision(),
        version: "v2.8.4".parse().unwrap(),
        platform: platform.parse().unwrap(),
        plugins: vec![
            PluginSpec {
                module: m("github.com/mholt/caddy-l4"),
                version: "v0.0.0-20240101000000-abcdef123456".parse().unwrap(),
            },
            PluginSpec { module: m("github.com/caddy-dns/cloudflare"), version: "v0.2.1".parse().unwrap() },
        ],
        replacements: vec![Replacement {
            module: m("github.com/libdns/libdns"),
            with: m("github.com/example/libdns"),
            version: Some("v1.0.0".parse().unwrap()),
        }],
    }
}

fn tail(step: &RenderedStep) -> &[String] {
    // argv: /bin/sh -c <script> <$0> <$1>…
    assert_eq!(&step.argv[..2], ["/bin/sh", "-c"], "{}", step.name);
    &step.argv[3..]
}

#[test]
fn caddy_follows_the_xcaddy_flow() {
    let config = example_config();
    let spec = caddy_spec(&config, "linux/arm/7");
    let steps = render_steps("caddy", &config.recipes["caddy"], &spec).unwrap();
    let names: Vec<_> = steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["main.go", "go mod init", "replacements", "go get", "go build"]);
    let plugins =
        ["github.com/caddy-dns/cloudflare@v0.2.1", "github.com/mholt/caddy-l4@v0.0.0-20240101000000-abcdef123456"];

    assert_eq!(tail(&steps[0])[1..], ["github.com/caddyserver/caddy/v2", plugins[0], plugins[1]]);
    assert_eq!(tail(&steps[1]), ["go-mod-init", "caddy"]);
    assert!(steps[1].argv[2].contains("go mod init \"$1\""));
    assert!(steps[2].argv[2].contains("go mod edit -replace"));
    assert_eq!(tail(&steps[2]), ["replacements", "github.com/libdns/libdns=github.com/example/libdns@v1.0.0"]);

    // go get: caddy at the version, then each plugin with caddy pinned beside it, bare, tidy; with network.
    let get = &steps[3];
    assert!(get.network);
    assert_eq!(tail(get), ["go-get", "github.com/caddyserver/caddy/v2", "v2.8.4", plugins[0], plugins[1]]);
    assert_eq!(get.env["GOPROXY"], "https://proxy.golang.org,direct");
    assert_eq!(get.env["GOSUMDB"], "sum.golang.org");
    let script = &get.argv[2];
    for needle in
        ["core=\"$1@$2\"", "go get -v \"$core\"", "go get -v \"$p\" \"$core\"", "go get -v\n", "go mod tidy -e"]
    {
        assert!(script.contains(needle), "go get script lacks {needle:?}:\n{script}");
    }

    // go build: offline, static, for the platform.
    let build = &steps[4];
    assert!(!build.network);
    assert!(steps.iter().filter(|s| s.network).count() == 1, "only go get reaches the network");
    assert_eq!(tail(build), ["go-build", "caddy"]);
    assert!(build.argv[2].contains("-trimpath -ldflags \"-w -s\" -tags nobadger,nomysql,nopgx"), "{}", build.argv[2]);
    let env: Vec<_> = ["GOOS", "GOARCH", "GOARM", "CGO_ENABLED", "GOPROXY"].map(|k| build.env[k].as_str()).into();
    assert_eq!(env, ["linux", "arm", "7", "0", "off"]);
    assert!(get.timeout >= Duration::from_secs(1800), "fetching gets a generous timeout");

    let windows = render_steps("caddy", &config.recipes["caddy"], &caddy_spec(&config, "windows/amd64")).unwrap();
    assert_eq!(tail(&windows[4]), ["go-build", "caddy.exe"]);
    assert_eq!(windows[4].env["GOARM"], "");
}

/// The `main.go` step is plain shell: run it in the test image and compare
/// with the file xcaddy writes.
#[tokio::test]
async fn caddy_main_go_is_what_xcaddy_writes() {
    if !kiln_testkit::docker_available("caddy_main_go_is_what_xcaddy_writes") {
        return;
    }
    let config = example_config();
    let spec = caddy_spec(&config, "linux/amd64");
    let step = render_steps("caddy", &config.recipes["caddy"], &spec).unwrap().remove(0);
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    for sub in ["src", "out"] {
        std::fs::create_dir(dir.path().join(sub)).unwrap();
        std::os::unix::fs::chown(dir.path().join(sub), Some(1000), Some(1000)).unwrap();
    }
    let mut limits = config.worker.limits.clone();
    (limits.memory_mb, limits.cpus, limits.pids, limits.tmpfs_mb) = (128, 1.0, 64, 8);
    let container = ContainerSpec {
        image: "kiln-test/busybox:latest".into(),
        argv: step.argv.clone(),
        env: step.env.clone().into_iter().collect(),
        network: None,
        timeout: step.timeout,
        work_dir: dir.path().to_path_buf(),
        cache: None,
        limits,
        labels: HashMap::from([("kiln.test".to_owned(), "caddy-main-go".to_owned())]),
    };
    let engine = Engine::connect().await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(16);
    let drain = tokio::spawn(async move { while rx.recv().await.is_some() {} });
    let run = engine.run(&container, &tx, &CancellationToken::new()).await.unwrap();
    drop(tx);
    drain.await.unwrap();
    assert_eq!(run.exit, Exit::Code(0));
    let main_go = std::fs::read_to_string(dir.path().join("src/main.go")).unwrap();
    assert_eq!(
        main_go,
        "package main\n\nimport (\n\t_ \"time/tzdata\"\n\n\tcaddycmd \"github.com/caddyserver/caddy/v2/cmd\"\n\n\
         \t_ \"github.com/caddyserver/caddy/v2/modules/standard\"\n\t_ \"github.com/caddy-dns/cloudflare\"\n\
         \t_ \"github.com/mholt/caddy-l4\"\n)\n\nfunc main() {\n\tcaddycmd.Main()\n}\n"
    );
}

/// `kilnd` is `caddy` with other names: everything but the image, the
/// module names (core, main module, plugin patterns, binary, cache volume)
/// and the Go proxy is the same, and the rendered steps differ only by
/// those names.
#[test]
fn kilnd_is_the_caddy_recipe_step_for_step() {
    let (example, test) = (example_config(), test_config());
    let caddy = &example.recipes["caddy"];
    let kilnd = &test.recipes["kilnd"];
    assert_eq!(kilnd.steps, caddy.steps, "the steps must be the same, word for word");

    // Replace what may differ by caddy's values: nothing else may remain.
    let mut same = kilnd.clone();
    same.image = caddy.image.clone();
    same.pull = caddy.pull;
    same.versions = caddy.versions.clone();
    same.plugins.allow = caddy.plugins.allow.clone();
    same.binary = caddy.binary.clone();
    // A test recipe stays off /api/recipes and the download page, with no
    // catalogue of well-known plugins (module names) to offer there.
    assert!(!kilnd.listed);
    same.listed = caddy.listed;
    same.catalogue = caddy.catalogue.clone();
    same.cache.as_mut().unwrap().name = caddy.cache.as_ref().unwrap().name.clone();
    let allowed = ["core", "main", "goproxy", "gosumdb"];
    assert_eq!(kilnd.vars.keys().collect::<Vec<_>>(), caddy.vars.keys().collect::<Vec<_>>());
    assert!(caddy.vars.keys().all(|k| allowed.contains(&k.as_str())), "{:?}", caddy.vars);
    same.vars = caddy.vars.clone();
    // The image a linux build becomes is described for Caddy only: kilnd
    // has no `caddy run` to start. It is not part of how either is built.
    assert_eq!(kilnd.oci, None);
    same.oci = caddy.oci.clone();
    assert_eq!(&same, caddy);
    assert_eq!(kilnd.cache.as_ref().unwrap().path, "/go/pkg/mod");

    // Rendered for the same build (but kilnd's plugins), the steps differ
    // only where one of those names was filled in.
    let m = |p: &str| ModulePath::parse("m", p).unwrap();
    for platform in ["linux/amd64", "linux/arm/7", "windows/amd64", "darwin/arm64"] {
        let caddy_build = caddy_spec(&example, platform);
        let mut kilnd_build = caddy_build.clone();
        kilnd_build.recipe = "kilnd".into();
        kilnd_build.recipe_revision = kilnd.revision();
        // caddy-l4 and cloudflare become greet and echo: the same order once sorted.
        kilnd_build.plugins[0].module = m("example.com/plugins/greet");
        kilnd_build.plugins[1].module = m("example.com/plugins/echo");
        let mut allowed: Vec<(String, String)> =
            kilnd.vars.iter().map(|(k, v)| (v.clone(), caddy.vars[k].clone())).collect();
        let file = |r: &kiln_domain::Recipe, b: &BuildSpec| r.binary_file(&b.platform);
        allowed.push((file(kilnd, &kilnd_build), file(caddy, &caddy_build)));
        for (k, c) in kilnd_build.plugins.iter().zip(&caddy_build.plugins) {
            allowed.push((k.to_string(), c.to_string()));
        }
        let same_or_renamed = |what: &str, k: &str, c: &str| {
            assert!(k == c || allowed.iter().any(|(a, b)| a == k && b == c), "{platform} {what}: {k:?} vs {c:?}");
        };
        let kilnd_steps = render_steps("kilnd", kilnd, &kilnd_build).unwrap();
        let caddy_steps = render_steps("caddy", caddy, &caddy_build).unwrap();
        assert_eq!(kilnd_steps.len(), caddy_steps.len());
        for (k, c) in kilnd_steps.iter().zip(&caddy_steps) {
            assert_eq!((&k.name, k.network, k.timeout), (&c.name, c.network, c.timeout));
            assert_eq!(k.argv.len(), c.argv.len(), "{}", k.name);
            for (i, (ka, ca)) in k.argv.iter().zip(&c.argv).enumerate() {
                same_or_renamed(&format!("{} run[{i}]", k.name), ka, ca);
            }
            assert_eq!(k.env.keys().collect::<Vec<_>>(), c.env.keys().collect::<Vec<_>>(), "{}", k.name);
            for (name, kv) in &k.env {
                same_or_renamed(&format!("{} env.{name}", k.name), kv, &c.env[name]);
            }
        }
    }
}
