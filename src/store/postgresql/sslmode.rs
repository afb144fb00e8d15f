//! `sslmode` in a `store_url`, and whether a connection to the store uses
//! TLS. The rule, for a store of wrapped key material:
//!
//! - No `sslmode`: over a unix socket, no TLS (PostgreSQL offers none
//!   there; the socket's file permissions guard it); to a TCP host, TLS
//!   with the server's certificate verified. The `postgres` crate's own
//!   default, `prefer`, would go on in plain text whenever TLS fails, which
//!   anyone on the network path can arrange.
//! - `disable`: no TLS, a choice the configuration makes in so many words.
//! - `require`, `verify-ca`, `verify-full`: TLS, the certificate chain and
//!   the host name verified, all three alike (libpq's `require` verifies
//!   nothing and its `verify-ca` no name: here every TLS connection is
//!   `verify-full`). Refused with a unix socket.
//! - `prefer`, `allow`: refused, for the fallback above.
//!
//! The `postgres` crate does not know `verify-ca` and `verify-full`, so the
//! parameter is taken out of the connection string here, before the crate
//! parses the rest, and the crate is told `disable` or `require`.

use std::borrow::Cow;

use ::postgres::config::Host;

/// Whether connections use TLS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tls {
    /// Plain: a unix socket, or `sslmode=disable`.
    Off,
    /// TLS; the server's certificate chain and host name are verified.
    Verified,
}

/// `text` without its `sslmode` parameters, and the value of the last one
/// (the one the crate would have kept). A string that does not scan is
/// returned as it is, for the crate to report.
pub fn take_sslmode(text: &str) -> (Cow<'_, str>, Option<String>) {
    let scanned = match url_rest(text) {
        Some(prefix) => scan_url(text, prefix),
        None => scan_key_values(text),
    };
    match scanned {
        Some((rest, mode @ Some(_))) => (Cow::Owned(rest), mode),
        _ => (Cow::Borrowed(text), None),
    }
}

/// What `sslmode` (None: not given) means for these hosts.
pub fn decide(sslmode: Option<&str>, hosts: &[Host]) -> Result<Tls, String> {
    let sockets = hosts.iter().filter(|h| matches!(h, Host::Unix(_))).count();
    let tcp = hosts.len() - sockets;
    match sslmode {
        None if tcp == 0 => Ok(Tls::Off),
        None if sockets == 0 => Ok(Tls::Verified),
        None => Err(
            "unix sockets and TCP hosts in one store_url: TLS, required to a TCP \
                     host, is not offered on a socket; name one kind of host, or write \
                     sslmode=disable"
                .into(),
        ),
        Some("disable") => Ok(Tls::Off),
        Some("require" | "verify-ca" | "verify-full") if sockets == 0 => Ok(Tls::Verified),
        Some(m @ ("require" | "verify-ca" | "verify-full")) => Err(format!(
            "sslmode={m} with a unix socket: PostgreSQL offers no TLS on unix sockets; \
             leave sslmode out for a socket, or name a TCP host"
        )),
        Some(m @ ("prefer" | "allow")) => Err(format!(
            "sslmode={m} goes on without encryption whenever TLS fails, which anyone on \
             the network path can arrange: write sslmode=require (TLS, the server's \
             certificate verified) or sslmode=disable (no TLS, on a network you trust)"
        )),
        Some(other) => Err(format!(
            "sslmode={other:?}: expected disable, require, verify-ca or verify-full"
        )),
    }
}

/// The length of the `postgres://` or `postgresql://` prefix, if `text`
/// is in URL form.
fn url_rest(text: &str) -> Option<usize> {
    ["postgres://", "postgresql://"]
        .iter()
        .find(|p| text.starts_with(*p))
        .map(|p| p.len())
}

/// URL form, as the crate reads it: credentials up to the first `@`, the
/// query from the next `?`, `&`-separated `key=value` pairs, each
/// percent-encoded.
fn scan_url(text: &str, prefix: usize) -> Option<(String, Option<String>)> {
    let rest = &text[prefix..];
    let hosts_from = rest.find('@').map_or(0, |i| i + 1);
    let Some(q) = rest[hosts_from..].find('?') else {
        return Some((text.to_string(), None));
    };
    let head = &text[..prefix + hosts_from + q];
    let query = &text[prefix + hosts_from + q + 1..];
    let mut mode = None;
    let mut kept = Vec::new();
    for pair in query.split('&') {
        match pair.split_once('=') {
            Some((k, v)) if percent_decode(k) == "sslmode" => mode = Some(percent_decode(v)),
            _ => kept.push(pair),
        }
    }
    let rebuilt = if kept.is_empty() {
        head.to_string()
    } else {
        format!("{head}?{}", kept.join("&"))
    };
    Some((rebuilt, mode))
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b[i], hex) {
            (b'%', Some(x)) => {
                out.push(x);
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `key = value` form, as the crate reads it: whitespace between pairs,
/// values plain or in single quotes, a backslash escaping the next
/// character. None if it does not scan.
fn scan_key_values(text: &str) -> Option<(String, Option<String>)> {
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let at = |i: usize| chars.get(i).map(|&(_, c)| c);
    let offset = |i: usize| chars.get(i).map_or(text.len(), |&(o, _)| o);
    let skip_ws = |mut i: usize| {
        while at(i).is_some_and(char::is_whitespace) {
            i += 1;
        }
        i
    };
    let mut rebuilt = String::with_capacity(text.len());
    let mut mode = None;
    let mut copied_to = 0; // byte offset in `text`
    let mut i = skip_ws(0);
    while i < chars.len() {
        let key_start = i;
        while at(i).is_some_and(|c| !c.is_whitespace() && c != '=') {
            i += 1;
        }
        let key = &text[offset(key_start)..offset(i)];
        i = skip_ws(i);
        if at(i) != Some('=') {
            return None;
        }
        i = skip_ws(i + 1);
        let mut value = String::new();
        if at(i) == Some('\'') {
            i += 1;
            loop {
                match at(i)? {
                    '\'' => break,
                    '\\' => {
                        value.extend(at(i + 1));
                        i += 2;
                    }
                    c => {
                        value.push(c);
                        i += 1;
                    }
                }
            }
            i += 1;
        } else {
            while let Some(c) = at(i).filter(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.extend(at(i + 1));
                    i += 2;
                } else {
                    value.push(c);
                    i += 1;
                }
            }
            if value.is_empty() {
                return None;
            }
        }
        if key == "sslmode" {
            rebuilt.push_str(&text[copied_to..offset(key_start)]);
            copied_to = offset(i).min(text.len());
            mode = Some(value);
        }
        i = skip_ws(i);
    }
    rebuilt.push_str(&text[copied_to..]);
    Some((rebuilt, mode))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn take(text: &str) -> (String, Option<String>) {
        let (rest, mode) = take_sslmode(text);
        (rest.into_owned(), mode)
    }

    #[test]
    fn sslmode_is_taken_out_of_urls() {
        for (given, rest, mode) in [
            ("postgresql://a@h/db", "postgresql://a@h/db", None),
            (
                "postgresql://a@h/db?sslmode=verify-full",
                "postgresql://a@h/db",
                Some("verify-full"),
            ),
            (
                "postgres://a:p%3Fw@h:5/db?connect_timeout=3&sslmode=require&application_name=x",
                "postgres://a:p%3Fw@h:5/db?connect_timeout=3&application_name=x",
                Some("require"),
            ),
            (
                "postgresql://h/db?ssl%6dode=verify%2Dca",
                "postgresql://h/db",
                Some("verify-ca"),
            ),
            // A `?` in the password is not the query.
            (
                "postgresql://a:x?sslmode=disable@h/db",
                "postgresql://a:x?sslmode=disable@h/db",
                None,
            ),
            (
                "postgresql://a@h/db?sslmode=disable&sslmode=require",
                "postgresql://a@h/db",
                Some("require"),
            ),
        ] {
            assert_eq!(
                take(given),
                (rest.to_string(), mode.map(String::from)),
                "{given}"
            );
        }
    }

    #[test]
    fn sslmode_is_taken_out_of_key_value_strings() {
        for (given, rest, mode) in [
            ("host=h dbname=d", "host=h dbname=d", None),
            (
                "host=h sslmode=verify-full dbname=d",
                "host=h  dbname=d",
                Some("verify-full"),
            ),
            (
                "host = h sslmode = 'require' password='a sslmode=disable'",
                "host = h  password='a sslmode=disable'",
                Some("require"),
            ),
            (
                "password=x\\ sslmode=disable sslmode=verify-ca",
                "password=x\\ sslmode=disable ",
                Some("verify-ca"),
            ),
        ] {
            assert_eq!(
                take(given),
                (rest.to_string(), mode.map(String::from)),
                "{given}"
            );
        }
        // Malformed: left for the crate to report.
        assert_eq!(take("host=h sslmode").1, None);
        assert_eq!(take("password='open sslmode=disable").1, None);
    }

    #[test]
    fn tcp_hosts_get_verified_tls_unless_disabled_and_sockets_none() {
        let tcp = [Host::Tcp("db.example".into())];
        let socket = [Host::Unix(PathBuf::from("/run/postgresql"))];
        let both = [tcp[0].clone(), socket[0].clone()];
        assert_eq!(decide(None, &tcp), Ok(Tls::Verified));
        assert_eq!(decide(None, &socket), Ok(Tls::Off));
        assert_eq!(decide(Some("disable"), &tcp), Ok(Tls::Off));
        assert_eq!(decide(Some("disable"), &both), Ok(Tls::Off));
        for m in ["require", "verify-ca", "verify-full"] {
            assert_eq!(decide(Some(m), &tcp), Ok(Tls::Verified));
            assert!(decide(Some(m), &socket)
                .unwrap_err()
                .contains("unix socket"));
        }
        assert!(decide(None, &both)
            .unwrap_err()
            .contains("one kind of host"));
        for m in ["prefer", "allow"] {
            let e = decide(Some(m), &tcp).unwrap_err();
            assert!(e.contains("without encryption"), "{e}");
        }
        assert!(decide(Some("on"), &tcp).unwrap_err().contains("expected"));
    }
}
