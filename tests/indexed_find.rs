//! C_FindObjects with indexed attributes (CKA_LABEL, CKA_ID,
//! CKA_UNIQUE_ID) asks the store for the matching rows only, instead of
//! listing every row (issue 14, item 2). What it must still get right:
//! DEKs made, changed or destroyed by another process, including ones this
//! process already holds. Each scenario runs on SQLite and on PostgreSQL.

mod common;

use std::process::Command;

use common::p11::*;
use common::pg::PgCluster;
use common::*;
use cryptoki::object::{Attribute, AttributeType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;

const CHILD: &str = "HSME_FIND_CHILD";

/// Runs `test` of this binary as another process on the same token and
/// store; returns its stdout.
fn other_process(t: &TestToken, test: &str) -> String {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture"])
        .env(CHILD, "1")
        .env("SOFTHSM2_CONF", &t.softhsm_conf)
        .env("HSM_ENVELOPE_CONF", &t.conf)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "the other process failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn find(s: &Session, template: Vec<Attribute>) -> Vec<ObjectHandle> {
    s.find_objects(&template).unwrap()
}

fn label(l: &str) -> Attribute {
    Attribute::Label(l.as_bytes().to_vec())
}

/// The other process: destroy the DEK labelled "one", relabel "two" as "one".
fn destroy_and_relabel() {
    let p = ours();
    let s = user_session(&p, token_slot(&p));
    let one = find(&s, vec![label("one")]);
    assert_eq!(one.len(), 1);
    s.destroy_object(one[0]).unwrap();
    let two = find(&s, vec![label("two")]);
    assert_eq!(two.len(), 1);
    s.update_attributes(two[0], &[label("one")]).unwrap();
    println!("DONE");
}

/// This process holds two token DEKs; another destroys one and relabels the
/// other. Searches by label and by CKA_ID here see both changes: the
/// destroyed DEK is gone (its handle too), the relabelled one keeps its
/// handle and is found under its new label only. (CKA_IDs 11 and 12: the
/// KEK on the backend has 01.)
fn held_deks_follow_changes_made_elsewhere(t: &TestToken, test: &str) {
    let p = ours();
    let s = user_session(&p, token_slot(&p));
    let d1 = generate(&s, true, vec![label("one"), Attribute::Id(vec![0x11])]);
    let d2 = generate(&s, true, vec![label("two"), Attribute::Id(vec![0x12])]);
    assert_eq!(find(&s, vec![label("one")]), [d1]);

    assert!(other_process(t, test).contains("DONE"));

    assert_eq!(find(&s, vec![label("one")]), [d2]);
    assert!(find(&s, vec![label("two")]).is_empty());
    assert!(find(&s, vec![Attribute::Id(vec![0x11])]).is_empty());
    assert_eq!(find(&s, vec![Attribute::Id(vec![0x12])]), [d2]);
    let e = gcm_encrypt(&s, d1, &[1; 12], b"", b"x").unwrap_err();
    assert_eq!(rv(e), cryptoki::error::RvError::KeyHandleInvalid);
    gcm_encrypt(&s, d2, &[1; 12], b"", b"x").unwrap();
}

#[test]
fn held_deks_follow_changes_made_elsewhere_on_sqlite() {
    if std::env::var_os(CHILD).is_some() {
        return destroy_and_relabel();
    }
    let t = TestToken::new();
    held_deks_follow_changes_made_elsewhere(
        &t,
        "held_deks_follow_changes_made_elsewhere_on_sqlite",
    );
}

#[test]
fn held_deks_follow_changes_made_elsewhere_on_postgresql() {
    if std::env::var_os(CHILD).is_some() {
        return destroy_and_relabel();
    }
    let cluster = PgCluster::shared();
    let url = cluster.create_database();
    let t = TestToken::with_extra_config(&format!("store_url = \"{url}\"\n"));
    held_deks_follow_changes_made_elsewhere(
        &t,
        "held_deks_follow_changes_made_elsewhere_on_postgresql",
    );
}

/// The other process: make a DEK, print its CKA_UNIQUE_ID.
fn make_and_print_unique_id() {
    let p = ours();
    let s = user_session(&p, token_slot(&p));
    let d = generate(&s, true, vec![label("elsewhere")]);
    let attrs = s.get_attributes(d, &[AttributeType::UniqueId]).unwrap();
    let Some(Attribute::UniqueId(id)) = attrs.first() else {
        panic!("no CKA_UNIQUE_ID: {attrs:?}");
    };
    println!("UNIQUE_ID={}", String::from_utf8(id.clone()).unwrap());
}

/// A DEK made by another process is found here by its CKA_UNIQUE_ID (the
/// row's primary key) and works; a unique id of no DEK, and templates no
/// stored DEK can match (another class, CKA_TOKEN false), find none.
#[test]
fn a_dek_made_elsewhere_is_found_by_its_unique_id() {
    if std::env::var_os(CHILD).is_some() {
        return make_and_print_unique_id();
    }
    let t = TestToken::new();
    let p = ours();
    let s = user_session(&p, token_slot(&p));
    let out = other_process(&t, "a_dek_made_elsewhere_is_found_by_its_unique_id");
    let uid = out
        .lines()
        .find_map(|l| l.strip_prefix("UNIQUE_ID="))
        .unwrap_or_else(|| panic!("no UNIQUE_ID in {out}"))
        .as_bytes()
        .to_vec();
    assert_eq!(uid.len(), 32, "{uid:?}");

    let found = find(&s, vec![Attribute::UniqueId(uid.clone())]);
    assert_eq!(found.len(), 1);
    gcm_encrypt(&s, found[0], &[2; 12], b"", b"x").unwrap();
    assert_eq!(find(&s, vec![label("elsewhere")]), found);
    let mut other = uid.clone();
    other[0] = if other[0] == b'0' { b'1' } else { b'0' };
    assert!(find(&s, vec![Attribute::UniqueId(other)]).is_empty());
    assert!(find(
        &s,
        vec![Attribute::UniqueId(uid.clone()), Attribute::Token(false)]
    )
    .is_empty());
    assert!(find(
        &s,
        vec![
            Attribute::Class(ObjectClass::CERTIFICATE),
            label("elsewhere")
        ]
    )
    .is_empty());
}

/// More DEKs held than `cache_max_keys` (16 here): the least recently used
/// keep only their handles and are read from the store again at their next
/// use, so every handle keeps working, round after round, and one whose row
/// is gone from the store stops (`CKR_KEY_HANDLE_INVALID`), as a search
/// that walks them all still finds each once.
#[test]
fn handles_of_deks_past_the_memory_bound_keep_working() {
    let t = TestToken::with_extra_config("cache_max_keys = 16\n");
    let p = ours();
    let s = user_session(&p, token_slot(&p));
    let iv = [5u8; 12];
    let deks: Vec<(ObjectHandle, Vec<u8>)> = (0..40)
        .map(|i| {
            let h = generate(&s, true, vec![label(&format!("bound-{i}"))]);
            let ct = gcm_encrypt(&s, h, &iv, b"", format!("m{i}").as_bytes()).unwrap();
            (h, ct)
        })
        .collect();
    for _round in 0..3 {
        for (i, (h, ct)) in deks.iter().enumerate() {
            assert_eq!(
                gcm_decrypt(&s, *h, &iv, b"", ct).unwrap(),
                format!("m{i}").into_bytes()
            );
        }
    }
    let all = find(&s, vec![Attribute::Class(ObjectClass::SECRET_KEY)]);
    let mut sorted = all.clone();
    sorted.sort_by_key(|h| h.handle());
    sorted.dedup();
    assert_eq!(sorted.len(), all.len(), "each once");
    for (h, _) in &deks {
        assert!(all.contains(h), "the same handles");
    }
    // The first DEK's row goes from the store behind the module's back.
    let first = s
        .get_attributes(deks[0].0, &[AttributeType::UniqueId])
        .unwrap();
    let Some(Attribute::UniqueId(uid)) = first.first() else {
        panic!("{first:?}")
    };
    let id: [u8; 16] = hsm_envelope::hex::decode(std::str::from_utf8(uid).unwrap())
        .unwrap()
        .try_into()
        .unwrap();
    // Use the others so that the first one is let go again.
    for (h, ct) in &deks[1..] {
        gcm_decrypt(&s, *h, &iv, b"", ct).unwrap();
    }
    let store = hsm_envelope::store::Store::open(&t.store_path).unwrap();
    assert!(store.delete(&id).unwrap());
    let e = gcm_decrypt(&s, deks[0].0, &iv, b"", &deks[0].1).unwrap_err();
    assert_eq!(rv(e), cryptoki::error::RvError::KeyHandleInvalid);
}
