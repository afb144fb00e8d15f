//! The admin tool `hsm-envelope`, run as the operator runs it: the built
//! binary, against a fresh SoftHSM2 token per test, with DEKs made through
//! the module by cryptoki.
//!
//! Each test runs in its own process (cargo nextest) with its own token.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::cli::*;
use common::p11::*;
use common::*;
use cryptoki::object::{Attribute, AttributeType, ObjectClass};
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;
use serde_json::Value;

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
        &["kek", "import-key"],
        &["kek", "import"],
        &["kek", "list"],
        &["kek", "set-primary"],
        &["kek", "destroy-version"],
        &["rewrap"],
        &["dek"],
        &["dek", "list"],
        &["status"],
        &["store"],
        &["store", "migrate"],
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
    for c in [
        "kek", "rewrap", "dek", "status", "store", "--config", "--json",
    ] {
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
    let store_line = format!("store            sqlite {}", t.store_path.display());
    // The slot as the module numbers it, not SoftHSM2's (2081323628, say).
    assert!(out.contains("'hsm-envelope': ok (slot 0)\n"), "{out}");
    assert!(!out.contains("backend slot"), "{out}");
    for want in [
        "backend module",
        ": ok",
        "'hsm-envelope': ok",
        "login            ok",
        "KEK 'kek'        primary v1",
        "  v1       aes256",
        "records          0 (0 soft-deleted, still recoverable)",
        "pending re-wrap  0",
        store_line.as_str(),
    ] {
        assert!(out.contains(want), "{want:?} missing:\n{out}");
    }
    let doc = ok_json(&t, &["status"]);
    assert_eq!(doc["store_engine"], "sqlite");
    assert_eq!(doc["store"], t.store_path.display().to_string());
    assert_eq!(doc["backend_module"]["loaded"], true);
    assert_eq!(doc["token"]["slot"], 0);
    assert!(doc["token"]["backend_slot"].as_u64().is_some(), "{doc:#}");
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
    // The slot as the module (pkcs11-tool, applications) numbers it.
    assert_eq!(
        lines[0], "KEK 'kek' on token 'hsm-envelope' (slot 0):",
        "{out}"
    );
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
    // Versions are named as in `status` and every other message: v1.
    assert_eq!(row[..3], ["v1", "aes256", "primary"], "{out}");
    assert_eq!(row.last(), Some(&"0"), "{out}");
    assert!(row[3].ends_with('Z') && row[4].ends_with('Z'), "{out}");

    let doc = ok_json(&t, &["kek", "list"]);
    assert_eq!(doc["kek_label"], "kek");
    assert_eq!(doc["token"], TOKEN_LABEL);
    assert_eq!(doc["slot"], 0);
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
            err.contains("login") && err.contains("CKR_PIN_INCORRECT"),
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
    // Long enough that real time does not reach it during the test: the
    // clock is moved past it below.
    let refresh = std::time::Duration::from_secs(30);
    let t = TestToken::with_extra_config(&format!("refresh_secs = {}\n", refresh.as_secs()));
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
    // Within refresh_secs (+1 s) of v1's retirement a process may still
    // seal under it: refused, and nothing is destroyed.
    let o = cli(&t, &["kek", "destroy-version", "1"]);
    assert_eq!(code(&o), 1, "{}", show(&o));
    assert!(
        stderr(&o).contains("was primary until moments ago"),
        "{}",
        show(&o)
    );
    assert_eq!(
        versions(&t),
        [(1, "decrypt-only".into(), 0), (2, "primary".into(), 3)]
    );
    // Past refresh_secs since v1 was retired: no process can still seal under
    // it. The tool's clock moves with this process's (cli_cmd).
    advance_clock(refresh + std::time::Duration::from_secs(1));
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

// ---------------------------------------------------------------------------
// Issue 5: recoverable deletion (`dek deleted`, `dek recover`, `dek purge`),
// the audit log (`audit verify`), the audit HMAC key made by `kek create`.

/// The id of a DEK as the tool shows it: its CKA_UNIQUE_ID through the module.
fn unique_id(s: &cryptoki::session::Session, h: cryptoki::object::ObjectHandle) -> String {
    match s
        .get_attributes(h, &[AttributeType::UniqueId])
        .unwrap()
        .as_slice()
    {
        [Attribute::UniqueId(u)] => String::from_utf8(u.clone()).unwrap(),
        other => panic!("CKA_UNIQUE_ID: {other:?}"),
    }
}

fn id_bytes(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

/// `dek deleted --json`'s rows.
fn deleted_rows(t: &TestToken) -> Vec<Value> {
    ok_json(t, &["dek", "deleted"])["deleted"]
        .as_array()
        .expect("deleted array")
        .clone()
}

/// Finalizes the module in this process, which closes its store.
///
/// Do this before [`expire_retention`] or [`rows_with_id`]: this test links
/// its own copy of SQLite (rusqlite), and the module has another. POSIX
/// locks belong to the process, so when one copy closes its descriptor of
/// the store it drops the other copy's locks on it, and the module's next
/// write can be lost. SQLite guards against that only within one copy.
fn finalize_module(p: cryptoki::context::Pkcs11, s: cryptoki::session::Session) {
    drop(s);
    p.finalize().expect("C_Finalize of the module");
}

/// Moves a deleted row's purge date into the past, as if its retention
/// period had passed (a simulated clock: the store is written directly).
/// The module must not be initialized in this process (see
/// [`finalize_module`]).
fn expire_retention(t: &TestToken, id: &str) {
    let db = rusqlite::Connection::open(&t.store_path).unwrap();
    db.busy_timeout(std::time::Duration::from_secs(10)).unwrap();
    let n = db
        .execute(
            "UPDATE dek SET purge_after = strftime('%s','now') - 60 WHERE id = ?1 AND deleted_at IS NOT NULL",
            [id_bytes(id)],
        )
        .unwrap();
    assert_eq!(n, 1, "no deleted row {id} in {}", t.store_path.display());
}

/// Rows of the store with this id, deleted or not (read directly; the
/// module must not be initialized in this process: see [`finalize_module`]).
fn rows_with_id(t: &TestToken, id: &str) -> i64 {
    let db = rusqlite::Connection::open(&t.store_path).unwrap();
    db.query_row(
        "SELECT count(*) FROM dek WHERE id = ?1",
        [id_bytes(id)],
        |r| r.get(0),
    )
    .unwrap()
}

#[test]
fn the_issue_5_commands_have_help() {
    for cmd in [
        &["dek", "deleted"][..],
        &["dek", "recover"],
        &["dek", "purge"],
        &["audit"],
        &["audit", "verify"],
    ] {
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
        assert!(
            out.contains(&format!("Usage: hsm-envelope {}", cmd.join(" "))),
            "{args:?}: {out}"
        );
        assert!(out.contains("Exit codes:"), "{args:?}: {out}");
    }
    let o = Command::new(BIN).arg("--help").output().unwrap();
    assert!(stdout(&o).contains("audit"), "{}", show(&o));
}

#[test]
fn malformed_dek_ids_exit_2_before_any_pin() {
    let t = TestToken::new();
    for (cmd, id) in [
        ("recover", "xyz"),
        ("recover", "0011"),
        ("purge", "00112233445566778899aabbccddeeffaa"),
        ("purge", "g0112233445566778899aabbccddeeff"),
        ("recover", ""),
    ] {
        let mut c = cli_cmd(&t, &["dek", cmd, id]);
        c.env_remove("HSM_ENVELOPE_PIN");
        let o = run(c);
        assert_eq!(code(&o), 2, "{cmd} {id:?}:\n{}", show(&o));
        assert!(stderr(&o).contains("32 hex digits"), "{}", show(&o));
        assert!(!stderr(&o).contains("no PIN"), "{}", show(&o));
    }
    // --json: still one JSON document on stdout.
    let (c, doc) = cli_json(&t, &["dek", "purge", "not-an-id"]);
    assert_eq!(c, 2, "{doc:#}");
    assert_eq!(doc["exit_code"], 2);
    assert!(
        doc["error"].as_str().unwrap().contains("32 hex digits"),
        "{doc:#}"
    );
    // A well-formed id that is no deleted DEK is a refusal (exit 1).
    let o = cli(&t, &["dek", "recover", &"0".repeat(32)]);
    assert_eq!(code(&o), 1, "{}", show(&o));
    assert!(stderr(&o).contains("no soft-deleted DEK"), "{}", show(&o));
}

#[test]
fn a_destroyed_dek_is_listed_recovered_and_decrypts_its_old_data() {
    let t = TestToken::new();
    let p = ours();
    let s = user_session(&p, token_slot(&p));
    let keep = generate(&s, true, vec![Attribute::Label(b"keep".to_vec())]);
    let dek = generate(&s, true, vec![Attribute::Label(b"doomed".to_vec())]);
    let id = unique_id(&s, dek);
    let iv = [9u8; 12];
    let ct = gcm_encrypt(&s, dek, &iv, b"aad", b"old secret data").unwrap();
    let _ = keep;

    let out = ok(&t, &["dek", "deleted"]);
    assert!(out.contains("no soft-deleted DEKs"), "{out}");
    s.destroy_object(dek).unwrap();
    assert!(s
        .find_objects(&[Attribute::Label(b"doomed".to_vec())])
        .unwrap()
        .is_empty());

    // Listed, in text and JSON, with its dates.
    let out = ok(&t, &["dek", "deleted"]);
    assert!(out.contains("purge protection off"), "{out}");
    assert!(out.contains("retention        90 days"), "{out}");
    let header = out.lines().find(|l| l.starts_with("LABEL")).unwrap();
    for h in ["ID", "KEK VERSION", "DELETED", "PURGE AFTER", "PURGE NOW"] {
        assert!(header.contains(h), "{h}: {out}");
    }
    let line = out.lines().find(|l| l.starts_with("doomed")).unwrap();
    let cells: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(cells[1], id, "{out}");
    assert_eq!(cells[2], "v1", "{out}");
    assert!(cells[3].ends_with('Z') && cells[4].ends_with('Z'), "{out}");
    assert_eq!(cells[5], "yes", "no purge protection: {out}");
    assert!(!out.contains("keep"), "{out}");

    let doc = ok_json(&t, &["dek", "deleted"]);
    assert_eq!(doc["count"], 1, "{doc:#}");
    assert_eq!(doc["purge_protection"], false);
    assert_eq!(doc["retention_days"], 90);
    let row = &doc["deleted"][0];
    assert_eq!(row["id"], id.as_str());
    assert_eq!(row["label"], "doomed");
    assert_eq!(row["kek_version"], 1);
    assert_eq!(row["purge_allowed"], true);
    let deleted_at = row["deleted_at"].as_i64().unwrap();
    assert!(deleted_at > 1_600_000_000);
    assert_eq!(
        row["purge_after"].as_i64().unwrap() - deleted_at,
        90 * 86_400
    );

    // `dek list` and status.
    assert_eq!(ok_json(&t, &["dek", "list"])["count"], 1);
    let st = ok_json(&t, &["status"]);
    assert_eq!(st["deleted_deks"], 1);
    assert_eq!(st["deleted_purgeable_now"], 1);
    assert_eq!(st["purge_protection"], false);
    assert_eq!(st["retention_days"], 90);
    let out = ok(&t, &["status"]);
    assert!(out.contains("deleted DEKs     1"), "{out}");
    assert!(out.contains("retention        90 days"), "{out}");
    assert!(out.contains("purge protection off"), "{out}");

    // Recover (the id in upper case works too).
    let out = ok(&t, &["dek", "recover", &id.to_uppercase()]);
    assert!(out.contains("recovered") && out.contains(&id), "{out}");
    assert!(out.contains("doomed"), "{out}");
    assert!(deleted_rows(&t).is_empty());
    assert_eq!(ok_json(&t, &["dek", "list"])["count"], 2);

    // The module finds it again, and it decrypts what it encrypted.
    let found = s
        .find_objects(&[Attribute::Label(b"doomed".to_vec())])
        .unwrap();
    assert_eq!(found.len(), 1, "the recovered DEK is found again");
    assert_eq!(unique_id(&s, found[0]), id);
    assert_eq!(
        gcm_decrypt(&s, found[0], &iv, b"aad", &ct).unwrap(),
        b"old secret data"
    );

    // Recovering again: it is live, not deleted.
    let o = cli(&t, &["dek", "recover", &id]);
    assert_eq!(code(&o), 1, "{}", show(&o));
    assert!(stderr(&o).contains("is not deleted"), "{}", show(&o));
    let (c, doc) = cli_json(&t, &["dek", "recover", &id]);
    assert_eq!(c, 1);
    assert_eq!(doc["id"], id.as_str());
}

#[test]
fn purge_is_refused_under_protection_until_retention_has_passed() {
    let t = TestToken::with_extra_config("purge_protection = true\nretention_days = 7\n");
    let p = ours();
    let s = user_session(&p, token_slot(&p));
    let dek = generate(&s, true, vec![Attribute::Label(b"retained".to_vec())]);
    let id = unique_id(&s, dek);
    s.destroy_object(dek).unwrap();
    finalize_module(p, s);

    let doc = ok_json(&t, &["dek", "deleted"]);
    assert_eq!(doc["purge_protection"], true, "{doc:#}");
    assert_eq!(doc["retention_days"], 7);
    let row = &doc["deleted"][0];
    assert_eq!(row["purge_allowed"], false);
    assert_eq!(
        row["purge_after"].as_i64().unwrap() - row["deleted_at"].as_i64().unwrap(),
        7 * 86_400
    );
    let out = ok(&t, &["dek", "deleted"]);
    assert!(out.contains("purge protection on"), "{out}");
    let line = out.lines().find(|l| l.starts_with("retained")).unwrap();
    assert!(line.trim_end().ends_with("no"), "{out}");
    let st = ok_json(&t, &["status"]);
    assert_eq!(st["purge_protection"], true);
    assert_eq!(st["deleted_purgeable_now"], 0);
    assert!(ok(&t, &["status"]).contains("purge protection on"));

    // Refused, with the reason and the date; the row stays.
    let o = cli(&t, &["dek", "purge", &id]);
    assert_eq!(code(&o), 1, "{}", show(&o));
    let err = stderr(&o);
    assert!(
        err.contains("purge protection is on") && err.contains("retained until"),
        "{err}"
    );
    assert!(err.contains("dek recover"), "{err}");
    let (c, doc) = cli_json(&t, &["dek", "purge", &id]);
    assert_eq!(c, 1, "{doc:#}");
    assert_eq!(doc["purged"], false);
    assert_eq!(doc["purge_protection"], true);
    assert!(doc["error"]
        .as_str()
        .unwrap()
        .contains("purge protection is on"));
    assert_eq!(rows_with_id(&t, &id), 1);
    assert_eq!(deleted_rows(&t).len(), 1);

    // Retention has passed (simulated clock): allowed, and the row is gone.
    expire_retention(&t, &id);
    assert_eq!(deleted_rows(&t)[0]["purge_allowed"], true);
    let out = ok(&t, &["dek", "purge", &id]);
    assert!(
        out.contains("purged for good") && out.contains(&id),
        "{out}"
    );
    assert_eq!(rows_with_id(&t, &id), 0);
    assert!(deleted_rows(&t).is_empty());
    assert_eq!(ok_json(&t, &["status"])["records"], 0);
    // Gone for good.
    for cmd in ["recover", "purge"] {
        let o = cli(&t, &["dek", cmd, &id]);
        assert_eq!(code(&o), 1, "{cmd}: {}", show(&o));
        assert!(stderr(&o).contains("no soft-deleted DEK"), "{}", show(&o));
    }
    // The module (loaded again) does not find it either.
    let p = ours();
    let s = user_session(&p, token_slot(&p));
    assert!(s
        .find_objects(&[Attribute::Label(b"retained".to_vec())])
        .unwrap()
        .is_empty());

    // Protection cannot be switched off by the configuration afterwards.
    let text = t
        .config_text()
        .replace("purge_protection = true", "purge_protection = false");
    let off = write_config(&t, "off.toml", &text);
    let o = with_config(&t, &off, &["dek", "deleted"]);
    assert_eq!(code(&o), 2, "{}", show(&o));
    assert!(stderr(&o).contains("purge_protection"), "{}", show(&o));
}

#[test]
fn purge_is_allowed_at_once_without_protection() {
    let t = TestToken::new();
    let p = ours();
    let s = user_session(&p, token_slot(&p));
    let dek = generate(&s, true, vec![Attribute::Label(b"shred-me".to_vec())]);
    let id = unique_id(&s, dek);
    // A live DEK cannot be purged: destroy it through the module first.
    let o = cli(&t, &["dek", "purge", &id]);
    assert_eq!(code(&o), 1, "{}", show(&o));
    assert!(stderr(&o).contains("is not deleted"), "{}", show(&o));
    assert_eq!(ok_json(&t, &["dek", "list"])["count"], 1);

    s.destroy_object(dek).unwrap();
    let doc = ok_json(&t, &["dek", "purge", &id]);
    assert_eq!(doc["purged"], true, "{doc:#}");
    assert_eq!(doc["id"], id.as_str());
    assert_eq!(doc["label"], "shred-me");
    assert!(deleted_rows(&t).is_empty());
    let o = cli(&t, &["dek", "recover", &id]);
    assert_eq!(code(&o), 1, "{}", show(&o));
    finalize_module(p, s);
    assert_eq!(rows_with_id(&t, &id), 0, "the row is gone from the store");
}

/// Writes an audit log with the library, its checkpoints signed on SoftHSM2
/// (loaded directly) by the `audit-hmac` key: 10 entries and a checkpoint
/// every 4 lines, then a flush, then `tail` entries after the last
/// checkpoint. Returns the log's lines.
fn write_audit_log(path: &Path, tail: usize) -> Vec<String> {
    use hsm_envelope::audit::{Audit, Context, Entry, HsmMac, Op};
    let hsm = init_pkcs11(&softhsm_module_path());
    let session = user_session_raw(&hsm);
    let a = Audit::open(
        path,
        Context {
            token: TOKEN_LABEL.into(),
        },
        (4, std::time::Duration::from_secs(300)),
        std::time::Duration::from_secs(60),
        Some(Box::new(HsmMac::from_session(session, "audit-hmac"))),
    )
    .expect("Audit::open");
    let id = [0x42u8; 16];
    for i in 0..10u32 {
        a.record(
            Entry::new(Op::DekCreate, cryptoki_sys::CKR_OK)
                .key(&id, b"payroll")
                .kek_version(i),
        );
    }
    a.flush();
    for _ in 0..tail {
        a.record(Entry::new(Op::Logout, cryptoki_sys::CKR_OK));
    }
    let s = a.stats();
    assert_eq!((s.errors, s.checkpoint_failures), (0, 0), "{s:?}");
    drop(a);
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn audit_verify_accepts_an_intact_log_and_names_an_edited_line() {
    let t = TestToken::new();
    let path = t.path().join("written.log");
    let lines = write_audit_log(&path, 0);
    let n = lines.len() as u64;
    assert!(n >= 13, "{lines:#?}");
    let log = path.to_str().unwrap();

    let out = ok(&t, &["audit", "verify", "--log", log]);
    assert!(out.contains("result       intact"), "{out}");
    assert!(out.contains(&format!("lines        {n}")), "{out}");
    assert!(!out.contains("WARNING"), "{out}");
    let doc = ok_json(&t, &["audit", "verify", "--log", log]);
    assert_eq!(doc["intact"], true, "{doc:#}");
    assert_eq!(doc["lines"], n);
    assert!(doc["checkpoints"].as_u64().unwrap() >= 3, "{doc:#}");
    assert_eq!(doc["unauthenticated_tail"], 0);
    assert_eq!(doc["first_bad"], Value::Null);

    // The default path comes from the configuration's `audit_log`.
    let with_log = write_config(
        &t,
        "with-log.toml",
        &t.config_with("audit_log", &format!("{log:?}")),
    );
    let o = with_config(&t, &with_log, &["audit", "verify"]);
    assert_eq!(code(&o), 0, "{}", show(&o));
    assert!(stdout(&o).contains(log), "{}", show(&o));

    // Edit one byte of line 3: exit 1, and line 3 is named.
    let mut bytes = std::fs::read(&path).unwrap();
    let start: usize = lines[..2].iter().map(|l| l.len() + 1).sum();
    let at = start
        + lines[2]
            .find("payroll")
            .unwrap_or_else(|| panic!("line 3: {}", lines[2]));
    bytes[at] = b'P';
    std::fs::write(&path, &bytes).unwrap();
    let o = cli(&t, &["audit", "verify", "--log", log]);
    assert_eq!(code(&o), 1, "{}", show(&o));
    assert!(stdout(&o).contains("NOT INTACT"), "{}", show(&o));
    assert!(stdout(&o).contains("first bad    line 3:"), "{}", show(&o));
    assert!(stderr(&o).contains("first bad line 3"), "{}", show(&o));
    let (c, doc) = cli_json(&t, &["audit", "verify", "--log", log]);
    assert_eq!(c, 1, "{doc:#}");
    assert_eq!(doc["intact"], false);
    assert_eq!(doc["first_bad"]["line"], 3, "{doc:#}");
    assert!(doc["first_bad"]["reason"].as_str().unwrap().contains('3'));
    assert!(doc["error"].as_str().unwrap().contains("line 3"));
}

#[test]
fn audit_verify_warns_about_the_unauthenticated_tail_and_needs_a_log_and_the_key() {
    let t = TestToken::new();
    let path = t.path().join("written.log");
    let lines = write_audit_log(&path, 2);
    let n = lines.len() as u64;
    let log = path.to_str().unwrap();
    let out = ok(&t, &["audit", "verify", "--log", log]);
    assert!(out.contains("result       intact"), "{out}");
    assert!(
        out.contains(&format!(
            "WARNING: the last 2 line(s) ({}-{n}) follow the last checkpoint",
            n - 1
        )),
        "{out}"
    );
    assert!(out.contains("NOT authenticated"), "{out}");
    let doc = ok_json(&t, &["audit", "verify", "--log", log]);
    assert_eq!(doc["unauthenticated_tail"], 2, "{doc:#}");

    // No --log and no `audit_log` (new-token.sh writes one: taken out
    // here): exit 2, before the PIN.
    let no_audit: String = t
        .config_text()
        .lines()
        .filter(|l| !l.starts_with("audit_log ="))
        .map(|l| format!("{l}\n"))
        .collect();
    let no_audit = write_config(&t, "no-audit.toml", &no_audit);
    let mut c = cli_cmd(&t, &["audit", "verify"]);
    c.env("HSM_ENVELOPE_CONF", &no_audit);
    c.env_remove("HSM_ENVELOPE_PIN");
    let o = run(c);
    assert_eq!(code(&o), 2, "{}", show(&o));
    assert!(
        stderr(&o).contains("--log") && stderr(&o).contains("audit_log"),
        "{}",
        show(&o)
    );
    // A log that is not there: exit 2, naming it.
    let missing = t.path().join("missing.log");
    let o = cli(&t, &["audit", "verify", "--log", missing.to_str().unwrap()]);
    assert_eq!(code(&o), 2, "{}", show(&o));
    assert!(stderr(&o).contains("missing.log"), "{}", show(&o));
    // No HMAC key with the configured label: a backend problem (exit 3),
    // not a verdict on the log.
    let mut text = t.config_text();
    text.push_str("audit_hmac_label = \"no-such-key\"\n");
    let nokey = write_config(&t, "nokey.toml", &text);
    let o = with_config(&t, &nokey, &["audit", "verify", "--log", log]);
    assert_eq!(code(&o), 3, "{}", show(&o));
    assert!(stderr(&o).contains("no-such-key"), "{}", show(&o));
}

#[test]
fn kek_create_and_rotate_make_the_audit_hmac_key_if_missing() {
    let t = TestToken::new();
    let hsm = init_pkcs11(&softhsm_module_path());
    let hs = user_session_raw(&hsm);
    let find = |hs: &cryptoki::session::Session| {
        hs.find_objects(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::Label(b"audit-hmac".to_vec()),
        ])
        .unwrap()
    };
    // new-token.sh made one: nothing to do.
    assert_eq!(find(&hs).len(), 1);
    let doc = ok_json(&t, &["kek", "create"]);
    assert_eq!(doc["audit_hmac_key"]["label"], "audit-hmac", "{doc:#}");
    assert_eq!(doc["audit_hmac_key"]["created"], false);
    assert_eq!(find(&hs).len(), 1);

    // Removed on the HSM: `kek create` makes it again, non-extractable.
    hs.destroy_object(find(&hs)[0]).unwrap();
    let out = ok(&t, &["kek", "create"]);
    assert!(out.contains("audit HMAC key 'audit-hmac' created"), "{out}");
    let keys = find(&hs);
    assert_eq!(keys.len(), 1);
    assert!(bool_attr(&hs, keys[0], AttributeType::Sensitive));
    assert!(!bool_attr(&hs, keys[0], AttributeType::Extractable));
    // ... and `kek rotate` too.
    hs.destroy_object(keys[0]).unwrap();
    let doc = ok_json(&t, &["kek", "rotate"]);
    assert_eq!(doc["audit_hmac_key"]["created"], true, "{doc:#}");
    assert_eq!(find(&hs).len(), 1);

    // The new key authenticates checkpoints that `audit verify` accepts.
    let path = t.path().join("written.log");
    write_audit_log(&path, 0);
    ok(&t, &["audit", "verify", "--log", path.to_str().unwrap()]);

    // Two keys with the label: which one would verify? `kek create` says
    // that the version was made but the key is not right (exit 1), and
    // `audit verify` refuses to judge the log (exit 3).
    hs.generate_key(
        &cryptoki::mechanism::Mechanism::GenericSecretKeyGen,
        &[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(cryptoki::object::KeyType::GENERIC_SECRET),
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sign(true),
            Attribute::ValueLen(32.into()),
            Attribute::Label(b"audit-hmac".to_vec()),
        ],
    )
    .unwrap();
    let (c, doc) = cli_json(&t, &["kek", "create"]);
    assert_eq!(c, 1, "{doc:#}");
    let err = doc["error"].as_str().unwrap();
    assert!(
        err.contains("v5 was created") && err.contains("audit HMAC key"),
        "{doc:#}"
    );
    assert_eq!(doc["version"], 5, "{doc:#}");
    assert_eq!(versions(&t).len(), 5);
    let o = cli(&t, &["audit", "verify", "--log", path.to_str().unwrap()]);
    assert_eq!(code(&o), 3, "{}", show(&o));
    assert!(stderr(&o).contains("expected exactly one"), "{}", show(&o));
}

/// `dek list` shows when a DEK was last unwrapped for use (its first use in
/// a process), and "never" before that.
#[test]
fn dek_list_shows_last_use() {
    let t = TestToken::new();
    let p = ours();
    let s = user_session(&p, token_slot(&p));
    let dek = generate(&s, true, vec![Attribute::Label(b"used".to_vec())]);
    let ct = gcm_encrypt(&s, dek, &[1; 12], b"", b"x").unwrap();
    drop(s);
    p.finalize().unwrap();
    let doc = ok_json(&t, &["dek", "list"]);
    assert!(
        doc["deks"][0]["last_used"].is_null(),
        "made, not yet unwrapped: {doc:#}"
    );
    // A new process instance unwraps it on first use.
    let p = ours();
    let s = user_session(&p, token_slot(&p));
    let dek = s
        .find_objects(&[Attribute::Label(b"used".to_vec())])
        .unwrap()[0];
    gcm_decrypt(&s, dek, &[1; 12], b"", &ct).unwrap();
    drop(s);
    p.finalize().unwrap();
    let doc = ok_json(&t, &["dek", "list"]);
    assert!(
        doc["deks"][0]["last_used"].as_i64().unwrap()
            >= doc["deks"][0]["created"].as_i64().unwrap(),
        "{doc:#}"
    );
}

/// With a second token on the backend, `status` and `kek list` name the
/// slot the module shows for the KEK's token, whichever it is.
#[test]
fn status_and_kek_list_show_the_modules_slot_id() {
    let t = TestToken::new();
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
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let module_slot = {
        let p = ours();
        let id = token_slot(&p).id();
        p.finalize().unwrap();
        id
    };
    let doc = ok_json(&t, &["status"]);
    assert_eq!(doc["token"]["slot"], module_slot, "{doc:#}");
    assert_ne!(doc["token"]["backend_slot"], module_slot, "{doc:#}");
    let out = ok(&t, &["status"]);
    assert!(
        out.contains(&format!("'hsm-envelope': ok (slot {module_slot})")),
        "{out}"
    );
    let out = ok(&t, &["kek", "list"]);
    assert!(
        out.starts_with(&format!(
            "KEK 'kek' on token 'hsm-envelope' (slot {module_slot}):\n"
        )),
        "{out}"
    );
    assert_eq!(ok_json(&t, &["kek", "list"])["slot"], module_slot);
}

/// A key someone put on the HSM under the KEK's label and the next version's
/// CKA_ID (with a value they know) is not adopted by a rotation: only a key
/// made on the HSM, never out of it, is.
#[test]
fn a_rotation_does_not_adopt_a_key_that_was_imported_under_the_kek_label() {
    use cryptoki::object::{Attribute, KeyType, ObjectClass};
    let t = TestToken::new();
    ok(&t, &["kek", "list"]);
    let hsm = common::init_pkcs11(&common::softhsm_module_path());
    let hs = common::p11::user_session_raw(&hsm);
    hs.create_object(&[
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Encrypt(true),
        Attribute::Decrypt(true),
        Attribute::Wrap(true),
        Attribute::Unwrap(true),
        Attribute::Label(common::KEK_LABEL.as_bytes().to_vec()),
        Attribute::Id(vec![2]),
        Attribute::Value(vec![0x42; 32]),
    ])
    .unwrap();
    drop(hs);
    let o = cli(&t, &["kek", "rotate"]);
    assert_ne!(code(&o), 0, "{}", show(&o));
    assert!(stderr(&o).contains("refusing to adopt"), "{}", show(&o));
    let (_, list) = cli_json(&t, &["kek", "list"]);
    assert_eq!(list["primary"], 1, "{list}");
}
