//! The agent's modules form layers: a module uses only modules of its own layer or of layers
//! below, and no module reaches itself through others (no import cycles).
//!
//! The graph is read from the source: every `crate::...` and `super::...` path in a file's code
//! (`use` lines, groups `use crate::{a, b::{c, d}}` and paths in expressions) is an edge from the
//! file's module to the module it names. A module is a top-level module with all its files
//! (`api`, `runtime`), except that each module of `workload/` is one of its own
//! (`workload/plan`). Test code (files named `tests.rs` or `*_tests.rs`, and what follows
//! `#[cfg(test)] mod ... {` in a file) is left out: tests use their module and its harnesses,
//! and nothing uses them. `crate::manifest` is the `shoal-model` crate, below every layer.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The layers, lowest first. ARCHITECTURE.md shows the same picture.
const LAYERS: &[&[&str]] = &[
    // What talks to the machine and the network: no shoal state.
    &[
        "clock",
        "disk",
        "dns",
        "memory",
        "net",
        "persist",
        "runtime",
        "secret_box",
        "secret_file",
    ],
    // The gossip driver: the sans-IO core on its runtime, publishing generic changes.
    &["driver"],
    // Values at rest and in the replicated state, and the snapshot decoded from them.
    &[
        "node_info",
        "workload/batch",
        "workload/limits",
        "workload/projector",
        "workload/snapshot",
        "workload/stored",
    ],
    // Pure planning, services, probes, the sans-IO pod supervisor, the API's views.
    &[
        "workload/plan",
        "workload/pod_config",
        "workload/probe",
        "workload/service",
        "workload/supervisor",
        "workload/view",
    ],
    // What drives them: the reconciler task, the HTTP API, the service proxy, the workload
    // simulator (and the supervisors' test bed).
    &[
        "api",
        "proxy",
        "workload/reconciler",
        "workload/sim",
        "workload/testbed",
    ],
    // The commands: the agent that wires everything, the CLI, the simulator.
    &["agent", "cli", "sim", "up"],
];

#[test]
fn agent_modules_form_layers_without_cycles() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let graph = module_graph(&src);
    let layer_of: BTreeMap<&str, usize> = LAYERS
        .iter()
        .enumerate()
        .flat_map(|(i, layer)| layer.iter().map(move |m| (*m, i)))
        .collect();
    let mut problems = Vec::new();
    for (module, uses) in &graph {
        let Some(&layer) = layer_of.get(module.as_str()) else {
            problems.push(format!("{module} is in no layer (add it to LAYERS)"));
            continue;
        };
        for used in uses {
            match layer_of.get(used.as_str()) {
                Some(&below) if below <= layer => {}
                Some(_) => problems.push(format!("{module} uses {used}, of a higher layer")),
                None => problems.push(format!("{used} is in no layer (add it to LAYERS)")),
            }
        }
    }
    if let Some(cycle) = find_cycle(&graph) {
        problems.push(format!("import cycle: {}", cycle.join(" -> ")));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_reader_sees_groups_nested_paths_and_super() {
    let code = "use crate::{a::{b, c::D}, e};\nuse super::super::f::G;\nlet x = crate::h::i();";
    let paths = paths_in(code, &["workload".into(), "x".into(), "y".into()]);
    let keys: BTreeSet<String> = paths.iter().map(|p| key(p)).collect();
    assert_eq!(
        keys,
        ["a", "e", "h", "workload/f"]
            .map(String::from)
            .into_iter()
            .collect()
    );
}

/// Module -> the modules it uses.
fn module_graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    collect_rs(src, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut code_of = Vec::new();
    for file in files {
        let rel = file.strip_prefix(src).expect("under src");
        let parts: Vec<String> = rel
            .with_extension("")
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect();
        let name = parts.last().cloned().unwrap_or_default();
        if matches!(name.as_str(), "lib" | "main") || is_test_file(&name) {
            continue;
        }
        let mut module = parts;
        if name == "mod" {
            module.pop();
        }
        if module == ["workload"] {
            // Only declares the modules of `workload/`.
            continue;
        }
        let text = std::fs::read_to_string(&file).expect("readable source");
        let code = without_tests(&strip_comments(&text));
        graph.entry(key(&module)).or_default();
        code_of.push((module, code));
    }
    let modules: BTreeSet<String> = graph.keys().cloned().collect();
    for (module, code) in code_of {
        let from = key(&module);
        for path in paths_in(&code, &module) {
            let to = key(&path);
            if to != from && modules.contains(&to) {
                graph.entry(from.clone()).or_default().insert(to);
            }
        }
    }
    graph
}

fn collect_rs(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("readable directory")
        .map(|e| e.expect("directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n != "tests") {
                collect_rs(&path, out);
            }
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn is_test_file(name: &str) -> bool {
    name == "tests" || name.ends_with("_tests")
}

/// The module a path names: its first part, or `workload/<part>` in `workload`.
fn key(path: &[String]) -> String {
    match path {
        [first, second, ..] if first == "workload" => format!("workload/{second}"),
        [first, ..] => first.clone(),
        [] => String::new(),
    }
}

/// The code without line comments (doc comments name paths too).
fn strip_comments(text: &str) -> String {
    text.lines()
        .map(|line| match line.find("//") {
            // `http://` in a string is not a comment; what follows it names no module anyway.
            Some(at) => &line[..at],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The code before its first inline `#[cfg(test)] mod ... {`.
fn without_tests(code: &str) -> String {
    let mut rest = code;
    let mut offset = 0;
    while let Some(at) = rest.find("#[cfg(test)]") {
        let after = rest[at + "#[cfg(test)]".len()..].trim_start();
        let line = after.lines().next().unwrap_or("");
        let is_module = line.starts_with("mod ") || line.starts_with("pub(crate) mod ");
        if is_module && line.trim_end().ends_with('{') {
            return code[..offset + at].to_owned();
        }
        offset += at + 1;
        rest = &rest[at + 1..];
    }
    code.to_owned()
}

/// Every module path the code names with `crate::` or `super::`, as absolute paths.
fn paths_in(code: &str, module: &[String]) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let bytes = code.as_bytes();
    let mut i = 0;
    while i < code.len() {
        let preceded = i > 0 && (bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
        let at = &code[i..];
        if !preceded && at.starts_with("crate::") {
            tree(&code[i + "crate::".len()..], Vec::new(), &mut out);
        } else if !preceded && at.starts_with("super::") && !(i >= 2 && &bytes[i - 2..i] == b"::") {
            let mut base = module[..module.len().saturating_sub(1)].to_vec();
            let mut rest = &code[i + "super::".len()..];
            while let Some(more) = rest.strip_prefix("super::") {
                base.pop();
                rest = more;
            }
            tree(rest, base, &mut out);
        }
        i += at.chars().next().map_or(1, char::len_utf8);
    }
    out
}

/// Reads a use tree (`a::b`, `a::{b, c::d}`, `{a, b}`) at the start of `text`; returns what it
/// consumed.
fn tree(text: &str, prefix: Vec<String>, out: &mut Vec<Vec<String>>) -> usize {
    let mut path = prefix;
    let mut i = 0;
    loop {
        let rest = &text[i..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut used = 1;
            let mut inner = group;
            loop {
                let trimmed = inner.trim_start();
                used += inner.len() - trimmed.len();
                if let Some(after) = trimmed.strip_prefix('}') {
                    return i + used + (trimmed.len() - after.len());
                }
                if trimmed.is_empty() {
                    return i + used;
                }
                let n = tree(trimmed, path.clone(), out);
                let after = trimmed[n..].trim_start();
                let after = after.strip_prefix(',').unwrap_or(after);
                used += trimmed.len() - after.len();
                inner = after;
                if n == 0 && after.len() == trimmed.len() {
                    return i + used;
                }
            }
        }
        let ident_len = rest
            .find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        if ident_len == 0 {
            break;
        }
        let ident = &rest[..ident_len];
        if ident != "self" {
            path.push(ident.to_owned());
        }
        i += ident_len;
        if text[i..].starts_with("::") {
            i += 2;
        } else {
            break;
        }
    }
    if !path.is_empty() {
        out.push(path);
    }
    i
}

/// A cycle of the graph, if it has one.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Open,
        Done,
    }
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        marks: &mut BTreeMap<String, Mark>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match marks.get(node) {
            Some(Mark::Done) => return None,
            Some(Mark::Open) => {
                let start = stack.iter().position(|n| n == node).unwrap_or(0);
                let mut cycle = stack[start..].to_vec();
                cycle.push(node.to_owned());
                return Some(cycle);
            }
            None => {}
        }
        marks.insert(node.to_owned(), Mark::Open);
        stack.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, marks, stack) {
                return Some(cycle);
            }
        }
        stack.pop();
        marks.insert(node.to_owned(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut marks, &mut Vec::new()))
}
