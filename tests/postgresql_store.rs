//! The module on a PostgreSQL store (`store_url`), shared by two "hosts":
//! this test process (host A, the test token's configuration) and a child
//! process (host B) with a configuration file of its own that names the
//! same database and the same HSM, and a `store_path` that cannot be
//! opened, so B can only work through PostgreSQL.
//!
//! Each test starts its own throwaway cluster (`common::pg`).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::cli::{ok, ok_json, show, BIN};
use common::p11::*;
use common::pg::PgCluster;
use common::*;
use cryptoki::object::{Attribute, ObjectClass};

const HOST_B: &str = "HSME_PG_HOST_B";
const LABEL: &[u8] = b"shared-on-pg";
const IV: [u8; 12] = [7; 12];
const AAD: &[u8] = b"two hosts";

/// A token whose configuration names a fresh PostgreSQL database.
fn token_on(cluster: &PgCluster) -> (TestToken, String) {
    let url = cluster.create_database();
    let t = TestToken::with_extra_config(&format!("store_url = \"{url}\"\n"));
    (t, url)
}

/// Host B's configuration: host A's, with its own log file and a
/// `store_path` in a directory that does not exist.
fn host_b_config(t: &TestToken) -> PathBuf {
    let dir = t.path().join("host-b");
    std::fs::create_dir(&dir).unwrap();
    let text: String = t
        .config_text()
        .lines()
        .map(|line| {
            if line.starts_with("store_path") {
                "store_path = \"/nonexistent/host-b/deks.sqlite\"".to_string()
            } else if line.starts_with("log_file") {
                format!("log_file = \"{}\"", dir.join("hsm-envelope.log").display())
            } else {
                line.to_string()
            }
        })
        .map(|l| l + "\n")
        .collect();
    let conf = dir.join("hsm-envelope.toml");
    std::fs::write(&conf, text).unwrap();
    conf
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// Runs this test binary's `test` as host B with `conf`; `CIPHERTEXT`
/// tells it what to decrypt. Returns its stdout.
fn run_host_b(test: &str, t: &TestToken, conf: &Path, ciphertext: &[u8]) -> String {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture"])
        .env(HOST_B, hex(ciphertext))
        .env("SOFTHSM2_CONF", &t.softhsm_conf)
        .env("HSM_ENVELOPE_CONF", conf)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "host B failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Host B: find the DEK by label, decrypt host A's ciphertext, encrypt a
/// message of its own; print what it found and made.
fn host_b(ciphertext_hex: &str) {
    let p = ours();
    let s = user_session(&p, token_slot(&p));
    let found = s
        .find_objects(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::Label(LABEL.to_vec()),
        ])
        .unwrap();
    println!("FOUND={}", found.len());
    if let Some(&dek) = found.first() {
        let plain = gcm_decrypt(&s, dek, &IV, AAD, &unhex(ciphertext_hex)).unwrap();
        println!("PLAINTEXT={}", hex(&plain));
        let mine = gcm_encrypt(&s, dek, &IV, AAD, b"from host B").unwrap();
        println!("MINE={}", hex(&mine));
    }
}

fn field(stdout: &str, key: &str) -> String {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("host B printed no {key}: {stdout}"))
        .to_string()
}

/// A token DEK generated through the module on host A is found by label on
/// host B, opens A's ciphertext, and what B encrypts opens on A; once A
/// destroys it, a new search on B no longer finds it. Neither host has a
/// SQLite store: host A's file is never made, host B's cannot be.
#[test]
fn a_dek_made_on_one_host_is_found_and_used_on_another() {
    if let Ok(ct) = std::env::var(HOST_B) {
        return host_b(&ct);
    }
    let cluster = PgCluster::shared();
    let (t, _url) = token_on(&cluster);
    let conf_b = host_b_config(&t);
    let test = "a_dek_made_on_one_host_is_found_and_used_on_another";

    let p = ours();
    let s = user_session(&p, token_slot(&p));
    let dek = generate(&s, true, vec![Attribute::Label(LABEL.to_vec())]);
    let ct = gcm_encrypt(&s, dek, &IV, AAD, b"made on host A").unwrap();
    assert!(
        !t.store_path.exists(),
        "host A made a SQLite store at {} although store_url is set",
        t.store_path.display()
    );

    let out = run_host_b(test, &t, &conf_b, &ct);
    assert_eq!(field(&out, "FOUND"), "1", "{out}");
    assert_eq!(unhex(&field(&out, "PLAINTEXT")), b"made on host A");
    let theirs = unhex(&field(&out, "MINE"));
    assert_eq!(
        gcm_decrypt(&s, dek, &IV, AAD, &theirs).unwrap(),
        b"from host B"
    );

    s.destroy_object(dek).unwrap();
    let out = run_host_b(test, &t, &conf_b, &ct);
    assert_eq!(field(&out, "FOUND"), "0", "{out}");
}

/// `hsm-envelope status` names the engine and shows the URL without its
/// password (text and JSON), on either host's configuration; the records
/// it counts are the shared ones. A rotation on A and a re-wrap run from B
/// work through the shared store.
#[test]
fn status_names_the_postgresql_store() {
    let cluster = PgCluster::shared();
    let url = cluster.create_database();
    // A password the trusting test server ignores: it must not be shown.
    let with_password = url.replacen("postgres@", "postgres:not-shown@", 1);
    let t = TestToken::with_extra_config(&format!("store_url = \"{with_password}\"\n"));
    {
        let p = ours();
        let s = user_session(&p, token_slot(&p));
        generate(&s, true, vec![Attribute::Label(LABEL.to_vec())]);
    }
    let shown = format!(
        "postgresql://postgres@{}:5432/postgres",
        cluster.socket_dir().display()
    );
    let text = ok(&t, &["status"]);
    assert!(
        text.contains(&format!("store            postgresql {shown}")),
        "{text}"
    );
    assert!(!text.contains("not-shown"), "{text}");
    let doc = ok_json(&t, &["status"]);
    assert_eq!(doc["store_engine"], "postgresql");
    assert_eq!(doc["store"], shown.as_str());
    assert_eq!(doc["records"], 1);
    assert!(!doc.to_string().contains("not-shown"));

    // Rotation (under its lease) on A's configuration, the re-wrap batch
    // from B's: both through the shared store.
    ok(&t, &["kek", "rotate"]);
    assert_eq!(ok_json(&t, &["status"])["pending_rewrap"], 1);
    let conf_b = host_b_config(&t);
    let o = Command::new(BIN)
        .args(["--config", conf_b.to_str().unwrap(), "rewrap"])
        .env("SOFTHSM2_CONF", &t.softhsm_conf)
        .env("HSM_ENVELOPE_PIN", USER_PIN)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", show(&o));
    let o = Command::new(BIN)
        .args(["--config", conf_b.to_str().unwrap(), "status", "--json"])
        .env("SOFTHSM2_CONF", &t.softhsm_conf)
        .env("HSM_ENVELOPE_PIN", USER_PIN)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", show(&o));
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(doc["store_engine"], "postgresql");
    assert_eq!(doc["records"], 1, "host B counts host A's record");
    assert_eq!(doc["primary"], 2);
    assert_eq!(doc["pending_rewrap"], 0);
}

/// The module on a store reached over TCP with TLS (`sslmode=verify-full`,
/// the test CA in `store_tls_ca`), on a server that refuses plain TCP: a
/// DEK made through cryptoki is stored there, found again by label and
/// used; `status` reads the same store through the admin tool.
#[test]
#[cfg(feature = "aws-lc")] // TLS
fn the_module_works_on_a_store_reached_over_tls() {
    let cluster = PgCluster::shared_tls();
    let db = cluster.new_database();
    let url = format!(
        "{}?sslmode=verify-full",
        cluster.tcp_url(common::pg::USER, &db)
    );
    let t = TestToken::with_extra_config(&format!(
        "store_url = \"{url}\"\nstore_tls_ca = \"{}\"\n",
        cluster.ca_file().display()
    ));
    let p = ours();
    let s = user_session(&p, token_slot(&p));
    let dek = generate(&s, true, vec![Attribute::Label(LABEL.to_vec())]);
    let ct = gcm_encrypt(&s, dek, &IV, AAD, b"over TLS").unwrap();
    let found = s
        .find_objects(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::Label(LABEL.to_vec()),
        ])
        .unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(
        gcm_decrypt(&s, found[0], &IV, AAD, &ct).unwrap(),
        b"over TLS"
    );
    assert!(!t.store_path.exists(), "a SQLite store was made");

    // The row is in the database (looked at over the unix socket).
    let mut c = ::postgres::Client::connect(&cluster.url(&db), ::postgres::NoTls).unwrap();
    let rows: i64 = c.query_one("SELECT count(*) FROM dek", &[]).unwrap().get(0);
    assert_eq!(rows, 1);
    let doc = ok_json(&t, &["status"]);
    assert_eq!(doc["store_engine"], "postgresql");
    assert_eq!(doc["records"], 1);
}

/// A TLS store whose certificate the configured CA did not sign:
/// the admin tool (which opens the store as C_Initialize does) stops, its
/// message saying why and naming the host.
#[test]
#[cfg(feature = "aws-lc")] // TLS
fn a_store_whose_certificate_is_not_trusted_is_refused_saying_why() {
    let cluster = PgCluster::shared_tls();
    let dir = tempfile::tempdir().unwrap();
    let other = common::pg::certs::TestCa::new(dir.path(), "other-ca");
    let url = cluster.create_tls_database();
    let t = TestToken::with_extra_config(&format!(
        "store_url = \"{url}\"\nstore_tls_ca = \"{}\"\n",
        other.cert().display()
    ));
    let o = Command::new(BIN)
        .args(["status"])
        .env("SOFTHSM2_CONF", &t.softhsm_conf)
        .env("HSM_ENVELOPE_CONF", &t.conf)
        .env("HSM_ENVELOPE_PIN", USER_PIN)
        .output()
        .unwrap();
    assert!(!o.status.success(), "{}", show(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("not signed by a trusted CA"), "{err}");
    assert!(err.contains("localhost"), "{err}");
}
