//! The download page at `/`: one HTML document rendered on the server from
//! the configuration and the query string, with its CSS and a little
//! JavaScript inlined (no build step, no CDN, nothing fetched from outside).
//!
//! The server renders a complete form: product links, platform buttons (the
//! visitor's platform, inferred from the `User-Agent`, preselected), the
//! version list and the plugin catalogue with each plugin's build count,
//! every choice of the URL (`recipe`, `platform`, `version`, repeated
//! `p=module[@version]`) already applied. Without JavaScript the form
//! submits to `/api/compat`, which builds and downloads. `page.js` then adds
//! what needs the API: search as you type, version choosers per plugin,
//! "ready" or "will be built" before building, live progress over SSE, and
//! the download, verification and command lines once done; it keeps the URL
//! in step with every choice. Unlisted recipes are not in the product links
//! but open when the URL names them.

mod platform;

use std::sync::LazyLock;

use kiln_domain::recipe::VersionSource;
use kiln_domain::{ModulePath, Platform, Recipe, VersionWanted};
use kiln_queue::RecipeStats;
use minijinja::value::Serde;
use minijinja::{Environment, Value, context};
use serde::Serialize;

pub use platform::{infer_platform, label};

use crate::query::RawQuery;
use crate::routes::recipes::recipe_json;

const TEMPLATE: &str = include_str!("page.html");
const CSS: &str = include_str!("page.css");
const JS: &str = include_str!("page.js");

static TEMPLATES: LazyLock<Environment<'static>> = LazyLock::new(|| {
    let mut env = Environment::new();
    // The name ends in .html, so every value is HTML-escaped unless marked safe.
    env.add_template("page.html", TEMPLATE).expect("the page template parses");
    env
});

/// What the URL asks the page to show.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Choices {
    pub recipe: Option<String>,
    pub platform: Option<String>,
    pub version: Option<String>,
    /// `module[@version]` as given.
    pub plugins: Vec<String>,
}

impl Choices {
    /// The page's query: `recipe`, `platform` (or the compat API's `os`,
    /// `arch`, `arm`), `version`, repeated `p`.
    pub fn from_query(q: &RawQuery) -> Choices {
        let nonempty = |n: &str| q.first(n).filter(|v| !v.is_empty()).map(str::to_owned);
        let platform = nonempty("platform").or_else(|| {
            let (os, arch) = (nonempty("os")?, nonempty("arch")?);
            Some(match nonempty("arm") {
                Some(arm) => format!("{os}/{arch}/{arm}"),
                None => format!("{os}/{arch}"),
            })
        });
        Choices {
            recipe: nonempty("recipe"),
            platform,
            version: nonempty("version"),
            plugins: q.all("p").filter(|p| !p.is_empty()).map(str::to_owned).collect(),
        }
    }
}

/// Everything the page is rendered from.
#[derive(Debug)]
pub struct PageInput<'a> {
    /// Every configured recipe, by name.
    pub recipes: Vec<(&'a str, &'a Recipe)>,
    pub choices: Choices,
    pub user_agent: Option<&'a str>,
    /// The recipe's figures (build counts, typical time), when readable.
    pub stats: Option<&'a RecipeStats>,
}

#[derive(Debug, Serialize)]
struct Nav {
    name: String,
    current: bool,
}

#[derive(Debug, Serialize)]
struct PlatformChoice {
    value: String,
    label: String,
    checked: bool,
    detected: bool,
}

#[derive(Debug, Serialize)]
struct PluginRow {
    module: String,
    description: String,
    docs: String,
    category: String,
    builds: i64,
    checked: bool,
    version: String,
}

/// The recipe the page opens on: the one the URL names (listed or not),
/// else the first listed one.
pub fn chosen_recipe<'a>(recipes: &[(&'a str, &'a Recipe)], choices: &Choices) -> Option<(&'a str, &'a Recipe)> {
    choices
        .recipe
        .as_ref()
        .and_then(|wanted| recipes.iter().find(|(n, _)| n == wanted))
        .or_else(|| recipes.iter().find(|(_, r)| r.listed))
        .copied()
}

/// Render the page.
pub fn render(input: &PageInput<'_>) -> Result<String, minijinja::Error> {
    let mut notices = Vec::new();
    if let Some(wanted) = &input.choices.recipe
        && !input.recipes.iter().any(|(n, _)| n == wanted)
    {
        notices.push(format!("There is no product called {wanted:?}."));
    }
    let Some((name, recipe)) = chosen_recipe(&input.recipes, &input.choices) else {
        let ctx = context! { empty => true, css => Value::from_safe_string(CSS.into()) };
        return TEMPLATES.get_template("page.html")?.render(ctx);
    };
    let nav: Vec<Nav> = input
        .recipes
        .iter()
        .filter(|(n, r)| r.listed || *n == name)
        .map(|(n, _)| Nav { name: (*n).to_owned(), current: *n == name })
        .collect();

    // Platforms: the URL's choice, else the visitor's, else the first.
    let from_url = input.choices.platform.as_deref().and_then(|p| p.parse::<Platform>().ok());
    if input.choices.platform.is_some() && !from_url.as_ref().is_some_and(|p| recipe.platforms.contains(p)) {
        notices.push(format!(
            "{name} is not built for {}; pick one of its platforms.",
            input.choices.platform.as_deref().unwrap_or_default()
        ));
    }
    let detected = input.user_agent.and_then(|ua| infer_platform(ua, &recipe.platforms));
    let chosen = from_url
        .filter(|p| recipe.platforms.contains(p))
        .or_else(|| detected.clone())
        .or_else(|| recipe.platforms.first().cloned());
    let platforms: Vec<PlatformChoice> = recipe
        .platforms
        .iter()
        .map(|p| PlatformChoice {
            value: p.to_string(),
            label: label(p),
            checked: Some(p) == chosen.as_ref(),
            detected: Some(p) == detected.as_ref(),
        })
        .collect();

    // Versions: a static list is rendered; a proxy's is fetched by the script.
    let version = input.choices.version.clone().unwrap_or_default();
    let (versions, latest, proxied) = match &recipe.versions {
        VersionSource::Static { versions } => {
            let mut sorted = versions.clone();
            sorted.sort();
            let latest = kiln_domain::version::choose("version", &sorted, &VersionWanted::Latest).ok();
            (sorted.iter().rev().map(ToString::to_string).collect(), latest.map(|v| v.to_string()), false)
        }
        VersionSource::GoProxy { .. } => (Vec::<String>::new(), None, true),
    };
    let mut versions = versions;
    if !version.is_empty() && version != "latest" && !versions.contains(&version) {
        versions.insert(0, version.clone());
    }

    // Plugins: the catalogue with the URL's choices ticked; other allowed
    // module paths as typed rows (proxy recipes only).
    let wanted: Vec<(String, String)> = input
        .choices
        .plugins
        .iter()
        .map(|p| match p.split_once('@') {
            Some((m, v)) => (m.to_owned(), v.to_owned()),
            None => (p.clone(), String::new()),
        })
        .collect();
    let builds = |m: &str| input.stats.and_then(|s| s.plugin_builds.get(m).copied()).unwrap_or(0);
    let catalogue: Vec<PluginRow> = recipe
        .catalogue
        .iter()
        .map(|c| {
            let pick = wanted.iter().find(|(m, _)| m == c.module.as_str());
            PluginRow {
                module: c.module.to_string(),
                description: c.description.clone(),
                docs: c.docs.clone(),
                category: c.category.clone().unwrap_or_default(),
                builds: builds(c.module.as_str()),
                checked: pick.is_some(),
                version: pick.map(|(_, v)| v.clone()).unwrap_or_default(),
            }
        })
        .collect();
    let mut typed = Vec::new();
    for (module, version) in &wanted {
        if recipe.catalogue.iter().any(|c| c.module.as_str() == module)
            || typed.iter().any(|t: &PluginRow| &t.module == module)
        {
            continue;
        }
        let allowed = ModulePath::parse("p", module).is_ok_and(|m| recipe.plugins.allows(&m));
        if !allowed || !recipe.plugins.go_proxy {
            notices.push(format!("Plugin {module:?} is not offered for {name}, so it was left out."));
            continue;
        }
        typed.push(PluginRow {
            module: module.clone(),
            description: String::new(),
            docs: String::new(),
            category: String::new(),
            builds: builds(module),
            checked: true,
            version: version.clone(),
        });
    }

    let data = serde_json::json!({
        // The recipe as `/api/recipes/{name}` gives it.
        "recipe": recipe_json(name, recipe, input.stats),
        "choices": {
            "platform": chosen.as_ref().map(ToString::to_string),
            "platform_from_url": input.choices.platform.is_some(),
            "version": version,
        },
    });
    let ctx = context! {
        nav => Value::from(Serde(&nav)),
        name,
        binary => recipe.binary.clone(),
        listed => recipe.listed,
        platforms => Value::from(Serde(&platforms)),
        versions,
        version,
        latest,
        proxied,
        catalogue => Value::from(Serde(&catalogue)),
        typed => Value::from(Serde(&typed)),
        go_proxy => recipe.plugins.go_proxy,
        allow => recipe.plugins.allow.join(", "),
        notices,
        typical_secs => input.stats.and_then(|s| s.typical_secs).map(|s| s.round() as i64),
        data => Value::from_safe_string(script_json(&data)),
        css => Value::from_safe_string(CSS.into()),
        js => Value::from_safe_string(JS.into()),
    };
    TEMPLATES.get_template("page.html")?.render(ctx)
}

/// JSON that is safe inside a `<script>` element: `<`, `>` and `&` escaped
/// (so no `</script>` can close it early), as are the line separators.
fn script_json(value: &serde_json::Value) -> String {
    serde_json::to_string(value)
        .expect("JSON values serialize")
        .replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
        .replace('\u{2028}', "\\u2028")
        .replace('\u{2029}', "\\u2029")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_json_cannot_close_the_script() {
        let s = script_json(&serde_json::json!({"x": "</script><script>alert(1)</script>&"}));
        assert!(!s.contains('<') && !s.contains('>') && !s.contains('&'), "{s}");
        let back: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(back["x"], "</script><script>alert(1)</script>&");
    }

    #[test]
    fn choices_come_from_the_page_or_the_compat_query() {
        let q = RawQuery::parse(Some(
            "recipe=hello&platform=linux%2Farm%2F7&version=v1.0.0&p=example.com/a&p=&p=example.com/b@v1.0.0",
        ))
        .unwrap();
        let c = Choices::from_query(&q);
        assert_eq!(c.recipe.as_deref(), Some("hello"));
        assert_eq!(c.platform.as_deref(), Some("linux/arm/7"));
        assert_eq!(c.plugins, ["example.com/a", "example.com/b@v1.0.0"]);
        let q = RawQuery::parse(Some("os=linux&arch=arm&arm=6")).unwrap();
        assert_eq!(Choices::from_query(&q).platform.as_deref(), Some("linux/arm/6"));
    }
}
