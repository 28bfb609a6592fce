//! A recipe's plugin catalogue: the plugins the download page lists, each
//! with a one-line description, its documentation and an optional category.
//!
//! The catalogue is presentation, not a build input: it is left out of the
//! recipe's revision, so editing it never changes a build key. It is checked
//! when the configuration is read ([`check`]): every entry must be a plugin
//! the recipe accepts and can resolve a version for, listed once, with text
//! that fits on one line and a documentation URL that is plain `http(s)`.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::{ModulePath, Recipe};

/// The longest description, in characters.
pub const MAX_DESCRIPTION: usize = 200;
/// The longest category name, in characters.
pub const MAX_CATEGORY: usize = 40;
/// The longest documentation URL, in bytes.
pub const MAX_DOCS_URL: usize = 500;

/// One plugin of a recipe's catalogue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CataloguePlugin {
    /// The plugin's Go module path.
    pub module: ModulePath,
    /// What it does, in one line.
    pub description: String,
    /// Where its documentation is (`https://…`).
    pub docs: String,
    /// A group on the page (`dns`, `http`, `security`…).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
}

/// Check `recipe.catalogue`; the error names the entry's key below the
/// recipe (`catalogue[2].docs`) and says what to fix.
pub fn check(recipe: &Recipe) -> Result<(), (String, String)> {
    let mut seen = BTreeSet::new();
    for (i, entry) in recipe.catalogue.iter().enumerate() {
        let key = |k: &str| format!("catalogue[{i}].{k}");
        let module = entry.module.as_str();
        if !seen.insert(module) {
            return Err((key("module"), format!("{module} is listed twice")));
        }
        if !recipe.plugins.allows(&entry.module) {
            return Err((
                key("module"),
                format!("{module} is not allowed by plugins.allow, so it could never be built"),
            ));
        }
        if !recipe.plugins.go_proxy && !recipe.plugins.versions.contains_key(module) {
            return Err((
                key("module"),
                format!("{module} has no versions: list them under plugins.versions or set plugins.go_proxy"),
            ));
        }
        one_line(&entry.description, MAX_DESCRIPTION).map_err(|why| (key("description"), why))?;
        check_docs_url(&entry.docs).map_err(|why| (key("docs"), why))?;
        if let Some(c) = &entry.category {
            one_line(c, MAX_CATEGORY).map_err(|why| (key("category"), why))?;
        }
    }
    Ok(())
}

fn one_line(text: &str, max: usize) -> Result<(), String> {
    if text.trim().is_empty() {
        return Err("must not be empty".into());
    }
    if text.chars().any(char::is_control) {
        return Err("must be one line of text (no line breaks or control characters)".into());
    }
    if text.chars().count() > max {
        return Err(format!("must be at most {max} characters"));
    }
    Ok(())
}

/// A documentation link: `http://` or `https://`, a host, no spaces, quotes
/// or angle brackets (so it stays one attribute value wherever it is shown).
fn check_docs_url(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| "must be an http:// or https:// URL".to_owned())?;
    if url.len() > MAX_DOCS_URL {
        return Err(format!("must be at most {MAX_DOCS_URL} characters"));
    }
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if host.is_empty() {
        return Err("must name a host".into());
    }
    if let Some(c) = url.chars().find(|c| !c.is_ascii_graphic() || matches!(c, '"' | '\'' | '<' | '>' | '`' | '\\')) {
        return Err(format!("must not contain {c:?}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recipe(catalogue: Vec<CataloguePlugin>) -> Recipe {
        let mut r: Recipe = serde_json::from_value(serde_json::json!({
            "image": "img",
            "versions": {"source": "static", "versions": ["v1.0.0"]},
            "plugins": {"allow": ["example.com/*"], "versions": {"example.com/greet": ["v0.1.0"]}},
            "platforms": ["linux/amd64"],
            "binary": "hello",
            "steps": [],
        }))
        .unwrap();
        r.catalogue = catalogue;
        r
    }

    fn entry(module: &str) -> CataloguePlugin {
        CataloguePlugin {
            module: ModulePath::parse("m", module).unwrap(),
            description: "Says hello".into(),
            docs: "https://example.com/greet".into(),
            category: Some("greetings".into()),
        }
    }

    #[test]
    fn a_good_catalogue_passes() {
        assert_eq!(check(&recipe(vec![entry("example.com/greet")])), Ok(()));
    }

    #[test]
    fn each_mistake_names_its_key() {
        type Change = Box<dyn Fn(&mut CataloguePlugin)>;
        let cases: Vec<(Change, &str, &str)> = vec![
            (Box::new(|e| e.module = ModulePath::parse("m", "other.org/x").unwrap()), "module", "not allowed"),
            (Box::new(|e| e.module = ModulePath::parse("m", "example.com/shout").unwrap()), "module", "no versions"),
            (Box::new(|e| e.description = " ".into()), "description", "empty"),
            (Box::new(|e| e.description = "two\nlines".into()), "description", "one line"),
            (Box::new(|e| e.description = "x".repeat(201)), "description", "at most 200"),
            (Box::new(|e| e.docs = "javascript:alert(1)".into()), "docs", "http"),
            (Box::new(|e| e.docs = "https:///path".into()), "docs", "host"),
            (Box::new(|e| e.docs = "https://example.com/\"onmouseover=x".into()), "docs", "'\"'"),
            (Box::new(|e| e.docs = "https://example.com/a b".into()), "docs", "' '"),
            (Box::new(|e| e.category = Some(String::new())), "category", "empty"),
        ];
        for (change, key, why) in cases {
            let mut e = entry("example.com/greet");
            change(&mut e);
            let (k, message) = check(&recipe(vec![e])).unwrap_err();
            assert_eq!(k, format!("catalogue[0].{key}"), "{message}");
            assert!(message.contains(why), "{key}: {message}");
        }
        let (k, message) = check(&recipe(vec![entry("example.com/greet"), entry("example.com/greet")])).unwrap_err();
        assert_eq!(k, "catalogue[1].module");
        assert!(message.contains("twice"), "{message}");
    }

    #[test]
    fn proxy_recipes_need_no_version_lists() {
        let mut r = recipe(vec![entry("example.com/shout")]);
        r.plugins.go_proxy = true;
        assert_eq!(check(&r), Ok(()));
    }
}
