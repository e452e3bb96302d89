//! Neither crate's modules form a cycle: the shared vocabulary sits at the bottom and each
//! capability depends only on what is below it. A module's re-exports of its own children are
//! structure, not dependencies; every other `crate::`, `super::` or `self::` path is an edge.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use syn::visit::Visit;

use crate::common;

/// Module path → the modules it refers to.
type Graph = BTreeMap<Vec<String>, BTreeSet<Vec<String>>>;

/// The module a source file under `src/` defines: `placement/mod.rs` and `placement.rs` are
/// `placement`, `lib.rs` and `main.rs` the crate root.
fn module_of(relative: &Path) -> Vec<String> {
    let mut parts: Vec<String> = relative
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts
}

#[derive(Default)]
struct Paths(Vec<Vec<String>>);

impl Paths {
    fn flatten(&mut self, prefix: &mut Vec<String>, tree: &syn::UseTree) {
        match tree {
            syn::UseTree::Path(p) => {
                prefix.push(p.ident.to_string());
                self.flatten(prefix, &p.tree);
                prefix.pop();
            }
            syn::UseTree::Name(n) => {
                let mut path = prefix.clone();
                if n.ident != "self" {
                    path.push(n.ident.to_string());
                }
                self.0.push(path);
            }
            syn::UseTree::Rename(r) => {
                let mut path = prefix.clone();
                path.push(r.ident.to_string());
                self.0.push(path);
            }
            syn::UseTree::Glob(_) => self.0.push(prefix.clone()),
            syn::UseTree::Group(g) => g.items.iter().for_each(|t| self.flatten(prefix, t)),
        }
    }
}

impl<'ast> Visit<'ast> for Paths {
    fn visit_item_use(&mut self, item: &'ast syn::ItemUse) {
        self.flatten(&mut Vec::new(), &item.tree);
    }

    fn visit_path(&mut self, path: &'ast syn::Path) {
        self.0
            .push(path.segments.iter().map(|s| s.ident.to_string()).collect());
        syn::visit::visit_path(self, path);
    }
}

/// The module graph of a crate, from `(module, source)` pairs.
fn graph(files: &[(Vec<String>, String)]) -> Graph {
    let modules: BTreeSet<&Vec<String>> = files.iter().map(|(m, _)| m).collect();
    let mut graph = Graph::new();
    for (module, source) in files {
        let file = syn::parse_file(source).unwrap_or_else(|e| panic!("{module:?}: {e}"));
        let mut paths = Paths::default();
        paths.visit_file(&file);
        let edges = graph.entry(module.clone()).or_default();
        for path in paths.0 {
            let mut absolute = match path.first().map(String::as_str) {
                Some("crate") => Vec::new(),
                Some("super") => module[..module.len().saturating_sub(1)].to_vec(),
                Some("self") => module.clone(),
                _ => continue,
            };
            absolute.extend(path.into_iter().skip(1).filter(|s| s != "super"));
            // The longest prefix that is a module of the crate.
            let Some(target) = (0..=absolute.len())
                .rev()
                .map(|n| absolute[..n].to_vec())
                .find(|candidate| modules.contains(candidate))
            else {
                continue;
            };
            if !target.starts_with(module) {
                edges.insert(target);
            }
        }
    }
    graph
}

/// Every cycle found by a depth-first walk, each as the modules around it.
fn cycles(graph: &Graph) -> Vec<Vec<String>> {
    fn walk(
        node: &Vec<String>,
        graph: &Graph,
        stack: &mut Vec<Vec<String>>,
        done: &mut BTreeSet<Vec<String>>,
        found: &mut Vec<Vec<String>>,
    ) {
        if let Some(at) = stack.iter().position(|n| n == node) {
            found.push(stack[at..].iter().map(|m| m.join("::")).collect());
            return;
        }
        if !done.insert(node.clone()) {
            return;
        }
        stack.push(node.clone());
        for next in graph.get(node).into_iter().flatten() {
            walk(next, graph, stack, done, found);
        }
        stack.pop();
    }
    let mut found = Vec::new();
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        walk(node, graph, &mut Vec::new(), &mut done, &mut found);
    }
    found
}

fn crate_sources(src: &str) -> Vec<(Vec<String>, String)> {
    let root = common::repo_path(src);
    let mut files = Vec::new();
    let mut dirs = vec![root.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let relative = path.strip_prefix(&root).expect("under src").to_path_buf();
                // The binary's root is not the library's: leave it out.
                if relative != Path::new("main.rs") {
                    files.push((
                        module_of(&relative),
                        common::read(&format!("{src}/{}", relative.display())),
                    ));
                }
            }
        }
    }
    files
}

#[test]
fn the_check_finds_a_cycle_through_a_shared_name() {
    let files = [
        (vec![], "pub mod a; pub mod b; pub mod c;".to_string()),
        (vec!["a".into()], "use crate::b::Thing;".to_string()),
        (
            vec!["b".into()],
            "pub struct Thing; fn f() { super::c::g(); }".to_string(),
        ),
        (
            vec!["c".into()],
            "pub fn g() -> crate::a::A { crate::a::A }".to_string(),
        ),
    ];
    assert_eq!(cycles(&graph(&files)), vec![vec!["a", "b", "c"]]);
}

#[test]
fn a_module_re_exporting_its_children_is_no_cycle() {
    let files = [
        (vec![], "pub mod p;".to_string()),
        (
            vec!["p".into()],
            "mod model; pub use model::*; pub mod review;".to_string(),
        ),
        (
            vec!["p".into(), "model".into()],
            "pub struct Index;".to_string(),
        ),
        (
            vec!["p".into(), "review".into()],
            "use crate::p::Index; use super::model::Index as I;".to_string(),
        ),
    ];
    assert_eq!(cycles(&graph(&files)), Vec::<Vec<String>>::new());
}

#[test]
fn no_module_of_either_crate_is_part_of_a_cycle() {
    for src in ["core/src", "operator/src"] {
        let found = cycles(&graph(&crate_sources(src)));
        assert!(found.is_empty(), "{src}: module cycles: {found:?}");
    }
}
