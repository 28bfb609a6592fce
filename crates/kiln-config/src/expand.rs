//! `${VAR}` and `${VAR:-default}` expansion inside parsed YAML values.
//!
//! Expansion happens after parsing and only inside string scalars, so a
//! variable's value is data and can never become keys or structure. After
//! expansion, a scalar that was written as a template and now reads as an
//! integer, a float or `true`/`false` takes that type (so
//! `concurrency: ${N:-1}` works), and one that was exactly one `${…}` and
//! expanded to nothing becomes null (an unset optional value).

use yaml_serde::Value;

type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Expand every string scalar under `value`; on error, the key path and why.
pub(crate) fn expand_value(value: &mut Value, env: Env, path: &mut Vec<String>) -> Result<(), (String, String)> {
    match value {
        Value::String(s) if s.contains("${") => {
            let expanded = expand_str(s, env).map_err(|m| (path.join("."), m))?;
            let whole = s.starts_with("${") && s.ends_with('}') && s.matches("${").count() == 1;
            *value = typed(expanded, whole);
        }
        Value::Sequence(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                path.push(i.to_string());
                expand_value(item, env, path)?;
                path.pop();
            }
        }
        Value::Mapping(map) => {
            for (k, v) in map.iter_mut() {
                path.push(k.as_str().map(str::to_owned).unwrap_or_else(|| format!("{k:?}")));
                expand_value(v, env, path)?;
                path.pop();
            }
        }
        Value::Tagged(t) => expand_value(&mut t.value, env, path)?,
        _ => {}
    }
    Ok(())
}

fn typed(s: String, whole: bool) -> Value {
    if s.is_empty() && whole {
        return Value::Null;
    }
    if let Ok(n) = s.parse::<u64>() {
        return Value::Number(n.into());
    }
    if let Ok(n) = s.parse::<i64>() {
        return Value::Number(n.into());
    }
    if s.contains('.')
        && let Ok(n) = s.parse::<f64>()
    {
        return Value::Number(n.into());
    }
    match s.as_str() {
        "true" => Value::Bool(true),
        "false" => Value::Bool(false),
        _ => Value::String(s),
    }
}

/// Expand `${VAR}` and `${VAR:-default}` in `s`. `$$` is a literal `$`;
/// a `${…}` that is not a variable reference (a shell's `${p%@*}`) is kept.
/// A `${VAR}` with VAR unset is an error; the default may itself hold
/// `${…}` references.
pub(crate) fn expand_str(s: &str, env: Env) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        if let Some(r) = rest.strip_prefix("$$") {
            out.push('$');
            rest = r;
        } else if rest.starts_with("${") {
            let parsed = matching_brace(rest).and_then(|end| {
                let inner = &rest[2..end];
                let (name, default) = match inner.split_once(":-") {
                    Some((n, d)) => (n, Some(d)),
                    None => (inner, None),
                };
                is_var_name(name).then_some((end, name, default))
            });
            let Some((end, name, default)) = parsed else {
                // Not ours (e.g. a shell's `${p%@*}` in a recipe): keep it as written.
                out.push_str("${");
                rest = &rest[2..];
                continue;
            };
            match (env(name).filter(|v| !(default.is_some() && v.is_empty())), default) {
                (Some(v), _) => out.push_str(&v),
                (None, Some(d)) => out.push_str(&expand_str(d, env)?),
                (None, None) => return Err(format!("environment variable {name} is not set")),
            }
            rest = &rest[end + 1..];
        } else {
            out.push('$');
            rest = &rest[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

fn is_var_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Index of the `}` that closes the `${` at the start of `s`.
fn matching_brace(s: &str) -> Option<usize> {
    let mut depth = 0usize;
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'$' if bytes.get(i + 1) == Some(&b'{') => {
                depth += 1;
                i += 1;
            }
            b'}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
        i += 1;
    }
    None
}
