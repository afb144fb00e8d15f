//! TLS to the PostgreSQL server: rustls on the aws-lc-rs provider (the
//! `aws-lc` feature), never OpenSSL or ring, so a FIPS build has one AES.
//! The provider is handed to each connector, not installed as the process
//! default: the module lives inside someone else's program.
//!
//! Every TLS connection verifies the server's certificate chain against
//! the trusted roots and its name against the host in `store_url` (an IP
//! address against the certificate's IP addresses). The roots are the CA
//! certificates in `store_tls_ca` when the configuration names that file,
//! else the system's (`SSL_CERT_FILE`/`SSL_CERT_DIR` if set, else the
//! distribution's bundle, e.g. /etc/ssl/certs/ca-certificates.crt). A
//! client certificate and its key (`store_tls_cert`, `store_tls_key`) are
//! presented when the server asks for one.
//!
//! Without the `aws-lc` feature there is no TLS: a store that needs it is
//! refused (a second crypto library only for this would defeat the point
//! of the portable build).

use std::path::{Path, PathBuf};

/// The files the configuration names for TLS to the store.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM file of the CA certificates to trust (`store_tls_ca`); None:
    /// the system's.
    pub ca: Option<PathBuf>,
    /// PEM file of the client certificate chain (`store_tls_cert`).
    pub cert: Option<PathBuf>,
    /// PEM file of the client certificate's private key (`store_tls_key`).
    pub key: Option<PathBuf>,
}

impl TlsFiles {
    /// Whether none is named.
    pub fn is_empty(&self) -> bool {
        self.ca.is_none() && self.cert.is_none() && self.key.is_none()
    }
}

/// Why a store that needs TLS is refused by a build without it.
#[cfg(not(feature = "aws-lc"))]
pub const UNAVAILABLE: &str = "this build has no TLS for the store (built without the \
     `aws-lc` feature); use a unix socket, or sslmode=disable on a network you trust";

/// Checks a CA file: readable PEM holding at least one certificate, each
/// usable as a trusted root.
pub fn check_ca(path: &Path) -> Result<(), String> {
    imp::roots_from(path).map(|_| ())
}

/// Checks a client certificate file: readable PEM holding a chain.
pub fn check_cert(path: &Path) -> Result<(), String> {
    imp::certificates(path).map(|_| ())
}

/// Checks a client key file and that it belongs to the certificate.
pub fn check_client_pair(cert: &Path, key: &Path) -> Result<(), String> {
    imp::client_pair(cert, key).map(|_| ())
}

/// The one line that says why a TLS handshake failed, if that is why
/// `e` (or an error behind it) happened.
pub(super) fn explain(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut next = Some(e);
    while let Some(err) = next {
        #[cfg(feature = "aws-lc")]
        if let Some(r) = imp::rustls_error(err) {
            return Some(imp::describe(r));
        }
        // tokio-postgres's words when the server answers "no" to TLS.
        if err.to_string() == "server does not support TLS" {
            return Some(
                "TLS: the server does not offer TLS (is ssl = on in its postgresql.conf?)".into(),
            );
        }
        next = err.source();
    }
    None
}

#[cfg(feature = "aws-lc")]
pub(super) use imp::client_config;

#[cfg(feature = "aws-lc")]
mod imp {
    use std::path::Path;
    use std::sync::Arc;

    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use rustls::{CertificateError, ClientConfig, Error as TlsError, RootCertStore};

    use super::TlsFiles;

    fn read(path: &Path) -> Result<Vec<u8>, String> {
        std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
    }

    pub fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
        let pem = read(path)?;
        let certs = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("{}: not a PEM file of certificates: {e}", path.display()))?;
        if certs.is_empty() {
            return Err(format!(
                "{}: no certificate in it (expected PEM: -----BEGIN CERTIFICATE-----)",
                path.display()
            ));
        }
        Ok(certs)
    }

    pub fn roots_from(path: &Path) -> Result<RootCertStore, String> {
        let mut roots = RootCertStore::empty();
        for (n, cert) in certificates(path)?.into_iter().enumerate() {
            roots.add(cert).map_err(|e| {
                format!(
                    "{}: certificate {} cannot be a trusted root: {e}",
                    path.display(),
                    n + 1
                )
            })?;
        }
        Ok(roots)
    }

    fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
        let pem = read(path)?;
        PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
            rustls::pki_types::pem::Error::NoItemsFound => format!(
                "{}: no private key in it (expected PEM: PRIVATE KEY, RSA PRIVATE KEY \
                 or EC PRIVATE KEY)",
                path.display()
            ),
            other => format!("{}: not a PEM private key: {other}", path.display()),
        })
    }

    /// aws-lc-rs; in the FIPS build, its FIPS module with only the
    /// approved cipher suites and key exchanges.
    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        #[cfg(feature = "fips")]
        return Arc::new(rustls::crypto::default_fips_provider());
        #[cfg(not(feature = "fips"))]
        Arc::new(rustls::crypto::aws_lc_rs::default_provider())
    }

    /// A client configuration trusting nothing, with the client
    /// certificate: refused if the key does not belong to it.
    pub fn client_pair(cert: &Path, key: &Path) -> Result<ClientConfig, String> {
        builder(RootCertStore::empty())?
            .with_client_auth_cert(certificates(cert)?, private_key(key)?)
            .map_err(|e| {
                format!(
                    "{} does not go with the certificate in {}: {e}",
                    key.display(),
                    cert.display()
                )
            })
    }

    fn builder(
        roots: RootCertStore,
    ) -> Result<rustls::ConfigBuilder<ClientConfig, rustls::client::WantsClientCert>, String> {
        Ok(ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?
            .with_root_certificates(roots))
    }

    fn system_roots() -> Result<RootCertStore, String> {
        let found = rustls_native_certs::load_native_certs();
        let mut roots = RootCertStore::empty();
        roots.add_parsable_certificates(found.certs);
        if roots.is_empty() {
            let why = found
                .errors
                .first()
                .map(|e| format!(" ({e})"))
                .unwrap_or_default();
            return Err(format!(
                "TLS: no trusted CA certificates on this system{why}; name the CA that \
                 signed the server's certificate with store_tls_ca"
            ));
        }
        Ok(roots)
    }

    /// The client configuration for `files`: the roots, and the client
    /// certificate when both its files are named.
    pub fn client_config(files: &TlsFiles) -> Result<ClientConfig, String> {
        let roots = match &files.ca {
            Some(ca) => roots_from(ca)?,
            None => system_roots()?,
        };
        let builder = builder(roots)?;
        match (&files.cert, &files.key) {
            (Some(cert), Some(key)) => builder
                .with_client_auth_cert(certificates(cert)?, private_key(key)?)
                .map_err(|e| format!("{}: {e}", key.display())),
            _ => Ok(builder.with_no_client_auth()),
        }
    }

    /// A rustls error, as itself or inside an `io::Error` (tokio-rustls
    /// wraps it; `io::Error::source` skips the wrapped error itself).
    pub fn rustls_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a TlsError> {
        e.downcast_ref::<TlsError>().or_else(|| {
            e.downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|inner| inner.downcast_ref::<TlsError>())
        })
    }

    pub fn describe(e: &TlsError) -> String {
        use CertificateError as C;
        let why = match e {
            TlsError::InvalidCertificate(C::UnknownIssuer) => {
                "the server's certificate is not signed by a trusted CA (unknown issuer): \
                 name the CA that signed it with store_tls_ca"
                    .to_string()
            }
            TlsError::InvalidCertificate(
                c @ (C::NotValidForName | C::NotValidForNameContext { .. }),
            ) => format!("the server's certificate does not name the host in store_url: {c}"),
            TlsError::InvalidCertificate(c) => format!("the server's certificate is refused: {c}"),
            TlsError::AlertReceived(rustls::AlertDescription::CertificateRequired) => {
                "the server wants a client certificate (store_tls_cert, store_tls_key)".into()
            }
            TlsError::AlertReceived(a) => format!("the server ended the handshake: {a:?}"),
            other => format!("the handshake failed: {other}"),
        };
        format!("TLS: {why}")
    }
}

/// The same checks in a build without TLS: every file is refused, since
/// nothing would read it.
#[cfg(not(feature = "aws-lc"))]
mod imp {
    use std::path::Path;

    pub fn roots_from(_: &Path) -> Result<(), String> {
        Err(super::UNAVAILABLE.into())
    }

    pub fn certificates(_: &Path) -> Result<(), String> {
        Err(super::UNAVAILABLE.into())
    }

    pub fn client_pair(_: &Path, _: &Path) -> Result<(), String> {
        Err(super::UNAVAILABLE.into())
    }
}
