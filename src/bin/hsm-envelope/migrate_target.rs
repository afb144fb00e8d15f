//! The `--to` of `store migrate`: which store it names, whether that is
//! the configured store itself, and the configuration line that points at
//! it afterwards.

use std::path::{Path, PathBuf};

use postgres::config::Host;

use hsm_envelope::store::postgresql::Url;
use hsm_envelope::store::Location;

const FORMS: &str = "postgresql://user@host:port/db, a `host=... dbname=...` string, \
                     sqlite:///path/to/file or a file path";

/// The store `text` names. The error says what is wrong without repeating
/// the text (it may hold a password).
pub fn parse(text: &str) -> Result<Location, String> {
    let t = text.trim();
    if t.is_empty() {
        return Err(format!("empty; give {FORMS}"));
    }
    if let Some(path) = t.strip_prefix("sqlite://") {
        if path.is_empty() {
            return Err("sqlite:// names no file (sqlite:///path/to/file)".into());
        }
        return Ok(Location::Sqlite(PathBuf::from(path)));
    }
    if t.starts_with("postgresql://") || t.starts_with("postgres://") {
        return Url::parse(t).map(Location::Postgres);
    }
    if let Some((scheme, _)) = t.split_once("://") {
        let scheme = if scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '+')
        {
            scheme
        } else {
            "this"
        };
        return Err(format!(
            "{scheme}:// is not a store this build knows; give {FORMS}"
        ));
    }
    // `key=value` pairs are a PostgreSQL connection string; a path that
    // holds '=' can be given as ./path or sqlite://path.
    if t.contains('=') && !t.starts_with('/') && !t.starts_with('.') {
        return Url::parse(t).map(Location::Postgres);
    }
    Ok(Location::Sqlite(PathBuf::from(t)))
}

/// A path with its directory's symbolic links resolved (the file itself
/// may not exist yet).
fn resolved(p: &Path) -> PathBuf {
    if let Ok(c) = p.canonicalize() {
        return c;
    }
    let dir = match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    match (dir.canonicalize(), p.file_name()) {
        (Ok(d), Some(name)) => d.join(name),
        _ => p.to_path_buf(),
    }
}

/// Whether both name the same store: the same file, or the same user,
/// server and database (passwords and options aside). Two names of one
/// server (an address and a socket) are not seen as the same here; such a
/// target is not empty, which refuses it as well.
pub fn same(a: &Location, b: &Location) -> bool {
    match (a, b) {
        (Location::Sqlite(x), Location::Sqlite(y)) => resolved(x) == resolved(y),
        (Location::Postgres(x), Location::Postgres(y)) => x.to_string() == y.to_string(),
        _ => false,
    }
}

/// A value as a TOML string.
fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// A `key=value` connection string for the same server, user and database
/// as `c`, without its password (and without its other options).
fn without_password(c: &postgres::Config) -> String {
    let quote = |v: &str| format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"));
    let hosts: Vec<String> = c
        .get_hosts()
        .iter()
        .map(|h| match h {
            Host::Tcp(name) => name.clone(),
            Host::Unix(path) => path.display().to_string(),
        })
        .collect();
    let mut out = format!("host={}", quote(&hosts.join(",")));
    let ports: Vec<String> = c.get_ports().iter().map(u16::to_string).collect();
    if !ports.is_empty() {
        out.push_str(&format!(" port={}", quote(&ports.join(","))));
    }
    if let Some(user) = c.get_user() {
        out.push_str(&format!(" user={}", quote(user)));
    }
    if let Some(db) = c.get_dbname() {
        out.push_str(&format!(" dbname={}", quote(db)));
    }
    out
}

/// The configuration line that makes the module use `to`, which `given`
/// named: for PostgreSQL `given` itself, unless it holds a password, which
/// is never shown (then the server, user and database, to which the user
/// adds it).
pub fn config_line(to: &Location, given: &str) -> String {
    match to {
        Location::Sqlite(path) => {
            format!(
                "store_path = {}",
                toml_string(&resolved(path).display().to_string())
            )
        }
        Location::Postgres(url) => match given.trim().parse::<postgres::Config>() {
            Ok(c) if c.get_password().is_none() => {
                format!("store_url = {}", toml_string(given.trim()))
            }
            Ok(c) => format!("store_url = {}", toml_string(&without_password(&c))),
            Err(_) => format!("store_url = {}", toml_string(&url.to_string())),
        },
    }
}

/// Whether [`config_line`] left a password out.
pub fn password_left_out(given: &str) -> bool {
    given
        .trim()
        .parse::<postgres::Config>()
        .is_ok_and(|c| c.get_password().is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_paths() {
        let pg = |s: &str| matches!(parse(s), Ok(Location::Postgres(_)));
        assert!(pg("postgresql://app@db.example:5433/deks"));
        assert!(pg("postgres://app@%2Frun%2Fpostgresql/deks"));
        assert!(pg("host=/run/postgresql user=app dbname=deks"));
        for (given, path) in [
            ("sqlite:///var/lib/x.sqlite", "/var/lib/x.sqlite"),
            ("sqlite://rel/x.sqlite", "rel/x.sqlite"),
            ("/tmp/a=b.sqlite", "/tmp/a=b.sqlite"),
            ("./deks.sqlite", "./deks.sqlite"),
            ("deks.sqlite", "deks.sqlite"),
        ] {
            match parse(given) {
                Ok(Location::Sqlite(p)) => assert_eq!(p, PathBuf::from(path)),
                other => panic!("{given}: {other:?}"),
            }
        }
    }

    #[test]
    fn bad_targets_are_named_without_their_password() {
        for (given, why) in [
            ("", "empty"),
            ("sqlite://", "no file"),
            ("mysql://u:s3cret@h/db", "mysql:// is not a store"),
            ("postgresql://u:s3cret@h", "no database name"),
            ("postgresql://u:s3cret@h/db?nonsense=1", "not a PostgreSQL"),
            ("user=u password=s3cret", "no host"),
        ] {
            let e = parse(given).unwrap_err();
            assert!(e.contains(why), "{given}: {e}");
            assert!(!e.contains("s3cret"), "{e}");
        }
    }

    #[test]
    fn the_same_store_under_two_names() {
        let dir = tempfile::tempdir().unwrap();
        let a = Location::Sqlite(dir.path().join("deks.sqlite"));
        let b = Location::Sqlite(dir.path().join("sub").join("..").join("deks.sqlite"));
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        assert!(same(&a, &b));
        assert!(!same(
            &a,
            &Location::Sqlite(dir.path().join("other.sqlite"))
        ));
        let url = |s: &str| Location::Postgres(Url::parse(s).unwrap());
        assert!(same(
            &url("postgresql://app:one@h:5432/deks"),
            &url("postgresql://app:two@h:5432/deks?connect_timeout=3")
        ));
        assert!(!same(
            &url("postgresql://app@h:5432/deks"),
            &url("postgresql://app@h:5432/other")
        ));
    }

    #[test]
    fn the_line_to_configure_names_the_target_without_its_password() {
        let line = |given: &str| config_line(&parse(given).unwrap(), given);
        let value = |line: String| -> String {
            let doc: toml::Table = line.parse().unwrap();
            doc["store_url"].as_str().unwrap().to_string()
        };
        let plain = "postgresql://app@%2Frun%2Fpostgresql/deks?connect_timeout=3";
        assert_eq!(value(line(plain)), plain);
        for given in [
            "postgresql://app:s3cret@%2Frun%2Fpost'gres/deks",
            "host=/run/postgresql,/tmp/db2 port=1,2 user=app password='s3 cret' dbname=deks",
        ] {
            let shown = value(line(given));
            assert!(!shown.contains("s3"), "{shown}");
            assert!(password_left_out(given));
            let c: postgres::Config = shown.parse().unwrap();
            let theirs: postgres::Config = given.parse().unwrap();
            assert_eq!(c.get_hosts(), theirs.get_hosts());
            assert_eq!(c.get_ports(), theirs.get_ports());
            assert_eq!((c.get_user(), c.get_dbname()), (Some("app"), Some("deks")));
            assert_eq!(c.get_password(), None);
        }
        assert!(!password_left_out(plain));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x \"y\".sqlite");
        let given = path.display().to_string();
        let doc: toml::Table = line(&given).parse().unwrap();
        assert_eq!(
            doc["store_path"].as_str().unwrap(),
            dir.path()
                .canonicalize()
                .unwrap()
                .join("x \"y\".sqlite")
                .display()
                .to_string()
        );
    }
}
