//! Keeps the house in order, reading every crate's `src` as text (the core, the std adapter, the
//! CUDA adapter, the command and the C interface):
//!
//! - no source file is longer than 600 lines, tests included;
//! - the top-level modules (a file `x.rs` or a folder `x/`, which counts as one) form no import
//!   circle, of any length, through `crate::` paths in code (comments and docs are not read);
//! - inside each folder module, the files beside `mod.rs` form no circle either, through
//!   `super::` and `crate::folder::` paths (`mod.rs` is the folder's front door: it declares and
//!   re-exports its files, and they may use its items).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

const MAX_LINES: usize = 600;

/// The crates whose `src` is kept: their folders beside `tests/`.
const CRATES: [&str; 5] = ["core", "std-adapter", "cuda-adapter", "cli", "ffi"];

/// One source file: its path relative to its crate's `src` (with `/`) and its text.
type Source = (String, String);

fn sources(krate: &str) -> Vec<Source> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(krate).join("src");
    let mut files = Vec::new();
    collect(&root, &root, &mut files);
    assert!(
        files.iter().any(|(p, _)| p == "lib.rs" || p == "main.rs"),
        "no lib.rs or main.rs under {}",
        root.display()
    );
    files
}

fn core_sources() -> Vec<Source> {
    sources("core")
}

fn collect(root: &Path, dir: &Path, files: &mut Vec<Source>) {
    let mut entries: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            collect(root, &path, files);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let rel = path.strip_prefix(root).expect("below the root").to_string_lossy().replace('\\', "/");
            files.push((rel, text));
        }
    }
}

/// The text without comments (line, doc and block comments) and without the contents of string
/// and character literals, which may hold anything that looks like a path.
fn code_of(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        let after_ident = out.chars().next_back().is_some_and(is_ident);
        let skip = if rest.starts_with("//") {
            rest.find('\n').unwrap_or(rest.len())
        } else if rest.starts_with("/*") {
            rest.find("*/").map_or(rest.len(), |n| n + 2)
        } else if !after_ident && (rest.starts_with("r#\"") || rest.starts_with("br#\"")) {
            let open = rest.find('"').unwrap_or(0) + 1;
            rest[open..].find("\"#").map_or(rest.len(), |n| open + n + 2)
        } else if c == '"' {
            let mut escaped = false;
            let close = rest[1..].char_indices().find(|&(_, ch)| {
                let end = ch == '"' && !escaped;
                escaped = ch == '\\' && !escaped;
                end
            });
            close.map_or(rest.len(), |(i, _)| i + 2)
        } else if c == '\'' {
            // A character literal ('x' or '\x'); otherwise a lifetime or label.
            let bytes = rest.as_bytes();
            match bytes {
                [_, b'\\', _, b'\'', ..] => 4,
                [_, x, b'\'', ..] if *x != b'\\' => 3,
                _ => 0,
            }
        } else {
            0
        };
        if skip == 0 {
            out.push(c);
            rest = &rest[c.len_utf8()..];
        } else {
            out.push(' ');
            rest = &rest[skip..];
        }
    }
    out
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The first segment of every path that starts with `prefix` (e.g. `crate::`) in `code`,
/// including each first segment inside a `prefix{...}` group.
fn first_segments(code: &str, prefix: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut from = 0;
    while let Some(at) = code[from..].find(prefix).map(|i| i + from) {
        from = at + prefix.len();
        if code[..at].chars().next_back().is_some_and(is_ident) {
            continue; // part of a longer name, like `my_crate::`
        }
        let rest = &code[from..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 1usize;
            let mut expect_name = true;
            let mut name = String::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 1 => expect_name = true,
                    _ => {}
                }
                if depth == 0 {
                    break;
                }
                if depth == 1 && expect_name {
                    if is_ident(c) {
                        name.push(c);
                        continue;
                    }
                    if !name.is_empty() {
                        names.insert(std::mem::take(&mut name));
                        expect_name = false;
                    }
                }
            }
            if !name.is_empty() {
                names.insert(name);
            }
        } else {
            let name: String = rest.chars().take_while(|&c| is_ident(c)).collect();
            if !name.is_empty() {
                names.insert(name);
            }
        }
    }
    names
}

/// The top-level module of a file (`pool` for `pool.rs` and `pool/…`), or `None` for the crate
/// root (`lib.rs`, `main.rs`).
fn top_module(path: &str) -> Option<String> {
    match path.split_once('/') {
        Some((folder, _)) => Some(folder.to_string()),
        None if path == "lib.rs" || path == "main.rs" => None,
        None => Some(path.trim_end_matches(".rs").to_string()),
    }
}

/// Module graph: for each module, the other modules it names.
type Graph = BTreeMap<String, BTreeSet<String>>;

/// The graph of the top-level modules, from `crate::<module>` paths.
fn top_level_graph(files: &[Source]) -> Graph {
    let modules: BTreeSet<String> = files.iter().filter_map(|(p, _)| top_module(p)).collect();
    let mut graph: Graph = modules.iter().map(|m| (m.clone(), BTreeSet::new())).collect();
    for (path, text) in files {
        let Some(module) = top_module(path) else { continue };
        for name in first_segments(&code_of(text), "crate::") {
            if modules.contains(&name) && name != module {
                graph.entry(module.clone()).or_default().insert(name);
            }
        }
    }
    graph
}

/// For each folder module, the graph of its files beside `mod.rs`, from `super::<file>` and
/// `crate::<folder>::<file>` paths.
fn folder_graphs(files: &[Source]) -> BTreeMap<String, Graph> {
    let mut folders: BTreeMap<String, Graph> = BTreeMap::new();
    for (path, _) in files {
        if let Some((folder, file)) = path.split_once('/') {
            if file != "mod.rs" && !file.contains('/') {
                let stem = file.trim_end_matches(".rs").to_string();
                folders.entry(folder.to_string()).or_default().insert(stem, BTreeSet::new());
            }
        }
    }
    for (path, text) in files {
        let Some((folder, file)) = path.split_once('/') else { continue };
        let Some(graph) = folders.get_mut(folder) else { continue };
        let stem = file.trim_end_matches(".rs").to_string();
        if !graph.contains_key(&stem) {
            continue; // mod.rs, or a file deeper down
        }
        let code = code_of(text);
        let mut names = first_segments(&code, "super::");
        names.extend(first_segments(&code, &format!("crate::{folder}::")));
        for name in names {
            if graph.contains_key(&name) && name != stem {
                graph.entry(stem.clone()).or_default().insert(name);
            }
        }
    }
    folders
}

/// Import circles of `graph`, each written `a → b → … → a`: for every module on a circle, the
/// shortest circle through it, unless a circle found before passes through it.
fn circles(graph: &Graph) -> Vec<String> {
    let mut found = Vec::new();
    let mut reported: BTreeSet<String> = BTreeSet::new();
    for start in graph.keys() {
        if reported.contains(start) {
            continue;
        }
        // Shortest way from `start` back to itself, breadth first.
        let mut previous: BTreeMap<&String, &String> = BTreeMap::new();
        let mut queue = std::collections::VecDeque::from([start]);
        let mut closed = None;
        while let Some(node) = queue.pop_front() {
            for next in graph.get(node).into_iter().flatten() {
                if next == start {
                    closed = Some(node);
                    break;
                }
                if !previous.contains_key(next) {
                    previous.insert(next, node);
                    queue.push_back(next);
                }
            }
            if closed.is_some() {
                break;
            }
        }
        let Some(mut node) = closed else { continue };
        let mut ring = vec![];
        while node != start {
            ring.push(node.clone());
            node = previous[node];
        }
        ring.reverse();
        let path: Vec<&str> = [start].into_iter().chain(&ring).chain([start]).map(String::as_str).collect();
        found.push(path.join(" → "));
        reported.insert(start.clone());
        reported.extend(ring);
    }
    found
}

#[test]
#[cfg_attr(miri, ignore = "reads the sources as text: no library code runs")]
fn no_source_file_is_over_600_lines() {
    let mut long = Vec::new();
    for krate in CRATES {
        long.extend(
            sources(krate)
                .iter()
                .filter(|(_, text)| text.lines().count() > MAX_LINES)
                .map(|(path, text)| format!("{krate}/src/{path}: {} lines", text.lines().count())),
        );
    }
    assert!(long.is_empty(), "split these by concept (at most {MAX_LINES} lines each): {long:#?}");
}

#[test]
#[cfg_attr(miri, ignore = "reads the sources as text: no library code runs")]
fn the_modules_of_each_crate_form_no_import_circle() {
    let graph = top_level_graph(&core_sources());
    assert!(graph.contains_key("pool") && graph.contains_key("policy"), "modules not found: {graph:?}");
    let mut found = Vec::new();
    for krate in CRATES {
        found.extend(circles(&top_level_graph(&sources(krate))).into_iter().map(|c| format!("{krate}: {c}")));
    }
    assert!(found.is_empty(), "import circles between the modules of a crate: {found:#?}");
}

#[test]
#[cfg_attr(miri, ignore = "reads the sources as text: no library code runs")]
fn the_files_of_each_folder_form_no_import_circle() {
    let mut found = Vec::new();
    for krate in CRATES {
        for (folder, graph) in &folder_graphs(&sources(krate)) {
            found.extend(circles(graph).into_iter().map(|c| format!("{krate}/src/{folder}/: {c}")));
        }
    }
    assert!(found.is_empty(), "import circles between the files of a folder: {found:#?}");
}

#[test]
#[cfg_attr(miri, ignore = "reads the sources as text: no library code runs")]
fn the_command_s_modules_do_not_reach_back_to_its_root() {
    // `main.rs` parses arguments and dispatches; what several subcommands share lives in a
    // module of its own, not in the root they would import from.
    let mut found = Vec::new();
    for (path, text) in sources("cli") {
        if top_module(&path).is_none() {
            continue;
        }
        let roots: BTreeSet<String> = first_segments(&code_of(&text), "crate::")
            .into_iter()
            .filter(|name| !sources("cli").iter().any(|(p, _)| top_module(p).as_deref() == Some(name)))
            .collect();
        if !roots.is_empty() {
            found.push(format!("cli/src/{path}: crate::{roots:?}"));
        }
    }
    assert!(found.is_empty(), "modules that use items of main.rs: {found:#?}");
}

#[test]
#[cfg_attr(miri, ignore = "reads the sources as text: no library code runs")]
fn the_checks_find_what_they_look_for() {
    let source = |path: &str, text: &str| (path.to_string(), text.to_string());
    let files = [
        source("lib.rs", "pub mod a; pub mod b; pub mod c; pub mod d;"),
        source("a.rs", "use crate::b::X;\n// use crate::d::Y; (a comment, not an import)\n"),
        source("b/mod.rs", "mod one; mod two;\nuse crate::{c::Y, Z};"),
        source("b/one.rs", "use super::{two::T, Public};"),
        source("b/two.rs", "fn f() { crate::b::one::g(); crate::a::h() }"),
        source("c.rs", "/* crate::d */ fn f<'a>() { let s = (\"crate::d \\\" crate::d\", '\"', r#\"\"crate::d\"#); }"),
        source("d.rs", "use my_crate::a;"),
    ];
    let graph = top_level_graph(&files);
    assert_eq!(graph["a"], BTreeSet::from(["b".to_string()]));
    assert_eq!(graph["b"], BTreeSet::from(["a".to_string(), "c".to_string()]));
    assert!(graph["c"].is_empty(), "comments and literals are not code: {:?}", graph["c"]);
    assert!(graph["d"].is_empty());
    assert_eq!(circles(&graph), ["a → b → a"]);
    let folders = folder_graphs(&files);
    assert_eq!(circles(&folders["b"]), ["one → two → one"]);
    let acyclic: Graph = [("x", vec!["y"]), ("y", vec!["z"]), ("z", vec![])]
        .into_iter()
        .map(|(m, to)| (m.to_string(), to.into_iter().map(String::from).collect()))
        .collect();
    assert!(circles(&acyclic).is_empty());
    let long: Graph = [("p", vec!["q"]), ("q", vec!["r"]), ("r", vec!["p"])]
        .into_iter()
        .map(|(m, to)| (m.to_string(), to.into_iter().map(String::from).collect()))
        .collect();
    assert_eq!(circles(&long), ["p → q → r → p"]);
    let long_file = source("long.rs", &"\n".repeat(MAX_LINES + 1));
    assert!(long_file.1.lines().count() > MAX_LINES);
}
