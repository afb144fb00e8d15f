//! The PostgreSQL engine over TLS, on a cluster that takes TCP connections
//! over TLS only (`pg::PgCluster::shared_tls`): part of the store suite,
//! the change listener, and each way a connection is refused, with the
//! reason it gives.

use super::*;
use crate::store::postgresql::tls::TlsFiles;
use crate::store::postgresql::Url;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Duration;

/// `text` as a store URL trusting `ca`.
fn url_with_ca(text: &str, ca: PathBuf) -> Url {
    Url::parse(text)
        .unwrap_or_else(|e| panic!("{text}: {e}"))
        .with_tls_files(TlsFiles {
            ca: Some(ca),
            ..TlsFiles::default()
        })
}

/// A fresh database reached over TCP, TLS verified against the test CA.
fn postgresql_tls() -> Fresh {
    let cluster = pg::PgCluster::shared_tls();
    let url = url_with_ca(&cluster.create_tls_database(), cluster.ca_file());
    assert!(url.uses_tls());
    Fresh {
        location: Location::Postgres(url),
        _keep: Box::new(cluster),
    }
}

on_engine!(postgresql_tls:
    crud,
    two_stores_see_each_other,
    concurrent_writers_and_schema_creation,
    every_change_to_a_row_is_in_the_feed_and_uses_are_not,
);

/// Opening `url` fails; the message, checked to name the store and never
/// the password.
fn refusal(url: &Url) -> String {
    match Store::open_at(&Location::Postgres(url.clone())) {
        Ok(_) => panic!("{url} opened"),
        Err(e @ StoreError::Open { .. }) => {
            let msg = e.to_string();
            eprintln!("refused: {msg}");
            assert!(msg.contains(&url.to_string()), "{msg}");
            assert!(!msg.contains("s3cret"), "{msg}");
            msg
        }
        Err(e) => panic!("{url}: not an open error: {e:?}"),
    }
}

#[test]
fn a_certificate_from_another_ca_is_refused_as_unknown() {
    let cluster = pg::PgCluster::shared_tls();
    let dir = tempfile::tempdir().unwrap();
    let other = pg::certs::TestCa::new(dir.path(), "other-ca");
    let text = cluster.tcp_url("postgres", "postgres");
    let msg = refusal(&url_with_ca(&text, other.cert()));
    assert!(msg.contains("not signed by a trusted CA"), "{msg}");
    // The system's roots know nothing of the test CA either.
    let msg = refusal(&Url::parse(&text).unwrap());
    assert!(msg.contains("TLS: "), "{msg}");
}

#[test]
fn a_host_name_the_certificate_does_not_hold_is_refused() {
    let cluster = pg::PgCluster::shared_tls();
    let port = cluster.tls.as_ref().unwrap().port;
    // The address is right; the name verified is `host`'s.
    let text = format!(
        "host=db.example hostaddr=127.0.0.1 port={port} user=postgres dbname=postgres \
         sslmode=verify-full"
    );
    let msg = refusal(&url_with_ca(&text, cluster.ca_file()));
    assert!(msg.contains("does not name the host"), "{msg}");
    assert!(msg.contains("db.example"), "{msg}");
}

#[test]
fn a_plain_connection_to_a_server_that_takes_only_tls_is_refused_by_the_server() {
    let cluster = pg::PgCluster::shared_tls();
    let text = format!(
        "{}?sslmode=disable",
        cluster.tcp_url("postgres", "postgres")
    );
    let url = Url::parse(&text).unwrap();
    assert!(!url.uses_tls());
    let msg = refusal(&url);
    // The server's own words, from pg_hba.conf.
    assert!(msg.contains("no encryption"), "{msg}");
}

#[test]
fn a_server_that_does_not_offer_tls_is_refused() {
    // Answers PostgreSQL's TLS request with "N", as a server with ssl =
    // off does.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        use std::io::{Read, Write};
        let (mut s, _) = listener.accept().unwrap();
        let mut request = [0u8; 8];
        s.read_exact(&mut request).unwrap();
        s.write_all(b"N").unwrap();
    });
    let url = Url::parse(&format!(
        "postgresql://app:s3cret@127.0.0.1:{port}/deks?sslmode=require"
    ))
    .unwrap();
    let msg = refusal(&url);
    assert!(msg.contains("does not offer TLS"), "{msg}");
    server.join().unwrap();
}

#[test]
fn a_client_certificate_logs_in_as_its_user() {
    let cluster = pg::PgCluster::shared_tls();
    let db = cluster.new_database();
    cluster
        .admin()
        .batch_execute(&format!("CREATE ROLE {} LOGIN SUPERUSER", pg::CERT_USER))
        .unwrap();
    let ca = &cluster.tls.as_ref().unwrap().ca;
    let text = cluster.tcp_url(pg::CERT_USER, &db);
    let without = url_with_ca(&text, cluster.ca_file());
    let msg = refusal(&without);
    assert!(msg.contains("certificate"), "{msg}");

    let client = ca.client("client", pg::CERT_USER);
    let with = without.clone().with_tls_files(TlsFiles {
        ca: Some(cluster.ca_file()),
        cert: Some(client.cert),
        key: Some(client.key),
    });
    let s = Store::open_at(&Location::Postgres(with)).unwrap();
    s.insert(&row(1)).unwrap();
    assert_eq!(s.get(&row(1).id).unwrap(), Some(row(1)));
}

#[test]
fn a_password_login_is_bound_to_the_tls_channel() {
    let cluster = pg::PgCluster::shared_tls();
    let db = cluster.new_database();
    cluster
        .admin()
        .batch_execute(&format!(
            "SET password_encryption = 'scram-sha-256'; \
             CREATE ROLE {} LOGIN SUPERUSER PASSWORD 's3cret'",
            pg::SCRAM_USER
        ))
        .unwrap();
    let base = cluster.tcp_url(pg::SCRAM_USER, &db);
    let with_password = |pw: &str| {
        let text = base.replacen('@', &format!(":{pw}@"), 1);
        // SCRAM-SHA-256-PLUS or nothing: the TLS stream gives the binding.
        url_with_ca(
            &format!("{text}?channel_binding=require"),
            cluster.ca_file(),
        )
    };
    let s = Store::open_at(&Location::Postgres(with_password("s3cret"))).unwrap();
    s.insert(&row(1)).unwrap();
    let msg = refusal(&with_password("s3cretX"));
    assert!(msg.contains("password authentication failed"), "{msg}");
}

/// The listener's own connection goes over TLS as well (the server would
/// refuse any other): a change made through another store wakes it.
#[test]
fn the_change_listener_connects_over_tls() {
    let f = postgresql_tls();
    let (reader, writer) = (f.open(), f.open());
    let (tx, rx) = mpsc::channel();
    let _listener = reader
        .listen(Box::new(move || {
            let _ = tx.send(());
        }))
        .expect("PostgreSQL listens");
    // Once when it has connected, then once per change.
    rx.recv_timeout(Duration::from_secs(20))
        .expect("the listener connected");
    // A new row is not announced (it changes nothing anyone holds); a
    // change is.
    writer.insert(&row(1)).unwrap();
    writer.soft_delete(&row(1).id, 0).unwrap();
    rx.recv_timeout(Duration::from_secs(20))
        .expect("woken by the change");
}

/// A restarted server: the next session is made over TLS again (the
/// server would refuse any other).
#[test]
fn a_restarted_server_is_reconnected_over_tls() {
    let f = postgresql_tls();
    let s = f.open();
    s.insert(&row(1)).unwrap();
    let cluster = pg::PgCluster::shared_tls();
    cluster.stop_server();
    assert!(s.get(&row(1).id).is_err());
    cluster.start_server();
    assert_eq!(s.get(&row(1).id).unwrap(), Some(row(1)));
    s.insert(&row(2)).unwrap();
}
