//! What the benchmarks of several HSMs (issue 13) share: SoftHSM2 tokens
//! standing in for HSMs, the release module loaded with `cryptoki`, and
//! medians.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;

pub const PIN: &str = "1234";
pub const SO_PIN: &str = "5678";
pub const TOKEN_LABEL: &str = "hsm-envelope";
pub const KEK_LABEL: &str = "kek";
pub const KEK_ID: &[u8] = &[0x01];

pub fn die(msg: &str) -> ! {
    eprintln!("bench: error: {msg}");
    std::process::exit(2)
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// target/release (this executable is target/release/deps/NAME-HASH).
pub fn release_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_else(|e| die(&format!("current_exe: {e}")));
    exe.parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| die("no target directory"))
}

/// `path`, which `scripts/bench.sh` built.
pub fn built(path: PathBuf) -> PathBuf {
    if !path.is_file() {
        die(&format!(
            "{} not found: run the benchmark with scripts/bench.sh, which builds it",
            path.display()
        ));
    }
    path
}

/// A fresh token in `dir` (`softhsm-config/new-token.sh`: its KEK, audit
/// key and configuration); points SOFTHSM2_CONF at it. Returns the
/// configuration's path.
pub fn new_token(dir: &Path) -> PathBuf {
    let out = Command::new("bash")
        .arg(repo_root().join("softhsm-config/new-token.sh"))
        .arg(dir)
        .env("PIN", PIN)
        .env("SO_PIN", SO_PIN)
        .output()
        .unwrap_or_else(|e| die(&format!("cannot run new-token.sh: {e}")));
    if !out.status.success() {
        die(&format!(
            "new-token.sh failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    std::env::set_var("SOFTHSM2_CONF", dir.join("softhsm2.conf"));
    dir.join("hsm-envelope.toml")
}

/// A further token in the same SoftHSM2.
pub fn add_token(label: &str) {
    let out = Command::new("softhsm2-util")
        .args(["--init-token", "--free", "--label", label])
        .args(["--pin", PIN, "--so-pin", SO_PIN])
        .output()
        .unwrap_or_else(|e| die(&format!("softhsm2-util: {e}")));
    if !out.status.success() {
        die(&format!(
            "softhsm2-util --init-token failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
}

/// SoftHSM2's module, as new-token.sh found it (its hsm-envelope.toml).
pub fn softhsm_module(conf: &str) -> PathBuf {
    conf.lines()
        .find_map(|l| {
            let (k, v) = l.split_once('=')?;
            (k.trim() == "backend_module").then(|| PathBuf::from(v.trim().trim_matches('"')))
        })
        .unwrap_or_else(|| die("no backend_module in hsm-envelope.toml"))
}

pub fn init(module: &Path) -> Pkcs11 {
    let p = Pkcs11::new(module).unwrap_or_else(|e| die(&format!("load {}: {e}", module.display())));
    p.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .unwrap_or_else(|e| die(&format!("C_Initialize: {e}")));
    p
}

pub fn slot_labelled(p: &Pkcs11, label: &str) -> Slot {
    p.get_slots_with_initialized_token()
        .unwrap_or_else(|e| die(&format!("C_GetSlotList: {e}")))
        .into_iter()
        .find(|s| p.get_token_info(*s).is_ok_and(|i| i.label() == label))
        .unwrap_or_else(|| die(&format!("no token labelled {label}")))
}

pub fn login(p: &Pkcs11, slot: Slot) -> Session {
    let s = p
        .open_rw_session(slot)
        .unwrap_or_else(|e| die(&format!("C_OpenSession: {e}")));
    s.login(UserType::User, Some(&AuthPin::new(PIN.into())))
        .unwrap_or_else(|e| die(&format!("C_Login: {e}")));
    s
}

/// The template of an AES-256 KEK version 1: sensitive, never extractable,
/// as the module requires.
pub fn kek_template() -> Vec<Attribute> {
    // The module's own template for a generated KEK version.
    hsm_envelope::backend::kek::aes_template(KEK_LABEL, 1)
}

/// Delete the token's KEK version 1.
pub fn remove_kek(s: &Session) {
    let found = s
        .find_objects(&[
            Attribute::Label(KEK_LABEL.as_bytes().to_vec()),
            Attribute::Id(KEK_ID.to_vec()),
        ])
        .unwrap_or_else(|e| die(&format!("C_FindObjects: {e}")));
    for h in found {
        s.destroy_object(h)
            .unwrap_or_else(|e| die(&format!("C_DestroyObject: {e}")));
    }
}

/// A token DEK (AES-256) labelled `label`, made through the module.
pub fn make_dek(s: &Session, label: &[u8]) -> ObjectHandle {
    s.generate_key(
        &Mechanism::AesKeyGen,
        &[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::AES),
            Attribute::ValueLen(32.into()),
            Attribute::Token(true),
            Attribute::Encrypt(true),
            Attribute::Decrypt(true),
            Attribute::Label(label.to_vec()),
        ],
    )
    .unwrap_or_else(|e| die(&format!("C_GenerateKey: {e}")))
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Prints median, p99 and max of `v` (sorted in place); returns the median.
pub fn summary(name: &str, v: &mut [f64]) -> f64 {
    let m = median(v);
    let max = v.last().copied().unwrap_or(f64::NAN);
    println!(
        "  {name:<46} median {m:8.4} ms   p99 {:8.4} ms   max {max:8.3} ms   (n = {})",
        v.get(v.len() * 99 / 100).copied().unwrap_or(f64::NAN),
        v.len()
    );
    m
}
