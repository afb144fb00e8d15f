//! `hsm-envelope store migrate --to URL` (issue 14, item 6): DEKs made
//! through the module on the SQLite store move into PostgreSQL, and the
//! module, pointed at PostgreSQL, carries on where it was: DEKs found by
//! label open data encrypted before, a soft-deleted one is recovered with
//! the tool, purge protection holds, and the GCM invocation limit triggers
//! at the same count. Then the refusals: bad URLs, an unreachable server,
//! the store itself, a target that is not empty or newer, and `--resume`
//! on a target that is or is not the start of a copy.
//!
//! Each test starts its own throwaway cluster (`common::pg`).

mod common;

use common::cli::{cli, cli_json, code, ok_json, show, stderr, stdout};
use common::p11::*;
use common::pg::PgCluster;
use common::*;
use cryptoki::error::RvError;
use cryptoki::object::{Attribute, ObjectHandle};
use cryptoki::session::Session;
use hsm_envelope::vendor::CKR_HSME_INVOCATION_LIMIT;
use serde_json::Value;

const CONFIG: &str = "purge_protection = true\nretention_days = 7\n\
                      gcm_invocation_limit = 1000\ngcm_invocation_block = 50\n";
const KEY: [u8; 32] = [0x5A; 32];
/// GCM encryptions under the `counted` DEK before the move.
const USED: u32 = 995;
const AAD: &[u8] = b"before the move";

fn iv(n: u32) -> [u8; 12] {
    let mut iv = [0u8; 12];
    iv[..4].copy_from_slice(&n.to_be_bytes());
    iv
}

fn find(s: &Session, label: &str) -> Vec<ObjectHandle> {
    s.find_objects(&[Attribute::Label(label.as_bytes().to_vec())])
        .unwrap()
}

fn one(s: &Session, label: &str) -> ObjectHandle {
    let found = find(s, label);
    assert_eq!(found.len(), 1, "{label}");
    found[0]
}

/// What the SQLite file holds, row by row, as text: to show that the
/// migration left it as it was.
fn sqlite_contents(path: &std::path::Path) -> String {
    let c = rusqlite::Connection::open(path).unwrap();
    let mut out = String::new();
    for sql in [
        "SELECT id, label, ckaid, attrs, record, kek_label, kek_version, created, updated,
                last_used, generation, deleted_at, purge_after, gcm_print FROM dek ORDER BY id",
        "SELECT * FROM kek_version ORDER BY kek_label, version",
        "SELECT * FROM gcm_usage ORDER BY print",
        "SELECT * FROM meta ORDER BY key",
    ] {
        let mut st = c.prepare(sql).unwrap();
        let n = st.column_count();
        let rows = st
            .query_map([], |r| {
                Ok((0..n)
                    .map(|i| format!("{:?}", r.get_ref(i).unwrap()))
                    .collect::<Vec<_>>()
                    .join("|"))
            })
            .unwrap();
        for r in rows {
            out.push_str(&r.unwrap());
            out.push('\n');
        }
    }
    out
}

/// DEKs under two KEK versions, two soft-deleted, one with 995 GCM
/// encryptions counted; returns the ciphertexts made before the move, by
/// label.
fn fill_the_sqlite_store(t: &TestToken) -> Vec<(&'static str, Vec<u8>)> {
    let mut made = Vec::new();
    let p = ours();
    let s = user_session(&p, token_slot(&p));
    let mut seal = |s: &Session, label: &'static str, h: ObjectHandle| {
        let ct = gcm_encrypt(s, h, &iv(7), AAD, label.as_bytes()).unwrap();
        made.push((label, ct));
    };
    for label in ["keep-1", "keep-2", "doomed", "doomed-2"] {
        let h = generate(&s, true, vec![Attribute::Label(label.into())]);
        seal(&s, label, h);
    }
    let counted = import(&s, &KEY, true, vec![Attribute::Label(b"counted".to_vec())]);
    for n in 1..USED {
        gcm_encrypt(&s, counted, &iv(n), b"", b"x").unwrap();
    }
    seal(&s, "counted", counted);
    s.destroy_object(one(&s, "doomed")).unwrap();
    s.destroy_object(one(&s, "doomed-2")).unwrap();
    drop(s);
    // Finalising gives back the unused end of the GCM block: the store
    // counts exactly 995.
    p.finalize().unwrap();

    common::cli::ok(t, &["kek", "rotate"]);
    let p = ours();
    let s = user_session(&p, token_slot(&p));
    for label in ["after-rotation-1", "after-rotation-2"] {
        let h = generate(&s, true, vec![Attribute::Label(label.into())]);
        seal(&s, label, h);
    }
    drop(s);
    p.finalize().unwrap();
    made
}

fn by_label<'a>(list: &'a Value, key: &str, label: &str) -> &'a Value {
    list[key]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["label"] == label)
        .unwrap_or_else(|| panic!("no {label} in {list:#}"))
}

#[test]
fn a_sqlite_store_moves_to_postgresql_with_everything_the_module_needs() {
    let cluster = PgCluster::shared();
    // A password the trusting test server ignores: it must never be shown.
    let url = cluster
        .create_database()
        .replacen("postgres@", "postgres:not-shown@", 1);
    let t = TestToken::with_extra_config(CONFIG);
    let made = fill_the_sqlite_store(&t);

    let deks_before = ok_json(&t, &["dek", "list"]);
    let deleted_before = ok_json(&t, &["dek", "deleted"]);
    let keks_before = ok_json(&t, &["kek", "list"]);
    assert_eq!(deleted_before["count"], 2);
    assert_eq!(
        by_label(&deks_before, "deks", "counted")["gcm_invocations"],
        u64::from(USED)
    );
    let source_before = sqlite_contents(&t.store_path);

    // In text, into a first database (its URL holds no password, so the
    // next step repeats it).
    let plain = cluster.create_database();
    let o = cli(&t, &["store", "migrate", "--to", &plain, "--batch", "3"]);
    assert_eq!(code(&o), 0, "{}", show(&o));
    let text = stdout(&o);
    for expected in [
        "7 DEK row(s) (2 soft-deleted), 2 KEK version(s)",
        "purge protection on",
        "7 of 7 row(s) equal",
        "7/7 record(s) opened from the target",
        &format!("store_url = \"{plain}\""),
    ] {
        assert!(text.contains(expected), "{expected:?} in:\n{text}");
    }
    assert_eq!(
        sqlite_contents(&t.store_path),
        source_before,
        "source unchanged"
    );

    // With --json, into the database we switch to: every figure, and no
    // password anywhere.
    let o = cli(&t, &["store", "migrate", "--to", &url, "--json"]);
    assert_eq!(code(&o), 0, "{}", show(&o));
    assert!(!format!("{}{}", stdout(&o), stderr(&o)).contains("not-shown"));
    let doc: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(doc["target"]["engine"], "postgresql");
    assert_eq!(doc["source"]["engine"], "sqlite");
    assert_eq!(doc["rows_copied"], 7);
    assert_eq!(doc["deleted_rows"], 2);
    assert_eq!(doc["kek_versions"], 2);
    assert_eq!(doc["purge_protection"], true);
    assert!(doc["gcm_invocations"].as_u64().unwrap() >= u64::from(USED));
    assert_eq!(doc["check"]["ok"], true);
    assert_eq!(doc["check"]["row_differences"], 0);
    assert_eq!(doc["check"]["gcm_kept"], doc["gcm_keys"]);
    assert_eq!(doc["sample"]["size"], 7);
    assert_eq!(doc["sample"]["matched"], 7);
    assert_eq!(
        doc["records_per_version"],
        doc["check"]["target_records_per_version"]
    );
    assert_eq!(
        sqlite_contents(&t.store_path),
        source_before,
        "source unchanged"
    );

    // Switch over with the line the tool gave (the password left out: the
    // test server does not ask for one). The SQLite file is moved away, so
    // nothing can come from it.
    let next: toml::Table = doc["next_step"].as_str().unwrap().parse().unwrap();
    let store_url = next["store_url"].as_str().unwrap();
    assert!(!store_url.contains("not-shown"));
    t.set_config("store_url", &toml::Value::from(store_url).to_string());
    std::fs::rename(&t.store_path, t.path().join("old.sqlite")).unwrap();
    let status = ok_json(&t, &["status"]);
    assert_eq!(status["store_engine"], "postgresql");
    assert_eq!(status["purge_protection"], true);
    assert_eq!(status["records"], 7);
    assert_eq!(status["records_soft_deleted"], 2);
    assert_eq!(
        ok_json(&t, &["kek", "list"])["versions"],
        keks_before["versions"]
    );
    assert_eq!(
        ok_json(&t, &["dek", "deleted"])["deleted"],
        deleted_before["deleted"]
    );
    // Last uses and GCM counts, as they were.
    assert_eq!(ok_json(&t, &["dek", "list"])["deks"], deks_before["deks"]);

    let p = ours();
    let s = user_session(&p, token_slot(&p));
    for (label, ct) in &made {
        if label.starts_with("doomed") {
            assert!(find(&s, label).is_empty(), "{label} is still deleted");
            continue;
        }
        let h = one(&s, label);
        assert_eq!(
            gcm_decrypt(&s, h, &iv(7), AAD, ct).unwrap(),
            label.as_bytes()
        );
    }
    // The GCM count carried on: five more under the limit of 1000, then
    // refused, as it would have been on SQLite.
    let counted = one(&s, "counted");
    for n in 0..5 {
        gcm_encrypt(&s, counted, &iv(10_000 + n), b"", b"y").unwrap();
    }
    let e = gcm_encrypt(&s, counted, &iv(20_000), b"", b"z").unwrap_err();
    assert_eq!(rv(e), RvError::VendorDefined(CKR_HSME_INVOCATION_LIMIT));
    let near = ok_json(&t, &["dek", "list", "--near-limit"]);
    assert_eq!(near["count"], 1);
    assert_eq!(near["deks"][0]["label"], "counted");
    assert_eq!(near["deks"][0]["gcm_invocations"], 1000);

    // A soft-deleted DEK comes back with the tool, and opens its data.
    let doomed = by_label(&deleted_before, "deleted", "doomed")["id"]
        .as_str()
        .unwrap()
        .to_string();
    common::cli::ok(&t, &["dek", "recover", &doomed]);
    let h = one(&s, "doomed");
    let ct = &made.iter().find(|(l, _)| *l == "doomed").unwrap().1;
    assert_eq!(gcm_decrypt(&s, h, &iv(7), AAD, ct).unwrap(), b"doomed");
    // Purge protection holds: the other one stays for its retention.
    let doomed_2 = by_label(&deleted_before, "deleted", "doomed-2")["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (c, doc) = cli_json(&t, &["dek", "purge", &doomed_2]);
    assert_eq!(c, 1, "{doc:#}");
    assert!(
        doc["error"].as_str().unwrap().contains("purge protection"),
        "{doc:#}"
    );
    drop(s);
    p.finalize().unwrap();
    assert!(
        !t.store_path.exists(),
        "the module made a SQLite store again"
    );
}

/// Runs `store migrate --to TO --json`; exit code and error message.
fn refused(t: &TestToken, to: &str, extra: &[&str]) -> (i32, String) {
    let mut args = vec!["store", "migrate", "--to", to];
    args.extend_from_slice(extra);
    let (c, doc) = cli_json(t, &args);
    let msg = doc["error"].as_str().unwrap_or_default().to_string();
    assert!(!doc.to_string().contains("s3cret"), "{doc:#}");
    (c, msg)
}

#[test]
fn bad_targets_are_refused_with_a_reason() {
    let cluster = PgCluster::shared();
    let t = TestToken::with_extra_config(CONFIG);
    {
        let p = ours();
        let s = user_session(&p, token_slot(&p));
        generate(&s, true, vec![Attribute::Label(b"one".to_vec())]);
        drop(s);
        p.finalize().unwrap();
    }
    let socket = cluster
        .socket_dir()
        .display()
        .to_string()
        .replace('/', "%2F");
    let nowhere = t
        .path()
        .join("no-server")
        .display()
        .to_string()
        .replace('/', "%2F");
    let store = t.store_path.display().to_string();
    let newer = cluster.create_database();
    {
        let mut c = postgres::Client::connect(&newer, postgres::NoTls).unwrap();
        c.batch_execute(
            "CREATE TABLE meta (key text PRIMARY KEY, value bigint);
             INSERT INTO meta VALUES ('schema_version', 99);",
        )
        .unwrap();
    }
    for (to, exit, why) in [
        ("postgresql://app:s3cret@host", 2, "no database name"),
        ("mysql://app:s3cret@host/db", 2, "mysql:// is not a store"),
        (
            "postgresql://app:s3cret@host/db?sslmode=prefer",
            2,
            "sslmode=prefer",
        ),
        (
            &format!("postgresql://postgres:s3cret@{nowhere}/db"),
            2,
            "cannot open DEK store",
        ),
        (
            "postgresql://postgres:s3cret@127.0.0.1:1/db",
            2,
            "cannot open DEK store",
        ),
        (&store, 2, "the configured store itself"),
        (
            &format!("sqlite://{store}"),
            2,
            "the configured store itself",
        ),
        (&newer, 2, "schema version 99"),
        (
            &format!("postgresql://postgres@{socket}/no_such_db"),
            2,
            "cannot open DEK store",
        ),
    ] {
        let (c, msg) = refused(&t, to, &[]);
        assert_eq!(c, exit, "{to}: {msg}");
        assert!(msg.contains(why), "{to}: {msg}");
    }

    // A target that holds DEKs: refused, and left as it was.
    let url = cluster.create_database();
    let first = ok_json(&t, &["store", "migrate", "--to", &url]);
    assert_eq!(first["rows_copied"], 1);
    let (c, msg) = refused(&t, &url, &[]);
    assert_eq!(c, 1, "{msg}");
    assert!(
        msg.contains("already holds 1 DEK row(s) and 1 KEK version(s)"),
        "{msg}"
    );
    // --resume on a complete copy: nothing left to copy, checked again.
    let again = ok_json(&t, &["store", "migrate", "--to", &url, "--resume"]);
    assert_eq!(
        (again["rows_copied"].as_u64(), again["resumed"].as_bool()),
        (Some(0), Some(true))
    );
    assert_eq!(again["check"]["ok"], true);

    // A SQLite file as the target works the same way.
    let file = t.path().join("copy.sqlite");
    let doc = ok_json(
        &t,
        &[
            "store",
            "migrate",
            "--to",
            &format!("sqlite://{}", file.display()),
        ],
    );
    assert_eq!(doc["target"]["engine"], "sqlite");
    assert_eq!(
        (doc["rows_copied"].as_u64(), doc["check"]["ok"].as_bool()),
        (Some(1), Some(true))
    );
    assert_eq!(doc["sample"]["matched"], 1);
    assert!(
        doc["next_step"]
            .as_str()
            .unwrap()
            .starts_with("store_path = "),
        "{doc:#}"
    );
}

#[test]
fn a_stopped_copy_resumes_only_from_the_start_of_a_true_copy() {
    let cluster = PgCluster::shared();
    let t = TestToken::with_extra_config(CONFIG);
    {
        let p = ours();
        let s = user_session(&p, token_slot(&p));
        for n in 0..10 {
            let h = generate(
                &s,
                true,
                vec![Attribute::Label(format!("d{n}").into_bytes())],
            );
            gcm_encrypt(&s, h, &iv(1), b"", b"x").unwrap();
        }
        drop(s);
        p.finalize().unwrap();
    }
    let url = cluster.create_database();
    ok_json(&t, &["store", "migrate", "--to", &url]);
    let mut pg = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    // As a copy stopped after its sixth row would have left it: the first
    // rows in id order, and no GCM counts yet.
    pg.batch_execute(
        "DELETE FROM dek WHERE id > (SELECT id FROM dek ORDER BY id OFFSET 5 LIMIT 1);
         DELETE FROM gcm_usage;",
    )
    .unwrap();
    let doc = ok_json(&t, &["store", "migrate", "--to", &url, "--resume"]);
    assert_eq!(doc["rows_copied"], 4);
    assert_eq!(doc["check"]["ok"], true);
    assert_eq!(doc["gcm_keys"], 10);
    assert_eq!(doc["check"]["gcm_kept"], 10);

    // Not the start of a copy: a row missing in the middle.
    pg.batch_execute(
        "DELETE FROM dek WHERE id = (SELECT id FROM dek ORDER BY id OFFSET 2 LIMIT 1)",
    )
    .unwrap();
    let (c, msg) = refused(&t, &url, &["--resume"]);
    assert_eq!(c, 1, "{msg}");
    assert!(
        msg.contains("--resume refused") && msg.contains("only in the source"),
        "{msg}"
    );
    // Nor a row changed there.
    let url = cluster.create_database();
    ok_json(&t, &["store", "migrate", "--to", &url]);
    let mut pg = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    pg.batch_execute(
        "UPDATE dek SET last_used = 1 WHERE id = (SELECT id FROM dek ORDER BY id LIMIT 1)",
    )
    .unwrap();
    let (c, msg) = refused(&t, &url, &["--resume"]);
    assert_eq!(c, 1, "{msg}");
    assert!(msg.contains("differs (last_used)"), "{msg}");
}
