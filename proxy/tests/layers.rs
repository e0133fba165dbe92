//! The proxy's modules form layers, and an import may only point down: `app` → {`outbound`,
//! `admin`} → `inbound` → `ctx` → {`hbone`, `flow`, `l7`, ...}. This reads every file under
//! `src/` and fails on an import edge that points sideways or up (an import circle is one), or on
//! a module that has no layer yet; and on a file with more than 400 lines outside its tests.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Every top-level module of `proxy/src` with its layer; a module may use only lower layers.
const LAYERS: &[(&str, u8)] = &[
    ("addr", 0),
    ("certs", 0),
    ("heap", 0),
    ("observe", 0),
    ("pending", 0),
    ("relay", 0),
    ("socket", 0),
    // Connection caps and handshakes in progress (the buffer budget is relay's).
    ("bounds", 1),
    ("flow", 1),
    ("l7", 1),
    ("tls", 1),
    ("hbone", 2),
    // The open connections and what they were admitted on (re-decided by inbound).
    ("conns", 2),
    ("ctx", 3),
    // The destination side: HBONE server, plaintext, and same-node calls from outbound.
    ("inbound", 4),
    ("admin", 5),
    ("outbound", 5),
    ("app", 6),
];

fn layer(module: &str) -> Option<u8> {
    LAYERS.iter().find(|(m, _)| *m == module).map(|(_, l)| *l)
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

/// The top-level modules a source text names as `crate::<module>` (in `use` lines, paths and
/// grouped imports like `use crate::{inbound, outbound}`), tests and comments left out.
fn crate_references(text: &str) -> BTreeSet<String> {
    let code = text.split("#[cfg(test)]").next().unwrap_or(text);
    let code: String = code
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join(" ");
    let ident = |s: &str| -> String {
        s.trim()
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    let mut found = BTreeSet::new();
    let mut rest = code.as_str();
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            found.extend(group[..end].split(',').map(ident));
        } else {
            found.insert(ident(rest));
        }
    }
    found.remove("");
    found
}

/// The top-level module a file belongs to (`lib` for `lib.rs`).
fn module_of(src: &Path, file: &Path) -> String {
    let relative = file.strip_prefix(src).unwrap();
    let first = relative.components().next().unwrap().as_os_str();
    first.to_string_lossy().trim_end_matches(".rs").to_owned()
}

#[test]
fn imports_point_down_the_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut wrong = Vec::new();
    for file in &files {
        let module = module_of(&src, file);
        if module == "lib" {
            continue;
        }
        let Some(own) = layer(&module) else {
            wrong.push(format!("module `{module}` has no layer in tests/layers.rs"));
            continue;
        };
        for used in crate_references(&std::fs::read_to_string(file).unwrap()) {
            if used == module {
                continue;
            }
            match layer(&used) {
                Some(l) if l < own => {}
                Some(l) => wrong.push(format!(
                    "{}: `{module}` (layer {own}) uses `{used}` (layer {l})",
                    file.display()
                )),
                None => wrong.push(format!(
                    "{}: `{module}` uses `{used}`, which has no layer",
                    file.display()
                )),
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "import edges against the layers:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_reader_sees_every_form_of_import() {
    let text = "use crate::ctx::Ctx;\nuse crate::{\n    inbound,\n    outbound::Route,\n};\n\
                let x = crate::flow::Flow::new();\n// crate::app is a comment\n";
    let found: Vec<String> = crate_references(text).into_iter().collect();
    assert_eq!(found, ["ctx", "flow", "inbound", "outbound"]);
}

/// Lines of `text` before its first `#[cfg(test)]` (the code a reader has to hold).
fn code_lines(text: &str) -> usize {
    text.lines()
        .take_while(|l| l.trim() != "#[cfg(test)]")
        .count()
}

#[test]
fn no_file_holds_more_than_400_lines_of_code() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let long: Vec<_> = files
        .iter()
        .map(|f| (f, code_lines(&std::fs::read_to_string(f).unwrap())))
        .filter(|(_, n)| *n > 400)
        .map(|(f, n)| format!("{}: {n}", f.display()))
        .collect();
    assert!(long.is_empty(), "split these files: {long:?}");
    assert_eq!(code_lines("a\n#[cfg(test)]\nmod tests {}\n"), 1);
}
