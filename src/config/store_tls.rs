//! The `store_tls_*` keys: files for TLS to a PostgreSQL `store_url`,
//! read and checked when the configuration is loaded, so that a missing or
//! wrong file is named with its key there, not at the first connection.

use crate::store::postgresql::tls::{self, TlsFiles};

use super::Config;

impl Config {
    /// The files the `store_tls_*` keys name.
    pub fn store_tls_files(&self) -> TlsFiles {
        TlsFiles {
            ca: self.store_tls_ca.clone(),
            cert: self.store_tls_cert.clone(),
            key: self.store_tls_key.clone(),
        }
    }

    /// A key of these set for a store they would not apply to, a file
    /// that cannot be read or holds the wrong thing, a certificate without
    /// its key: the key and why.
    pub(super) fn validate_store_tls(&self) -> Result<(), (&'static str, String)> {
        let set = [
            ("store_tls_ca", &self.store_tls_ca),
            ("store_tls_cert", &self.store_tls_cert),
            ("store_tls_key", &self.store_tls_key),
        ];
        let Some((first, _)) = set.iter().find(|(_, v)| v.is_some()) else {
            return Ok(());
        };
        match &self.store_url {
            None => {
                return Err((
                    *first,
                    "only used with a PostgreSQL store_url, and none is set".into(),
                ))
            }
            Some(url) if !url.uses_tls() => {
                return Err((
                    *first,
                    "store_url does not use TLS (a unix socket, or sslmode=disable), so \
                     nothing would read this file"
                        .into(),
                ))
            }
            Some(_) => {}
        }
        if let Some(ca) = &self.store_tls_ca {
            tls::check_ca(ca).map_err(|why| ("store_tls_ca", why))?;
        }
        match (&self.store_tls_cert, &self.store_tls_key) {
            (Some(cert), Some(key)) => {
                tls::check_cert(cert).map_err(|why| ("store_tls_cert", why))?;
                tls::check_client_pair(cert, key).map_err(|why| ("store_tls_key", why))
            }
            (Some(_), None) => Err((
                "store_tls_cert",
                "needs store_tls_key too (the certificate's private key)".into(),
            )),
            (None, Some(_)) => Err((
                "store_tls_key",
                "needs store_tls_cert too (the certificate it belongs to)".into(),
            )),
            (None, None) => Ok(()),
        }
    }
}

// The store's tests include it too (through pg.rs); each copy is only a
// few functions.
#[cfg(all(test, feature = "aws-lc"))]
#[allow(clippy::duplicate_mod)]
#[path = "../../tests/common/certs.rs"]
mod test_certs;

#[cfg(all(test, feature = "aws-lc"))]
mod tests {
    use super::*;

    use super::test_certs as certs;

    const TCP: &str = "store_url = \"postgresql://app@db.example/deks\"\n";

    fn error(text: &str) -> String {
        match Config::from_toml(text) {
            Ok(_) => panic!("accepted: {text}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn the_files_are_read_at_load_and_a_mistake_names_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let ca = certs::TestCa::new(dir.path(), "ca");
        let client = ca.client("client", "app");
        let other = ca.client("other", "app");
        let path = |p: &std::path::Path| p.display().to_string();
        let good = format!(
            "{TCP}store_tls_ca = \"{}\"\nstore_tls_cert = \"{}\"\nstore_tls_key = \"{}\"\n",
            path(&ca.cert()),
            path(&client.cert),
            path(&client.key)
        );
        let c = Config::from_toml(&good).unwrap();
        assert_eq!(c.store_tls_files().ca, Some(ca.cert()));
        assert_eq!(c.store_tls_files().key, Some(client.key.clone()));

        let missing = dir.path().join("missing.pem");
        for (text, key, why) in [
            (
                format!("{TCP}store_tls_ca = \"{}\"\n", path(&missing)),
                "store_tls_ca` (line 2)",
                "cannot read",
            ),
            (
                format!("{TCP}store_tls_ca = \"{}\"\n", path(&client.key)),
                "store_tls_ca",
                "no certificate in it",
            ),
            (
                format!("store_tls_ca = \"{}\"\n", path(&ca.cert())),
                "store_tls_ca",
                "only used with a PostgreSQL store_url",
            ),
            (
                format!(
                    "store_url = \"postgresql://app@%2Frun/deks\"\nstore_tls_ca = \"{}\"\n",
                    path(&ca.cert())
                ),
                "store_tls_ca",
                "does not use TLS",
            ),
            (
                format!("{TCP}store_tls_cert = \"{}\"\n", path(&client.cert)),
                "store_tls_cert",
                "needs store_tls_key",
            ),
            (
                format!(
                    "{TCP}store_tls_cert = \"{}\"\nstore_tls_key = \"{}\"\n",
                    path(&client.cert),
                    path(&other.key)
                ),
                "store_tls_key",
                "does not go with the certificate",
            ),
        ] {
            let e = error(&text);
            assert!(e.contains(key) && e.contains(why), "{text}: {e}");
        }
    }
}
