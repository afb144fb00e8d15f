//! A throwaway PostgreSQL cluster for the tests, from the Debian
//! `postgresql` package: `initdb` and `pg_ctl` in a new directory under
//! /dev/shm (else /tmp), the server listening only on a unix socket in that
//! directory (no TCP), durability switched off (`-F`, `fsync=off`: the data
//! is thrown away), stopped and removed when its last user drops it. It
//! starts in about half a second.
//!
//! Every PostgreSQL test uses this file: the integration tests through
//! `tests/common`, the store's engine suite (`src/store/tests.rs`) by
//! including it with `#[path]`. So it depends on nothing but std, tempfile
//! and the `postgres` crate, and uses no unsafe code.
//!
//! As root (CI), `initdb` refuses to run, so the cluster's commands run as
//! the `postgres` user (`runuser -u postgres --`), which owns the directory;
//! as anyone else they run as that user. The server trusts local
//! connections: connect as user `postgres`.
//!
//! [`PgCluster::shared_tls`] also listens on 127.0.0.1 (a free port) with
//! `ssl = on`: a server certificate for `localhost` and `127.0.0.1` signed
//! by a CA made for the cluster (`certs.rs`), and a `pg_hba.conf` that
//! takes TCP connections over TLS only (`hostssl`; user `cert_user` by
//! client certificate, `scram_user` by password, everyone else trusted),
//! unix socket connections as before.
//!
//! The binaries are found in `$HSME_PG_BIN` if set, else in the newest
//! `/usr/lib/postgresql/<version>/bin`. If they are missing the helper
//! panics with a message naming the package (`scripts/deps.sh` installs it).
#![allow(dead_code)]

#[path = "certs.rs"]
pub mod certs;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

/// The Debian package with `initdb` and `pg_ctl`.
pub const PACKAGE: &str = "postgresql";
/// Names the directory holding `initdb` and `pg_ctl`, ahead of the search.
pub const PG_BIN_ENV: &str = "HSME_PG_BIN";
/// The superuser made by `initdb -U`; local connections are trusted.
pub const USER: &str = "postgres";
/// On a TLS cluster, the user that logs in with a client certificate...
pub const CERT_USER: &str = "cert_user";
/// ...and the one that logs in with a password (SCRAM).
pub const SCRAM_USER: &str = "scram_user";

/// The TCP side of a TLS cluster.
pub struct Tls {
    /// The port on 127.0.0.1 (the unix socket uses it too).
    pub port: u16,
    /// The CA that signed the server's certificate.
    pub ca: certs::TestCa,
}

/// `pg_hba.conf` of a TLS cluster: TCP over TLS only.
const TLS_HBA: &str = "\
local   all  all                     trust
hostssl all  cert_user  127.0.0.1/32 cert
hostssl all  scram_user 127.0.0.1/32 scram-sha-256
hostssl all  all        127.0.0.1/32 trust
";

/// A running cluster. Stopped (`pg_ctl stop -m immediate`) and its
/// directory removed on drop.
pub struct PgCluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    /// Run the cluster's commands as the `postgres` user (we are root).
    as_postgres: bool,
    next_db: AtomicU32,
    /// How long `start` took.
    pub startup: std::time::Duration,
    /// Set for a cluster that also takes TLS on TCP.
    pub tls: Option<Tls>,
}

/// The directory with `initdb` and `pg_ctl`, or a panic naming the package.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os(PG_BIN_ENV).filter(|d| !d.is_empty()) {
        let dir = PathBuf::from(dir);
        assert!(
            dir.join("initdb").is_file() && dir.join("pg_ctl").is_file(),
            "{PG_BIN_ENV}={}: no initdb and pg_ctl there",
            dir.display()
        );
        return dir;
    }
    let root = Path::new("/usr/lib/postgresql");
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            (bin.join("initdb").is_file() && bin.join("pg_ctl").is_file()).then_some((version, bin))
        })
        .collect();
    found.sort();
    match found.pop() {
        Some((_, bin)) => bin,
        None => panic!(
            "PostgreSQL server binaries not found (initdb and pg_ctl in \
             {}/<version>/bin, or in the directory named by {PG_BIN_ENV}): \
             install the Debian package `{PACKAGE}` (bash scripts/deps.sh \
             installs it)",
            root.display()
        ),
    }
}

/// Where clusters live: /dev/shm (memory) when there is one, else /tmp.
/// Not $TMPDIR: the `postgres` user must reach the directory, and a unix
/// socket path must stay under 108 bytes. In memory, `initdb` takes a third
/// of a second; on a busy disk it can take two.
fn base_dir() -> &'static str {
    if Path::new("/dev/shm").is_dir() {
        "/dev/shm"
    } else {
        "/tmp"
    }
}

fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    // /proc/self belongs to the process's effective user.
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// `id -u postgres` and `id -g postgres`.
fn postgres_ids() -> (u32, u32) {
    let id = |flag: &str| -> u32 {
        let out = Command::new("id")
            .args([flag, USER])
            .output()
            .unwrap_or_else(|e| panic!("cannot run `id {flag} {USER}`: {e}"));
        assert!(
            out.status.success(),
            "no `{USER}` user on this machine (the Debian package `{PACKAGE}` \
             makes it): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("`id {flag} {USER}`: {e}"))
    };
    (id("-u"), id("-g"))
}

impl PgCluster {
    /// The cluster of this process, started on first use and shared with
    /// the other tests of the process that hold it at the same time (under
    /// `cargo test`; nextest runs one test per process). It stops when the
    /// last holder drops it.
    pub fn shared() -> Arc<PgCluster> {
        static CURRENT: Mutex<Weak<PgCluster>> = Mutex::new(Weak::new());
        let mut current = CURRENT.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = current.upgrade() {
            return c;
        }
        let c = Arc::new(PgCluster::start());
        *current = Arc::downgrade(&c);
        c
    }

    /// As [`PgCluster::shared`], for the TLS cluster of this process.
    pub fn shared_tls() -> Arc<PgCluster> {
        static CURRENT: Mutex<Weak<PgCluster>> = Mutex::new(Weak::new());
        let mut current = CURRENT.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = current.upgrade() {
            return c;
        }
        let c = Arc::new(PgCluster::start_with(true));
        *current = Arc::downgrade(&c);
        c
    }

    /// A new cluster of its own.
    pub fn start() -> PgCluster {
        PgCluster::start_with(false)
    }

    /// A new cluster; with `tls`, listening on TCP too (see the file's
    /// introduction).
    pub fn start_with(tls: bool) -> PgCluster {
        let t0 = Instant::now();
        let bin = bin_dir();
        let as_postgres = running_as_root();
        let owner = as_postgres.then(postgres_ids);
        let base = base_dir();
        let dir = tempfile::Builder::new()
            .prefix("hsme-pg-")
            .tempdir_in(base)
            .unwrap_or_else(|e| panic!("PgCluster: cannot make a directory in {base}: {e}"));
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))
                .unwrap_or_else(|e| panic!("chown {USER} {}: {e}", dir.path().display()));
        }
        let mut c = PgCluster {
            dir,
            bin,
            as_postgres,
            next_db: AtomicU32::new(0),
            startup: std::time::Duration::ZERO,
            tls: None,
        };
        let data = c.data_dir();
        let out = c.run(
            "initdb",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-U".as_ref(),
                USER.as_ref(),
                "--auth=trust".as_ref(),
                "--no-sync".as_ref(),
                "--encoding=UTF8".as_ref(),
                "--locale=C".as_ref(),
            ],
        );
        c.check("initdb", &out);
        if tls {
            c.tls = Some(c.make_tls(owner));
        }
        c.start_server();
        c.startup = t0.elapsed();
        c
    }

    /// The CA, the server's certificate (owned by the server's user: it
    /// refuses a key others can read), `pg_hba.conf`, a free port.
    fn make_tls(&self, owner: Option<(u32, u32)>) -> Tls {
        let dir = self.dir.path().join("tls");
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        let ca = certs::TestCa::new(&dir, "test-ca");
        let server = ca.server("server", &["DNS:localhost", "IP:127.0.0.1"]);
        for f in [&server.cert, &server.key] {
            if let Some((uid, gid)) = owner {
                std::os::unix::fs::chown(f, Some(uid), Some(gid))
                    .unwrap_or_else(|e| panic!("chown {}: {e}", f.display()));
            }
        }
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&server.key, std::fs::Permissions::from_mode(0o600))
            .unwrap_or_else(|e| panic!("chmod {}: {e}", server.key.display()));
        std::fs::write(self.data_dir().join("pg_hba.conf"), TLS_HBA)
            .unwrap_or_else(|e| panic!("write pg_hba.conf: {e}"));
        // Free now; taken again by the server a moment later.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or_else(|e| panic!("PgCluster: no free port on 127.0.0.1: {e}"));
        Tls { port, ca }
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    /// The directory of the server's unix socket (its `host`).
    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Runs one of the cluster's programs, as `postgres` when we are root.
    fn run(&self, program: &str, args: &[&std::ffi::OsStr]) -> Output {
        let exe = self.bin.join(program);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", USER, "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        cmd.args(args)
            .current_dir(self.dir.path())
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run {}{}: {e}",
                    if self.as_postgres {
                        "runuser -u postgres -- "
                    } else {
                        ""
                    },
                    exe.display()
                )
            })
    }

    fn check(&self, what: &str, out: &Output) {
        if !out.status.success() {
            let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
            panic!(
                "PgCluster: {what} failed ({}):\n{}{}\n--- server log ---\n{log}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    /// `pg_ctl start`: unix socket only, in our directory. No durability
    /// against a machine crash (`fsync=off`), but a commit is in the WAL
    /// before it returns (`synchronous_commit` stays on), so a server
    /// killed by [`PgCluster::stop_server`] loses nothing on restart.
    pub fn start_server(&self) {
        let mut options = format!(
            "-F -k {} -c fsync=off -c full_page_writes=off \
             -c max_connections=40 -c shared_buffers=16MB",
            self.socket_dir().display()
        );
        match &self.tls {
            None => options.push_str(" -c listen_addresses=''"),
            Some(tls) => {
                let dir = self.dir.path().join("tls");
                options.push_str(&format!(
                    " -p {} -c listen_addresses=127.0.0.1 -c ssl=on -c ssl_cert_file={} \
                     -c ssl_key_file={} -c ssl_ca_file={}",
                    tls.port,
                    dir.join("server.pem").display(),
                    dir.join("server.key").display(),
                    tls.ca.cert().display()
                ));
            }
        }
        let data = self.data_dir();
        let log = self.log_path();
        let out = self.run(
            "pg_ctl",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-l".as_ref(),
                log.as_os_str(),
                "-o".as_ref(),
                options.as_ref(),
                "-w".as_ref(),
                "-s".as_ref(),
                "start".as_ref(),
            ],
        );
        self.check("pg_ctl start", &out);
    }

    /// `pg_ctl stop -m immediate`: the server goes away as in a crash.
    pub fn stop_server(&self) {
        let data = self.data_dir();
        let out = self.run(
            "pg_ctl",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-m".as_ref(),
                "immediate".as_ref(),
                "-w".as_ref(),
                "-s".as_ref(),
                "stop".as_ref(),
            ],
        );
        self.check("pg_ctl stop", &out);
    }

    /// A URL for database `db` as user `postgres`, over the unix socket
    /// (`postgresql://postgres@%2Ftmp%2Fhsme-pg-XXXX/db`).
    pub fn url(&self, db: &str) -> String {
        let host: String = self
            .socket_dir()
            .to_string_lossy()
            .chars()
            .map(|ch| match ch {
                'a'..='z' | 'A'..='Z' | '0'..='9' | '-' | '_' | '.' => ch.to_string(),
                other => {
                    let mut b = [0u8; 4];
                    other
                        .encode_utf8(&mut b)
                        .bytes()
                        .map(|x| format!("%{x:02X}"))
                        .collect()
                }
            })
            .collect();
        match &self.tls {
            None => format!("postgresql://{USER}@{host}/{db}"),
            Some(tls) => format!("postgresql://{USER}@{host}:{}/{db}", tls.port),
        }
    }

    /// On a TLS cluster, a URL for database `db` as `user` over TCP to
    /// `localhost` (the caller adds parameters, or a password).
    pub fn tcp_url(&self, user: &str, db: &str) -> String {
        let tls = self
            .tls
            .as_ref()
            .expect("PgCluster::tcp_url: not a TLS cluster");
        format!("postgresql://{user}@localhost:{}/{db}", tls.port)
    }

    /// On a TLS cluster, the file of the CA that signed the server's
    /// certificate.
    pub fn ca_file(&self) -> PathBuf {
        self.tls
            .as_ref()
            .expect("PgCluster::ca_file: not a TLS cluster")
            .ca
            .cert()
    }

    /// A superuser session on database `postgres`.
    pub fn admin(&self) -> ::postgres::Client {
        ::postgres::Client::connect(&self.url("postgres"), ::postgres::NoTls)
            .unwrap_or_else(|e| panic!("PgCluster: connect to {}: {e}", self.url("postgres")))
    }

    /// A new, empty database; its URL. The first is the cluster's own
    /// (empty) `postgres` database: `CREATE DATABASE` takes a third of a
    /// second.
    pub fn create_database(&self) -> String {
        self.url(&self.new_database())
    }

    /// On a TLS cluster, a new, empty database; its URL over TCP (TLS
    /// verified with the trusted roots: add the CA with `store_tls_ca`).
    pub fn create_tls_database(&self) -> String {
        self.tcp_url(USER, &self.new_database())
    }

    /// A new, empty database; its name.
    pub fn new_database(&self) -> String {
        let n = self.next_db.fetch_add(1, Ordering::SeqCst);
        if n == 0 {
            return "postgres".into();
        }
        let name = format!("t{n}");
        self.admin()
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .unwrap_or_else(|e| panic!("PgCluster: CREATE DATABASE {name}: {e}"));
        name
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        // Not check(): a panic while unwinding would abort the process.
        let data = self.data_dir();
        let _ = self.run(
            "pg_ctl",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-m".as_ref(),
                "immediate".as_ref(),
                "-w".as_ref(),
                "-s".as_ref(),
                "stop".as_ref(),
            ],
        );
    }
}
