//! ARCHITECTURE.md's "Where is …" table names files that exist and items
//! those files define, and its code map names the workspace's crates.

use std::path::Path;

/// The backticked words of a table cell.
fn ticked(cell: &str) -> Vec<&str> {
    cell.split('`').skip(1).step_by(2).collect()
}

/// Does `text` define `name` (a function, type, trait or module)?
fn defines(text: &str, name: &str) -> bool {
    ["fn", "struct", "enum", "trait", "type", "mod", "const", "static"].iter().any(|kw| {
        text.match_indices(&format!("{kw} {name}")).any(|(at, m)| {
            let next = text[at + m.len()..].chars().next();
            !next.is_some_and(|c| c.is_alphanumeric() || c == '_')
        })
    })
}

#[test]
fn the_where_is_table_names_real_files_and_items() {
    let root = kiln_testkit::repo_root();
    let arch = std::fs::read_to_string(root.join("ARCHITECTURE.md")).unwrap();
    let table = arch.split("## Where is").nth(1).expect("a \"Where is …\" section").split("\n## ").next().unwrap();
    let mut rows = 0;
    let mut wrong = Vec::new();
    for line in
        table.lines().filter(|l| l.starts_with("| ") && !l.starts_with("| behaviour") && !l.starts_with("| ---"))
    {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let (files, items) = (ticked(cells[2]), ticked(cells[3]));
        rows += 1;
        let mut texts = String::new();
        for f in &files {
            let path = root.join(f);
            if !path.exists() {
                wrong.push(format!("{f}: no such file or directory"));
            } else if path.is_file() {
                texts.push_str(&std::fs::read_to_string(&path).unwrap());
            }
        }
        for item in &items {
            let name = item.rsplit("::").next().unwrap();
            if !defines(&texts, name) {
                wrong.push(format!("{item}: not defined in {}", files.join(", ")));
            }
        }
    }
    assert!(rows >= 20, "only {rows} rows in the \"Where is …\" table");
    assert!(wrong.is_empty(), "ARCHITECTURE.md's \"Where is …\" table is out of date:\n{}", wrong.join("\n"));
}

#[test]
fn the_code_map_names_every_crate() {
    let root = kiln_testkit::repo_root();
    let arch = std::fs::read_to_string(root.join("ARCHITECTURE.md")).unwrap();
    let map = arch.split("## Code map").nth(1).expect("a code map").split("\n## ").next().unwrap();
    for entry in std::fs::read_dir(root.join("crates")).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        assert!(map.contains(&format!("**{name}**")), "ARCHITECTURE.md's code map lacks {name}");
    }
    for line in map.lines().filter_map(|l| l.strip_prefix("- **")) {
        let name = line.split("**").next().unwrap();
        let dir = if name.ends_with('/') { root.join(name) } else { root.join("crates").join(name) };
        assert!(Path::new(&dir).is_dir(), "ARCHITECTURE.md's code map names {name}, which does not exist");
    }
}
