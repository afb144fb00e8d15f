//! Scale benchmark (issue 14): a million token DEKs in the store, on SQLite
//! and on PostgreSQL, measured through the module as applications use it.
//!
//! # Run
//!
//!     bash scripts/bench.sh scale                      # 1 000 000 DEKs, both engines
//!     bash scripts/bench.sh scale --deks 100000 --engine sqlite
//!     bash scripts/bench.sh scale --make 1000000       # also: one process makes and uses N
//!
//! The script builds the module and this bench in release mode (one cargo
//! build) and runs it. Flags: `--deks N` (default 1 000 000), `--engine
//! sqlite|postgresql|both`, `--finds N` (timed searches of each kind,
//! default 1000), `--use N` (DEKs a fresh process uses, default 1000),
//! `--make N` (DEKs one process generates and uses through the module,
//! default 0: skipped), `--keep`.
//!
//! # What it does
//!
//! 1. A fresh SoftHSM2 token (`softhsm-config/new-token.sh`) in a temporary
//!    directory; a PostgreSQL cluster as the tests start one
//!    (`tests/common/pg.rs`: /dev/shm, unix socket, fsync off).
//! 2. The store is filled the fastest faithful way, as the re-wrap bench
//!    does: attributes as `C_GenerateKey` makes them (label `scale-I`,
//!    CKA_ID the 8 bytes of I), a random value sealed under the KEK **on
//!    the HSM**, rows inserted 5 000 per transaction, into each engine
//!    (the same rows). Timed and printed; not a result.
//! 3. Fresh processes (this executable again, `--probe`) load the release
//!    module with `cryptoki` and measure: load + `C_Initialize` + login +
//!    first search by label (target ≤ 20 ms); searches by label and by
//!    CKA_ID of random DEKs (targets ≤ 1 ms on SQLite, ≤ 2 ms on
//!    PostgreSQL); first use of `--use` random DEKs (a search, the indexed
//!    read, then `C_EncryptInit` + `C_Encrypt` of 64 bytes, timed: one HSM
//!    unwrap, and the store transaction that reserves the key's first GCM
//!    block) against a second use; and the process's resident memory
//!    before loading the module and after (target ≤ 64 MiB more).
//! 4. On PostgreSQL, change propagation: a process holding 20 DEK handles
//!    encrypts with one until it fails, after the bench destroys that DEK
//!    in the store (a soft delete, as `C_DestroyObject` does); the time
//!    from the commit to the first refusal (target ≤ 1 s). On SQLite a
//!    change is seen within `cache_soft_ttl_secs` by design (the feed is
//!    read when a held DEK is used after the soft TTL), so nothing is timed.
//! 5. With `--make N`: one process generates N token DEKs through the
//!    module (`C_GenerateKey`) and encrypts once with each, printing its
//!    rate and memory every tenth (target: no failure at 1 000 000).

mod hsms;
#[path = "../tests/common/pg.rs"]
mod pg;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use cryptoki_sys::*;
use zeroize::Zeroizing;

use hsm_envelope::admin::Admin;
use hsm_envelope::config::Config;
use hsm_envelope::hex::encode as hex;
use hsm_envelope::store::postgresql::Url;
use hsm_envelope::store::{DekRow, Location, Store};
use hsm_envelope::token::object::policy::{self, Origin};
use hsm_envelope::token::object::template::{Attrs, TemplateAttr};

const PIN: &str = "1234";
const INSERT_CHUNK: usize = 5_000;
const HELD: usize = 20;

struct Opts {
    deks: usize,
    sqlite: bool,
    postgresql: bool,
    finds: usize,
    uses: usize,
    make: usize,
    keep: bool,
}

fn die(msg: &str) -> ! {
    eprintln!("scale bench: error: {msg}");
    std::process::exit(2)
}

fn parse_args() -> Opts {
    let mut o = Opts {
        deks: 1_000_000,
        sqlite: true,
        postgresql: true,
        finds: 1000,
        uses: 1000,
        make: 0,
        keep: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut num = |name: &str| -> usize {
            args.next()
                .and_then(|v| v.replace('_', "").parse().ok())
                .unwrap_or_else(|| die(&format!("{name} needs a number")))
        };
        match a.as_str() {
            "--deks" => o.deks = num("--deks").max(HELD + 1),
            "--finds" => o.finds = num("--finds").max(1),
            "--use" => o.uses = num("--use"),
            "--make" => o.make = num("--make"),
            "--keep" => o.keep = true,
            "--engine" => match args.next().as_deref() {
                Some("sqlite") => (o.sqlite, o.postgresql) = (true, false),
                Some("postgresql") => (o.sqlite, o.postgresql) = (false, true),
                Some("both") => (o.sqlite, o.postgresql) = (true, true),
                _ => die("--engine takes sqlite, postgresql or both"),
            },
            "--bench" => {}
            "--help" | "-h" => {
                println!(
                    "usage: bash scripts/bench.sh scale [--deks N] [--engine sqlite|postgresql|both] \
                     [--finds N] [--use N] [--make N] [--keep]"
                );
                std::process::exit(0);
            }
            other if other.starts_with('-') => die(&format!("unknown flag {other}")),
            _ => {}
        }
    }
    o
}

/// The release module next to this executable's target directory.
fn module_path() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_else(|e| die(&format!("current_exe: {e}")));
    // target/release/deps/scale-HASH -> target/release/libhsm_envelope.so
    let release = exe
        .parent()
        .and_then(Path::parent)
        .unwrap_or_else(|| die("no target directory"));
    let so = release.join("libhsm_envelope.so");
    if !so.is_file() {
        die(&format!(
            "{} not found: build with `cargo build --release --lib --bench scale`",
            so.display()
        ));
    }
    so
}

/// Resident memory of this process (VmRSS), in KiB.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn label(i: usize) -> Vec<u8> {
    format!("scale-{i}").into_bytes()
}

fn ckaid(i: usize) -> Vec<u8> {
    (i as u64).to_be_bytes().to_vec()
}

/// The attributes `C_GenerateKey` gives a token AES-256 DEK.
fn dek_attrs(i: usize) -> Attrs {
    let t = |ty: CK_ATTRIBUTE_TYPE, v: Vec<u8>| TemplateAttr {
        ty,
        value: Zeroizing::new(v),
    };
    let ulong = |v: CK_ULONG| v.to_ne_bytes().to_vec();
    let template = vec![
        t(CKA_CLASS, ulong(CKO_SECRET_KEY)),
        t(CKA_KEY_TYPE, ulong(CKK_AES)),
        t(CKA_TOKEN, vec![1]),
        t(CKA_VALUE_LEN, ulong(32)),
        t(CKA_LABEL, label(i)),
        t(CKA_ID, ckaid(i)),
    ];
    policy::new_dek(&template, Origin::Generated)
        .unwrap_or_else(|e| die(&format!("DEK template: {e}")))
        .0
}

/// A small random number below `n` (not for keys).
fn below(n: usize) -> usize {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).unwrap_or_else(|e| die(&format!("getrandom: {e}")));
    (u64::from_le_bytes(b) % n as u64) as usize
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn p99(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() * 99 / 100).copied().unwrap_or(f64::NAN)
}

// --- the parent: setup and report ----------------------------------------------

fn main() {
    match std::env::args().nth(1).as_deref() {
        Some("--probe") => return probe(),
        Some("--follow") => return follow(),
        Some("--make-probe") => return make_probe(),
        _ => {}
    }
    let o = parse_args();
    let dir = tempfile::Builder::new()
        .prefix("hsm-envelope-bench-scale-")
        .tempdir()
        .unwrap_or_else(|e| die(&format!("temporary directory: {e}")));
    // Sets SOFTHSM2_CONF for this process.
    let sqlite_conf = hsms::new_token(dir.path());
    let softhsm_conf = dir.path().join("softhsm2.conf");
    let cluster = o.postgresql.then(pg::PgCluster::start);
    let pg_conf = cluster.as_ref().map(|c| {
        let url = c.create_database();
        let text = std::fs::read_to_string(&sqlite_conf).unwrap_or_default()
            + &format!("\nstore_url = \"{url}\"\n");
        let path = dir.path().join("hsm-envelope-pg.toml");
        std::fs::write(&path, text).unwrap_or_else(|e| die(&format!("write config: {e}")));
        (path, url)
    });
    println!(
        "scale benchmark: {} token DEKs; {} CPU(s); module {}",
        o.deks,
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        module_path().display()
    );

    fill(&o, &sqlite_conf, pg_conf.as_ref().map(|(_, u)| u.as_str()));

    if o.sqlite {
        report("SQLite", &o, &sqlite_conf, 1.0);
    }
    if let Some((conf, url)) = &pg_conf {
        report("PostgreSQL", &o, conf, 2.0);
        propagation(&softhsm_conf, conf, url);
    }
    if o.make > 0 {
        make(&o, dir.path());
    }
    if o.keep {
        let path = dir.keep();
        println!("token and store kept in {}", path.display());
    }
}

/// The store(s) filled with `o.deks` DEKs sealed on the HSM.
fn fill(o: &Opts, sqlite_conf: &Path, pg_url: Option<&str>) {
    let config = Config::from_file(sqlite_conf).unwrap_or_else(|e| die(&e.to_string()));
    let admin = Admin::connect(config, PIN).unwrap_or_else(|e| die(&format!("connect: {e}")));
    let env = &admin.env;
    let kek = env.kek_label().to_string();
    let v1 = env
        .primary()
        .unwrap_or_else(|e| die(&format!("primary: {e}")));
    let pg = pg_url.map(|u| {
        let url = Url::parse(u).unwrap_or_else(|e| die(&e));
        let s = Store::open_at(&Location::Postgres(url)).unwrap_or_else(|e| die(&e.to_string()));
        // The same KEK version, as the module would find it.
        if s.primary_kek(&kek).ok().flatten().is_none() {
            s.add_kek_version(&kek, v1, "aes256", true)
                .unwrap_or_else(|e| die(&e.to_string()));
        }
        s
    });
    let t0 = Instant::now();
    let mut rows = Vec::with_capacity(INSERT_CHUNK);
    for i in 0..o.deks {
        let mut id = [0u8; 16];
        getrandom::fill(&mut id).unwrap_or_else(|e| die(&format!("getrandom: {e}")));
        let mut value = Zeroizing::new([0u8; 32]);
        getrandom::fill(value.as_mut()).unwrap_or_else(|e| die(&format!("getrandom: {e}")));
        let mut attrs = dek_attrs(i);
        attrs.set(CKA_UNIQUE_ID, hex(&id).into_bytes());
        let record = env
            .seal(&id, &attrs, value.as_ref())
            .unwrap_or_else(|e| die(&format!("seal: {e}")));
        let now = 1_700_000_000;
        rows.push(DekRow {
            id,
            label: label(i),
            ckaid: ckaid(i),
            attrs: attrs.encode(),
            record,
            kek_label: kek.clone(),
            kek_version: v1,
            created: now,
            updated: now,
            generation: 0,
        });
        if rows.len() == INSERT_CHUNK || i + 1 == o.deks {
            if o.sqlite {
                env.with_store(|st| Ok(st.insert_many(&rows)?))
                    .unwrap_or_else(|e| die(&format!("insert: {e}")));
            }
            if let Some(s) = &pg {
                s.insert_many(&rows)
                    .unwrap_or_else(|e| die(&format!("insert (PostgreSQL): {e}")));
            }
            rows.clear();
            if (i + 1) % (o.deks / 10).max(1) < INSERT_CHUNK {
                eprint!("\rfill: {} of {} ", i + 1, o.deks);
            }
        }
    }
    eprintln!();
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "fill:   {} DEKs sealed on the HSM and stored in {secs:.1} s ({:.0}/s; setup, not a result)",
        o.deks,
        o.deks as f64 / secs.max(1e-9)
    );
    admin.close();
}

/// What a probe process printed: `key=value` lines.
fn run_probe(args: &[&str], conf: &Path) -> Vec<(String, f64)> {
    let out = Command::new(std::env::current_exe().unwrap_or_else(|e| die(&e.to_string())))
        .args(args)
        .env("HSM_ENVELOPE_CONF", conf)
        .output()
        .unwrap_or_else(|e| die(&format!("probe: {e}")));
    if !out.status.success() {
        die(&format!(
            "probe {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once('=')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

fn get(r: &[(String, f64)], k: &str) -> f64 {
    r.iter()
        .find(|(key, _)| key == k)
        .map_or(f64::NAN, |(_, v)| *v)
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "MISSED"
    }
}

fn report(engine: &str, o: &Opts, conf: &Path, find_target_ms: f64) {
    let deks = o.deks.to_string();
    let finds = o.finds.to_string();
    let uses = o.uses.to_string();
    let r = run_probe(
        &[
            "--probe",
            &module_path().display().to_string(),
            &deks,
            &finds,
            &uses,
        ],
        conf,
    );
    let start = get(&r, "start_ms");
    let by_label = get(&r, "label_ms");
    let by_id = get(&r, "ckaid_ms");
    let grew = get(&r, "rss_grew_mib");
    println!("\n{engine}, {} DEKs in the store:", o.deks);
    println!(
        "  fresh process: load + C_Initialize + login + first search   {start:7.2} ms   (target <= 20 ms: {})",
        verdict(start <= 20.0)
    );
    println!(
        "  search by CKA_LABEL (median / p99 of {})                    {by_label:7.3} / {:.3} ms   (target <= {find_target_ms} ms: {})",
        o.finds,
        get(&r, "label_p99_ms"),
        verdict(by_label <= find_target_ms)
    );
    println!(
        "  search by CKA_ID (median / p99)                              {by_id:7.3} / {:.3} ms   (target <= {find_target_ms} ms: {})",
        get(&r, "ckaid_p99_ms"),
        verdict(by_id <= find_target_ms)
    );
    println!(
        "  first use of a DEK (C_EncryptInit + C_Encrypt, median)       {:7.3} ms   (one HSM unwrap + the key's first GCM block reserved in the store; second use {:.4} ms)",
        get(&r, "first_use_ms"),
        get(&r, "second_use_ms"),
    );
    println!(
        "  memory: {:.1} MiB before loading the module, +{grew:.1} MiB after using {} DEKs   (target <= 64 MiB: {})",
        get(&r, "rss_before_mib"),
        o.uses,
        verdict(grew <= 64.0)
    );
}

fn propagation(softhsm_conf: &Path, conf: &Path, url: &str) {
    let mut b = Command::new(std::env::current_exe().unwrap_or_else(|e| die(&e.to_string())))
        .args(["--follow", &module_path().display().to_string()])
        .env("HSM_ENVELOPE_CONF", conf)
        .env("SOFTHSM2_CONF", softhsm_conf)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| die(&format!("follower: {e}")));
    let mut to = b.stdin.take().unwrap_or_else(|| die("no stdin"));
    let mut from = BufReader::new(b.stdout.take().unwrap_or_else(|| die("no stdout")));
    let mut line = String::new();
    let mut read = |line: &mut String| {
        line.clear();
        from.read_line(line).unwrap_or_else(|e| die(&e.to_string()));
        line.trim().to_string()
    };
    if read(&mut line) != "READY" {
        die(&format!("follower: {line}"));
    }
    let store = Store::open_at(&Location::Postgres(
        Url::parse(url).unwrap_or_else(|e| die(&e)),
    ))
    .unwrap_or_else(|e| die(&e.to_string()));
    let mut lat = Vec::new();
    for i in 0..HELD {
        let row = store
            .find(&hsm_envelope::store::DekQuery {
                label: Some(label(i)),
                ..Default::default()
            })
            .unwrap_or_else(|e| die(&e.to_string()));
        let Some(row) = row.first() else {
            die("no row")
        };
        let t = Instant::now();
        store
            .soft_delete(&row.id, i64::MAX)
            .unwrap_or_else(|e| die(&e.to_string()));
        writeln!(to, "{i}").unwrap_or_else(|e| die(&e.to_string()));
        let answer = read(&mut line);
        let _ = t;
        match answer.parse::<f64>() {
            Ok(ms) => lat.push(ms),
            Err(_) => die(&format!("follower: {answer}")),
        }
        store
            .recover(&row.id)
            .unwrap_or_else(|e| die(&e.to_string()));
    }
    drop(to);
    let _ = b.wait();
    let max = lat.iter().copied().fold(0.0, f64::max);
    println!(
        "\nPostgreSQL change propagation: a DEK destroyed in the store stops in another process holding it after {:.0} ms median, {max:.0} ms at most ({HELD} DEKs; target <= 1000 ms: {})",
        median(&mut lat),
        verdict(max <= 1000.0)
    );
}

fn make(o: &Opts, dir: &Path) {
    // A store of its own on /dev/shm when there is one (the rate is then the
    // HSM's and the module's, not the disk's fsync).
    let shm = Path::new("/dev/shm");
    let store_dir = if shm.is_dir() {
        tempfile::Builder::new()
            .prefix("hsme-scale-make-")
            .tempdir_in(shm)
            .unwrap_or_else(|e| die(&e.to_string()))
    } else {
        tempfile::Builder::new()
            .tempdir_in(dir)
            .unwrap_or_else(|e| die(&e.to_string()))
    };
    let text = std::fs::read_to_string(dir.join("hsm-envelope.toml")).unwrap_or_default();
    let text: String = text
        .lines()
        .filter(|l| !l.starts_with("store_path"))
        .map(|l| format!("{l}\n"))
        .collect::<String>()
        + &format!(
            "store_path = \"{}\"\n",
            store_dir.path().join("deks.sqlite").display()
        );
    let conf = dir.join("hsm-envelope-make.toml");
    std::fs::write(&conf, text).unwrap_or_else(|e| die(&e.to_string()));
    println!(
        "\none process makes and uses {} DEKs through the module:",
        o.make
    );
    let status = Command::new(std::env::current_exe().unwrap_or_else(|e| die(&e.to_string())))
        .args([
            "--make-probe",
            &module_path().display().to_string(),
            &o.make.to_string(),
        ])
        .env("HSM_ENVELOPE_CONF", &conf)
        .status()
        .unwrap_or_else(|e| die(&e.to_string()));
    println!(
        "  {}",
        if status.success() {
            "made and used every DEK: met"
        } else {
            "FAILED"
        }
    );
}

// --- the probes: fresh processes that load the module ----------------------------

fn load(module: &str) -> (Pkcs11, Session) {
    let p = Pkcs11::new(module).unwrap_or_else(|e| die(&format!("load {module}: {e}")));
    p.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .unwrap_or_else(|e| die(&format!("C_Initialize: {e}")));
    let slot = *p
        .get_slots_with_token()
        .unwrap_or_else(|e| die(&e.to_string()))
        .first()
        .unwrap_or_else(|| die("no slot"));
    let s = p
        .open_rw_session(slot)
        .unwrap_or_else(|e| die(&e.to_string()));
    s.login(UserType::User, Some(&AuthPin::new(PIN.into())))
        .unwrap_or_else(|e| die(&format!("login: {e}")));
    (p, s)
}

fn find(s: &Session, attr: Attribute) -> Vec<ObjectHandle> {
    s.find_objects(&[
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        attr,
    ])
    .unwrap_or_else(|e| die(&format!("find: {e}")))
}

fn encrypt(s: &Session, h: ObjectHandle) -> Result<Vec<u8>, cryptoki::error::Error> {
    let mut iv = [9u8; 12];
    s.encrypt(
        &Mechanism::AesGcm(GcmParams::new(&mut iv, &[], 128.into())?),
        h,
        &[0u8; 64],
    )
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

/// `--probe MODULE DEKS FINDS USES`.
fn probe() {
    let a: Vec<String> = std::env::args().collect();
    let arg = |i: usize| -> usize {
        a.get(i)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| die("probe arguments"))
    };
    let module = a.get(2).cloned().unwrap_or_else(|| die("probe module"));
    let (deks, finds, uses) = (arg(3), arg(4), arg(5));
    let rss0 = rss_kib();
    let t = Instant::now();
    let (_p, s) = load(&module);
    let first = find(&s, Attribute::Label(label(below(deks))));
    let start = ms(t);
    if first.len() != 1 {
        die(&format!("first search found {}", first.len()));
    }
    let mut by_label = Vec::with_capacity(finds);
    let mut by_id = Vec::with_capacity(finds);
    for _ in 0..finds {
        let t = Instant::now();
        let n = find(&s, Attribute::Label(label(below(deks)))).len();
        by_label.push(ms(t));
        let t = Instant::now();
        let m = find(&s, Attribute::Id(ckaid(below(deks)))).len();
        by_id.push(ms(t));
        if n != 1 || m != 1 {
            die(&format!("searches found {n} and {m}"));
        }
    }
    let (mut first_use, mut second_use) = (Vec::new(), Vec::new());
    for _ in 0..uses {
        let h = find(&s, Attribute::Label(label(below(deks))))[0];
        let t = Instant::now();
        encrypt(&s, h).unwrap_or_else(|e| die(&format!("first use: {e}")));
        first_use.push(ms(t));
        let t = Instant::now();
        encrypt(&s, h).unwrap_or_else(|e| die(&format!("second use: {e}")));
        second_use.push(ms(t));
    }
    let rss1 = rss_kib();
    println!("start_ms={start}");
    println!("label_ms={}", median(&mut by_label));
    println!("label_p99_ms={}", p99(&mut by_label));
    println!("ckaid_ms={}", median(&mut by_id));
    println!("ckaid_p99_ms={}", p99(&mut by_id));
    println!("first_use_ms={}", median(&mut first_use));
    println!("second_use_ms={}", median(&mut second_use));
    println!("rss_before_mib={}", rss0 as f64 / 1024.0);
    println!("rss_grew_mib={}", rss1.saturating_sub(rss0) as f64 / 1024.0);
}

/// `--follow MODULE`: holds DEKs 0..HELD; for each index read on stdin,
/// encrypts with that DEK until refused and prints how long that took.
fn follow() {
    let module = std::env::args()
        .nth(2)
        .unwrap_or_else(|| die("follow module"));
    let (_p, s) = load(&module);
    let held: Vec<ObjectHandle> = (0..HELD)
        .map(|i| {
            let h = find(&s, Attribute::Label(label(i)))[0];
            encrypt(&s, h).unwrap_or_else(|e| die(&format!("encrypt: {e}")));
            h
        })
        .collect();
    println!("READY");
    let stdin = std::io::stdin();
    for line in stdin.lock().lines() {
        let Ok(i) = line.unwrap_or_default().trim().parse::<usize>() else {
            break;
        };
        let t = Instant::now();
        loop {
            if encrypt(&s, held[i]).is_err() {
                break;
            }
            if t.elapsed() > Duration::from_secs(30) {
                println!("NEVER");
                return;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        println!("{}", ms(t));
    }
}

/// `--make-probe MODULE N`: generates N token DEKs and encrypts with each.
fn make_probe() {
    let a: Vec<String> = std::env::args().collect();
    let module = a.get(2).cloned().unwrap_or_else(|| die("make module"));
    let n: usize = a
        .get(3)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| die("make count"));
    let rss0 = rss_kib();
    let (_p, s) = load(&module);
    let t = Instant::now();
    for i in 0..n {
        let h = s
            .generate_key(
                &Mechanism::AesKeyGen,
                &[
                    Attribute::Class(ObjectClass::SECRET_KEY),
                    Attribute::KeyType(KeyType::AES),
                    Attribute::Token(true),
                    Attribute::ValueLen(32.into()),
                    Attribute::Label(format!("made-{i}").into_bytes()),
                ],
            )
            .unwrap_or_else(|e| die(&format!("C_GenerateKey #{i}: {e}")));
        encrypt(&s, h).unwrap_or_else(|e| die(&format!("encrypt with #{i}: {e}")));
        if (i + 1) % (n / 10).max(1) == 0 {
            let secs = t.elapsed().as_secs_f64();
            println!(
                "  {:>9} made and used, {:.0}/s, process memory +{:.0} MiB",
                i + 1,
                (i + 1) as f64 / secs.max(1e-9),
                rss_kib().saturating_sub(rss0) as f64 / 1024.0
            );
        }
    }
}
