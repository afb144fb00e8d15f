//! The README's SunPKCS11 configuration ("### Java (SunPKCS11)"), tried as
//! a Java user would: tests/java/InteropTest.java makes its providers from
//! that block (with `library` set to the built module) under the
//! production setting `key_export = "wrapped"`, and the checks a Java
//! application starts with pass: provider and login, KeyGenerator, AES-GCM,
//! AES-CBC-PKCS5 and AES-CTR, against SunJCE too. Needs a JDK (java and
//! javac; scripts/deps.sh installs default-jdk-headless). scripts/interop.sh
//! runs the whole program with every JDK it finds.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// A JDK home with bin/java and bin/javac: $JAVA_HOME, then the one of
/// `javac` on PATH, then /usr/lib/jvm/*.
fn jdk() -> PathBuf {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(h) = std::env::var_os("JAVA_HOME") {
        candidates.push(PathBuf::from(h));
    }
    if let Ok(o) = Command::new("sh")
        .args(["-c", "readlink -f \"$(command -v javac)\""])
        .output()
    {
        let javac = PathBuf::from(String::from_utf8_lossy(&o.stdout).trim());
        if let Some(home) = javac.parent().and_then(Path::parent) {
            candidates.push(home.to_path_buf());
        }
    }
    if let Ok(dir) = std::fs::read_dir("/usr/lib/jvm") {
        let mut homes: Vec<PathBuf> = dir.filter_map(|e| e.ok().map(|e| e.path())).collect();
        homes.sort();
        candidates.extend(homes);
    }
    candidates
        .into_iter()
        .find(|h| h.join("bin/java").is_file() && h.join("bin/javac").is_file())
        .unwrap_or_else(|| {
            panic!(
                "no JDK (java and javac) found in JAVA_HOME, on PATH or in /usr/lib/jvm: \
                 install the Debian package default-jdk-headless (scripts/deps.sh does)"
            )
        })
}

/// The first fenced block under "### Java (SunPKCS11)" in README.md.
fn readme_config() -> String {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let section = readme
        .split("\n### Java (SunPKCS11)\n")
        .nth(1)
        .expect("README.md has no '### Java (SunPKCS11)'");
    let section = section.split("\n#").next().unwrap_or("");
    let mut lines = section.lines().skip_while(|l| !l.starts_with("```"));
    lines
        .next()
        .expect("no fenced block under '### Java (SunPKCS11)'");
    let block: Vec<&str> = lines.take_while(|l| !l.starts_with("```")).collect();
    block.join("\n") + "\n"
}

#[test]
fn the_readme_sunpkcs11_configuration_works_under_key_export_wrapped() {
    let t = TestToken::with_extra_config("key_export = \"wrapped\"\n");
    let cfg_text = readme_config();
    for key in ["name", "library", "slotListIndex"] {
        assert!(
            cfg_text
                .lines()
                .any(|l| l.split('=').next().map(str::trim) == Some(key)),
            "the README's configuration has no `{key}`:\n{cfg_text}"
        );
    }
    let cfg = t.path().join("sunpkcs11.cfg");
    std::fs::write(&cfg, &cfg_text).unwrap();

    let home = jdk();
    let classes = t.path().join("classes");
    let o = Command::new(home.join("bin/javac"))
        .arg("-d")
        .arg(&classes)
        .arg(repo_root().join("tests/java/InteropTest.java"))
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "javac: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = Command::new("timeout")
        .args(["--kill-after=10", "300"])
        .arg(home.join("bin/java"))
        .arg("-cp")
        .arg(&classes)
        .arg("InteropTest")
        .arg(module_path())
        .arg(USER_PIN)
        .arg(&cfg)
        .env_remove("INTEROP_JAVA_SKIPS")
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let report = format!("{out}\n--- stderr\n{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        out.contains(&format!("configuration {}", cfg.display())),
        "{report}"
    );
    for check in [
        "provider-load",
        "provider-load-wrap",
        "keygen-aes256",
        "AES/GCM-roundtrip-aes256",
        "AES/GCM-vs-SunJCE",
        "GCM-bad-tag-exception",
        "AES/CBC-PKCS5-roundtrip-aes256",
        "AES/CBC-PKCS5-vs-SunJCE",
        "AES/CTR-roundtrip-aes256",
        "AES/CTR-vs-SunJCE",
    ] {
        assert!(
            out.lines().any(|l| l == format!("PASS {check}")),
            "{check} did not pass with the README's configuration:\n{report}"
        );
    }
}
