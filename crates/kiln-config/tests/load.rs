//! The loader end to end: expansion, defaults, errors naming key and file.

use std::collections::HashMap;

use kiln_config::{Config, ConfigError, StorageKind};

const BASE: &str = r#"
database:
  url: ${DATABASE_URL}
  max_connections: ${POOL:-4}
storage:
  kind: ${KILN_STORAGE:-local}
  local:
    path: ${KILN_DATA_DIR:-./.dev/data}/artifacts
signing:
  secret_key: ${KILN_SIGNING_KEY:-${KILN_DATA_DIR:-./.dev/data}/kiln.key}
api:
  admin_token: ${KILN_ADMIN_TOKEN:-dev-admin-token}
  public_url: ${KILN_PUBLIC_URL:-}
recipes: {}
"#;

fn parse(text: &str, vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let env: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    Config::parse(text, "test.yml", &move |k| env.get(k).cloned())
}

#[test]
fn expands_variables_and_defaults() {
    let c = parse(BASE, &[("DATABASE_URL", "postgres://u:pw@h/db"), ("KILN_DATA_DIR", "/srv/kiln")]).unwrap();
    assert_eq!(c.database.url.expose(), "postgres://u:pw@h/db");
    assert_eq!(c.database.max_connections, 4);
    assert_eq!(c.storage.kind, StorageKind::Local);
    assert_eq!(c.storage.local.unwrap().path.to_str(), Some("/srv/kiln/artifacts"));
    assert_eq!(c.signing.secret_key.to_str(), Some("/srv/kiln/kiln.key"));
    assert_eq!(c.api.admin_token.unwrap().expose(), "dev-admin-token");
    assert_eq!(c.api.public_url, None, "an empty whole-value expansion is unset");
}

#[test]
fn a_value_cannot_add_structure() {
    let c = parse(BASE, &[("DATABASE_URL", "x"), ("KILN_ADMIN_TOKEN", "}\nextra: key")]).unwrap();
    assert_eq!(c.api.admin_token.unwrap().expose(), "}\nextra: key");
    let c = parse(BASE, &[("DATABASE_URL", "x"), ("KILN_ADMIN_TOKEN", "{a: 1}")]).unwrap();
    assert_eq!(c.api.admin_token.unwrap().expose(), "{a: 1}");
}

#[test]
fn missing_variable_names_the_key() {
    let err = parse(BASE, &[]).unwrap_err().to_string();
    assert!(err.contains("test.yml") && err.contains("database.url") && err.contains("DATABASE_URL"), "{err}");
}

#[test]
fn unknown_key_is_an_error_naming_it() {
    let text = format!("{BASE}\nsurprise: 1\n");
    let err = parse(&text, &[("DATABASE_URL", "x")]).unwrap_err().to_string();
    assert!(err.contains("test.yml") && err.contains("surprise"), "{err}");
    let text = BASE.replace("  max_connections", "  max_conections");
    let err = parse(&text, &[("DATABASE_URL", "x")]).unwrap_err().to_string();
    assert!(err.contains("database") && err.contains("max_conections"), "{err}");
}

#[test]
fn bad_value_names_the_key() {
    let err = parse(BASE, &[("DATABASE_URL", "x"), ("POOL", "many")]).unwrap_err().to_string();
    assert!(err.contains("database.max_connections"), "{err}");
    let err = parse(BASE, &[("DATABASE_URL", "x"), ("KILN_STORAGE", "ftp")]).unwrap_err().to_string();
    assert!(err.contains("storage.kind"), "{err}");
}

#[test]
fn secrets_do_not_print() {
    let c = parse(BASE, &[("DATABASE_URL", "postgres://u:hunter2@h/db")]).unwrap();
    let dump = format!("{c:?}");
    assert!(!dump.contains("hunter2") && !dump.contains("dev-admin-token"), "{dump}");
}

#[test]
fn the_shipped_configs_load() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    for file in ["config.test.yml", "config.example.yml"] {
        let path = format!("{root}/{file}");
        let text = std::fs::read_to_string(&path).unwrap();
        let vars = [
            ("DATABASE_URL", "postgres://kiln@localhost/kiln"),
            ("KILN_S3_BUCKET", "kiln"),
            ("KILN_ADMIN_TOKEN", "t"),
            ("AWS_ACCESS_KEY_ID", "a"),
            ("AWS_SECRET_ACCESS_KEY", "b"),
        ];
        let c = parse(&text, &vars).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert!(!c.recipes.is_empty(), "{file} has recipes");
    }
}

const RECIPE: &str = r#"
  hello:
    image: img
    versions: { source: static, versions: [v1.0.0] }
    platforms: [linux/amd64, windows/amd64]
    binary: hello
    steps: [{ name: build, run: [/bin/true] }]
"#;

fn with_recipe(extra: &str) -> Result<Config, ConfigError> {
    let text = format!("{}{RECIPE}{extra}", BASE.replace("recipes: {}", "recipes:"));
    parse(&text, &[("DATABASE_URL", "x")])
}

#[test]
fn the_shipped_recipes_have_images() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let vars = [("DATABASE_URL", "x"), ("KILN_S3_BUCKET", "kiln"), ("KILN_ADMIN_TOKEN", "t")];
    let text = std::fs::read_to_string(format!("{root}/config.test.yml")).unwrap();
    let hello = parse(&text, &vars).unwrap().recipes.remove("hello").unwrap().oci.expect("hello has images");
    assert_eq!(hello.base.as_deref(), Some("kiln-test/busybox:latest"));
    assert_eq!(hello.entrypoint("hello").unwrap(), ["/usr/bin/hello"]);

    let text = std::fs::read_to_string(format!("{root}/config.example.yml")).unwrap();
    let caddy = parse(&text, &vars).unwrap().recipes.remove("caddy").unwrap().oci.expect("caddy has images");
    assert_eq!(caddy.binary_path("caddy").unwrap().as_str(), "/usr/bin/caddy");
    assert_eq!(caddy.cmd.as_deref().unwrap()[0], "run");
    let ports: Vec<String> = caddy.ports.iter().map(|p| p.to_string()).collect();
    assert_eq!(ports, ["80/tcp", "443/tcp", "443/udp", "2019/tcp"]);
    assert!(caddy.files.iter().any(|f| f.to.as_str() == "/etc/ssl/certs/ca-certificates.crt"));
    assert_eq!(caddy.base, None, "caddy's image needs no base to pull");
}

#[test]
fn oci_sections_parse_and_bad_ones_name_the_key() {
    let c = with_recipe("    oci: {}\n").unwrap();
    assert_eq!(c.recipes["hello"].oci, Some(Default::default()));
    assert_eq!(with_recipe("").unwrap().recipes["hello"].oci, None);

    let cases = [
        ("    oci: { binary_path: usr/bin/hello }\n", "recipes.hello.oci.binary_path", "must start with '/'"),
        ("    oci: { ports: [80, 99999] }\n", "recipes.hello.oci.ports", "not a port"),
        ("    oci: { entrypont: [] }\n", "recipes.hello.oci", "entrypont"),
        ("    oci: { files: [{ from: ../etc/passwd, to: /x }] }\n", "recipes.hello.oci.files[0].from", "'..'"),
        ("    oci: { files: [{ from: a, to: /usr/bin/hello }] }\n", "recipes.hello.oci.files[0].to", "already placed"),
        ("    oci: { env: { \"A-B\": x } }\n", "recipes.hello.oci.env", "variable name"),
        ("    oci: { user: \"a b\" }\n", "recipes.hello.oci.user", "uid:gid"),
    ];
    for (extra, key, why) in cases {
        let err = with_recipe(extra).unwrap_err().to_string();
        assert!(err.contains("test.yml") && err.contains(key) && err.contains(why), "{extra}: {err}");
    }

    let windows_only =
        format!("{}{}    oci: {{}}\n", BASE.replace("recipes: {}", "recipes:"), RECIPE.replace("linux/amd64, ", ""));
    let err = parse(&windows_only, &[("DATABASE_URL", "x")]).unwrap_err().to_string();
    assert!(err.contains("recipes.hello.oci") && err.contains("linux"), "{err}");
    let bad_name =
        format!("{}{}    oci: {{}}\n", BASE.replace("recipes: {}", "recipes:"), RECIPE.replace("hello:", "hello-:"));
    let err = parse(&bad_name, &[("DATABASE_URL", "x")]).unwrap_err().to_string();
    assert!(err.contains("recipes.hello-.oci") && err.contains("registry"), "{err}");
}

#[test]
fn catalogues_are_checked_and_name_the_key() {
    let good = "    plugins: { allow: [\"example.com/*\"], versions: { example.com/greet: [v0.1.0] } }\n    \
                catalogue:\n      - { module: example.com/greet, description: Says hello, docs: \"https://example.com/greet\" }\n";
    let c = with_recipe(good).unwrap();
    assert_eq!(c.recipes["hello"].catalogue[0].module.as_str(), "example.com/greet");
    assert!(c.recipes["hello"].listed, "listed by default");
    assert!(!with_recipe("    listed: false\n").unwrap().recipes["hello"].listed);

    let err = with_recipe(&good.replace("https://example.com/greet", "ftp://x")).unwrap_err().to_string();
    assert!(err.contains("test.yml") && err.contains("recipes.hello.catalogue[0].docs"), "{err}");
    let err = with_recipe(&good.replace("module: example.com/greet", "module: other.org/x")).unwrap_err().to_string();
    assert!(err.contains("recipes.hello.catalogue[0].module") && err.contains("plugins.allow"), "{err}");
    let err = with_recipe(&good.replace("module: example.com/greet", "module: \"bad path\"")).unwrap_err().to_string();
    assert!(err.contains("recipes.hello.catalogue[0].module") && err.contains("module path"), "{err}");
    let err = with_recipe(&good.replace("description:", "summary:")).unwrap_err().to_string();
    assert!(err.contains("summary"), "{err}");
}

#[test]
fn the_shipped_catalogues_are_real() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let vars = [("DATABASE_URL", "x"), ("KILN_S3_BUCKET", "kiln"), ("KILN_ADMIN_TOKEN", "t")];
    let text = std::fs::read_to_string(format!("{root}/config.example.yml")).unwrap();
    let caddy = parse(&text, &vars).unwrap().recipes.remove("caddy").unwrap();
    assert!(caddy.catalogue.len() >= 5, "caddy lists well-known plugins");
    assert!(caddy.catalogue.iter().any(|p| p.module.as_str() == "github.com/caddy-dns/cloudflare"));
    let text = std::fs::read_to_string(format!("{root}/config.test.yml")).unwrap();
    let c = parse(&text, &vars).unwrap();
    assert!(c.recipes["hello"].listed && c.recipes["hello"].catalogue.len() >= 2);
    for test_only in ["fail", "sleep", "escape", "kilnd"] {
        assert!(!c.recipes[test_only].listed, "{test_only} is a test recipe, not listed");
    }
}

#[test]
fn the_build_network_is_a_docker_name() {
    let c = parse(BASE, &[("DATABASE_URL", "x")]).unwrap();
    assert_eq!(c.worker.build_network, "kiln-build");
    for bad in ["", "-x", "a b", "x/y", "bridge;rm"] {
        let text = format!("{BASE}worker:\n  build_network: \"{bad}\"\n");
        let err = parse(&text, &[("DATABASE_URL", "x")]).unwrap_err().to_string();
        assert!(err.contains("worker.build_network") && err.contains("test.yml"), "{bad:?}: {err}");
    }
    let text = format!("{BASE}worker:\n  build_network: kiln-build.2_a\n");
    assert_eq!(parse(&text, &[("DATABASE_URL", "x")]).unwrap().worker.build_network, "kiln-build.2_a");
}
