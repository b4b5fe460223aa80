//! The layering rule of ARCHITECTURE.md: a module of `src/` imports only from modules listed
//! below it. The list is read from ARCHITECTURE.md itself (its numbered "Layers" list, bottom
//! first), so the document and the code cannot drift apart. Unit-test modules at the end of a
//! file (`#[cfg(test)]`, `#[cfg(all(test, ...))]`) are not checked; comments are ignored. Code
//! inside the crate names an item by its module (`crate::backend::ArBackend`), never through
//! the crate root's re-exports, which import everything.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The numbered list under `## Layers`: "1. `error` — ..." → ["error", ...], bottom first.
fn layers() -> Vec<String> {
    let text = std::fs::read_to_string(root().join("ARCHITECTURE.md")).expect("ARCHITECTURE.md");
    let section = text.split("## Layers").nth(1).expect("a `## Layers` section");
    let section = section.split("\n## ").next().unwrap_or(section);
    section
        .lines()
        .filter_map(|l| {
            let (num, rest) = l.trim().split_once(". `")?;
            num.parse::<usize>().ok()?;
            Some(rest.split('`').next()?.to_string())
        })
        .collect()
}

/// Every `.rs` file below `dir`.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code lines of a file: comments dropped, and nothing from a trailing test module on.
fn code_lines(text: &str) -> Vec<(usize, String)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let t = line.trim();
        if t.starts_with("#[cfg(") && t.contains("test") {
            let next = lines[i + 1..]
                .iter()
                .map(|l| l.trim())
                .find(|l| !l.is_empty() && !l.starts_with("//"));
            if next.is_some_and(|n| n.starts_with("mod ") || n.starts_with("pub(crate) mod ")) {
                break;
            }
        }
        if t.starts_with("//") {
            continue;
        }
        let code = t.split(" //").next().unwrap_or(t);
        out.push((i + 1, code.to_string()));
    }
    out
}

/// Names re-exported at the crate root (`pub use module::{A, B}` in lib.rs) → their module.
fn root_names() -> HashMap<String, String> {
    let lib = std::fs::read_to_string(root().join("src/lib.rs")).unwrap();
    let mut map = HashMap::new();
    let mut rest = lib.as_str();
    while let Some(at) = rest.find("pub use ") {
        let stmt = &rest[at + 8..];
        let end = stmt.find(';').unwrap();
        let stmt = &stmt[..end];
        rest = &rest[at + 8 + end..];
        let (module, names) = stmt.split_once("::").unwrap_or((stmt, ""));
        for name in names.trim_matches(|c| c == '{' || c == '}').split(',') {
            let name = name.trim().rsplit(" as ").next().unwrap().trim();
            if !name.is_empty() {
                map.insert(name.to_string(), module.trim().to_string());
            }
        }
    }
    map
}

/// The top-level modules `line` names through `crate::…` paths; a root re-export is `lib`.
fn crate_refs(line: &str, roots: &HashMap<String, String>) -> Vec<String> {
    let mut out = Vec::new();
    let mut push = |name: &str| {
        let name = name.trim();
        if roots.contains_key(name) {
            out.push("lib".to_string());
        } else if !name.is_empty() && name.chars().next().is_some_and(|c| c.is_ascii_lowercase()) {
            out.push(name.to_string());
        }
    };
    let mut rest = line;
    while let Some(at) = rest.find("crate::") {
        let tail = &rest[at + 7..];
        if tail.starts_with('{') {
            let group = &tail[1..tail.find('}').unwrap_or(tail.len())];
            for item in group.split(',') {
                push(item.split("::").next().unwrap_or(""));
            }
        } else {
            let end = tail
                .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            push(&tail[..end]);
        }
        rest = tail;
    }
    out
}

#[test]
fn no_module_imports_from_a_module_above_it() {
    let order = layers();
    assert!(
        order.len() >= 10,
        "ARCHITECTURE.md lists {} layers: {order:?}",
        order.len()
    );
    let rank: HashMap<&str, usize> = order.iter().enumerate().map(|(i, m)| (m.as_str(), i)).collect();
    let roots = root_names();
    let src = root().join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut violations = Vec::new();
    let mut unlisted = Vec::new();
    for file in &files {
        let rel = file.strip_prefix(&src).unwrap();
        let first = rel.components().next().unwrap().as_os_str().to_string_lossy();
        let module = first.trim_end_matches(".rs").to_string();
        if module == "lib" {
            continue;
        }
        let Some(&own) = rank.get(module.as_str()) else {
            unlisted.push(module.clone());
            continue;
        };
        let text = std::fs::read_to_string(file).unwrap();
        for (n, line) in code_lines(&text) {
            for target in crate_refs(&line, &roots) {
                if target == "lib" {
                    violations.push(format!(
                        "src/{}:{n}: `{module}` imports through the crate root: name the module",
                        rel.display()
                    ));
                    continue;
                }
                match rank.get(target.as_str()) {
                    Some(&r) if r > own => violations.push(format!(
                        "src/{}:{n}: `{module}` (layer {}) imports `{target}` (layer {})",
                        rel.display(),
                        own + 1,
                        r + 1
                    )),
                    Some(_) => {}
                    None => unlisted.push(target),
                }
            }
        }
    }
    unlisted.sort();
    unlisted.dedup();
    assert!(
        unlisted.is_empty(),
        "modules missing from ARCHITECTURE.md's layer list: {unlisted:?}"
    );
    assert!(
        violations.is_empty(),
        "upward imports:\n{}",
        violations.join("\n")
    );
}

#[test]
fn every_top_level_module_is_listed_once() {
    let order = layers();
    let mut sorted = order.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), order.len(), "a module is listed twice: {order:?}");
    let lib = std::fs::read_to_string(root().join("src/lib.rs")).unwrap();
    for line in lib.lines() {
        let t = line.trim();
        for prefix in ["pub mod ", "mod ", "pub(crate) mod "] {
            if let Some(name) = t.strip_prefix(prefix) {
                let name = name.trim_end_matches(';');
                assert!(
                    order.iter().any(|m| m == name),
                    "src/lib.rs declares `{name}`, not in ARCHITECTURE.md"
                );
            }
        }
    }
}
