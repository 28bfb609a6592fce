//! Rendering a recipe's steps for one build: templates in, argv and env out.
//!
//! Pure: no I/O. Each argv element and env value is a `minijinja` template
//! over the build's parameters ([`Params`]). An argv element that is exactly
//! `{{ plugins }}` or `{{ replacements }}` (whitespace inside the braces does
//! not matter) expands to one argument per plugin (`module@version`) or per
//! replacement (`module=with[@version]`), zero when there are none; every
//! other element renders to exactly one argument. The recipe's `vars` are
//! `vars.NAME` (a misspelt name is an error, as for every variable). Nothing here goes through a
//! shell: the result is handed to Docker as an argv list.

use std::collections::BTreeMap;
use std::time::Duration;

use kiln_domain::{BuildSpec, Recipe, Step};
use minijinja::{Environment, UndefinedBehavior, Value};

/// A step ready to run: every template rendered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedStep {
    pub name: String,
    pub argv: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub network: bool,
    pub timeout: Duration,
}

/// A template that did not render. Names the recipe, the step and the part.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("recipe {recipe}, step {step:?}, {part}: {message}")]
pub struct RenderError {
    pub recipe: String,
    pub step: String,
    /// `run[2]` or `env.GOOS`.
    pub part: String,
    pub message: String,
}

/// The values templates see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Params {
    /// `v1.2.3`.
    pub version: String,
    pub version_major: u64,
    pub version_minor: u64,
    pub version_patch: u64,
    pub os: String,
    pub arch: String,
    /// The ARM version, empty when the platform has none.
    pub arm: String,
    /// The main binary's file name for the platform ([`Recipe::binary_file`]).
    pub binary: String,
    /// `module@version`, sorted by module.
    pub plugins: Vec<String>,
    /// `module=with[@version]`, sorted by module.
    pub replacements: Vec<String>,
    /// The recipe's `vars`.
    pub vars: BTreeMap<String, String>,
}

impl Params {
    pub(crate) fn new(recipe: &Recipe, spec: &BuildSpec) -> Self {
        let mut plugins = spec.plugins.clone();
        plugins.sort();
        let mut replacements = spec.replacements.clone();
        replacements.sort();
        let v = &spec.version.0;
        Params {
            version: spec.version.to_string(),
            version_major: v.major,
            version_minor: v.minor,
            version_patch: v.patch,
            os: spec.platform.os.clone(),
            arch: spec.platform.arch.clone(),
            arm: spec.platform.arm.map(|a| a.to_string()).unwrap_or_default(),
            binary: recipe.binary_file(&spec.platform),
            plugins: plugins.iter().map(ToString::to_string).collect(),
            replacements: replacements
                .iter()
                .map(|r| match &r.version {
                    Some(v) => format!("{}={}@{v}", r.module, r.with),
                    None => format!("{}={}", r.module, r.with),
                })
                .collect(),
            vars: recipe.vars.clone(),
        }
    }

    fn context(&self) -> Value {
        let mut m: BTreeMap<&str, Value> = BTreeMap::new();
        m.insert("version", Value::from(self.version.as_str()));
        m.insert("version_major", Value::from(self.version_major));
        m.insert("version_minor", Value::from(self.version_minor));
        m.insert("version_patch", Value::from(self.version_patch));
        m.insert("os", Value::from(self.os.as_str()));
        m.insert("arch", Value::from(self.arch.as_str()));
        m.insert("arm", Value::from(self.arm.as_str()));
        m.insert("binary", Value::from(self.binary.as_str()));
        m.insert("plugins", Value::from(self.plugins.clone()));
        m.insert("replacements", Value::from(self.replacements.clone()));
        m.insert("vars", Value::from(self.vars.clone()));
        Value::from(m)
    }
}

/// If `element` is exactly `{{ name }}` (any whitespace), the name.
fn list_placeholder(element: &str) -> Option<&str> {
    let inner = element.trim().strip_prefix("{{")?.strip_suffix("}}")?.trim();
    matches!(inner, "plugins" | "replacements").then_some(inner)
}

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    // A misspelt variable is an error, not an empty string.
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env
}

fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Render every step of `recipe` (named `recipe_name`) for `spec`.
pub fn render_steps(recipe_name: &str, recipe: &Recipe, spec: &BuildSpec) -> Result<Vec<RenderedStep>, RenderError> {
    let params = Params::new(recipe, spec);
    recipe.steps.iter().map(|step| render_step(recipe_name, step, &params)).collect()
}

/// Render one step with `params`.
pub(crate) fn render_step(recipe_name: &str, step: &Step, params: &Params) -> Result<RenderedStep, RenderError> {
    let env = environment();
    let ctx = params.context();
    let fail = |part: String, e: minijinja::Error| RenderError {
        recipe: recipe_name.to_owned(),
        step: step.name.clone(),
        part,
        message: e.to_string(),
    };
    let mut argv = Vec::with_capacity(step.run.len());
    for (i, element) in step.run.iter().enumerate() {
        match list_placeholder(element) {
            Some("plugins") => argv.extend(params.plugins.iter().cloned()),
            Some(_) => argv.extend(params.replacements.iter().cloned()),
            None => argv.push(env.render_str(element, &ctx).map_err(|e| fail(format!("run[{i}]"), e))?),
        }
    }
    let mut vars = BTreeMap::new();
    for (name, value) in &step.env {
        if !is_env_name(name) {
            return Err(RenderError {
                recipe: recipe_name.to_owned(),
                step: step.name.clone(),
                part: format!("env.{name}"),
                message: "an environment variable name is letters, digits and '_', not starting with a digit".into(),
            });
        }
        let rendered = env.render_str(value, &ctx).map_err(|e| fail(format!("env.{name}"), e))?;
        vars.insert(name.clone(), rendered);
    }
    Ok(RenderedStep {
        name: step.name.clone(),
        argv,
        env: vars,
        network: step.network,
        timeout: Duration::from_secs(step.timeout_secs),
    })
}

/// Render one text of a recipe outside its steps (`part` names it in
/// errors, e.g. `oci.base`) with the same values steps see.
pub(crate) fn render_text(recipe_name: &str, part: &str, text: &str, params: &Params) -> Result<String, RenderError> {
    environment().render_str(text, params.context()).map_err(|e| RenderError {
        recipe: recipe_name.to_owned(),
        step: "image".to_owned(),
        part: part.to_owned(),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_domain::{ModulePath, PluginSpec, Replacement};

    fn recipe(run: &[&str], env: &[(&str, &str)]) -> Recipe {
        let mut r: Recipe = serde_json::from_value(serde_json::json!({
            "image": "img",
            "versions": {"source": "static", "versions": ["v1.0.0"]},
            "platforms": ["linux/amd64"],
            "binary": "hello",
            "steps": [],
        }))
        .unwrap();
        r.steps.push(Step {
            name: "build".into(),
            run: run.iter().map(|s| s.to_string()).collect(),
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            network: false,
            timeout_secs: 60,
        });
        r
    }

    fn spec(platform: &str, plugins: &[(&str, &str)]) -> BuildSpec {
        BuildSpec {
            recipe: "hello".into(),
            recipe_revision: "r".into(),
            version: "v1.12.3".parse().unwrap(),
            platform: platform.parse().unwrap(),
            plugins: plugins
                .iter()
                .map(|(m, v)| PluginSpec { module: ModulePath::parse("m", m).unwrap(), version: v.parse().unwrap() })
                .collect(),
            replacements: vec![],
        }
    }

    fn argv(run: &[&str], spec: &BuildSpec) -> Vec<String> {
        let r = recipe(run, &[]);
        render_steps("hello", &r, spec).unwrap().remove(0).argv
    }

    #[test]
    fn plugins_expand_to_one_argument_each_in_module_order() {
        let s = spec("linux/amd64", &[("example.com/shout", "v1.0.0"), ("example.com/greet", "v0.2.0")]);
        assert_eq!(
            argv(&["x", "{{ plugins }}", "{{plugins}}", " {{  plugins }} ", "y"], &s),
            [
                "x",
                "example.com/greet@v0.2.0",
                "example.com/shout@v1.0.0",
                "example.com/greet@v0.2.0",
                "example.com/shout@v1.0.0",
                "example.com/greet@v0.2.0",
                "example.com/shout@v1.0.0",
                "y"
            ]
        );
        assert_eq!(argv(&["x", "{{ plugins }}", "y"], &spec("linux/amd64", &[])), ["x", "y"]);
    }

    #[test]
    fn replacements_expand_to_one_argument_each() {
        let mut s = spec("linux/amd64", &[]);
        let m = |p: &str| ModulePath::parse("m", p).unwrap();
        s.replacements = vec![
            Replacement { module: m("example.com/b"), with: m("example.com/c"), version: None },
            Replacement {
                module: m("example.com/a"),
                with: m("example.com/fork"),
                version: Some("v1.2.0".parse().unwrap()),
            },
        ];
        assert_eq!(
            argv(&["{{ replacements }}", "end"], &s),
            ["example.com/a=example.com/fork@v1.2.0", "example.com/b=example.com/c", "end"]
        );
        assert_eq!(argv(&["{{ replacements }}"], &spec("linux/amd64", &[])), Vec::<String>::new());
    }

    #[test]
    fn other_elements_render_to_exactly_one_argument() {
        let s = spec("linux/arm/7", &[("example.com/greet", "v0.2.0")]);
        assert_eq!(
            argv(
                &[
                    "{{ version }} {{ version_major }}.{{ version_minor }}.{{ version_patch }}",
                    "{{ os }}/{{ arch }}{% if arm %}v{{ arm }}{% endif %}",
                    "{{ binary }}",
                    "{{ plugins | join(',') }}",
                    "$(id) ; `rm -rf /` {{ version }}",
                    "",
                ],
                &s
            ),
            ["v1.12.3 1.12.3", "linux/armv7", "hello", "example.com/greet@v0.2.0", "$(id) ; `rm -rf /` v1.12.3", ""]
        );
        assert_eq!(argv(&["{% if arm %}v{{ arm }}{% endif %}"], &spec("linux/amd64", &[])), [""]);
    }

    #[test]
    fn binary_gets_exe_on_windows_and_env_is_rendered() {
        let r = recipe(&["{{ binary }}"], &[("GOOS", "{{ os }}"), ("GOARM", "{{ arm }}"), ("PLAIN", "x")]);
        let step = render_steps("hello", &r, &spec("windows/amd64", &[])).unwrap().remove(0);
        assert_eq!(step.argv, ["hello.exe"]);
        assert_eq!(step.env["GOOS"], "windows");
        assert_eq!(step.env["GOARM"], "");
        assert_eq!(step.env["PLAIN"], "x");
        assert_eq!(step.timeout, Duration::from_secs(60));
    }

    #[test]
    fn recipe_vars_are_seen_as_vars() {
        let mut r = recipe(&["{{ vars.core }}/cmd"], &[("GOPROXY", "{{ vars.goproxy }}")]);
        r.vars = [("core", "example.com/kilnd"), ("goproxy", "http://goproxy:8080")]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .into();
        let step = render_steps("hello", &r, &spec("linux/amd64", &[])).unwrap().remove(0);
        assert_eq!(step.argv, ["example.com/kilnd/cmd"]);
        assert_eq!(step.env["GOPROXY"], "http://goproxy:8080");
        let r = recipe(&["{{ vars.nope }}"], &[]);
        assert_eq!(render_steps("hello", &r, &spec("linux/amd64", &[])).unwrap_err().part, "run[0]");
    }

    #[test]
    fn errors_name_the_recipe_step_and_part() {
        let r = recipe(&["ok", "{{ nope }}"], &[]);
        let e = render_steps("hello", &r, &spec("linux/amd64", &[])).unwrap_err();
        assert_eq!((e.recipe.as_str(), e.step.as_str(), e.part.as_str()), ("hello", "build", "run[1]"));
        assert!(e.to_string().starts_with("recipe hello, step \"build\", run[1]: "), "{e}");

        let r = recipe(&["ok"], &[("GOOS", "{{ os")]);
        let e = render_steps("hello", &r, &spec("linux/amd64", &[])).unwrap_err();
        assert_eq!(e.part, "env.GOOS");

        for bad in ["A=B", "", "1X", "A B"] {
            let r = recipe(&["ok"], &[(bad, "x")]);
            let e = render_steps("hello", &r, &spec("linux/amd64", &[])).unwrap_err();
            assert_eq!(e.part, format!("env.{bad}"));
        }
    }
}
