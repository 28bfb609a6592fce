//! `docs/api-reference.md`: the API document rendered as Markdown, so the
//! reference a reader browses is the document itself. Test-only: a test
//! compares the rendering with the checked-in file.

use std::fmt::Write as _;

use serde_json::Value;

/// The Markdown reference of `doc` (an OpenAPI document as JSON).
pub fn render(doc: &Value, regenerate: &str) -> String {
    let mut out = String::new();
    let info = &doc["info"];
    let _ = writeln!(out, "# {} HTTP API reference\n", text(&info["title"]));
    let _ = writeln!(
        out,
        "Generated from the OpenAPI {} document [`openapi.json`](openapi.json) (served at \
         `GET /api/openapi.json`); do not edit, regenerate with `{regenerate}`. The guide to the \
         API is [api.md](api.md).\n",
        text(&doc["openapi"])
    );
    let _ = writeln!(out, "{}\n", text(&info["description"]));

    let operations = operations(doc);
    out.push_str("## Contents\n\n");
    for tag in doc["tags"].as_array().into_iter().flatten() {
        let name = text(&tag["name"]);
        // Tag names are not headings: `compat` is an operation's too.
        let _ = writeln!(out, "**{name}**: {}\n", text(&tag["description"]));
        let _ = writeln!(out, "| operation | method and path | summary |\n| --- | --- | --- |");
        for (method, path, op) in operations.iter().filter(|(_, _, op)| has_tag(op, &name)) {
            let id = text(&op["operationId"]);
            let _ = writeln!(out, "| [{id}](#{}) | `{method} {path}` | {} |", anchor(&id), text(&op["summary"]));
        }
        out.push('\n');
    }

    out.push_str("## Operations\n\n");
    for (method, path, op) in &operations {
        operation(&mut out, method, path, op);
    }

    out.push_str("## Schemas\n\n");
    for (name, schema) in doc["components"]["schemas"].as_object().into_iter().flatten() {
        let _ = writeln!(out, "### {name}\n");
        if let Some(d) = schema["description"].as_str() {
            let _ = writeln!(out, "{}\n", d.replace('\n', " "));
        }
        schema_body(&mut out, schema);
        out.push('\n');
    }
    while out.ends_with("\n\n") {
        out.pop();
    }
    out
}

fn operations(doc: &Value) -> Vec<(String, String, &Value)> {
    let mut ops = Vec::new();
    for (path, item) in doc["paths"].as_object().into_iter().flatten() {
        for (method, op) in item.as_object().into_iter().flatten() {
            ops.push((method.to_uppercase(), path.clone(), op));
        }
    }
    ops
}

fn operation(out: &mut String, method: &str, path: &str, op: &Value) {
    let _ = writeln!(out, "### {}\n", text(&op["operationId"]));
    let _ = writeln!(out, "`{method} {path}`: {}\n", text(&op["summary"]));
    if let Some(d) = op["description"].as_str() {
        let _ = writeln!(out, "{}\n", d.replace('\n', " "));
    }
    if op["security"].is_array() {
        out.push_str("Needs `Authorization: Bearer <api.admin_token>`.\n\n");
    }
    if let Some(params) = op["parameters"].as_array().filter(|p| !p.is_empty()) {
        out.push_str("| parameter | in | type | required | description |\n| --- | --- | --- | --- | --- |\n");
        for p in params {
            let _ = writeln!(
                out,
                "| `{}` | {} | {} | {} | {} |",
                text(&p["name"]),
                text(&p["in"]),
                type_of(&p["schema"]),
                if p["required"].as_bool() == Some(true) { "yes" } else { "no" },
                cell(&p["description"]),
            );
        }
        out.push('\n');
    }
    if let Some(body) = op["requestBody"]["content"].as_object() {
        for (media, content) in body {
            let _ = writeln!(out, "Request body (`{media}`): {}\n", type_of(&content["schema"]));
        }
    }
    out.push_str("| status | content | description |\n| --- | --- | --- |\n");
    for (status, resp) in op["responses"].as_object().into_iter().flatten() {
        let content: Vec<String> = resp["content"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(media, c)| match c.get("schema") {
                Some(s) => format!("`{media}` {}", type_of(s)),
                None => format!("`{media}`"),
            })
            .collect();
        let mut description = cell(&resp["description"]);
        if let Some(headers) = resp["headers"].as_object() {
            let names: Vec<String> = headers.keys().map(|h| format!("`{h}`")).collect();
            let _ = write!(description, " Headers: {}.", names.join(", "));
        }
        if let Some(links) = resp["links"].as_object() {
            let ids: Vec<String> = links.keys().map(|l| format!("[{l}](#{})", anchor(l))).collect();
            let _ = write!(description, " Links: {}.", ids.join(", "));
        }
        let _ = writeln!(out, "| {status} | {} | {description} |", content.join(", "));
    }
    out.push('\n');
}

fn schema_body(out: &mut String, schema: &Value) {
    if let Some(values) = schema["enum"].as_array() {
        let values: Vec<String> = values.iter().map(|v| format!("`{}`", text(v))).collect();
        let _ = writeln!(out, "One of {}.", values.join(", "));
        return;
    }
    if let Some(variants) = schema["oneOf"].as_array() {
        out.push_str("One of:\n\n");
        for v in variants {
            let _ = writeln!(out, "- {}: {}", type_of(v), text(&v["description"]));
            for (name, p) in v["properties"].as_object().into_iter().flatten() {
                let _ = writeln!(out, "  - `{name}`: {} {}", type_of(p), text(&p["description"]));
            }
        }
        return;
    }
    let required: Vec<&str> = schema["required"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    out.push_str("| field | type | required | description |\n| --- | --- | --- | --- |\n");
    for (name, p) in schema["properties"].as_object().into_iter().flatten() {
        let _ = writeln!(
            out,
            "| `{name}` | {} | {} | {} |",
            type_of(p),
            if required.contains(&name.as_str()) { "yes" } else { "no" },
            cell(&p["description"]),
        );
    }
}

/// A short type: `string`, `integer?` (nullable), `[Plugin](#plugin)[]`.
fn type_of(schema: &Value) -> String {
    if let Some(r) = schema["$ref"].as_str() {
        let name = r.rsplit('/').next().unwrap_or(r);
        return format!("[{name}](#{})", anchor(name));
    }
    if let Some(variants) = schema["oneOf"].as_array() {
        return variants.iter().map(type_of).collect::<Vec<_>>().join(" or ");
    }
    if let Some(values) = schema["enum"].as_array() {
        return values.iter().map(|v| format!("`{}`", text(v))).collect::<Vec<_>>().join(" or ");
    }
    let (base, nullable) = match &schema["type"] {
        Value::String(t) => (t.clone(), false),
        Value::Array(ts) => {
            let named: Vec<&str> = ts.iter().filter_map(Value::as_str).filter(|t| *t != "null").collect();
            (named.join(" or "), ts.len() > named.len())
        }
        _ => ("any".to_owned(), false),
    };
    let base = match base.as_str() {
        "array" => format!("{}[]", type_of(&schema["items"])),
        "object" if schema["additionalProperties"].is_object() => {
            format!("map of {}", type_of(&schema["additionalProperties"]))
        }
        _ => base,
    };
    let base = match schema["format"].as_str() {
        Some("date-time") => format!("{base} (date-time)"),
        _ => base,
    };
    let base = match schema["pattern"].as_str() {
        Some(p) => format!("{base} `{p}`"),
        None => base,
    };
    if nullable { format!("{base}?") } else { base }
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Text for one table cell: one line, no bare `|`.
fn cell(v: &Value) -> String {
    text(v).replace('\n', " ").replace('|', "\\|")
}

/// GitHub's heading anchor for a heading that is one identifier.
fn anchor(name: &str) -> String {
    name.to_lowercase()
}

fn has_tag(op: &Value, tag: &str) -> bool {
    op["tags"].as_array().is_some_and(|ts| ts.iter().any(|t| t == tag))
}
