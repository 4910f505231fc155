//! The shape of the code: no file imports, directly or through others, a file that imports
//! it back; imports only go down the layers CONTRIBUTING lists (`plan/` below `repo/` below
//! `exec/` below `pg/` below the steps, the executor and the commands), with one documented
//! way up; every step file is a registered step type. Read from the source text: `crate::…` and `super::…`
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

/// The layers, lowest first (CONTRIBUTING, "The layers"): a module imports modules of its
/// own layer and of the layers below it, never above. Every top-level module has a place.
const LAYERS: &[&[&str]] = &[
    // Leaves: they import nothing of opsrunner.
    &[
        "atomic", "counting", "diag", "digest", "pipe", "process", "redact",
    ],
    &["plan"],
    &["repo"],
    &["exec"],
    &["pg"],
    &["steps"],
    &["exit"],
    &["run"],
    &["schedule"],
    // The command line: the verbs.
    &[
        "backups", "commands", "diff", "oneshot", "runs", "schema", "wal", "cli", "main", "lib",
    ],
];

/// The upward imports there are, each for a reason CONTRIBUTING gives: `plan/`'s loader,
/// resolver and checks ask the step registry for step types (and, through it, whether a
/// repository URL has a backend and an age recipient parses), and nothing else above.
const ALLOWED_UP: &[(&str, &str)] = &[
    ("plan/load", "steps/registry"),
    ("plan/resolve", "steps/registry"),
    ("plan/validate", "steps/registry"),
];

fn layer_of(module: &str) -> Option<usize> {
    let top = module.split('/').next().unwrap_or(module);
    LAYERS.iter().position(|layer| layer.contains(&top))
}

/// Every import that goes up the layers (and every module that has no layer), said.
fn upward_imports(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    let mut wrong = Vec::new();
    for (module, targets) in graph {
        let Some(own) = layer_of(module) else {
            wrong.push(format!(
                "{module} has no layer: add it to LAYERS and CONTRIBUTING"
            ));
            continue;
        };
        for target in targets {
            let Some(theirs) = layer_of(target) else {
                continue;
            };
            if theirs > own && !ALLOWED_UP.contains(&(module.as_str(), target.as_str())) {
                wrong.push(format!(
                    "{module} imports {target}: `{}` sits below `{}`",
                    LAYERS[own].join("`, `"),
                    LAYERS[theirs].join("`, `")
                ));
            }
        }
    }
    wrong
}

#[test]
fn imports_only_go_down_the_layers() {
    let graph = imports(&modules());
    let wrong = upward_imports(&graph);
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    // The check finds an upward import when there is one: each of these, added, fails it.
    for (from, to) in [
        ("plan/model", "repo/crypto"),
        ("plan/model", "schedule"),
        ("repo/manifest", "pg/tools"),
        ("exec/error", "steps/backup"),
        ("pg/restore", "run/executor"),
    ] {
        let mut added = graph.clone();
        added.get_mut(from).unwrap().insert(to.to_string());
        assert!(
            upward_imports(&added)
                .iter()
                .any(|w| w.starts_with(&format!("{from} imports {to}:"))),
            "{from} → {to} was not caught"
        );
    }
}

/// Files under `src/steps/` that are not step types: the module, the registry, the trait,
/// what a probe may see, the parts of `restore` and `verify` for point-in-time recovery, and
/// `base_backup`'s file-level copy.
const STEP_SUPPORT: &[&str] = &[
    "mod",
    "registry",
    "step_type",
    "probe",
    "pitr",
    "pitr_directory",
    "pitr_verify",
    "base_files",
    "base_parts",
];

/// The step types: every file under `src/steps/` (read from the disk) that is not support.
fn step_type_files() -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/steps");
    let mut out: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "rs"))
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .filter(|stem| !STEP_SUPPORT.contains(&stem.as_str()))
        .collect();
    out.sort();
    out
}

/// A step file that the registry does not list is a step type nobody can use: it fails.
#[test]
fn every_step_file_is_a_registered_step_type() {
    let modules = modules();
    let registry = &modules["steps/registry"];
    let types = step_type_files();
    assert!(types.len() >= 14, "{types:?}");
    for name in &types {
        assert!(
            registry.contains(&format!("register::<super::{name}::")),
            "src/steps/{name}.rs is not registered in src/steps/registry.rs (or, if it is not a step type, not listed in STEP_SUPPORT)"
        );
    }
}

/// Every place that needs to know about step types asks the registry: no file outside a
/// step type's own names another step type's file.
#[test]
fn step_types_are_reached_only_through_the_registry() {
    let modules = modules();
    let graph = imports(&modules);
    let types: Vec<String> = step_type_files()
        .into_iter()
        .map(|name| format!("steps/{name}"))
        .collect();
    for (module, targets) in &graph {
        if module.starts_with("steps/") || module == "steps" {
            continue;
        }
        for target in targets {
            assert!(
                !types.contains(target),
                "{module} imports the step type {target}; ask `steps::registry` instead"
            );
        }
    }
}
