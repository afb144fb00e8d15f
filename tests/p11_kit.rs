//! Registration with p11-kit (scripts/install-p11-kit.sh and
//! softhsm-config/hsm-envelope.module): `p11-kit list-modules` and GnuTLS's
//! `p11tool` find the module and its token, and a logged-in p11tool lists
//! the token's keys through it. Needs the Debian packages p11-kit and
//! gnutls-bin (scripts/deps.sh installs them).
//!
//! p11-kit ignores user configuration in programs run as root, so as root
//! the tools (and the install script) run as `nobody` (setpriv), on a token
//! directory handed to that user.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;

const NOBODY: &str = "65534";

fn is_root() -> bool {
    let o = Command::new("id").arg("-u").output().expect("id -u");
    String::from_utf8_lossy(&o.stdout).trim() == "0"
}

fn show(o: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}--- stderr\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Runs `program args` as the test's user (as `nobody` when root), with
/// HOME=`home` and the token's environment.
fn run_as_user(home: &Path, program: &str, args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut c = if is_root() {
        let mut c = Command::new("setpriv");
        c.args([
            &format!("--reuid={NOBODY}"),
            &format!("--regid={NOBODY}"),
            "--clear-groups",
            "--",
            program,
        ]);
        c
    } else {
        Command::new(program)
    };
    c.args(args).env("HOME", home);
    for (k, v) in envs {
        c.env(k, v);
    }
    let o = c.output().unwrap_or_else(|e| {
        panic!("cannot run {program} (Debian packages p11-kit, gnutls-bin, util-linux: scripts/deps.sh): {e}")
    });
    assert_ne!(
        o.status.code(),
        Some(127),
        "{program} not found (Debian packages p11-kit, gnutls-bin): {}",
        show(&o)
    );
    o
}

fn install_script() -> PathBuf {
    repo_root().join("scripts").join("install-p11-kit.sh")
}

/// A token directory and HOME the user running the tools can write.
fn prepare(t: &TestToken) -> PathBuf {
    let home = t.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    if is_root() {
        let o = Command::new("chown")
            .args(["-R", &format!("{NOBODY}:{NOBODY}")])
            .arg(t.path())
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", show(&o));
    }
    home
}

#[test]
fn p11_kit_and_p11tool_find_the_registered_module_and_its_token() {
    let t = TestToken::new();
    let home = prepare(&t);
    let module = module_path();
    let module_s = module.to_str().unwrap();

    let o = run_as_user(
        &home,
        "bash",
        &[
            install_script().to_str().unwrap(),
            "--user",
            "--module",
            module_s,
        ],
        &[],
    );
    assert!(o.status.success(), "{}", show(&o));
    let file = home.join(".config/pkcs11/modules/hsm-envelope.module");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(
        text.lines().any(|l| l == format!("module: {module_s}")),
        "{text}"
    );
    assert!(!text.contains("@MODULE@"), "{text}");

    // p11-kit: the module, with our token (manufacturer and model ours).
    let o = run_as_user(&home, "p11-kit", &["list-modules"], &[]);
    assert!(o.status.success(), "{}", show(&o));
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let ours = out
        .split("\n")
        .skip_while(|l| *l != format!("hsm-envelope: {module_s}"))
        .take_while(|l| l.starts_with(' ') || l.starts_with("hsm-envelope:"))
        .collect::<Vec<_>>()
        .join("\n");
    for want in [
        "library-manufacturer: hsm-envelope",
        "token: hsm-envelope",
        "manufacturer: hsm-envelope",
        "model: envelope",
    ] {
        assert!(ours.contains(want), "{want:?} not under our module:\n{out}");
    }

    // GnuTLS: the token by its PKCS#11 URI, and its keys after login.
    let o = run_as_user(&home, "p11tool", &["--list-tokens"], &[]);
    assert!(o.status.success(), "{}", show(&o));
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        out.contains("URL: pkcs11:model=envelope;manufacturer=hsm-envelope;")
            && out.contains(&format!("Module: {module_s}")),
        "{out}"
    );
    let o = run_as_user(
        &home,
        "p11tool",
        &[
            "--login",
            "--list-all",
            "pkcs11:manufacturer=hsm-envelope;token=hsm-envelope",
        ],
        &[("GNUTLS_PIN", USER_PIN)],
    );
    assert!(o.status.success(), "{}", show(&o));
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(out.contains(";object=kek;type=secret-key"), "{out}");

    // --uninstall takes it out again.
    let o = run_as_user(
        &home,
        "bash",
        &[install_script().to_str().unwrap(), "--user", "--uninstall"],
        &[],
    );
    assert!(o.status.success(), "{}", show(&o));
    assert!(!file.exists());
    let o = run_as_user(&home, "p11-kit", &["list-modules"], &[]);
    assert!(
        !String::from_utf8_lossy(&o.stdout).contains("hsm-envelope: "),
        "{}",
        show(&o)
    );
}

#[test]
fn the_install_script_refuses_bad_input_clearly() {
    let t = TestToken::new();
    let home = prepare(&t);
    let script = install_script();
    let script = script.to_str().unwrap();
    let o = run_as_user(
        &home,
        "bash",
        &[
            script,
            "--user",
            "--module",
            "/nonexistent/libhsm_envelope.so",
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr)
            .contains("module not found: /nonexistent/libhsm_envelope.so"),
        "{}",
        show(&o)
    );
    let o = run_as_user(&home, "bash", &[script, "--bogus"], &[]);
    assert_eq!(o.status.code(), Some(2), "{}", show(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("usage:"),
        "{}",
        show(&o)
    );
    // Not root: the system directory is refused, naming what to do.
    let o = run_as_user(
        &home,
        "bash",
        &[
            script,
            "--system",
            "--module",
            module_path().to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("run it as root (or use --user)"),
        "{}",
        show(&o)
    );
    assert!(!home
        .join(".config/pkcs11/modules/hsm-envelope.module")
        .exists());
}
