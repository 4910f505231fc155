//! The shape of the code: no file imports, directly or through others, a file that imports
//! it back, and the low layers (`exec/`, `pg/`, `repo/`, `plan/`) never reach up into the
//! steps, the executor or the commands (and `pg/` is plumbing that knows nothing of steps). Read from the source text: `crate::…` and `super::…`
//! paths (with `{…}` groups) outside comments, and a module file's references to its own
//! children.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Module path (`pg/swap`, `steps`, `lib`) → source without its unit tests.
fn modules() -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut dirs = vec![root.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(&root).unwrap().with_extension("");
            let mut name = rel.to_string_lossy().replace('\\', "/");
            if let Some(parent) = name.strip_suffix("/mod") {
                name = parent.to_string();
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let text = match text.find("#[cfg(test)]\nmod tests") {
                Some(at) => &text[..at],
                None => &text[..],
            };
            // Comments name modules without importing them.
            let text: String = text
                .lines()
                .map(|line| line.split("//").next().unwrap_or(""))
                .collect::<Vec<_>>()
                .join("\n");
            out.insert(name, text);
        }
    }
    out
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The `::`-separated path starting at `text`, and the items of a `{…}` group ending it
/// (each item itself a path; one level of nesting is enough for this code base).
fn paths_at(text: &str) -> Vec<String> {
    let mut segments = Vec::new();
    let mut rest = text;
    loop {
        let len = rest.find(|c: char| !is_ident(c)).unwrap_or(rest.len());
        if len == 0 {
            break;
        }
        segments.push(&rest[..len]);
        rest = &rest[len..];
        match rest.strip_prefix("::") {
            Some(after) => rest = after,
            None => break,
        }
    }
    let base = segments.join("/");
    if let Some(group) = rest.strip_prefix('{') {
        let end = group.find('}').unwrap_or(group.len());
        return group[..end]
            .split(',')
            .map(|item| {
                item.split_whitespace()
                    .next()
                    .unwrap_or("")
                    .replace("::", "/")
            })
            .filter(|item| !item.is_empty() && item != "self")
            .map(|item| format!("{base}/{item}"))
            .chain((!base.is_empty()).then(|| base.clone()))
            .collect();
    }
    vec![base]
}

/// The longest module that `path` starts with.
fn resolve(path: &str, modules: &BTreeMap<String, String>) -> Option<String> {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    (1..=parts.len())
        .rev()
        .map(|n| parts[..n].join("/"))
        .find(|m| modules.contains_key(m))
}

fn imports(modules: &BTreeMap<String, String>) -> BTreeMap<String, BTreeSet<String>> {
    let mut graph = BTreeMap::new();
    for (name, text) in modules {
        let parent = name.rsplit_once('/').map_or("", |(p, _)| p);
        let mut found = BTreeSet::new();
        let mut add = |path: String| {
            if let Some(target) = resolve(&path, modules)
                && &target != name
            {
                found.insert(target);
            }
        };
        for (marker, prefix) in [("crate::", String::new()), ("super::", parent.to_string())] {
            for (at, _) in text.match_indices(marker) {
                for path in paths_at(&text[at + marker.len()..]) {
                    add(if prefix.is_empty() {
                        path
                    } else {
                        format!("{prefix}/{path}")
                    });
                }
            }
        }
        // A module file dispatching to its children (`backup::run`) depends on them.
        let children = modules.keys().filter(|k| {
            k.strip_prefix(&format!("{name}/"))
                .is_some_and(|rest| !rest.contains('/'))
        });
        for child in children {
            let short = child.rsplit('/').next().unwrap();
            let needle = format!("{short}::");
            let used = text
                .match_indices(&needle)
                .any(|(at, _)| !text[..at].ends_with(|c: char| is_ident(c) || c == ':'));
            if used {
                found.insert(child.clone());
            }
        }
        graph.insert(name.clone(), found);
    }
    graph
}

/// One cycle in `graph`, if there is one (an iterative depth-first search).
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    let mut state: BTreeMap<&str, u8> = BTreeMap::new(); // 1 = on the path, 2 = done
    for start in graph.keys() {
        if state.contains_key(start.as_str()) {
            continue;
        }
        let mut stack: Vec<(&str, Vec<&str>)> =
            vec![(start, graph[start].iter().map(String::as_str).collect())];
        state.insert(start, 1);
        while let Some((node, pending)) = stack.last_mut() {
            let node = *node;
            match pending.pop() {
                Some(next) => match state.get(next) {
                    Some(1) => {
                        let from = stack.iter().position(|(n, _)| *n == next).unwrap();
                        let mut cycle: Vec<String> =
                            stack[from..].iter().map(|(n, _)| n.to_string()).collect();
                        cycle.push(next.to_string());
                        return Some(cycle);
                    }
                    Some(_) => {}
                    None => {
                        state.insert(next, 1);
                        let edges = graph.get(next).into_iter().flatten();
                        stack.push((next, edges.map(String::as_str).collect()));
                    }
                },
                None => {
                    state.insert(node, 2);
                    stack.pop();
                }
            }
        }
    }
    None
}

#[test]
fn the_import_graph_has_no_cycle() {
    let modules = modules();
    let graph = imports(&modules);
    // The reader must see what it is checking, or a broken scanner would pass everything.
    assert!(graph["steps/backup"].contains("pg/process"), "{graph:?}");
    assert!(
        graph["steps/registry"].contains("steps/backup"),
        "{graph:?}"
    );
    assert!(graph["repo/local"].contains("repo/store"), "{graph:?}");
    if let Some(cycle) = find_cycle(&graph) {
        panic!("import cycle: {}", cycle.join(" → "));
    }
    // And the check itself finds a cycle when there is one.
    let mut looped = graph.clone();
    looped
        .get_mut("exec/error")
        .unwrap()
        .insert("steps/backup".into());
    assert!(find_cycle(&looped).is_some());
}

#[test]
fn low_layers_never_reach_up() {
    let modules = modules();
    let graph = imports(&modules);
    let upper = ["steps", "run", "commands", "backups", "main"];
    let rules: [(&str, &[&str]); 4] = [
        ("exec", &["pg"]),
        ("pg", &[]),
        ("repo", &["exec"]),
        ("plan", &["pg", "exec"]),
    ];
    for (layer, also_forbidden) in rules {
        for (module, targets) in graph
            .iter()
            .filter(|(m, _)| m.as_str() == layer || m.starts_with(&format!("{layer}/")))
        {
            for target in targets {
                // The loader and the resolver type a step's parameters by asking the step
                // registry for its type, and nothing else of the steps.
                if ASK_THE_REGISTRY.contains(&module.as_str()) && target == "steps/registry" {
                    continue;
                }
                let top = target.split('/').next().unwrap();
                assert!(
                    !upper.contains(&top) && !also_forbidden.contains(&top),
                    "{module} imports {target}: `{layer}/` sits below it"
                );
            }
        }
    }
}

/// The only files below `steps/` that may name the step registry.
const ASK_THE_REGISTRY: &[&str] = &["plan/load", "plan/resolve"];

/// Every place that needs to know about step types asks the registry: no file outside a
/// step type's own names another step type's file.
#[test]
fn step_types_are_reached_only_through_the_registry() {
    let modules = modules();
    let graph = imports(&modules);
    let registry = &modules["steps/registry"];
    let types: Vec<&String> = graph["steps/registry"]
        .iter()
        .filter(|t| {
            t.starts_with("steps/") && !["steps/probe", "steps/step_type"].contains(&t.as_str())
        })
        .collect();
    assert!(types.len() >= 11, "{types:?}");
    for t in &types {
        let name = t.trim_start_matches("steps/");
        assert!(
            registry.contains(&format!("register::<super::{name}::")),
            "{t} is not registered"
        );
    }
    for (module, targets) in &graph {
        if module.starts_with("steps/") || module == "steps" {
            continue;
        }
        for target in targets {
            assert!(
                !types.contains(&target),
                "{module} imports the step type {target}; ask `steps::registry` instead"
            );
        }
    }
}
