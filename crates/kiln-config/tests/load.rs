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
