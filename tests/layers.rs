//! The layers only look down: ffi → token → envelope → backend, audit →
//! store, crypto → leaves. A module that names one of a higher rank fails
//! this test, so a later change cannot tangle the seams again.

use std::collections::BTreeMap;
use std::path::Path;

/// Each top-level module of `src/` and its rank; a module may name modules
/// of its own rank or below, never above.
const RANKS: &[(&str, u32)] = &[
    // Leaves: know nothing of PKCS#11 objects, sessions or keys' owners.
    ("clock", 0),
    ("hex", 0),
    ("logging", 0),
    ("runtime", 0),
    ("vendor", 0),
    ("rv_name", 1),
    ("secret", 1),
    ("crypto", 2),
    ("store", 2),
    ("error", 3),
    ("config", 4),
    ("backend", 5),
    ("audit", 5),
    ("envelope", 6),
    ("admin", 7),
    ("token", 7),
    ("ffi", 8),
];

fn rank(module: &str) -> Option<u32> {
    RANKS.iter().find(|(m, _)| *m == module).map(|(_, r)| *r)
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let p = entry.expect("dir entry").path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// `crate::NAME` references outside comments, with their line numbers.
fn references(text: &str) -> Vec<(usize, String)> {
    let mut refs = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            let after = &rest[i + "crate::".len()..];
            let name: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            // `$crate::log_*!` macros live in `logging`.
            let name = if name.starts_with("log_") {
                "logging".to_string()
            } else {
                name
            };
            refs.push((n + 1, name));
            rest = after;
        }
    }
    refs
}

#[test]
fn no_module_names_a_higher_layer() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut upward = BTreeMap::new();
    for f in files {
        let rel = f.strip_prefix(&src).expect("under src");
        let top = rel
            .components()
            .next()
            .and_then(|c| c.as_os_str().to_str())
            .unwrap_or("")
            .trim_end_matches(".rs")
            .to_string();
        if top == "bin" || top == "lib" {
            continue;
        }
        let own = rank(&top).unwrap_or_else(|| panic!("src/{top} has no rank in RANKS"));
        let text = std::fs::read_to_string(&f).expect("read");
        for (line, name) in references(&text) {
            if name == top {
                continue;
            }
            let theirs = rank(&name).unwrap_or_else(|| panic!("crate::{name} has no rank"));
            if theirs > own {
                upward.insert(format!("{}:{line}", rel.display()), name);
            }
        }
    }
    assert!(
        upward.is_empty(),
        "lower layers name higher ones: {upward:#?}"
    );
}

#[test]
fn the_check_sees_an_upward_reference() {
    let refs = references("use crate::token::module::Module; // crate::ffi\n");
    assert_eq!(refs, vec![(1, "token".to_string())]);
}

#[test]
fn the_compiler_keeps_unsafe_code_out_of_the_upper_layers() {
    // `unsafe` lives in ffi, the backend's raw calls and the leaves
    // (secret memory, runtime); everywhere else the compiler refuses it.
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    for module in ["token", "envelope", "store", "audit", "admin"] {
        let text = std::fs::read_to_string(src.join(module).join("mod.rs")).expect("mod.rs");
        assert!(
            text.contains("#![forbid(unsafe_code)]"),
            "src/{module}/mod.rs must forbid unsafe code"
        );
    }
    let lib = std::fs::read_to_string(src.join("lib.rs")).expect("lib.rs");
    assert!(lib.contains("#![deny(unsafe_op_in_unsafe_fn)]"));
    assert!(lib.contains("#![deny(clippy::undocumented_unsafe_blocks)]"));
}
