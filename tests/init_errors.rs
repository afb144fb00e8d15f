//! What a user sees when the module cannot start or is pointed at the wrong
//! token: `C_Initialize` fails with one line on stderr (and the same line in
//! the log file) naming the cause, the file, key or path, what to do and the
//! code returned; a `token_label` or `kek_label` that matches nothing fails
//! closed instead of quietly passing keys through to the backend.
//!
//! Failures are driven through `pkcs11-tool` (a process of its own, whose
//! stderr the test reads), successes through cryptoki in this process.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::p11::*;
use common::*;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, ObjectClass};
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;
use hsm_envelope::vendor::CKR_HSME_KEK_UNAVAILABLE;

/// `pkcs11-tool --module <ours> ARGS` with HSM_ENVELOPE_CONF=`conf`.
fn tool(conf: &Path, args: &[&str]) -> Output {
    Command::new("timeout")
        .args(["--kill-after=10", "120", "pkcs11-tool", "--module"])
        .arg(module_path())
        .args(args)
        .env("HSM_ENVELOPE_CONF", conf)
        .output()
        .expect("cannot run pkcs11-tool (Debian package opensc)")
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}--- stderr\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The one line the module printed on stderr (`hsm-envelope: ...`); fails
/// unless there is exactly one.
fn our_line(o: &Output) -> String {
    let err = String::from_utf8_lossy(&o.stderr);
    let ours: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("hsm-envelope:"))
        .collect();
    assert_eq!(
        ours.len(),
        1,
        "expected one line from the module:\n{}",
        text(o)
    );
    ours[0].to_string()
}

/// `pkcs11-tool -L` with the configuration `extra` appended to the token's
/// own; must fail cleanly. Returns the module's line.
fn init_fails(t: &TestToken, name: &str, edit: impl Fn(String) -> String) -> (String, Output) {
    let conf = t.path().join(name);
    std::fs::write(&conf, edit(t.config_text())).unwrap();
    let o = tool(&conf, &["-L"]);
    assert!(!o.status.success(), "C_Initialize succeeded:\n{}", text(&o));
    assert!(
        o.status.code().is_some(),
        "killed by a signal:\n{}",
        text(&o)
    );
    let line = our_line(&o);
    assert!(
        line.starts_with("hsm-envelope: C_Initialize failed: "),
        "{line}"
    );
    (line, o)
}

fn replace_line(text: &str, key: &str, new: &str) -> String {
    let mut out: Vec<String> = text
        .lines()
        .filter(|l| !l.starts_with(&format!("{key} =")))
        .map(String::from)
        .collect();
    out.push(new.to_string());
    out.join("\n") + "\n"
}

fn log_text(t: &TestToken) -> String {
    std::fs::read_to_string(t.log_file()).unwrap_or_default()
}

#[test]
fn a_wrong_type_is_one_plain_line_naming_the_file_the_key_and_the_line() {
    let t = TestToken::new();
    let (line, _) = init_fails(&t, "typed.toml", |c| format!("{c}refresh_secs = \"30\"\n"));
    let conf = t.path().join("typed.toml");
    let n = std::fs::read_to_string(&conf).unwrap().lines().count();
    assert!(line.contains(conf.to_str().unwrap()), "{line}");
    assert!(
        line.contains(&format!(
            "key `refresh_secs` (line {n}): expected a whole number (without quotes: 30), not the string \"30\""
        )),
        "{line}"
    );
    assert!(line.ends_with("(CKR_GENERAL_ERROR)"), "{line}");
    assert!(!line.contains("invalid type"), "{line}");
}

#[test]
fn a_misspelt_key_is_one_line_with_the_nearest_known_key() {
    let t = TestToken::new();
    let (line, o) = init_fails(&t, "typo.toml", |c| c.replace("kek_label", "kek_lable"));
    assert!(
        line.contains("unknown key `kek_lable` (line ")
            && line.contains("did you mean `kek_label`?"),
        "{line}"
    );
    // Not the TOML parser's multi-line report.
    assert!(
        !String::from_utf8_lossy(&o.stderr).contains("TOML parse error"),
        "{}",
        text(&o)
    );
}

#[test]
fn a_missing_backend_module_is_named_on_stderr_and_in_the_log() {
    let t = TestToken::new();
    let (line, _) = init_fails(&t, "nobackend.toml", |c| {
        replace_line(
            &c,
            "backend_module",
            "backend_module = \"/nonexistent/libhsm.so\"",
        )
    });
    assert!(line.contains("/nonexistent/libhsm.so"), "{line}");
    assert!(
        line.contains(&format!(
            "set backend_module in {} to the HSM's PKCS#11 module",
            t.path().join("nobackend.toml").display()
        )),
        "{line}"
    );
    assert!(line.ends_with("(CKR_GENERAL_ERROR)"), "{line}");
    // The log file (new-token.sh always sets one) has the same words.
    let cause = line.trim_start_matches("hsm-envelope: ");
    assert!(log_text(&t).contains(cause), "log:\n{}", log_text(&t));
}

#[test]
fn a_missing_store_directory_names_store_path_and_the_vendor_code() {
    let t = TestToken::new();
    let (line, _) = init_fails(&t, "nostore.toml", |c| {
        replace_line(
            &c,
            "store_path",
            "store_path = \"/nonexistent-dir/deks.sqlite\"",
        )
    });
    assert!(line.contains("/nonexistent-dir"), "{line}");
    assert!(line.contains("set store_path in "), "{line}");
    assert!(line.ends_with("(CKR_HSME_STORE_ERROR)"), "{line}");
    assert!(!line.contains("0xc845"), "{line}");
}

#[test]
fn an_unwritable_audit_log_names_audit_log() {
    let t = TestToken::new();
    let (line, _) = init_fails(&t, "noaudit.toml", |c| {
        replace_line(
            &c,
            "audit_log",
            "audit_log = \"/nonexistent-dir/audit.log\"",
        )
    });
    assert!(
        line.contains("/nonexistent-dir/audit.log") && line.contains("set audit_log in "),
        "{line}"
    );
}

#[test]
fn a_token_label_that_matches_nothing_fails_closed() {
    let t = TestToken::new();
    let (line, _) = init_fails(&t, "wrongtoken.toml", |c| {
        replace_line(&c, "token_label", "token_label = \"hsm-envelop\"")
    });
    assert!(
        line.contains(
            "no backend token labelled 'hsm-envelop' (the backend's tokens: 'hsm-envelope')"
        ),
        "{line}"
    );
    assert!(
        line.contains("set token_label in ") && line.contains("passthrough_only = true"),
        "{line}"
    );
    assert!(line.ends_with("(CKR_HSME_KEK_UNAVAILABLE)"), "{line}");
    // Nothing can be made: --keygen fails at C_Initialize too.
    let conf = t.path().join("wrongtoken.toml");
    let o = tool(
        &conf,
        &[
            "--login",
            "--pin",
            USER_PIN,
            "--keygen",
            "--key-type",
            "AES:32",
            "--label",
            "k",
            "--id",
            "42",
        ],
    );
    assert!(!o.status.success(), "{}", text(&o));
    // No key reached the backend token.
    let hsm = init_pkcs11(&softhsm_module_path());
    let s = user_session_raw(&hsm);
    let made = s
        .find_objects(&[Attribute::Id(vec![0x42])])
        .expect("C_FindObjects");
    assert!(made.is_empty(), "a key was made on the backend");
}

#[test]
fn passthrough_only_serves_the_backend_without_deks() {
    let t = TestToken::new();
    let conf = replace_line(&t.config_text(), "token_label", "token_label = \"nowhere\"");
    std::fs::write(&t.conf, format!("{conf}passthrough_only = true\n")).unwrap();
    let p = ours();
    let slot = p.get_slots_with_initialized_token().unwrap()[0];
    assert_eq!(p.get_token_info(slot).unwrap().model(), "passthrough");
    let s = user_session(&p, slot);
    // An AES key made here is the backend's own: the configuration says so.
    let k = s
        .generate_key(
            &Mechanism::AesKeyGen,
            &aes_template(false, vec![Attribute::ValueLen(32.into())]),
        )
        .expect("C_GenerateKey passes through");
    assert!(!bool_attr(&s, k, cryptoki::object::AttributeType::Token));
    // No envelope, so no store was even opened.
    assert!(!t.store_path.exists(), "a DEK store was made");
    assert!(
        log_text(&t).contains("pass-through only"),
        "{}",
        log_text(&t)
    );
}

#[test]
fn a_kek_label_the_store_does_not_know_fails_c_initialize() {
    let t = TestToken::new();
    {
        // A first DEK records KEK version 1 under 'kek' in the store.
        let p = ours();
        let s = user_session(&p, token_slot(&p));
        generate(&s, true, vec![]);
        drop(s);
        p.finalize().unwrap();
    }
    let (line, _) = init_fails(&t, "wrongkek.toml", |c| {
        replace_line(&c, "kek_label", "kek_label = \"kek2\"")
    });
    assert!(
        line.contains("holds DEKs under KEK 'kek' but no versions of 'kek2'")
            && line.contains("set kek_label in "),
        "{line}"
    );
    assert!(line.ends_with("(CKR_HSME_KEK_UNAVAILABLE)"), "{line}");
}

#[test]
fn a_kek_label_the_token_does_not_hold_fails_c_login() {
    let t = TestToken::new();
    let conf = t.path().join("nokek.toml");
    std::fs::write(
        &conf,
        replace_line(&t.config_text(), "kek_label", "kek_label = \"kek2\""),
    )
    .unwrap();
    // C_Initialize cannot see private objects; C_Login can, and refuses.
    let o = tool(&conf, &["--login", "--pin", USER_PIN, "-O"]);
    assert!(!o.status.success(), "{}", text(&o));
    let line = our_line(&o);
    assert!(
        line.contains("C_Login: no KEK labelled 'kek2' on token 'hsm-envelope'")
            && line.contains("set kek_label in ")
            && line.ends_with("(CKR_HSME_KEK_UNAVAILABLE)"),
        "{line}"
    );
    // In this process too: the login fails and leaves nobody logged in.
    std::env::set_var("HSM_ENVELOPE_CONF", &conf);
    let p = ours();
    let slot = token_slot(&p);
    let s = p.open_rw_session(slot).unwrap();
    let e = s
        .login(UserType::User, Some(&AuthPin::new(USER_PIN.into())))
        .unwrap_err();
    assert_eq!(
        rv(e),
        cryptoki::error::RvError::VendorDefined(CKR_HSME_KEK_UNAVAILABLE)
    );
    let info = s.get_session_info().unwrap();
    assert_eq!(
        info.session_state(),
        cryptoki::session::SessionState::RwPublic
    );
    // The right configuration logs in as before.
    drop(s);
    p.finalize().unwrap();
    let o = tool(&t.conf, &["--login", "--pin", USER_PIN, "-O"]);
    assert!(o.status.success(), "{}", text(&o));
}

/// A second token on the backend: the module shows it as a slot of its own,
/// which holds no KEK.
fn second_token() {
    let o = Command::new("softhsm2-util")
        .args([
            "--init-token",
            "--free",
            "--label",
            "other",
            "--pin",
            USER_PIN,
            "--so-pin",
            SO_PIN,
        ])
        .output()
        .expect("softhsm2-util");
    assert!(o.status.success(), "{}", text(&o));
}

fn other_slot(p: &cryptoki::context::Pkcs11) -> cryptoki::slot::Slot {
    p.get_slots_with_initialized_token()
        .unwrap()
        .into_iter()
        .find(|s| p.get_token_info(*s).unwrap().label() == "other")
        .expect("the token 'other'")
}

#[test]
fn an_aes_key_on_a_slot_without_the_kek_needs_cka_hsme_on_backend() {
    let t = TestToken::new();
    second_token();
    let p = ours();
    let other = other_slot(&p);
    let s = user_session(&p, other);
    let template = |extra: Vec<Attribute>| {
        let mut v = vec![Attribute::ValueLen(32.into())];
        v.extend(extra);
        aes_template(false, v)
    };
    // Asked for like a DEK: refused, not quietly made on the backend.
    let e = s
        .generate_key(&Mechanism::AesKeyGen, &template(vec![]))
        .unwrap_err();
    assert_eq!(
        rv(e),
        cryptoki::error::RvError::VendorDefined(CKR_HSME_KEK_UNAVAILABLE)
    );
    let e = s
        .create_object(&aes_template(false, vec![Attribute::Value(vec![7; 32])]))
        .unwrap_err();
    assert_eq!(
        rv(e),
        cryptoki::error::RvError::VendorDefined(CKR_HSME_KEK_UNAVAILABLE)
    );
    assert!(
        log_text(&t).contains(&format!("C_GenerateKey on slot {} refused", other.id())),
        "{}",
        log_text(&t)
    );
    // Asked for as a backend key: made on the backend.
    let on_backend = Attribute::VendorDefined((
        cryptoki::object::AttributeType::VendorDefined(hsm_envelope::vendor::CKA_HSME_ON_BACKEND),
        vec![1],
    ));
    let k = s
        .generate_key(&Mechanism::AesKeyGen, &template(vec![on_backend.clone()]))
        .expect("a backend key, as asked");
    assert!(!bool_attr(&s, k, cryptoki::object::AttributeType::Token));
    s.create_object(&aes_template(
        false,
        vec![Attribute::Value(vec![7; 32]), on_backend.clone()],
    ))
    .expect("an imported backend key, as asked");
    // Unwrapped by a backend key with AES key wrap: the same rule.
    let wk = s
        .generate_key(
            &Mechanism::AesKeyGen,
            &template(vec![
                on_backend.clone(),
                Attribute::Wrap(true),
                Attribute::Unwrap(true),
            ]),
        )
        .unwrap();
    let inner = s
        .generate_key(
            &Mechanism::AesKeyGen,
            &template(vec![on_backend.clone(), Attribute::Extractable(true)]),
        )
        .unwrap();
    let blob = s.wrap_key(&Mechanism::AesKeyWrapPad, wk, inner).unwrap();
    let e = s
        .unwrap_key(
            &Mechanism::AesKeyWrapPad,
            wk,
            &blob,
            &aes_template(false, vec![]),
        )
        .unwrap_err();
    assert_eq!(
        rv(e),
        cryptoki::error::RvError::VendorDefined(CKR_HSME_KEK_UNAVAILABLE)
    );
    s.unwrap_key(
        &Mechanism::AesKeyWrapPad,
        wk,
        &blob,
        &aes_template(false, vec![on_backend.clone()]),
    )
    .expect("unwrapped into a backend key, as asked");
    // Derived from a backend key: the same rule.
    let base = s
        .generate_key(
            &Mechanism::AesKeyGen,
            &template(vec![on_backend.clone(), Attribute::Derive(true)]),
        )
        .unwrap();
    let derive = |extra: Vec<Attribute>| {
        s.derive_key(
            &Mechanism::AesCbcEncryptData(cryptoki::mechanism::ekdf::AesCbcDeriveParams::new(
                [0u8; 16], &[5u8; 32],
            )),
            base,
            &template(extra),
        )
    };
    let e = derive(vec![]).unwrap_err();
    assert_eq!(
        rv(e),
        cryptoki::error::RvError::VendorDefined(CKR_HSME_KEK_UNAVAILABLE)
    );
    derive(vec![on_backend.clone()]).expect("derived into a backend key, as asked");
    // Other objects pass through as before.
    s.create_object(&[
        Attribute::Class(ObjectClass::DATA),
        Attribute::Token(false),
        Attribute::Value(b"x".to_vec()),
    ])
    .expect("a data object");
}

#[test]
fn passthrough_only_makes_aes_keys_on_every_slot_as_asked() {
    let t = TestToken::new();
    second_token();
    std::fs::write(
        &t.conf,
        format!("{}passthrough_only = true\n", t.config_text()),
    )
    .unwrap();
    let p = ours();
    let s = user_session(&p, other_slot(&p));
    s.generate_key(
        &Mechanism::AesKeyGen,
        &aes_template(false, vec![Attribute::ValueLen(32.into())]),
    )
    .expect("passed through");
    let s = user_session(&p, token_slot(&p));
    s.generate_key(
        &Mechanism::AesKeyGen,
        &aes_template(false, vec![Attribute::ValueLen(32.into())]),
    )
    .expect("passed through on the KEK's token too");
}
