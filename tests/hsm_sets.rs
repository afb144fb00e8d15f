//! Several HSMs with KEKs of their own (issue 13): `kek_mode = "any-of"`
//! (disaster recovery: any one HSM opens a DEK) and `"all-of"` (double
//! key: a DEK is made of one share per HSM, and every HSM must take part).
//! Further tokens of the test's SoftHSM2 stand in for independent HSMs,
//! each with an AES KEK generated on it; member "b" is reached through the
//! fault-injecting backend, so a flag file takes it down.
//!
//! While the module is loaded in this process, the HSMs are changed from a
//! child process (`hsm_side`): SoftHSM2 is one library per process, and
//! finalizing it here would pull it from under the module.

mod common;

use std::io::BufRead;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::cli::{cli_json, ok_json};
use common::host::Host;
use common::hsms::*;
use common::p11::*;
use common::*;
use cryptoki::error::RvError;
use cryptoki::object::{Attribute, ObjectClass, ObjectHandle};
use cryptoki::session::Session;

const CKR_HSME_KEK_UNAVAILABLE: u64 = 0xC845_0001;
const CKR_HSME_KEK_REVOKED: u64 = 0xC845_0004;
const CKR_HSME_HSM_UNAVAILABLE: u64 = 0xC845_0005;
const SOFT_TTL: Duration = Duration::from_secs(60);
const IV: [u8; 12] = [9; 12];
const HSM_SIDE: &str = "HSME_HSM_SIDE";
const HOST_B: &str = "HSME_SETS_HOST_B";

/// Main (the test token and its KEK) and member "b" (token "hsm-b", its own
/// KEK, through the fault backend), in `mode`, plus `more` members reached
/// directly (name = token label). One cached DEK: using another one opens
/// its record on the HSMs. Returns the token and b's down flag.
fn hsms(mode: &str, more: &[&str]) -> (TestToken, PathBuf) {
    let t = TestToken::new();
    for label in std::iter::once(&"hsm-b").chain(more) {
        add_token(&t, label);
        on_token(label, generate_kek);
    }
    let flag = faulty_backend_flag(&t, "b-down");
    write_config(&t, mode, &["b"], more);
    (t, flag)
}

/// The test token's configuration with `mode`, member "b" through the
/// fault backend when `with` names it, and `direct` members.
fn write_config(t: &TestToken, mode: &str, with: &[&str], direct: &[&str]) {
    let text = t.config_text();
    let top = text.split("\n[[hsm]]").next().unwrap_or(&text);
    let top: String = top
        .lines()
        .filter(|l| !l.starts_with("kek_mode") && !l.starts_with("cache_"))
        .map(|l| format!("{l}\n"))
        .collect();
    let mut conf = format!(
        "{top}kek_mode = \"{mode}\"\ncache_soft_ttl_secs = {}\ncache_max_keys = 1\n",
        SOFT_TTL.as_secs()
    );
    if with.contains(&"b") {
        conf += &format!(
            "\n[[hsm]]\nname = \"b\"\nbackend_module = \"{}\"\ntoken_label = \"hsm-b\"\n",
            faulty_backend_path().display()
        );
    }
    for label in direct {
        conf += &format!("\n[[hsm]]\nname = \"{label}\"\ntoken_label = \"{label}\"\n");
    }
    std::fs::write(&t.conf, conf).unwrap();
}

/// Change an HSM from a child process: "delete LABEL" or "disable LABEL".
fn hsm_side_run(t: &TestToken, action: &str) {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["hsm_side", "--exact", "--nocapture"])
        .env(HSM_SIDE, action)
        .env("SOFTHSM2_CONF", &t.softhsm_conf)
        .output()
        .unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("HSM-SIDE DONE"),
        "hsm_side {action}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The child side of [`hsm_side_run`]; does nothing as a test of its own.
#[test]
fn hsm_side() {
    let Ok(action) = std::env::var(HSM_SIDE) else {
        return;
    };
    match action.split_once(' ') {
        Some(("delete", label)) => delete_kek(label),
        Some(("disable", label)) => disable_kek(label),
        Some(("generate", label)) => on_token(label, generate_kek),
        // "put LABEL HEX": KEK v1 replaced by that value.
        Some(("put", rest)) => {
            let (label, hex) = rest.split_once(' ').unwrap();
            let value: Vec<u8> = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                .collect();
            on_token(label, |s| put_kek(s, &value.try_into().unwrap()));
        }
        // "other LABEL": KEK v1 replaced by another random value.
        Some(("other", label)) => {
            let value: [u8; 32] = random_bytes(32).try_into().unwrap();
            on_token(label, |s| put_kek(s, &value));
        }
        _ => panic!("unknown action {action}"),
    }
    println!("HSM-SIDE DONE");
}

/// `n` token DEKs labelled `label`, each with what it encrypted
/// ("secret I" for the I-th of `deks`, counting `from`).
fn make_deks(s: &Session, from: usize, n: usize, label: &[u8]) -> Vec<(ObjectHandle, Vec<u8>)> {
    (from..from + n)
        .map(|i| {
            let dek = generate(s, true, vec![Attribute::Label(label.to_vec())]);
            let ct = gcm_encrypt(s, dek, &IV, b"", format!("secret {i}").as_bytes()).unwrap();
            (dek, ct)
        })
        .collect()
}

/// Every DEK still decrypts what it encrypted (each use of another DEK
/// opens its record: one DEK is cached).
fn all_open(s: &Session, deks: &[(ObjectHandle, Vec<u8>)]) {
    for (i, (dek, ct)) in deks.iter().enumerate() {
        let pt = gcm_decrypt(s, *dek, &IV, b"", ct)
            .unwrap_or_else(|e| panic!("DEK {i} did not open: {e}"));
        assert_eq!(pt, format!("secret {i}").as_bytes());
    }
}

/// In a process that did not make them: each DEK's ciphertext opens with
/// one of the handles labelled `label` (handles are new in each process).
fn all_open_by_label(s: &Session, label: &[u8], deks: &[(ObjectHandle, Vec<u8>)]) {
    let found = find_label(s, label);
    for (i, (_, ct)) in deks.iter().enumerate() {
        assert!(
            found
                .iter()
                .any(|h| gcm_decrypt(s, *h, &IV, b"", ct).is_ok()),
            "DEK {i} labelled {} did not open",
            String::from_utf8_lossy(label)
        );
    }
}

fn find_label(s: &Session, label: &[u8]) -> Vec<ObjectHandle> {
    s.find_objects(&[
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::Label(label.to_vec()),
    ])
    .unwrap()
}

fn audit_text(t: &TestToken) -> String {
    std::fs::read_to_string(t.audit_log()).unwrap_or_default()
}

fn rewrap(t: &TestToken) -> (i32, serde_json::Value) {
    cli_json(t, &["rewrap"])
}

#[test]
fn any_of_loses_no_dek_with_an_hsm_and_rewrap_restores_two_wraps() {
    let (t, _flag) = hsms("any-of", &[]);
    let doc = ok_json(&t, &["status"]);
    assert_eq!(doc["kek_mode"], "any-of");
    assert_eq!(
        member_states(&doc),
        [("main".into(), "up".into()), ("b".into(), "up".into())]
    );

    let p = ours();
    let s = user_session(&p, token_slot(&p));
    let mut deks = make_deks(&s, 0, 3, b"dr");
    all_open(&s, &deks);
    assert!(audit_text(&t).contains("hsms=main,b"), "{}", audit_text(&t));

    // HSM b is lost for good: every DEK opens through main, and new DEKs
    // are made (with main's wrap alone).
    hsm_side_run(&t, "delete hsm-b");
    let (_, doc) = cli_json(&t, &["status"]);
    assert_eq!(
        member_states(&doc),
        [("main".into(), "up".into()), ("b".into(), "refused".into())],
        "{doc:#}"
    );
    let why = doc["hsm_members"][1]["why"].as_str().unwrap_or_default();
    assert!(why.contains("missing or disabled"), "{why}");
    advance_clock(SOFT_TTL);
    all_open(&s, &deks);
    deks.extend(make_deks(&s, 3, 1, b"dr"));
    all_open(&s, &deks);
    drop(s);
    p.finalize().unwrap();

    // The operator replaces b with a new HSM c and re-wraps: every record
    // gets c's wrap (and loses b's, which nothing can open).
    add_token(&t, "hsm-c");
    hsm_side_run(&t, "generate hsm-c");
    write_config(&t, "any-of", &[], &["hsm-c"]);
    let (code, doc) = rewrap(&t);
    assert_eq!(code, 0, "{doc:#}");
    assert_eq!(doc["rewrapped"], 4, "{doc:#}");
    assert_eq!(doc["remaining"], 0, "{doc:#}");
    let (code, doc) = rewrap(&t);
    assert_eq!((code, doc["rewrapped"].as_u64()), (0, Some(0)), "{doc:#}");

    // Now main is lost too: c alone opens every DEK.
    hsm_side_run(&t, "delete hsm-envelope");
    let p = ours();
    let s = user_session(&p, token_slot(&p));
    assert_eq!(find_label(&s, b"dr").len(), 4);
    all_open_by_label(&s, b"dr", &deks);
}

#[test]
fn any_of_a_member_down_when_deks_are_made_gets_its_wraps_from_rewrap() {
    let (t, flag) = hsms("any-of", &[]);
    let p = ours();
    let s = user_session(&p, token_slot(&p));
    let before = make_deks(&s, 0, 1, b"made-with-both");
    std::fs::write(&flag, b"down").unwrap();
    // No application error: made and used with main's wrap alone.
    let deks = make_deks(&s, 0, 2, b"made-while-b-down");
    all_open(&s, &deks);
    all_open(&s, &before);
    // While b is down, rewrap cannot add its wraps, and says so.
    let (code, doc) = rewrap(&t);
    assert_ne!(code, 0, "{doc:#}");
    assert_eq!(doc["remaining"], 2, "{doc:#}");
    std::fs::remove_file(&flag).unwrap();
    let (code, doc) = rewrap(&t);
    assert_eq!(code, 0, "{doc:#}");
    assert_eq!(doc["rewrapped"], 2, "{doc:#}");
    drop(s);
    p.finalize().unwrap();

    // Proof that b's wraps are there: with main's KEK gone, b opens both.
    hsm_side_run(&t, "delete hsm-envelope");
    let p = ours();
    let s = user_session(&p, token_slot(&p));
    all_open_by_label(&s, b"made-while-b-down", &deks);
}

#[test]
fn any_of_each_hsm_rotates_on_its_own() {
    let (t, _flag) = hsms("any-of", &[]);
    let p = ours();
    let s = user_session(&p, token_slot(&p));
    let deks = make_deks(&s, 0, 2, b"rot");
    let doc = ok_json(&t, &["kek", "--hsm", "b", "rotate"]);
    assert_eq!(
        (doc["hsm"].as_str(), doc["primary"].as_u64()),
        (Some("b"), Some(2))
    );
    assert_eq!(doc["pending_rewrap"], 2, "{doc:#}");
    // Main's versions are untouched; status shows each member's own
    // primary and the primary combination.
    let doc = ok_json(&t, &["kek", "list"]);
    assert_eq!(doc["primary"], 1);
    let doc = ok_json(&t, &["status"]);
    let primaries: Vec<_> = doc["hsm_members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["primary"].as_u64())
        .collect();
    assert_eq!(primaries, [Some(1), Some(2)], "{doc:#}");
    assert_eq!(doc["kek_set"]["combination"], "main:1,b:2", "{doc:#}");
    assert_eq!(doc["pending_rewrap"], 2, "{doc:#}");
    assert_eq!(doc["records_other_kek_labels"], 0, "{doc:#}");
    // b's v1 is still needed: refused until the records are re-wrapped.
    advance_clock(Duration::from_secs(3600));
    let (code, doc) = cli_json(&t, &["kek", "--hsm", "b", "destroy-version", "1"]);
    assert_ne!(code, 0);
    assert!(
        doc["error"]
            .as_str()
            .unwrap_or("")
            .contains("2 record(s) still need v1"),
        "{doc:#}"
    );
    let (code, doc) = rewrap(&t);
    assert_eq!((code, doc["rewrapped"].as_u64()), (0, Some(2)), "{doc:#}");
    let doc = ok_json(&t, &["kek", "--hsm", "b", "destroy-version", "1"]);
    assert_eq!(doc["destroyed"], true);
    // Every DEK still opens (main's wrap, and b's under v2).
    all_open(&s, &deks);
    // A member that does not exist, and a replica's versions, are refused.
    let (code, doc) = cli_json(&t, &["kek", "--hsm", "nope", "list"]);
    assert_ne!(code, 0);
    assert!(
        doc["error"]
            .as_str()
            .unwrap_or("")
            .contains("no HSM member named 'nope'"),
        "{doc:#}"
    );
}

/// The child side of host B (`common::host`): the module loaded with the
/// same configuration, holding the DEK labelled "double"; does nothing as
/// a test of its own.
#[test]
fn host_b() {
    if std::env::var(HOST_B).is_err() {
        return;
    }
    let p = ours();
    let s = user_session(&p, token_slot(&p));
    let held = find_label(&s, b"double");
    let encrypt = || match held.first() {
        Some(h) => match gcm_encrypt(&s, *h, &IV, b"", b"from B") {
            Ok(_) => "OK".to_string(),
            Err(e) => format!("{:?}", rv(e)),
        },
        None => "NO DEK".into(),
    };
    for line in std::io::stdin().lock().lines() {
        let line = line.unwrap();
        let answer = match line.split_whitespace().collect::<Vec<_>>()[..] {
            ["encrypt"] => encrypt(),
            ["advance", secs] => {
                advance_clock(Duration::from_secs(secs.parse().unwrap()));
                "ADVANCED".into()
            }
            ["quit"] | [] => break,
            _ => format!("UNKNOWN {line}"),
        };
        println!("B> {answer}");
    }
}

fn revoked() -> String {
    format!("{:?}", RvError::VendorDefined(CKR_HSME_KEK_REVOKED))
}

/// Double key: either party revoking stops the DEK in every process within
/// the soft TTL; `how` is "delete" or "disable", on token `party`.
fn either_party_revokes(party: &str, how: &str) {
    let (t, _flag) = hsms("all-of", &[]);
    let p = ours();
    let s = user_session(&p, token_slot(&p));
    let dek = generate(&s, true, vec![Attribute::Label(b"double".to_vec())]);
    let ct = gcm_encrypt(&s, dek, &IV, b"", b"both parties").unwrap();
    let mut b = Host::start("host_b", HOST_B, &t, &t.conf);
    assert_eq!(b.ask("encrypt"), "OK");

    hsm_side_run(&t, &format!("{how} {party}"));
    // Within the soft TTL the value is still held (as with one HSM); past
    // it, it is gone here and in B.
    advance_clock(SOFT_TTL);
    let e = gcm_decrypt(&s, dek, &IV, b"", &ct).unwrap_err();
    assert_eq!(
        rv(e),
        RvError::VendorDefined(CKR_HSME_KEK_REVOKED),
        "{party}"
    );
    assert_eq!(
        b.ask(&format!("advance {}", SOFT_TTL.as_secs())),
        "ADVANCED"
    );
    assert_eq!(b.ask("encrypt"), revoked(), "{party}");
    // A new DEK cannot be made without both parties either.
    let e = s
        .generate_key(
            &cryptoki::mechanism::Mechanism::AesKeyGen,
            &aes_template(true, vec![Attribute::ValueLen(32.into())]),
        )
        .unwrap_err();
    assert_eq!(
        rv(e),
        RvError::VendorDefined(CKR_HSME_KEK_REVOKED),
        "{party}"
    );
    assert!(audit_text(&t).contains("revoked"), "{}", audit_text(&t));
}

#[test]
fn all_of_main_revoking_shreds_deks_in_every_process() {
    either_party_revokes("hsm-envelope", "delete");
}

#[test]
fn all_of_b_revoking_shreds_deks_in_every_process() {
    either_party_revokes("hsm-b", "disable");
}

#[test]
fn all_of_nothing_opens_with_one_share_or_one_party() {
    let (t, flag) = hsms("all-of", &[]);
    let p = ours();
    let s = user_session(&p, token_slot(&p));
    let deks = make_deks(&s, 0, 2, b"two-shares");
    all_open(&s, &deks);

    // b down: a cached DEK is served (an outage, not a revocation), one
    // that must be opened is not, and no new DEK is made.
    std::fs::write(&flag, b"down").unwrap();
    let (cached, ct) = &deks[1];
    assert!(gcm_decrypt(&s, *cached, &IV, b"", ct).is_ok());
    let (other, ct) = &deks[0];
    let e = gcm_decrypt(&s, *other, &IV, b"", ct).unwrap_err();
    assert_eq!(rv(e), RvError::VendorDefined(CKR_HSME_HSM_UNAVAILABLE));
    assert_eq!(
        new_dek_refused(&s),
        RvError::VendorDefined(CKR_HSME_HSM_UNAVAILABLE)
    );
    std::fs::remove_file(&flag).unwrap();
    all_open(&s, &deks);
    drop(s);
    p.finalize().unwrap();

    // A module that names main alone holds one share of each DEK: nothing
    // opens.
    write_config(&t, "any-of", &[], &[]);
    let conf = t.config_text().replace("kek_mode = \"any-of\"\n", "");
    std::fs::write(&t.conf, conf).unwrap();
    let p = ours();
    let s = user_session(&p, token_slot(&p));
    for h in find_label(&s, b"two-shares") {
        let e = gcm_encrypt(&s, h, &IV, b"", b"x").unwrap_err();
        assert_eq!(rv(e), RvError::VendorDefined(CKR_HSME_KEK_UNAVAILABLE));
    }
}

#[test]
fn set_modes_are_checked_when_the_configuration_is_read() {
    let t = TestToken::new();
    let base = t.config_text();
    for (extra, want) in [
        (
            "kek_mode = \"all-of\"\n",
            "at least one [[hsm]] table with kek_mode = \"all-of\"",
        ),
        (
            "kek_mode = \"any-of\"\n[[hsm]]\nname = \"b:1\"\ntoken_label = \"x\"\n",
            "is written into records",
        ),
    ] {
        std::fs::write(&t.conf, format!("{base}{extra}")).unwrap();
        let (code, doc) = cli_json(&t, &["status"]);
        assert_ne!(code, 0);
        let e = doc["error"].as_str().unwrap_or_default().to_string();
        assert!(e.contains(want), "{extra}: {doc:#}");
    }
}

#[test]
fn switching_any_of_to_all_of_leaves_records_pending_until_rewrap_double_keys_them() {
    let (t, _flag) = hsms("any-of", &[]);
    let p = ours();
    let s = user_session(&p, token_slot(&p));
    let deks = make_deks(&s, 0, 2, b"switch");
    drop(s);
    p.finalize().unwrap();

    // The operator moves to all-of: the any-of records are not double
    // keyed yet, and say so.
    write_config(&t, "all-of", &["b"], &[]);
    let doc = ok_json(&t, &["status"]);
    assert_eq!(doc["pending_rewrap"], 2, "{doc:#}");
    let (code, doc) = rewrap(&t);
    assert_eq!((code, doc["rewrapped"].as_u64()), (0, Some(2)), "{doc:#}");
    assert_eq!(doc["remaining"], 0, "{doc:#}");

    // Now b revoking stops them: every one needs b's share.
    hsm_side_run(&t, "disable hsm-b");
    let p = ours();
    let s = user_session(&p, token_slot(&p));
    let found = find_label(&s, b"switch");
    assert_eq!(found.len(), 2);
    for (h, (_, ct)) in found.iter().zip(&deks) {
        let e = gcm_decrypt(&s, *h, &IV, b"", ct).unwrap_err();
        assert_eq!(rv(e), RvError::VendorDefined(CKR_HSME_KEK_REVOKED));
    }
}

#[test]
fn a_kek_version_records_of_the_other_mode_need_is_not_destroyed() {
    let (t, _flag) = hsms("all-of", &[]);
    let p = ours();
    let s = user_session(&p, token_slot(&p));
    let deks = make_deks(&s, 0, 2, b"kept");
    drop(s);
    p.finalize().unwrap();
    // Switched to any-of, b rotates: its v1 is still needed by the all-of
    // records, whatever the mode now.
    write_config(&t, "any-of", &["b"], &[]);
    ok_json(&t, &["kek", "--hsm", "b", "rotate"]);
    let doc = ok_json(&t, &["kek", "--hsm", "b", "list"]);
    let v1 = doc["versions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["version"] == 1)
        .cloned()
        .unwrap();
    assert_eq!(v1["records"], 2, "{doc:#}");
    advance_clock(Duration::from_secs(3600));
    let (code, doc) = cli_json(&t, &["kek", "--hsm", "b", "destroy-version", "1"]);
    assert_ne!(code, 0, "{doc:#}");
    // Back in all-of, every DEK still opens.
    write_config(&t, "all-of", &["b"], &[]);
    let p = ours();
    let s = user_session(&p, token_slot(&p));
    all_open_by_label(&s, b"kept", &deks);
}

#[test]
fn a_record_of_several_hsms_opened_with_one_hsm_is_still_checked_for_revocation() {
    let (t, _flag) = hsms("any-of", &[]);
    let p = ours();
    let s = user_session(&p, token_slot(&p));
    let deks = make_deks(&s, 0, 1, b"back-to-one");
    drop(s);
    p.finalize().unwrap();
    // Back to one HSM: the any-of record opens through main's wrap...
    write_config(&t, "any-of", &[], &[]);
    let conf = t.config_text().replace("kek_mode = \"any-of\"\n", "");
    std::fs::write(&t.conf, conf).unwrap();
    let p = ours();
    let s = user_session(&p, token_slot(&p));
    let h = find_label(&s, b"back-to-one")[0];
    assert!(gcm_decrypt(&s, h, &IV, b"", &deks[0].1).is_ok());
    // ...and main's KEK disabled stops it within the soft TTL.
    hsm_side_run(&t, "disable hsm-envelope");
    advance_clock(SOFT_TTL);
    let e = gcm_decrypt(&s, h, &IV, b"", &deks[0].1).unwrap_err();
    assert_eq!(rv(e), RvError::VendorDefined(CKR_HSME_KEK_REVOKED));
}

#[test]
fn all_of_parties_holding_the_same_kek_are_refused() {
    let t = TestToken::new();
    add_token(&t, "hsm-b");
    let same: [u8; 32] = random_bytes(32).try_into().unwrap();
    on_token(TOKEN_LABEL, |s| put_kek(s, &same));
    on_token("hsm-b", |s| put_kek(s, &same));
    faulty_backend_flag(&t, "b-down");
    write_config(&t, "all-of", &["b"], &[]);
    let (_, doc) = cli_json(&t, &["status"]);
    assert_eq!(
        member_states(&doc),
        [("main".into(), "up".into()), ("b".into(), "refused".into())],
        "{doc:#}"
    );
    let why = doc["hsm_members"][1]["why"].as_str().unwrap_or_default();
    assert!(why.contains("same key material"), "{why}");
    // No DEK is made with one key standing for two.
    let p = ours();
    let s = user_session(&p, token_slot(&p));
    assert_eq!(
        new_dek_refused(&s),
        RvError::VendorDefined(CKR_HSME_KEK_UNAVAILABLE)
    );
}

/// Replicas (here for the child-process helpers): agreement is proven on
/// every version cached values came from, not only the primary.
#[test]
fn a_replica_that_disagrees_on_an_older_version_in_use_is_refused() {
    let t = TestToken::new();
    add_token(&t, "hsm-b");
    let v1: [u8; 32] = random_bytes(32).try_into().unwrap();
    on_token(TOKEN_LABEL, |s| put_kek(s, &v1));
    on_token("hsm-b", |s| put_kek(s, &v1));
    faulty_backend_flag(&t, "b-down");
    write_config(&t, "replicas", &["b"], &[]);
    let p = ours();
    let s = user_session(&p, token_slot(&p));
    let deks = make_deks(&s, 0, 1, b"old");

    // v2 on both (BYOK), made primary.
    let material = t.path().join("v2.bin");
    std::fs::write(&material, random_bytes(32)).unwrap();
    let path = |p: &std::path::Path| p.to_str().unwrap().to_string();
    for (hsm, extra) in [(None, vec![]), (Some("b"), vec!["--kek-version", "2"])] {
        let pem = t.path().join(format!("{}.pem", hsm.unwrap_or("main")));
        let blob = t.path().join(format!("{}.blob", hsm.unwrap_or("main")));
        let mut args = vec!["kek"];
        if let Some(h) = hsm {
            args.extend(["--hsm", h]);
        }
        let mut key = args.clone();
        key.extend(["import-key", "--out"]);
        let pem_s = path(&pem);
        key.push(&pem_s);
        ok_json(&t, &key);
        byok_wrap(&pem, &material, &blob, false);
        let blob_s = path(&blob);
        args.extend(["import", "--type", "aes256", "--in", &blob_s]);
        args.extend(extra);
        ok_json(&t, &args);
    }
    ok_json(&t, &["kek", "set-primary", "2"]);

    // b's v1 becomes another key: the DEK still cached under v1 makes the
    // health check prove v1 too, and b is refused.
    hsm_side_run(&t, "other hsm-b");
    advance_clock(SOFT_TTL);
    all_open(&s, &deks);
    let log = std::fs::read_to_string(t.log_file()).unwrap_or_default();
    assert!(
        log.contains("HSM member 'b' refused") && log.contains("v1"),
        "{log}"
    );
}

#[test]
fn an_all_of_party_refused_for_a_copied_kek_stays_refused_while_its_wraps_still_work() {
    let t = TestToken::new();
    add_token(&t, "hsm-b");
    let main_kek: [u8; 32] = random_bytes(32).try_into().unwrap();
    on_token(TOKEN_LABEL, |s| put_kek(s, &main_kek));
    on_token("hsm-b", generate_kek);
    faulty_backend_flag(&t, "b-down");
    write_config(&t, "all-of", &["b"], &[]);
    let p = ours();
    let s = user_session(&p, token_slot(&p));
    let deks = make_deks(&s, 0, 1, b"copied");
    // b's KEK becomes a copy of main's: at the next health check b is
    // refused, and its version still answering (the pair in use) must
    // not bring it back.
    let hex: String = main_kek.iter().map(|b| format!("{b:02x}")).collect();
    hsm_side_run(&t, &format!("put hsm-b {hex}"));
    advance_clock(SOFT_TTL);
    // A use runs the health check (the DEK made before stays usable).
    all_open(&s, &deks);
    assert_eq!(
        new_dek_refused(&s),
        RvError::VendorDefined(CKR_HSME_KEK_UNAVAILABLE)
    );
    let log = std::fs::read_to_string(t.log_file()).unwrap_or_default();
    assert!(log.contains("same key material"), "{log}");
}
