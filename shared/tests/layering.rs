//! The crate's folders form layers: a module may import from its own folder
//! and from the layers below, never from above, and no set of modules may
//! import each other in a circle. Read from the `crate::` paths in the source.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Bottom first. Folders that share a rank (adapters, worker) may not import
/// each other: both depend only on ports and below.
const LAYERS: &[(&str, u8)] = &[
    ("fhir", 0),
    ("model", 1),
    ("ports", 2),
    ("adapters", 3),
    ("worker", 3),
    ("export", 4),
    ("api", 5),
    ("compose", 6),
    ("lambda", 7),
];

fn rank(top: &str) -> u8 {
    LAYERS
        .iter()
        .find(|(name, _)| *name == top)
        .map(|(_, r)| *r)
        .unwrap_or_else(|| panic!("folder `{top}` is not in LAYERS"))
}

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

/// `worker/step.rs` -> `worker::step`, `adapters/s3/mod.rs` -> `adapters::s3`.
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts.join("::")
}

/// Code without comments (doc comments name paths that are not imports).
fn code_lines(text: &str) -> impl Iterator<Item = &str> {
    text.lines().map(|l| match l.find("//") {
        Some(i) => &l[..i],
        None => l,
    })
}

/// Every `crate::a::b::...` path in the code, expanded through `{...}` groups
/// only as far as their first segment (enough to name the target module).
fn crate_paths(text: &str) -> Vec<Vec<String>> {
    let mut paths = Vec::new();
    for line in code_lines(text) {
        let mut rest = line;
        while let Some(i) = rest.find("crate::") {
            let tail = &rest[i + "crate::".len()..];
            let before = rest[..i].chars().last();
            rest = tail;
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                continue;
            }
            let segs: Vec<String> = tail
                .split("::")
                .map(|s| {
                    s.chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .collect::<String>()
                })
                .take_while(|s| !s.is_empty())
                .collect();
            paths.push(segs);
        }
    }
    paths
}

/// The longest known module that prefixes `path`.
fn target_module(modules: &BTreeSet<String>, path: &[String]) -> Option<String> {
    (1..=path.len())
        .rev()
        .map(|n| path[..n].join("::"))
        .find(|m| modules.contains(m))
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let modules: BTreeSet<String> = files.iter().map(|f| module_of(&src, f)).collect();
    let mut edges = BTreeMap::new();
    for file in &files {
        let from = module_of(&src, file);
        if from == "lib" {
            continue;
        }
        let text = std::fs::read_to_string(file).unwrap();
        for line in code_lines(&text) {
            let l = line.trim_start();
            // `super::` stays within the folder; further up, name the path.
            assert!(
                !l.contains("super::super"),
                "{from}: `{l}`: name the module by its crate path"
            );
        }
        let to: BTreeSet<String> = crate_paths(&text)
            .iter()
            .filter_map(|p| target_module(&modules, p))
            .filter(|t| *t != from)
            .collect();
        edges.insert(from, to);
    }
    edges
}

fn top(module: &str) -> &str {
    module.split("::").next().unwrap_or(module)
}

#[test]
fn no_module_imports_from_a_layer_above_its_own() {
    let mut violations = Vec::new();
    for (from, tos) in graph() {
        for to in tos {
            let (a, b) = (top(&from), top(&to));
            if a != b && (rank(b) > rank(a) || rank(b) == rank(a)) {
                violations.push(format!("{from} -> {to}"));
            }
        }
    }
    assert!(
        violations.is_empty(),
        "upward imports:\n{}",
        violations.join("\n")
    );
}

/// Tarjan's strongly connected components; any component of two or more
/// modules is an import cycle.
#[test]
fn no_import_cycles() {
    let g = graph();
    let names: Vec<&String> = g.keys().collect();
    let index_of: BTreeMap<&String, usize> =
        names.iter().enumerate().map(|(i, n)| (*n, i)).collect();
    let adj: Vec<Vec<usize>> = names
        .iter()
        .map(|n| {
            g[*n]
                .iter()
                .filter_map(|t| index_of.get(t).copied())
                .collect()
        })
        .collect();
    let mut cycles = Vec::new();
    let mut state = Tarjan {
        adj: &adj,
        index: vec![None; names.len()],
        low: vec![0; names.len()],
        on_stack: vec![false; names.len()],
        stack: Vec::new(),
        next: 0,
        components: Vec::new(),
    };
    for v in 0..names.len() {
        if state.index[v].is_none() {
            state.visit(v);
        }
    }
    for c in state.components.iter().filter(|c| c.len() > 1) {
        let mut members: Vec<&str> = c.iter().map(|i| names[*i].as_str()).collect();
        members.sort();
        cycles.push(members.join(" <-> "));
    }
    assert!(cycles.is_empty(), "import cycles:\n{}", cycles.join("\n"));
}

struct Tarjan<'a> {
    adj: &'a [Vec<usize>],
    index: Vec<Option<usize>>,
    low: Vec<usize>,
    on_stack: Vec<bool>,
    stack: Vec<usize>,
    next: usize,
    components: Vec<Vec<usize>>,
}

impl Tarjan<'_> {
    fn visit(&mut self, v: usize) {
        self.index[v] = Some(self.next);
        self.low[v] = self.next;
        self.next += 1;
        self.stack.push(v);
        self.on_stack[v] = true;
        for &w in &self.adj[v] {
            match self.index[w] {
                None => {
                    self.visit(w);
                    self.low[v] = self.low[v].min(self.low[w]);
                }
                Some(iw) if self.on_stack[w] => self.low[v] = self.low[v].min(iw),
                Some(_) => {}
            }
        }
        if Some(self.low[v]) == self.index[v] {
            let mut component = Vec::new();
            while let Some(w) = self.stack.pop() {
                self.on_stack[w] = false;
                component.push(w);
                if w == v {
                    break;
                }
            }
            self.components.push(component);
        }
    }
}

#[test]
fn the_checker_sees_an_upward_import() {
    let text = "use crate::api::kickoff::kickoff;\nlet x = crate::model::Job::default(); // crate::lambda::x";
    let paths = crate_paths(text);
    assert_eq!(paths.len(), 2);
    assert_eq!(paths[0], ["api", "kickoff", "kickoff"]);
    let modules: BTreeSet<String> = ["api", "api::kickoff", "model"].map(String::from).into();
    assert_eq!(
        target_module(&modules, &paths[0]).as_deref(),
        Some("api::kickoff")
    );
    assert!(rank("api") > rank("worker"));
}
