//! Two "hosts" sharing one store, through the module (issue 14, items 3
//! and 7): this test process is host A; host B is a child process (this
//! test binary again) that loads the module with a configuration of its
//! own naming the same store and HSM, holds a DEK handle, and takes
//! commands on stdin, one per line, answering each on stdout.
//!
//! On PostgreSQL, B's soft TTL is an hour: only the change notification
//! (LISTEN/NOTIFY) can make B see A's change before the test's deadline.
//! On SQLite, B moves its own test clock past the soft TTL instead.

mod common;

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::cli::{ok, show, BIN};
use common::host::Host;
use common::p11::*;
use common::pg::PgCluster;
use common::*;
use cryptoki::error::RvError;
use cryptoki::object::{Attribute, AttributeType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;

const ROLE: &str = "HSME_FLEET_HOST_B";
const LABEL: &[u8] = b"fleet-dek";
const IV: [u8; 12] = [3; 12];
const AAD: &[u8] = b"fleet";
/// How long B keeps trying before it reports that nothing changed: far
/// longer than a notification takes, far shorter than B's soft TTL.
const DEADLINE: Duration = Duration::from_secs(20);

/// Host B's configuration: host A's with `changes` applied (`key = value`
/// lines replacing A's; an empty value removes the key), and its own log
/// file.
fn host_b_config(t: &TestToken, changes: &[(&str, &str)]) -> PathBuf {
    host_config(t, "host-b", changes)
}

/// As [`host_b_config`], in directory `name` of the token's.
fn host_config(t: &TestToken, name: &str, changes: &[(&str, &str)]) -> PathBuf {
    let dir = t.path().join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let mut lines: Vec<String> = t
        .config_text()
        .lines()
        .filter(|l| {
            let key = l.split('=').next().unwrap_or("").trim();
            key != "log_file" && !changes.iter().any(|(k, _)| *k == key)
        })
        .map(str::to_string)
        .collect();
    lines.push(format!(
        "log_file = \"{}\"",
        dir.join("hsm-envelope.log").display()
    ));
    // An empty value only removes the key.
    for (k, v) in changes.iter().filter(|(_, v)| !v.is_empty()) {
        lines.push(format!("{k} = {v}"));
    }
    let conf = dir.join("hsm-envelope.toml");
    std::fs::write(&conf, lines.join("\n") + "\n").unwrap();
    conf
}

/// Host B's side: the module loaded with B's configuration, a user
/// session, and at most one held DEK handle.
fn host_b() {
    let p = ours();
    let s = user_session(&p, token_slot(&p));
    let mut held: Option<ObjectHandle> = None;
    let say = |text: String| println!("B> {text}");
    let stdin = std::io::stdin();
    for line in stdin.lock().lines() {
        let line = line.unwrap();
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("find"), _) => {
                let found = find_label(&s, LABEL);
                held = found.first().copied();
                say(format!("FOUND {}", found.len()));
            }
            (Some("encrypt"), _) => say(encrypt_rv(&s, held)),
            (Some("label"), _) => say(label_of(&s, held)),
            (Some("destroy"), _) => say(match held.map(|h| s.destroy_object(h)) {
                Some(Ok(())) => "OK".into(),
                Some(Err(e)) => format!("{:?}", rv(e)),
                None => "NO HANDLE".into(),
            }),
            // Use the held DEK until `want` answers, or the deadline.
            (Some("until"), Some(_)) => {
                let want = line["until ".len()..].trim();
                let start = Instant::now();
                let got = loop {
                    let got = if want.starts_with("LABEL") {
                        label_of(&s, held)
                    } else {
                        encrypt_rv(&s, held)
                    };
                    if got == want || start.elapsed() > DEADLINE {
                        break got;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                };
                say(got);
            }
            (Some("advance"), Some(secs)) => {
                advance_clock(Duration::from_secs(secs.parse().unwrap()));
                say("ADVANCED".into());
            }
            (Some("quit"), _) | (None, _) => break,
            _ => say(format!("UNKNOWN {line}")),
        }
    }
}

fn find_label(s: &Session, label: &[u8]) -> Vec<ObjectHandle> {
    s.find_objects(&[
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::Label(label.to_vec()),
    ])
    .unwrap()
}

fn encrypt_rv(s: &Session, held: Option<ObjectHandle>) -> String {
    let Some(h) = held else {
        return "NO HANDLE".into();
    };
    match gcm_encrypt(s, h, &IV, AAD, b"from B") {
        Ok(_) => "OK".into(),
        Err(e) => format!("{:?}", rv(e)),
    }
}

fn label_of(s: &Session, held: Option<ObjectHandle>) -> String {
    let Some(h) = held else {
        return "NO HANDLE".into();
    };
    match s.get_attributes(h, &[AttributeType::Label]) {
        Ok(attrs) => match attrs.first() {
            Some(Attribute::Label(l)) => format!("LABEL {}", String::from_utf8_lossy(l)),
            other => format!("LABEL? {other:?}"),
        },
        Err(e) => format!("{:?}", rv(e)),
    }
}

/// Host A on SQLite: the test token's store file, shared with B.
fn on_sqlite() -> (TestToken, PathBuf) {
    let t = TestToken::with_extra_config("cache_soft_ttl_secs = 30\n");
    let conf_b = host_b_config(&t, &[]);
    (t, conf_b)
}

/// Host A on a fresh PostgreSQL database; B has the same `store_url`, a
/// `store_path` it cannot open and a soft TTL of an hour.
fn on_postgresql(cluster: &PgCluster) -> (TestToken, PathBuf) {
    on_postgresql_at(&format!("store_url = \"{}\"\n", cluster.create_database()))
}

/// As [`on_postgresql`], the store reached over TCP with TLS (the test
/// CA in `store_tls_ca`, which B's configuration copies).
#[cfg(feature = "aws-lc")] // TLS
fn on_postgresql_tls(cluster: &PgCluster) -> (TestToken, PathBuf) {
    on_postgresql_at(&format!(
        "store_url = \"{}\"\nstore_tls_ca = \"{}\"\n",
        cluster.create_tls_database(),
        cluster.ca_file().display()
    ))
}

fn on_postgresql_at(store: &str) -> (TestToken, PathBuf) {
    let t = TestToken::with_extra_config(store);
    let conf_b = host_b_config(
        &t,
        &[
            ("store_path", "\"/nonexistent/host-b/deks.sqlite\""),
            ("cache_soft_ttl_secs", "3600"),
            ("cache_hard_ttl_secs", "7200"),
        ],
    );
    (t, conf_b)
}

/// A DEK made on A, found and used on B (B holds the handle and its key);
/// A destroys it; B's held handle stops (`CKR_KEY_HANDLE_INVALID`), not
/// only a new search.
fn destroyed_on_a_stops_on_b(t: &TestToken, conf_b: &Path, test: &str, sqlite: bool) {
    let p = ours();
    let s = user_session(&p, token_slot(&p));
    let dek = generate(&s, true, vec![Attribute::Label(LABEL.to_vec())]);
    let mut b = Host::start(test, ROLE, t, conf_b);
    assert_eq!(b.ask("find"), "FOUND 1");
    assert_eq!(b.ask("encrypt"), "OK");

    s.destroy_object(dek).unwrap();
    if sqlite {
        // Within the soft TTL B may still use what it holds; past it, not.
        assert_eq!(b.ask("encrypt"), "OK", "read again only when due");
        assert_eq!(b.ask("advance 31"), "ADVANCED");
        assert_eq!(b.ask("encrypt"), "KeyHandleInvalid");
    } else {
        assert_eq!(b.ask("until KeyHandleInvalid"), "KeyHandleInvalid");
    }
    assert_eq!(b.ask("find"), "FOUND 0");
}

#[test]
fn sqlite_a_dek_destroyed_on_one_host_stops_on_another_that_holds_it() {
    if std::env::var(ROLE).is_ok() {
        return host_b();
    }
    let (t, conf_b) = on_sqlite();
    destroyed_on_a_stops_on_b(
        &t,
        &conf_b,
        "sqlite_a_dek_destroyed_on_one_host_stops_on_another_that_holds_it",
        true,
    );
}

#[test]
fn postgresql_a_dek_destroyed_on_one_host_stops_on_another_that_holds_it() {
    if std::env::var(ROLE).is_ok() {
        return host_b();
    }
    let cluster = PgCluster::shared();
    let (t, conf_b) = on_postgresql(&cluster);
    destroyed_on_a_stops_on_b(
        &t,
        &conf_b,
        "postgresql_a_dek_destroyed_on_one_host_stops_on_another_that_holds_it",
        false,
    );
}

/// The same over TLS: B's change listener connects over TLS too (the
/// server refuses plain TCP), or B would not see the destroy in time.
#[test]
#[cfg(feature = "aws-lc")] // TLS
fn postgresql_tls_a_dek_destroyed_on_one_host_stops_on_another_that_holds_it() {
    if std::env::var(ROLE).is_ok() {
        return host_b();
    }
    let cluster = PgCluster::shared_tls();
    let (t, conf_b) = on_postgresql_tls(&cluster);
    destroyed_on_a_stops_on_b(
        &t,
        &conf_b,
        "postgresql_tls_a_dek_destroyed_on_one_host_stops_on_another_that_holds_it",
        false,
    );
}

/// A label changed on A is what B's held handle shows.
#[test]
fn postgresql_an_attribute_changed_on_one_host_is_seen_through_a_handle_held_on_another() {
    if std::env::var(ROLE).is_ok() {
        return host_b();
    }
    let cluster = PgCluster::shared();
    let (t, conf_b) = on_postgresql(&cluster);
    let p = ours();
    let s = user_session(&p, token_slot(&p));
    let dek = generate(&s, true, vec![Attribute::Label(LABEL.to_vec())]);
    let mut b = Host::start(
        "postgresql_an_attribute_changed_on_one_host_is_seen_through_a_handle_held_on_another",
        ROLE,
        &t,
        &conf_b,
    );
    assert_eq!(b.ask("find"), "FOUND 1");
    assert_eq!(b.ask("label"), "LABEL fleet-dek");
    s.update_attributes(dek, &[Attribute::Label(b"renamed".to_vec())])
        .unwrap();
    assert_eq!(b.ask("until LABEL renamed"), "LABEL renamed");
    assert_eq!(b.ask("encrypt"), "OK", "the key itself is unchanged");
}

/// B encrypts with a held DEK while A rotates the KEK and re-wraps every
/// record: B never sees an error, and what B encrypted opens on A.
#[test]
fn postgresql_a_rotation_and_rewrap_on_one_host_do_not_disturb_another() {
    if std::env::var(ROLE).is_ok() {
        return host_b();
    }
    let cluster = PgCluster::shared();
    let (t, conf_b) = on_postgresql(&cluster);
    let p = ours();
    let s = user_session(&p, token_slot(&p));
    generate(&s, true, vec![Attribute::Label(LABEL.to_vec())]);
    let mut b = Host::start(
        "postgresql_a_rotation_and_rewrap_on_one_host_do_not_disturb_another",
        ROLE,
        &t,
        &conf_b,
    );
    assert_eq!(b.ask("find"), "FOUND 1");
    assert_eq!(b.ask("encrypt"), "OK");
    ok(&t, &["kek", "rotate"]);
    assert_eq!(b.ask("encrypt"), "OK");
    ok(&t, &["rewrap"]);
    // B reads the re-wrapped record (notified) and keeps working.
    for _ in 0..20 {
        assert_eq!(b.ask("encrypt"), "OK");
    }
    assert_eq!(b.ask("find"), "FOUND 1");
    assert_eq!(b.ask("encrypt"), "OK");
}

/// Purge protection switched on by A's configuration binds B, whose own
/// configuration says nothing of it (or `false`): B's status shows it on,
/// and a DEK destroyed on B cannot be purged from B before its retention
/// ends.
#[test]
fn postgresql_purge_protection_set_on_one_host_binds_another() {
    if std::env::var(ROLE).is_ok() {
        return host_b();
    }
    let cluster = PgCluster::shared();
    let url = cluster.create_database();
    let t =
        TestToken::with_extra_config(&format!("store_url = \"{url}\"\npurge_protection = true\n"));
    let conf_b = host_b_config(
        &t,
        &[
            ("store_path", "\"/nonexistent/host-b/deks.sqlite\""),
            ("purge_protection", ""),
        ],
    );
    {
        // A opens the store (and switches protection on) and makes a DEK.
        let p = ours();
        let s = user_session(&p, token_slot(&p));
        generate(&s, true, vec![Attribute::Label(LABEL.to_vec())]);
    }
    let b = |args: &[&str]| {
        let o = Command::new(BIN)
            .args(["--config", conf_b.to_str().unwrap(), "--json"])
            .args(args)
            .env("SOFTHSM2_CONF", &t.softhsm_conf)
            .env("HSM_ENVELOPE_PIN", USER_PIN)
            .output()
            .unwrap();
        let doc: serde_json::Value =
            serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", show(&o)));
        (o, doc)
    };
    let (o, doc) = b(&["status"]);
    assert!(o.status.success(), "{}", show(&o));
    assert_eq!(doc["purge_protection"], true, "{doc}");
    // A configuration that wants it off is refused, naming why.
    let refusing = host_config(&t, "host-c", &[("purge_protection", "false")]);
    let o = Command::new(BIN)
        .args(["--config", refusing.to_str().unwrap(), "status"])
        .env("SOFTHSM2_CONF", &t.softhsm_conf)
        .env("HSM_ENVELOPE_PIN", USER_PIN)
        .output()
        .unwrap();
    assert!(!o.status.success(), "{}", show(&o));
    assert!(show(&o).contains("cannot be turned off"), "{}", show(&o));
    let (o, listing) = b(&["dek", "list"]);
    assert!(o.status.success(), "{}", show(&o));
    let id = listing["deks"][0]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{listing}"))
        .to_string();
    // Destroyed through the module on B, then B tries to purge it.
    let mut b_host = Host::start(
        "postgresql_purge_protection_set_on_one_host_binds_another",
        ROLE,
        &t,
        &conf_b,
    );
    assert_eq!(b_host.ask("find"), "FOUND 1");
    assert_eq!(b_host.ask("destroy"), "OK");
    drop(b_host);
    let (o, doc) = b(&["dek", "purge", &id]);
    assert!(!o.status.success(), "purged under protection: {}", show(&o));
    assert_eq!(doc["purged"], false, "{doc}");
    let (o, doc) = b(&["dek", "deleted"]);
    assert!(o.status.success(), "{}", show(&o));
    assert_eq!(doc["count"], 1, "{doc}");
}

/// `CKR_HSME_STORE_ERROR` (include/hsm_envelope.h).
const CKR_HSME_STORE_ERROR: u64 = 0xC845_0003;

/// PostgreSQL stopped under a running application is an outage, as an
/// unreachable HSM is: the DEK it holds keeps working through the soft TTL
/// and up to `cache_hard_ttl_secs` after the last good read of the store,
/// a search fails with `CKR_HSME_STORE_ERROR`, and once the server is back
/// everything works again without restarting the application.
#[test]
fn postgresql_a_stopped_server_is_an_outage_for_the_application_not_a_crash() {
    let cluster = PgCluster::shared();
    let url = cluster.create_database();
    let _t = TestToken::with_extra_config(&format!(
        "store_url = \"{url}\"\ncache_soft_ttl_secs = 30\ncache_hard_ttl_secs = 120\n"
    ));
    let p = ours();
    let s = user_session(&p, token_slot(&p));
    let dek = generate(&s, true, vec![Attribute::Label(LABEL.to_vec())]);
    let ct = gcm_encrypt(&s, dek, &IV, AAD, b"before").unwrap();
    assert_eq!(find_label(&s, LABEL).len(), 1);

    cluster.stop_server();
    assert!(gcm_encrypt(&s, dek, &IV, AAD, b"during").is_ok());
    // Past the soft TTL: the store cannot be read, the held DEK still works.
    advance_clock(Duration::from_secs(31));
    assert!(gcm_encrypt(&s, dek, &IV, AAD, b"during").is_ok());
    assert_eq!(gcm_decrypt(&s, dek, &IV, AAD, &ct).unwrap(), b"before");
    let e = s
        .find_objects(&[Attribute::Label(LABEL.to_vec())])
        .unwrap_err();
    assert_eq!(rv(e), RvError::VendorDefined(CKR_HSME_STORE_ERROR));
    // Past the hard TTL: no longer.
    advance_clock(Duration::from_secs(120));
    let e = gcm_encrypt(&s, dek, &IV, AAD, b"late").unwrap_err();
    assert_eq!(rv(e), RvError::VendorDefined(CKR_HSME_STORE_ERROR));

    cluster.start_server();
    assert_eq!(gcm_decrypt(&s, dek, &IV, AAD, &ct).unwrap(), b"before");
    assert_eq!(find_label(&s, LABEL).len(), 1);
    let other = generate(&s, true, vec![Attribute::Label(b"after".to_vec())]);
    assert!(gcm_encrypt(&s, other, &IV, AAD, b"after").is_ok());
}
