//! `docs/configuration.md` names every key of `config.example.yml` (which
//! must load, so its keys are the real ones), and names no key it lacks.

use std::collections::BTreeSet;
use std::path::Path;

fn repo() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

/// Every key path under `value` (`api.listen`, `worker.limits.user`, …);
/// recipes are left out (their format is documented in docs/recipes.md).
fn keys(value: &yaml_serde::Value, prefix: &str, out: &mut BTreeSet<String>) {
    let Some(map) = value.as_mapping() else { return };
    for (k, v) in map {
        let path = if prefix.is_empty() {
            k.as_str().unwrap().to_owned()
        } else {
            format!("{prefix}.{}", k.as_str().unwrap())
        };
        if path == "recipes" {
            continue;
        }
        out.insert(path.clone());
        keys(v, &path, out);
    }
}

#[test]
fn the_configuration_reference_names_every_key_and_no_other() {
    let example = std::fs::read_to_string(repo().join("config.example.yml")).unwrap();
    let value: yaml_serde::Value = yaml_serde::from_str(&example).unwrap();
    let mut in_example = BTreeSet::new();
    keys(&value, "", &mut in_example);
    let leaves: BTreeSet<&String> =
        in_example.iter().filter(|k| !in_example.iter().any(|o| o.starts_with(&format!("{k}.")))).collect();

    let doc = std::fs::read_to_string(repo().join("docs/configuration.md")).unwrap();
    // The first cell of each table row: | `api.listen` | … |
    let documented: BTreeSet<String> = doc
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split_once("` |"))
        .map(|(k, _)| k.to_owned())
        .filter(|k| k.contains('.') && !k.starts_with("recipes."))
        .collect();

    let missing: Vec<_> = leaves.iter().filter(|k| !documented.contains(k.as_str())).collect();
    assert!(missing.is_empty(), "docs/configuration.md does not document {missing:?}");
    let unknown: Vec<_> = documented.iter().filter(|k| !in_example.contains(*k)).collect();
    assert!(unknown.is_empty(), "docs/configuration.md documents keys config.example.yml lacks: {unknown:?}");
}

/// The field names of `pub struct <name> { … }` in `source`.
fn fields(source: &str, name: &str) -> Vec<String> {
    let start = source.find(&format!("pub struct {name} {{")).unwrap_or_else(|| panic!("no struct {name}"));
    let body = &source[start..];
    let body = &body[..body.find("\n}").unwrap()];
    body.lines()
        .filter_map(|l| l.trim().strip_prefix("pub "))
        .filter_map(|l| l.split_once(':'))
        .map(|(f, _)| f.to_owned())
        .filter(|f| !f.contains(' '))
        .collect()
}

#[test]
fn the_recipe_reference_names_every_recipe_key() {
    let domain = repo().join("crates/kiln-domain/src");
    let recipe = std::fs::read_to_string(domain.join("recipe.rs")).unwrap();
    let oci = std::fs::read_to_string(domain.join("oci.rs")).unwrap();
    let doc = std::fs::read_to_string(repo().join("docs/recipes.md")).unwrap();
    let mut missing = Vec::new();
    for (source, name, prefix) in [
        (&recipe, "Recipe", ""),
        (&recipe, "PluginRules", "plugins."),
        (&recipe, "CacheVolume", "cache."),
        (&recipe, "Step", ""),
        (&oci, "OciSpec", "oci."),
    ] {
        for f in fields(source, name) {
            let key = format!("`{prefix}{f}`");
            // A section is documented by its keys: `versions.source`.
            if !doc.contains(&key) && !doc.contains(&format!("`{prefix}{f}.")) {
                missing.push(key);
            }
        }
    }
    assert!(missing.is_empty(), "docs/recipes.md does not document {missing:?}");
}
