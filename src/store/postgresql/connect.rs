//! Opening sessions with the store, plain or over TLS as `sslmode` decided
//! (see `sslmode`), and one line saying why when that fails. The store's
//! session and its LISTEN thread both connect through the same
//! [`Connector`].

use std::fmt;

use ::postgres::{Client, Config, NoTls};

use super::sslmode::Tls;
use super::tls::TlsFiles;

/// How sessions are opened: one per store, cloned for the listener.
#[derive(Clone)]
pub enum Connector {
    Plain,
    #[cfg(feature = "aws-lc")]
    Tls(tokio_postgres_rustls::MakeRustlsConnect),
}

impl Connector {
    /// The connector for `tls`, reading the roots (and client certificate)
    /// once.
    #[cfg_attr(not(feature = "aws-lc"), allow(unused_variables))]
    pub fn new(tls: Tls, files: &TlsFiles) -> Result<Connector, String> {
        match tls {
            Tls::Off => Ok(Connector::Plain),
            #[cfg(feature = "aws-lc")]
            Tls::Verified => Ok(Connector::Tls(
                tokio_postgres_rustls::MakeRustlsConnect::new(super::tls::client_config(files)?),
            )),
            #[cfg(not(feature = "aws-lc"))]
            Tls::Verified => Err(super::tls::UNAVAILABLE.into()),
        }
    }

    pub fn connect(&self, config: &Config) -> Result<Client, ::postgres::Error> {
        match self {
            Connector::Plain => config.connect(NoTls),
            #[cfg(feature = "aws-lc")]
            Connector::Tls(tls) => config.connect(tls.clone()),
        }
    }
}

/// Why a session could not be opened, in one line: a TLS failure in plain
/// words, else the error and its causes (a refusal carries the server's
/// own message). The connection string is not in it, so neither is a
/// password.
#[derive(Debug)]
pub struct ConnectFailed(String);

impl ConnectFailed {
    pub fn new(e: &::postgres::Error) -> ConnectFailed {
        if let Some(why) = super::tls::explain(e) {
            return ConnectFailed(why);
        }
        let mut text = e.to_string();
        let mut next = std::error::Error::source(e);
        while let Some(cause) = next {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            next = cause.source();
        }
        ConnectFailed(text)
    }
}

impl fmt::Display for ConnectFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConnectFailed {}
