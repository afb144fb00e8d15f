//! Tests of softhsm-config/new-token.sh against SoftHSM2 directly (not our
//! module): the token, the KEK's attributes, the written configuration and
//! the script's interface. Run with `cargo nextest run` (one process per test).

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use common::*;
use cryptoki::error::{Error, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeInfo, AttributeType, KeyType, ObjectClass};
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;

/// Makes the test token and loads SoftHSM2 on it.
fn softhsm_with_token() -> (TestToken, cryptoki::context::Pkcs11, cryptoki::slot::Slot) {
    let token = TestToken::new();
    let pkcs11 = init_pkcs11(&softhsm_module_path());
    let slot = token_slot(&pkcs11);
    (token, pkcs11, slot)
}

/// Parses the flat `key = "string"` lines of hsm-envelope.toml.
fn parse_flat_toml(text: &str) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("not a key = value line: {line:?}"));
        let v = v.trim();
        assert!(
            v.len() >= 2 && v.starts_with('"') && v.ends_with('"'),
            "value is not a basic string: {line:?}"
        );
        let old = map.insert(k.trim().to_string(), v[1..v.len() - 1].to_string());
        assert!(old.is_none(), "duplicate key in {line:?}");
    }
    map
}

#[test]
fn token_exists_with_label_and_pins_initialised() {
    let (_token, pkcs11, slot) = softhsm_with_token();
    // Exactly one initialised token (SoftHSM2 always adds one empty slot too).
    let slots = pkcs11.get_slots_with_initialized_token().unwrap();
    assert_eq!(slots.len(), 1, "expected one initialised token");
    let info = pkcs11.get_token_info(slot).unwrap();
    assert_eq!(info.label(), TOKEN_LABEL);
    assert!(info.token_initialized());
    assert!(info.user_pin_initialized());
    assert!(info.login_required());
}

#[test]
fn user_login_with_test_pin_works_and_wrong_pin_fails() {
    let (_token, pkcs11, slot) = softhsm_with_token();
    let session = pkcs11.open_ro_session(slot).unwrap();
    let wrong = session.login(UserType::User, Some(&AuthPin::new("0000".into())));
    assert!(
        matches!(wrong, Err(Error::Pkcs11(RvError::PinIncorrect, _))),
        "wrong PIN gave {wrong:?}"
    );
    session
        .login(UserType::User, Some(&AuthPin::new(USER_PIN.into())))
        .expect("user login with the test PIN");
    session.logout().unwrap();
}

#[test]
fn so_login_with_test_so_pin_works() {
    let (_token, pkcs11, slot) = softhsm_with_token();
    let session = pkcs11.open_rw_session(slot).unwrap();
    session
        .login(UserType::So, Some(&AuthPin::new(SO_PIN.into())))
        .expect("SO login with the test SO PIN");
    session.logout().unwrap();
}

#[test]
fn token_holds_exactly_one_kek_with_expected_attributes() {
    let (_token, pkcs11, slot) = softhsm_with_token();
    let session = user_session(&pkcs11, slot);

    // The KEK and the audit log's HMAC key are the only objects on the token.
    let all = session.find_objects(&[]).unwrap();
    assert_eq!(
        all.len(),
        2,
        "expected only the KEK and the audit HMAC key on a fresh token"
    );
    let keks = session
        .find_objects(&[Attribute::Label(KEK_LABEL.as_bytes().to_vec())])
        .unwrap();
    assert_eq!(keks.len(), 1, "expected exactly one object labelled kek");
    let kek = keks[0];

    let wanted = [
        AttributeType::Class,
        AttributeType::KeyType,
        AttributeType::ValueLen,
        AttributeType::Id,
        AttributeType::Label,
        AttributeType::Token,
        AttributeType::Private,
        AttributeType::Sensitive,
        AttributeType::Extractable,
        AttributeType::AlwaysSensitive,
        AttributeType::NeverExtractable,
        AttributeType::Encrypt,
        AttributeType::Decrypt,
        AttributeType::Wrap,
        AttributeType::Unwrap,
    ];
    let attrs = session.get_attributes(kek, &wanted).unwrap();
    assert_eq!(
        attrs.len(),
        wanted.len(),
        "some KEK attributes unavailable: {attrs:?}"
    );
    let mut seen = 0;
    for attr in &attrs {
        match attr {
            Attribute::Class(c) => assert_eq!(*c, ObjectClass::SECRET_KEY),
            Attribute::KeyType(k) => assert_eq!(*k, KeyType::AES),
            Attribute::ValueLen(n) => assert_eq!(u64::from(*n), 32, "KEK must be AES-256"),
            Attribute::Id(id) => assert_eq!(id.as_slice(), KEK_ID),
            Attribute::Label(l) => assert_eq!(l.as_slice(), KEK_LABEL.as_bytes()),
            Attribute::Token(b) => assert!(*b, "CKA_TOKEN"),
            Attribute::Private(b) => assert!(*b, "CKA_PRIVATE"),
            Attribute::Sensitive(b) => assert!(*b, "CKA_SENSITIVE"),
            Attribute::Extractable(b) => assert!(!*b, "CKA_EXTRACTABLE must be false"),
            Attribute::AlwaysSensitive(b) => assert!(*b, "CKA_ALWAYS_SENSITIVE"),
            Attribute::NeverExtractable(b) => assert!(*b, "CKA_NEVER_EXTRACTABLE"),
            Attribute::Encrypt(b) => assert!(*b, "CKA_ENCRYPT"),
            Attribute::Decrypt(b) => assert!(*b, "CKA_DECRYPT"),
            Attribute::Wrap(b) => assert!(*b, "CKA_WRAP"),
            Attribute::Unwrap(b) => assert!(*b, "CKA_UNWRAP"),
            other => panic!("unexpected attribute {other:?}"),
        }
        seen += 1;
    }
    assert_eq!(seen, wanted.len());
}

#[test]
fn kek_value_cannot_be_read() {
    let (_token, pkcs11, slot) = softhsm_with_token();
    let session = user_session(&pkcs11, slot);
    let kek = session
        .find_objects(&[Attribute::Label(KEK_LABEL.as_bytes().to_vec())])
        .unwrap()[0];
    // C_GetAttributeValue(CKA_VALUE) answers CKR_ATTRIBUTE_SENSITIVE.
    let info = session
        .get_attribute_info(kek, &[AttributeType::Value])
        .unwrap();
    assert!(
        matches!(info.as_slice(), [AttributeInfo::Sensitive]),
        "CKA_VALUE of the KEK: {info:?}"
    );
    // And the value never comes back through the two-pass read either.
    let attrs = session
        .get_attributes(kek, &[AttributeType::Value])
        .unwrap();
    assert!(
        !attrs.iter().any(|a| matches!(a, Attribute::Value(_))),
        "CKA_VALUE of the KEK was returned"
    );
}

#[test]
fn kek_is_invisible_without_login() {
    let (_token, pkcs11, slot) = softhsm_with_token();
    let session = pkcs11.open_ro_session(slot).unwrap();
    let found = session
        .find_objects(&[Attribute::Label(KEK_LABEL.as_bytes().to_vec())])
        .unwrap();
    assert!(found.is_empty(), "a private KEK is visible without login");
}

#[test]
fn kek_wraps_and_unwraps_an_aes_key() {
    let (_token, pkcs11, slot) = softhsm_with_token();
    let session = user_session(&pkcs11, slot);
    let kek = session
        .find_objects(&[Attribute::Label(KEK_LABEL.as_bytes().to_vec())])
        .unwrap()[0];
    // A session DEK that may be wrapped.
    let dek = session
        .generate_key(
            &Mechanism::AesKeyGen,
            &[
                Attribute::Token(false),
                Attribute::ValueLen(32.into()),
                Attribute::Extractable(true),
                Attribute::Sensitive(true),
                Attribute::Encrypt(true),
                Attribute::Decrypt(true),
            ],
        )
        .unwrap();
    let wrapped = session
        .wrap_key(&Mechanism::AesKeyWrap, kek, dek)
        .expect("C_WrapKey with the KEK (CKM_AES_KEY_WRAP)");
    assert_eq!(
        wrapped.len(),
        40,
        "RFC 3394 wrap of a 32-byte key is 40 bytes"
    );
    let unwrapped = session
        .unwrap_key(
            &Mechanism::AesKeyWrap,
            kek,
            &wrapped,
            &[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::AES),
                Attribute::Token(false),
                Attribute::Encrypt(true),
                Attribute::Decrypt(true),
            ],
        )
        .expect("C_UnwrapKey with the KEK");
    // Same key: same ciphertext for the same block under ECB.
    let block = [0x5au8; 16];
    let a = session.encrypt(&Mechanism::AesEcb, dek, &block).unwrap();
    let b = session
        .encrypt(&Mechanism::AesEcb, unwrapped, &block)
        .unwrap();
    assert_eq!(a, b, "unwrapped key differs from the wrapped one");
    assert_ne!(a.as_slice(), block.as_slice());
}

#[test]
fn written_config_has_expected_keys_and_absolute_paths() {
    let token = TestToken::new();
    let text = token.config_text();
    assert_eq!(
        text.lines().next(),
        Some("# hsm-envelope configuration (made by softhsm-config/new-token.sh)")
    );
    let map = parse_flat_toml(&text);
    let dir = token.path();
    assert!(dir.is_absolute());
    let expect = |k: &str, v: &str| {
        assert_eq!(map.get(k).map(String::as_str), Some(v), "key {k}");
    };
    expect(
        "backend_module",
        softhsm_module_path().to_str().expect("utf-8 module path"),
    );
    expect("token_label", TOKEN_LABEL);
    expect("kek_label", KEK_LABEL);
    expect("store_path", dir.join("deks.sqlite").to_str().unwrap());
    expect("log_file", dir.join("hsm-envelope.log").to_str().unwrap());
    expect("log_level", "info");
    expect("audit_log", dir.join("audit.log").to_str().unwrap());
    assert_eq!(map.len(), 7, "unexpected keys: {map:?}");
    for k in ["backend_module", "store_path", "log_file", "audit_log"] {
        assert!(Path::new(&map[k]).is_absolute(), "{k} is not absolute");
    }
    assert_eq!(token.store_path, dir.join("deks.sqlite"));

    // The environment points at this token.
    assert_eq!(
        std::env::var_os("SOFTHSM2_CONF").map(std::path::PathBuf::from),
        Some(token.softhsm_conf.clone())
    );
    assert_eq!(
        std::env::var_os("HSM_ENVELOPE_CONF").map(std::path::PathBuf::from),
        Some(token.conf.clone())
    );
    // SoftHSM2's configuration names the token directory inside DIR.
    let softhsm_conf = std::fs::read_to_string(&token.softhsm_conf).unwrap();
    let tokendir = format!("directories.tokendir = {}", dir.join("tokens").display());
    assert!(
        softhsm_conf.lines().any(|l| l.trim() == tokendir),
        "softhsm2.conf lacks {tokendir:?}:\n{softhsm_conf}"
    );
    assert!(softhsm_conf
        .lines()
        .any(|l| l.trim() == "objectstore.backend = file"));
    assert!(!softhsm_conf.contains("@TOKENDIR@"));
}

#[test]
fn extra_config_is_appended() {
    let token = TestToken::with_extra_config("cache_soft_ttl_secs = 5\n[extra_table]\nx = 1");
    let text = token.config_text();
    assert!(text.starts_with("# hsm-envelope configuration"));
    assert!(text.contains("kek_label = \"kek\"\n"));
    assert!(text.ends_with("cache_soft_ttl_secs = 5\n[extra_table]\nx = 1\n"));
}

#[test]
fn stdout_is_exactly_two_export_lines() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("tok");
    let out = run_new_token(&dir, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = dir.canonicalize().unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        stdout,
        format!(
            "export SOFTHSM2_CONF={}\nexport HSM_ENVELOPE_CONF={}\n",
            dir.join("softhsm2.conf").display(),
            dir.join("hsm-envelope.toml").display()
        )
    );
    assert!(!out.stderr.is_empty(), "progress messages go to stderr");
}

#[test]
fn eval_of_output_prepares_a_shell_even_with_spaces_in_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("a dir with 'quotes' and spaces");
    let script = "set -euo pipefail\n\
                  eval \"$(bash \"$1\" \"$2\")\"\n\
                  printf '%s\\n' \"$SOFTHSM2_CONF\" \"$HSM_ENVELOPE_CONF\"\n\
                  pkcs11-tool --module \"$3\" --list-token-slots";
    let out = Command::new("bash")
        .arg("-c")
        .arg(script)
        .arg("bash")
        .arg(new_token_script())
        .arg(&dir)
        .arg(softhsm_module_path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let dir = dir.canonicalize().unwrap();
    let mut lines = stdout.lines();
    assert_eq!(
        lines.next().map(Path::new),
        Some(dir.join("softhsm2.conf").as_path())
    );
    assert_eq!(
        lines.next().map(Path::new),
        Some(dir.join("hsm-envelope.toml").as_path())
    );
    assert!(
        stdout.contains("token label        : hsm-envelope"),
        "pkcs11-tool did not see the token through the exported SOFTHSM2_CONF:\n{stdout}"
    );
}

#[test]
fn relative_dir_is_made_absolute() {
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new("bash")
        .arg(new_token_script())
        .arg("rel/sub")
        .current_dir(tmp.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = tmp.path().join("rel/sub").canonicalize().unwrap();
    let map = parse_flat_toml(&std::fs::read_to_string(dir.join("hsm-envelope.toml")).unwrap());
    assert_eq!(map["store_path"], dir.join("deks.sqlite").to_str().unwrap());
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        stdout.contains(&format!(
            "export SOFTHSM2_CONF={}\n",
            dir.join("softhsm2.conf").display()
        )),
        "{stdout}"
    );
}

/// On failure stdout exports nothing, and `eval "$(new-token.sh DIR)"`
/// fails too, with a message on stderr.
fn assert_eval_fails(out: &std::process::Output) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !stdout.lines().any(|l| l.starts_with("export ")),
        "export lines on failure: {stdout}"
    );
    let code = out.status.code().expect("new-token.sh was killed");
    assert_eq!(
        stdout,
        format!(
            "echo 'new-token.sh failed (exit {code}): see its messages above; nothing was exported' >&2; false\n"
        )
    );
    let ev = Command::new("bash")
        .args(["-c", "eval \"$1\" && echo EVAL-OK", "bash"])
        .arg(stdout.as_ref())
        .output()
        .unwrap();
    assert!(!ev.status.success(), "eval succeeded");
    assert!(!String::from_utf8_lossy(&ev.stdout).contains("EVAL-OK"));
    assert!(
        String::from_utf8_lossy(&ev.stderr).contains("new-token.sh failed"),
        "{}",
        String::from_utf8_lossy(&ev.stderr)
    );
}

#[test]
fn eval_of_a_failed_run_fails_in_the_users_shell() {
    let token = TestToken::new();
    // As the README has it, on a DIR that already holds a token.
    let o = Command::new("bash")
        .args([
            "-c",
            "eval \"$(bash \"$1\" \"$2\")\"; echo \"eval status $?\"; echo \"HSM_ENVELOPE_CONF=${HSM_ENVELOPE_CONF:-unset}\"",
            "bash",
        ])
        .arg(new_token_script())
        .arg(token.dir.path())
        .env_remove("HSM_ENVELOPE_CONF")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("eval status 1"), "{stdout}");
    assert!(stdout.contains("HSM_ENVELOPE_CONF=unset"), "{stdout}");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains("already holds a token") && stderr.contains("new-token.sh failed (exit 1)"),
        "{stderr}"
    );
}

#[test]
fn usage_error_also_fails_the_eval() {
    let out = Command::new("bash")
        .arg(new_token_script())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eval_fails(&out);
}

#[test]
fn second_run_on_same_dir_fails() {
    let token = TestToken::new();
    let before = std::fs::read(&token.conf).unwrap();
    let out = run_new_token(token.dir.path(), &[]);
    assert!(
        !out.status.success(),
        "second run on the same DIR succeeded"
    );
    assert_eval_fails(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("already holds a token"), "stderr: {stderr}");
    // The existing token is left alone.
    assert_eq!(std::fs::read(&token.conf).unwrap(), before);
    let pkcs11 = init_pkcs11(&softhsm_module_path());
    token_slot(&pkcs11);
}

#[test]
fn missing_softhsm_module_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let out = run_new_token(
        &tmp.path().join("t"),
        &[("SOFTHSM2_MODULE", "/nonexistent/libsofthsm2.so")],
    );
    assert!(!out.status.success());
    assert_eval_fails(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("SOFTHSM2_MODULE=/nonexistent/libsofthsm2.so"),
        "stderr: {stderr}"
    );
}

/// The scripts' SoftHSM2 search (scripts/softhsm2-path.sh) and the Rust one
/// (`hsm_envelope::config`) use the same list and find the same module.
#[test]
fn softhsm2_search_is_the_same_in_scripts_and_rust() {
    let run = |arg: Option<&str>| {
        let mut cmd = Command::new("bash");
        cmd.arg(repo_root().join("scripts/softhsm2-path.sh"));
        cmd.args(arg);
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "softhsm2-path.sh {arg:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    assert_eq!(
        run(Some("--candidates")).lines().collect::<Vec<_>>(),
        hsm_envelope::config::SOFTHSM2_CANDIDATES
    );
    assert_eq!(
        Path::new(run(None).trim_end_matches('\n')),
        softhsm_module_path()
    );
}

#[test]
fn missing_tools_are_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    // A PATH with bash's basic utilities but without softhsm2-util/pkcs11-tool.
    let bin = tmp.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let out = Command::new("/bin/bash")
        .arg(new_token_script())
        .arg(tmp.path().join("t"))
        .env("PATH", &bin)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert_eval_fails(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("softhsm2-util not found"),
        "stderr: {stderr}"
    );
}

#[test]
fn module_path_points_at_the_built_cdylib() {
    let path = module_path();
    assert!(path.is_absolute());
    assert!(path.ends_with(MODULE_FILE_NAME));
    assert!(path.is_file());
}
