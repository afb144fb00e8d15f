//! The admin tool `hsm-envelope`, run as the operator runs it: the built
//! binary, against a fresh SoftHSM2 token per test, with DEKs made through
//! the module by cryptoki.
//!
//! Each test runs in its own process (cargo nextest) with its own token.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::p11::*;
use common::*;
use cryptoki::object::{Attribute, AttributeType, ObjectClass};
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_hsm-envelope");

/// The tool with the token's configuration and the test PIN; stdin is not
/// a terminal.
fn cli_cmd(t: &TestToken, args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.args(args)
        .env("HSM_ENVELOPE_CONF", &t.conf)
        .env("SOFTHSM2_CONF", &t.softhsm_conf)
        .env("HSM_ENVELOPE_PIN", USER_PIN)
        .stdin(Stdio::null());
    c
}

fn run(mut c: Command) -> Output {
    c.output().expect("cannot run hsm-envelope")
}

fn cli(t: &TestToken, args: &[&str]) -> Output {
    run(cli_cmd(t, args))
}

fn code(o: &Output) -> i32 {
    o.status
        .code()
        .expect("hsm-envelope was killed by a signal")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn show(o: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}--- stderr\n{}",
        o.status.code(),
        stdout(o),
        stderr(o)
    )
}

/// Runs with `--json`; the exit code and the one JSON document on stdout.
fn cli_json(t: &TestToken, args: &[&str]) -> (i32, Value) {
    let mut all = args.to_vec();
    all.push("--json");
    let o = cli(t, &all);
    let doc: Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}):\n{}", show(&o)));
    (code(&o), doc)
}

fn ok(t: &TestToken, args: &[&str]) -> String {
    let o = cli(t, args);
    assert_eq!(code(&o), 0, "hsm-envelope {args:?}:\n{}", show(&o));
    stdout(&o)
}

fn ok_json(t: &TestToken, args: &[&str]) -> Value {
    let (c, doc) = cli_json(t, args);
    assert_eq!(c, 0, "hsm-envelope {args:?} --json: {doc:#}");
    doc
}

/// `(version, state, records)` of every KEK version, from `kek list --json`.
fn versions(t: &TestToken) -> Vec<(u64, String, u64)> {
    ok_json(t, &["kek", "list"])["versions"]
        .as_array()
        .expect("versions array")
        .iter()
        .map(|v| {
            (
                v["version"].as_u64().unwrap(),
                v["state"].as_str().unwrap().to_string(),
                v["records"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn write_config(t: &TestToken, name: &str, text: &str) -> std::path::PathBuf {
    let p = t.path().join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn with_config(t: &TestToken, conf: &Path, args: &[&str]) -> Output {
    let mut c = cli_cmd(t, args);
    c.env("HSM_ENVELOPE_CONF", conf);
    run(c)
}

#[test]
fn every_command_has_help() {
    let commands: &[&[&str]] = &[
        &[],
        &["kek"],
        &["kek", "create"],
        &["kek", "rotate"],
        &["kek", "list"],
        &["kek", "set-primary"],
        &["kek", "destroy-version"],
        &["rewrap"],
        &["dek"],
        &["dek", "list"],
        &["status"],
    ];
    for cmd in commands {
        let mut args = cmd.to_vec();
        args.push("--help");
        let o = Command::new(BIN)
            .args(&args)
            .env_remove("HSM_ENVELOPE_PIN")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert_eq!(code(&o), 0, "{args:?}:\n{}", show(&o));
        let out = stdout(&o);
        let usage = format!("Usage: hsm-envelope {}", cmd.join(" "));
        assert!(out.contains(usage.trim_end()), "{args:?}: {out}");
        assert!(out.contains("Exit codes:"), "{args:?}: {out}");
        assert!(out.contains("HSM_ENVELOPE_PIN"), "{args:?}: {out}");
    }
    let o = Command::new(BIN).arg("--help").output().unwrap();
    let out = stdout(&o);
    for c in ["kek", "rewrap", "dek", "status", "--config", "--json"] {
        assert!(out.contains(c), "{c} missing from --help: {out}");
    }
    // Usage errors exit 2, before any PIN or token.
    for bad in [
        &["kek", "frobnicate"][..],
        &["kek", "set-primary", "two"],
        &["kek", "create", "--type", "des"],
        &["rewrap", "--batch", "0"],
        &[],
    ] {
        let o = Command::new(BIN)
            .args(bad)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert_eq!(code(&o), 2, "{bad:?}:\n{}", show(&o));
    }
}

#[test]
fn status_in_text_and_json() {
    let t = TestToken::new();
    let out = ok(&t, &["status"]);
    for want in [
        "backend module",
        ": ok",
        "'hsm-envelope': ok",
        "login            ok",
        "KEK 'kek'        primary v1",
        "records          0 (0 soft-deleted, still recoverable)",
        "pending re-wrap  0",
    ] {
        assert!(out.contains(want), "{want:?} missing:\n{out}");
    }
    let doc = ok_json(&t, &["status"]);
    assert_eq!(doc["backend_module"]["loaded"], true);
    assert_eq!(doc["token"]["found"], true);
    assert_eq!(doc["token"]["label"], TOKEN_LABEL);
    assert_eq!(doc["login"], true);
    assert_eq!(doc["kek_label"], KEK_LABEL);
    assert_eq!(doc["primary"], 1);
    assert_eq!(doc["records"], 0);
    assert_eq!(doc["pending_rewrap"], 0);
    assert_eq!(doc["healthy"], true);
    assert_eq!(doc["versions"][0]["state"], "primary");

    // Records and pending re-wrap follow DEKs made through the module.
    {
        let p = ours();
        let s = user_session(&p, token_slot(&p));
        generate(&s, true, vec![]);
        generate(&s, true, vec![]);
        generate(&s, false, vec![]); // a session DEK is not stored
    }
    ok(&t, &["kek", "rotate"]);
    let doc = ok_json(&t, &["status"]);
    assert_eq!(doc["records"], 2);
    assert_eq!(doc["pending_rewrap"], 2);
    assert_eq!(doc["primary"], 2);
    let out = ok(&t, &["status"]);
    assert!(out.contains("pending re-wrap  2"), "{out}");
}

#[test]
fn kek_list_in_text_and_json() {
    let t = TestToken::new();
    let out = ok(&t, &["kek", "list"]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "KEK 'kek':", "{out}");
    for h in [
        "VERSION",
        "KIND",
        "STATE",
        "CREATED",
        "PRIMARY SINCE",
        "RECORDS",
    ] {
        assert!(lines[1].contains(h), "{h} missing: {out}");
    }
    let row: Vec<&str> = lines[2].split_whitespace().collect();
    assert_eq!(row[..3], ["1", "aes256", "primary"], "{out}");
    assert_eq!(row.last(), Some(&"0"), "{out}");
    assert!(row[3].ends_with('Z') && row[4].ends_with('Z'), "{out}");

    let doc = ok_json(&t, &["kek", "list"]);
    assert_eq!(doc["kek_label"], "kek");
    assert_eq!(doc["primary"], 1);
    let v = &doc["versions"][0];
    assert_eq!(v["version"], 1);
    assert_eq!(v["kind"], "aes256");
    assert_eq!(v["state"], "primary");
    assert!(v["created"].as_i64().unwrap() > 1_600_000_000);
    assert_eq!(v["primary_since"], v["created"]);
    assert_eq!(v["records"], 0);
}

#[test]
fn bad_configuration_exits_2_and_names_the_key() {
    let t = TestToken::new();
    let mut text = t.config_text();
    text.push_str("kek_lable = \"typo\"\n");
    let bad = write_config(&t, "bad.toml", &text);
    for args in [&["status"][..], &["kek", "list"], &["rewrap"]] {
        let o = with_config(&t, &bad, args);
        assert_eq!(code(&o), 2, "{}", show(&o));
        assert!(stderr(&o).contains("kek_lable"), "{}", show(&o));
        assert!(stderr(&o).contains("bad.toml"), "{}", show(&o));
    }
    // --config wins over HSM_ENVELOPE_CONF.
    let mut c = cli_cmd(&t, &["--config", bad.to_str().unwrap(), "status"]);
    c.env("HSM_ENVELOPE_CONF", &t.conf);
    let o = run(c);
    assert_eq!(code(&o), 2, "{}", show(&o));
    // A missing file, a wrong type, a bad value.
    let o = with_config(&t, &t.path().join("missing.toml"), &["status"]);
    assert_eq!(code(&o), 2, "{}", show(&o));
    assert!(stderr(&o).contains("missing.toml"), "{}", show(&o));
    let bad = write_config(&t, "type.toml", "refresh_secs = \"soon\"\n");
    let o = with_config(&t, &bad, &["status", "--json"]);
    assert_eq!(code(&o), 2, "{}", show(&o));
    let doc: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(doc["exit_code"], 2);
    assert!(doc["error"].as_str().unwrap().contains("refresh_secs"));
}

#[test]
fn wrong_pin_exits_3() {
    let t = TestToken::new();
    for args in [&["status"][..], &["kek", "list"], &["kek", "rotate"]] {
        let mut c = cli_cmd(&t, args);
        c.env("HSM_ENVELOPE_PIN", "0000");
        let o = run(c);
        assert_eq!(code(&o), 3, "{args:?}: {}", show(&o));
        let err = stderr(&o);
        assert!(
            err.contains("login") && err.contains("PinIncorrect"),
            "{err}"
        );
        assert!(!err.contains("0000") && !stdout(&o).contains("0000"));
    }
    let mut c = cli_cmd(&t, &["status", "--json"]);
    c.env("HSM_ENVELOPE_PIN", "0000");
    let o = run(c);
    assert_eq!(code(&o), 3);
    let doc: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(doc["exit_code"], 3);
    assert_eq!(doc["backend_module"]["loaded"], true);
    assert_eq!(doc["token"]["found"], true);
    assert_eq!(doc["login"], false);
    assert_eq!(doc["healthy"], false);
    // Nothing was rotated with the wrong PIN.
    assert_eq!(versions(&t).len(), 1);
}

#[test]
fn missing_pin_exits_2_with_a_clear_message() {
    let t = TestToken::new();
    let mut c = cli_cmd(&t, &["kek", "list"]);
    c.env_remove("HSM_ENVELOPE_PIN");
    let o = run(c);
    assert_eq!(code(&o), 2, "{}", show(&o));
    assert!(
        stderr(&o).contains("no PIN") && stderr(&o).contains("HSM_ENVELOPE_PIN"),
        "{}",
        show(&o)
    );
    let mut c = cli_cmd(&t, &["status", "--json"]);
    c.env("HSM_ENVELOPE_PIN", "");
    let o = run(c);
    assert_eq!(code(&o), 2, "{}", show(&o));
    let doc: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(doc["error"].as_str().unwrap().contains("HSM_ENVELOPE_PIN"));
}

#[test]
fn unreachable_backend_or_token_exits_3() {
    let t = TestToken::new();
    let text = t.config_text();
    let no_module = write_config(
        &t,
        "nomodule.toml",
        &text.replace(
            &format!("backend_module = \"{}\"", softhsm_module_path().display()),
            "backend_module = \"/nonexistent/libnothing.so\"",
        ),
    );
    let o = with_config(&t, &no_module, &["status"]);
    assert_eq!(code(&o), 3, "{}", show(&o));
    assert!(stdout(&o).contains("FAILED"), "{}", show(&o));
    assert!(stderr(&o).contains("/nonexistent/libnothing.so"));
    let o = with_config(&t, &no_module, &["status", "--json"]);
    let doc: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(doc["backend_module"]["loaded"], false);

    let no_token = write_config(
        &t,
        "notoken.toml",
        &text.replace(
            "token_label = \"hsm-envelope\"",
            "token_label = \"elsewhere\"",
        ),
    );
    let o = with_config(&t, &no_token, &["kek", "list"]);
    assert_eq!(code(&o), 3, "{}", show(&o));
    assert!(stderr(&o).contains("elsewhere"), "{}", show(&o));
    let o = with_config(&t, &no_token, &["status", "--json"]);
    let doc: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(doc["backend_module"]["loaded"], true);
    assert_eq!(doc["token"]["found"], false);
}

#[test]
fn kek_create_rotate_set_primary_and_list() {
    let t = TestToken::new();
    // Made ahead of time: decrypt-only.
    let doc = ok_json(&t, &["kek", "create"]);
    assert_eq!(doc["version"], 2);
    assert_eq!(doc["kind"], "aes256");
    assert_eq!(doc["primary"], false);
    assert_eq!(
        versions(&t),
        [(1, "primary".into(), 0), (2, "decrypt-only".into(), 0)]
    );
    let out = ok(&t, &["kek", "create", "--type", "aes256", "--primary"]);
    assert!(out.contains("v3") && out.contains("primary"), "{out}");
    let doc = ok_json(&t, &["kek", "rotate"]);
    assert_eq!(doc["previous_primary"], 3);
    assert_eq!(doc["primary"], 4);
    let out = ok(&t, &["kek", "set-primary", "2"]);
    assert!(out.contains("v2 is now primary (was v4)"), "{out}");
    let v = versions(&t);
    let states: Vec<&str> = v.iter().map(|(_, s, _)| s.as_str()).collect();
    assert_eq!(
        states,
        ["decrypt-only", "primary", "decrypt-only", "decrypt-only"]
    );
    let doc = ok_json(&t, &["kek", "set-primary", "2"]);
    assert_eq!(doc["changed"], false);

    // New DEKs wrap under the primary (this process reads the store fresh).
    let p = ours();
    let s = user_session(&p, token_slot(&p));
    let dek = generate(&s, true, vec![]);
    let kv = s
        .get_attributes(dek, &[AttributeType::VendorDefined(0xC845_0001)])
        .unwrap();
    assert!(
        matches!(&kv[..], [Attribute::VendorDefined((_, v))] if v == &2u64.to_ne_bytes()),
        "{kv:?}"
    );
    assert_eq!(versions(&t)[1], (2, "primary".into(), 1));

    // Refusals exit 1 with the reason.
    let o = cli(&t, &["kek", "set-primary", "9"]);
    assert_eq!(code(&o), 1, "{}", show(&o));
    assert!(stderr(&o).contains("no version 9"), "{}", show(&o));
    for ty in ["rsa2048", "rsa3072"] {
        let o = cli(&t, &["kek", "create", "--type", ty]);
        assert_eq!(code(&o), 1, "{}", show(&o));
        assert!(stderr(&o).contains("not supported yet"), "{}", show(&o));
    }
    assert_eq!(versions(&t).len(), 4, "nothing made by the refusals");

    // Every version is a key on the HSM: label "kek", CKA_ID = version.
    let hsm = init_pkcs11(&softhsm_module_path());
    let hs = user_session_raw(&hsm);
    for id in 1u8..=4 {
        let found = hs
            .find_objects(&[
                Attribute::Label(KEK_LABEL.as_bytes().to_vec()),
                Attribute::Id(vec![id]),
            ])
            .unwrap();
        assert_eq!(found.len(), 1, "KEK v{id} on the HSM");
        assert!(bool_attr(&hs, found[0], AttributeType::Sensitive));
        assert!(!bool_attr(&hs, found[0], AttributeType::Extractable));
    }
}

#[test]
fn destroy_version_is_refused_while_needed_and_removes_the_key_after_rewrap() {
    let t = TestToken::with_extra_config("refresh_secs = 1\n");
    let p = ours();
    let s = user_session(&p, token_slot(&p));
    let mut deks = Vec::new();
    for i in 0..3u8 {
        let d = generate(&s, true, vec![Attribute::Label(vec![b'd', b'0' + i])]);
        let ct = gcm_encrypt(&s, d, &[i; 12], b"", b"payload").unwrap();
        deks.push((vec![b'd', b'0' + i], ct));
    }
    ok(&t, &["kek", "rotate"]);

    // Needed by 3 records: refused, with the count.
    let o = cli(&t, &["kek", "destroy-version", "1"]);
    assert_eq!(code(&o), 1, "{}", show(&o));
    assert!(
        stderr(&o).contains("3 record(s) still need v1"),
        "{}",
        show(&o)
    );
    assert!(stderr(&o).contains("rewrap"), "{}", show(&o));
    let (c, doc) = cli_json(&t, &["kek", "destroy-version", "1"]);
    assert_eq!(c, 1);
    assert_eq!(doc["records"], 3);
    assert!(doc["error"].as_str().unwrap().contains('3'));
    // The primary: refused.
    let o = cli(&t, &["kek", "destroy-version", "2"]);
    assert_eq!(code(&o), 1, "{}", show(&o));
    assert!(stderr(&o).contains("primary"), "{}", show(&o));
    // Unknown version.
    let o = cli(&t, &["kek", "destroy-version", "7"]);
    assert_eq!(code(&o), 1, "{}", show(&o));

    let doc = ok_json(&t, &["rewrap"]);
    assert_eq!(doc["rewrapped"], 3);
    assert_eq!(doc["remaining"], 0);
    // Past refresh_secs since v1 was retired: no process can still seal under it.
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let out = ok(&t, &["kek", "destroy-version", "1"]);
    assert!(out.contains("v1 destroyed"), "{out}");
    assert_eq!(
        versions(&t),
        [(1, "destroyed".into(), 0), (2, "primary".into(), 3)]
    );
    let o = cli(&t, &["kek", "destroy-version", "1"]);
    assert_eq!(code(&o), 1, "already destroyed: {}", show(&o));

    // Gone from the HSM itself; v2 is still there.
    let hsm = init_pkcs11(&softhsm_module_path());
    let hs = user_session_raw(&hsm);
    let find = |id: u8| {
        hs.find_objects(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::Label(KEK_LABEL.as_bytes().to_vec()),
            Attribute::Id(vec![id]),
        ])
        .unwrap()
        .len()
    };
    assert_eq!(find(1), 0, "KEK v1 must be destroyed on the HSM");
    assert_eq!(find(2), 1);

    // Every DEK still decrypts its data, unwrapped afresh from its new record
    // (logging out drops the cached values and the handles).
    s.logout().unwrap();
    s.login(UserType::User, Some(&AuthPin::new(USER_PIN.into())))
        .unwrap();
    for (label, ct) in &deks {
        let h = s.find_objects(&[Attribute::Label(label.clone())]).unwrap();
        assert_eq!(h.len(), 1);
        let i = label[1] - b'0';
        assert_eq!(
            gcm_decrypt(&s, h[0], &[i; 12], b"", ct).unwrap(),
            b"payload"
        );
    }
}

#[test]
fn dek_list_shows_deks_made_through_the_module() {
    let t = TestToken::new();
    let out = ok(&t, &["dek", "list"]);
    assert!(out.contains("no token DEKs"), "{out}");
    let p = ours();
    let s = user_session(&p, token_slot(&p));
    generate(
        &s,
        true,
        vec![
            Attribute::Label(b"db-master".to_vec()),
            Attribute::Id(vec![0xab, 0x01]),
        ],
    );
    import(
        &s,
        &[7; 16],
        true,
        vec![Attribute::Label(b"imported".to_vec())],
    );
    generate(&s, false, vec![Attribute::Label(b"session".to_vec())]);

    let doc = ok_json(&t, &["dek", "list"]);
    assert_eq!(doc["count"], 2, "{doc:#}");
    let deks = doc["deks"].as_array().unwrap();
    let by_label = |l: &str| {
        deks.iter()
            .find(|d| d["label"] == l)
            .unwrap_or_else(|| panic!("{l} missing: {doc:#}"))
    };
    let m = by_label("db-master");
    assert_eq!(m["cka_id"], "ab01");
    assert_eq!(m["kek_label"], "kek");
    assert_eq!(m["kek_version"], 1);
    assert_eq!(m["id"].as_str().unwrap().len(), 32);
    assert!(m["created"].as_i64().unwrap() > 1_600_000_000);
    assert!(m.get("last_used").is_some());
    assert_eq!(by_label("imported")["cka_id"], "");

    // The id is the DEK's CKA_UNIQUE_ID through the module.
    let h = s
        .find_objects(&[Attribute::Label(b"db-master".to_vec())])
        .unwrap();
    let uid = s.get_attributes(h[0], &[AttributeType::UniqueId]).unwrap();
    assert!(
        matches!(&uid[..], [Attribute::UniqueId(u)] if u.as_slice() == m["id"].as_str().unwrap().as_bytes()),
        "{uid:?} vs {m}"
    );

    let out = ok(&t, &["dek", "list"]);
    let header = out.lines().next().unwrap();
    for h in ["LABEL", "ID", "CKA_ID", "KEK", "CREATED", "LAST USED"] {
        assert!(header.contains(h), "{h}: {out}");
    }
    let line = out.lines().find(|l| l.starts_with("db-master")).unwrap();
    assert!(line.contains("ab01") && line.contains("kek v1"), "{out}");
    assert!(
        !out.contains("session"),
        "session DEKs are not stored: {out}"
    );

    ok(&t, &["kek", "rotate"]);
    ok(&t, &["rewrap"]);
    let doc = ok_json(&t, &["dek", "list"]);
    assert!(doc["deks"]
        .as_array()
        .unwrap()
        .iter()
        .all(|d| d["kek_version"] == 2));
}

#[test]
fn soft_deleted_deks_are_not_listed_but_still_need_their_kek_version() {
    let t = TestToken::new();
    let p = ours();
    let s = user_session(&p, token_slot(&p));
    let keep = generate(&s, true, vec![Attribute::Label(b"keep".to_vec())]);
    let gone = generate(&s, true, vec![Attribute::Label(b"gone".to_vec())]);
    s.destroy_object(gone).unwrap(); // soft-deleted: recoverable, still a record
    let _ = keep;
    let doc = ok_json(&t, &["dek", "list"]);
    assert_eq!(doc["count"], 1, "{doc:#}");
    assert_eq!(doc["deks"][0]["label"], "keep");
    let st = ok_json(&t, &["status"]);
    assert_eq!(st["records"], 2);
    assert_eq!(st["records_soft_deleted"], 1);
    ok(&t, &["kek", "rotate"]);
    assert_eq!(versions(&t)[0], (1, "decrypt-only".into(), 2));
    let o = cli(&t, &["kek", "destroy-version", "1"]);
    assert_eq!(code(&o), 1, "{}", show(&o));
    assert!(stderr(&o).contains("2 record(s)"), "{}", show(&o));
    // The re-wrap covers the deleted record too.
    assert_eq!(ok_json(&t, &["rewrap"])["rewrapped"], 2);
    assert_eq!(versions(&t)[1], (2, "primary".into(), 2));
}
