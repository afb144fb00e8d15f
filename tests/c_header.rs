//! `include/hsm_envelope.h` from C: it compiles under strict C99 without a
//! PKCS#11 header, its constants equal `src/vendor.rs` (values and comments),
//! and a plain C program (`tests/c/demo.c`) drives the module through
//! `dlopen` end to end. Needs `gcc` (scripts/deps.sh installs it). Run with
//! `cargo nextest run` (one process per test).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;
use cryptoki_sys::CK_ULONG;
use hsm_envelope::vendor;

/// The strict flags the header and the C tests must compile under.
const CFLAGS: &[&str] = &["-std=c99", "-pedantic", "-Wall", "-Wextra", "-Werror"];

/// Compiles `tests/c/<name>.c` with gcc into `dir/<name>`; panics with gcc's
/// output if that fails.
fn compile_c(name: &str, dir: &Path) -> PathBuf {
    compile_c_linked(name, dir, &[])
}

/// As [`compile_c`], with extra linker arguments after the source.
fn compile_c_linked(name: &str, dir: &Path, link: &[String]) -> PathBuf {
    let root = repo_root();
    let src = root.join("tests").join("c").join(format!("{name}.c"));
    let exe = dir.join(name);
    let out = Command::new("gcc")
        .args(CFLAGS)
        .arg("-I")
        .arg(root.join("include"))
        .arg("-o")
        .arg(&exe)
        .arg(&src)
        .args(link)
        .arg("-ldl")
        .output()
        .unwrap_or_else(|e| panic!("cannot run gcc (install it: scripts/deps.sh): {e}"));
    assert!(
        out.status.success(),
        "gcc {} failed ({}):\n{}{}",
        src.display(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    exe
}

fn describe(out: &Output) -> String {
    format!(
        "status {}\n--- stdout\n{}--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Doc comments of each `pub const` in src/vendor.rs, joined into one
/// whitespace-normalised sentence per constant.
fn vendor_rs_docs() -> Vec<(String, String)> {
    let text =
        std::fs::read_to_string(repo_root().join("src/vendor.rs")).expect("read src/vendor.rs");
    let mut docs = Vec::new();
    let mut pending = Vec::new();
    for line in text.lines().map(str::trim) {
        if let Some(doc) = line.strip_prefix("///") {
            pending.push(doc.trim().to_string());
        } else if let Some(rest) = line.strip_prefix("pub const ") {
            let name = rest
                .split(':')
                .next()
                .unwrap_or_default()
                .trim()
                .to_string();
            docs.push((name, normalise(&pending.join(" "))));
            pending.clear();
        } else {
            pending.clear();
        }
    }
    docs
}

/// Collapses whitespace and drops C comment decoration (`/*`, `*/`, `*`).
fn normalise(text: &str) -> String {
    text.split_whitespace()
        .filter(|w| !matches!(*w, "/*" | "*/" | "*"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn header_constants_equal_vendor_rs() {
    let dir = tempfile::tempdir().unwrap();
    let exe = compile_c("constants", dir.path());
    let out = Command::new(&exe).output().expect("run constants");
    assert!(out.status.success(), "{}", describe(&out));
    let printed: Vec<(String, CK_ULONG)> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let (name, hex) = l
                .split_once(' ')
                .unwrap_or_else(|| panic!("bad line {l:?}"));
            let v = CK_ULONG::from_str_radix(hex.trim_start_matches("0x"), 16)
                .unwrap_or_else(|e| panic!("{l:?}: {e}"));
            (name.to_string(), v)
        })
        .collect();
    let expected: Vec<(String, CK_ULONG)> = [
        ("CKR_HSME_KEK_UNAVAILABLE", vendor::CKR_HSME_KEK_UNAVAILABLE),
        ("CKR_HSME_RECORD_INVALID", vendor::CKR_HSME_RECORD_INVALID),
        ("CKR_HSME_STORE_ERROR", vendor::CKR_HSME_STORE_ERROR),
        ("CKR_HSME_KEK_REVOKED", vendor::CKR_HSME_KEK_REVOKED),
        ("CKR_HSME_HSM_UNAVAILABLE", vendor::CKR_HSME_HSM_UNAVAILABLE),
        (
            "CKR_HSME_INVOCATION_LIMIT",
            vendor::CKR_HSME_INVOCATION_LIMIT,
        ),
        ("CKA_HSME_KEK_VERSION", vendor::CKA_HSME_KEK_VERSION),
        ("CKA_HSME_ON_BACKEND", vendor::CKA_HSME_ON_BACKEND),
    ]
    .into_iter()
    .map(|(n, v)| (n.to_string(), v))
    .collect();
    assert_eq!(printed, expected);
    // The documented composition, spelled out once more.
    for ((name, v), low) in expected.iter().zip([1, 2, 3, 4, 5, 6, 1, 2]) {
        assert_eq!(*v, 0x8000_0000 | 0x4845_0000 | low, "{name}");
    }
}

#[test]
fn header_covers_every_vendor_constant_with_its_comment() {
    let header_text =
        std::fs::read_to_string(repo_root().join("include/hsm_envelope.h")).expect("read header");
    let header = normalise(&header_text);
    let docs = vendor_rs_docs();
    assert_eq!(docs.len(), 8, "src/vendor.rs constants: {docs:?}");
    for (name, doc) in docs {
        assert!(
            header_text.contains(&format!("#define {name} ")),
            "{name} is not defined in include/hsm_envelope.h"
        );
        assert!(
            !doc.is_empty(),
            "{name} has no doc comment in src/vendor.rs"
        );
        assert!(
            header.contains(&doc),
            "include/hsm_envelope.h lacks the comment of {name}: {doc:?}"
        );
    }
    assert!(
        header_text.contains("#ifndef HSM_ENVELOPE_H")
            && header_text.contains("#define HSM_ENVELOPE_H")
    );
    // Only its own names: no PKCS#11 header pulled in, no CK_ types defined.
    assert!(
        !header_text.contains("#include"),
        "the header must not include anything"
    );
    assert!(
        !header_text.contains("typedef"),
        "the header must define constants only"
    );
}

#[test]
fn c_demo_runs_against_the_module() {
    let dir = tempfile::tempdir().unwrap();
    let exe = compile_c("demo", dir.path());
    let _token = TestToken::new();
    // The token's SOFTHSM2_CONF / HSM_ENVELOPE_CONF are in our environment,
    // which the child inherits; they are passed explicitly all the same.
    let out = Command::new(&exe)
        .arg(module_path())
        .env("SOFTHSM2_CONF", &_token.softhsm_conf)
        .env("HSM_ENVELOPE_CONF", &_token.conf)
        .output()
        .expect("run the C demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.lines().any(|l| l == "OK"),
        "the C demo failed:\n{}",
        describe(&out)
    );
}

#[test]
fn c_demo_reports_a_failed_step() {
    // The demo must be able to fail: with a configuration file that does not
    // exist, C_Initialize fails and the demo names that step and its CK_RV.
    let dir = tempfile::tempdir().unwrap();
    let exe = compile_c("demo", dir.path());
    let out = Command::new(&exe)
        .arg(module_path())
        .env("HSM_ENVELOPE_CONF", dir.path().join("missing.toml"))
        .output()
        .expect("run the C demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        stdout.contains("FAIL: C_Initialize: CK_RV 0x"),
        "{}",
        describe(&out)
    );
    assert!(!stdout.lines().any(|l| l == "OK"), "{}", describe(&out));
}

/// The test-only `HSME_TestAdvanceClock`, called as the header declares it
/// (linked against the module), in fresh processes: without
/// HSM_ENVELOPE_TEST_CLOCK=1 in their environment it refuses
/// (CKR_FUNCTION_NOT_SUPPORTED); with it, CKR_OK.
#[test]
fn test_clock_function_needs_the_test_switch() {
    let dir = tempfile::tempdir().unwrap();
    // By its absolute path: the module has no SONAME, so the executable
    // then needs exactly this file (not one found on LD_LIBRARY_PATH).
    let exe = compile_c_linked(
        "test_clock",
        dir.path(),
        &[module_path().display().to_string()],
    );
    let run = |switch: Option<&str>| {
        let mut c = Command::new(&exe);
        c.env_remove("HSM_ENVELOPE_TEST_CLOCK")
            .env_remove("HSM_ENVELOPE_TEST_CLOCK_OFFSET_MS");
        if let Some(v) = switch {
            c.env("HSM_ENVELOPE_TEST_CLOCK", v);
        }
        let out = c.output().expect("run test_clock");
        assert!(out.status.success(), "{}", describe(&out));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let not_supported = format!("0x{:X}", cryptoki_sys::CKR_FUNCTION_NOT_SUPPORTED);
    assert_eq!(run(None), not_supported, "no switch: refused");
    assert_eq!(run(Some("0")), not_supported, "only \"1\" turns it on");
    assert_eq!(run(Some("1")), "0x0", "with HSM_ENVELOPE_TEST_CLOCK=1");
}
