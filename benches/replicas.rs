//! Failover benchmark (issue 13, `kek_mode = "replicas"`): what a member's
//! death costs the application. Target: failover adds at most 1 s to the
//! first unwrap after a member dies, and nothing to the ones after.
//!
//! # Run
//!
//!     bash scripts/bench.sh replicas                 # 200 unwraps per phase
//!     bash scripts/bench.sh replicas --unwraps 1000 --keep
//!
//! The script builds the release module, the fault-injecting backend
//! (examples/faulty_backend.rs) and this bench in one cargo build, and runs
//! it.
//!
//! # What it does
//!
//! 1. A fresh SoftHSM2 token (`softhsm-config/new-token.sh`) and a second
//!    token, "replica-b", in the same SoftHSM2: two tokens stand in for two
//!    HSMs. The KEK is written with one random value on both (a stand-in for
//!    the BYOK import or a vendor's cloning; as tests/replicas.rs does).
//! 2. The configuration: `main` reached through the fault backend (a flag
//!    file makes every token call answer CKR_DEVICE_ERROR), member "b"
//!    reached directly; `cache_max_keys = 1`, so each use of another DEK is
//!    an unwrap on the HSM; `cache_soft_ttl_secs = 1`.
//! 3. The release module is loaded with `cryptoki` in this process; N token
//!    DEKs are made. Each timed operation is `C_EncryptInit` + `C_Encrypt`
//!    (AES-GCM, 64 bytes) on a DEK not in the cache: one HSM unwrap plus the
//!    software encryption. Phases: both members up; the flag is raised and
//!    the first unwrap after main died, then the following ones; the flag is
//!    removed, the soft TTL passes, the first unwrap (it runs the health
//!    check that finds main again and proves it agrees) and the following.
//!
//! The fault backend fails at once. A real HSM that dies may instead make
//! calls wait: the first unwrap then pays `hsm_timeout_ms` (tests/replicas.rs
//! measures that with the fault backend's `hang` mode), or its client
//! library's own time-out when that is unset.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, ObjectHandle};
use cryptoki::session::Session;

mod hsms;
use hsms::*;

const REPLICA_LABEL: &str = "replica-b";
const SOFT_TTL: Duration = Duration::from_secs(1);
/// The target for the first unwrap after a member dies.
const TARGET_FIRST: Duration = Duration::from_secs(1);
/// "Nothing after": the unwraps after failover are within this factor of
/// the healthy ones (medians).
const TOLERANCE_AFTER: f64 = 1.25;

struct Opts {
    unwraps: usize,
    keep: bool,
}

fn parse_args() -> Opts {
    let mut o = Opts {
        unwraps: 200,
        keep: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--unwraps" => {
                o.unwraps = args
                    .next()
                    .and_then(|v| v.replace('_', "").parse().ok())
                    .unwrap_or_else(|| die("--unwraps needs a number"))
            }
            "--keep" => o.keep = true,
            "--bench" => {}
            "--help" | "-h" => {
                println!("usage: bash scripts/bench.sh replicas [--unwraps N] [--keep]");
                std::process::exit(0);
            }
            other if other.starts_with('-') => die(&format!("unknown flag {other}")),
            _ => {}
        }
    }
    o.unwraps = o.unwraps.max(10);
    o
}

/// Replace the KEK on `s`'s token with an AES-256 key of value `value`.
fn put_kek(s: &Session, value: &[u8; 32]) {
    remove_kek(s);
    let mut template = kek_template();
    template.push(Attribute::Value(value.to_vec()));
    s.create_object(&template)
        .unwrap_or_else(|e| die(&format!("C_CreateObject: {e}")));
}

/// Two tokens holding one KEK value, and the configuration: main through
/// the fault backend, "b" directly. Returns the configuration's path.
fn setup(dir: &Path) -> PathBuf {
    let conf_path = new_token(dir);
    add_token(REPLICA_LABEL);
    let conf = std::fs::read_to_string(&conf_path).unwrap_or_else(|e| die(&e.to_string()));
    let softhsm = softhsm_module(&conf);
    let mut kek = [0u8; 32];
    getrandom::fill(&mut kek).unwrap_or_else(|e| die(&format!("getrandom: {e}")));
    {
        let hsm = init(&softhsm);
        put_kek(&login(&hsm, slot_labelled(&hsm, TOKEN_LABEL)), &kek);
        put_kek(&login(&hsm, slot_labelled(&hsm, REPLICA_LABEL)), &kek);
        hsm.finalize()
            .unwrap_or_else(|e| die(&format!("C_Finalize: {e}")));
    }
    let faulty = built(release_dir().join("examples/libfaulty_backend.so"));
    std::env::set_var("FAULTY_BACKEND_TARGET", &softhsm);
    std::env::set_var("FAULTY_BACKEND_FLAG", dir.join("main-down"));
    let main_line = format!("backend_module = \"{}\"", softhsm.display());
    let mut conf: String = conf
        .lines()
        .filter(|l| {
            let k = l.split_once('=').map(|(k, _)| k.trim());
            !matches!(k, Some("cache_soft_ttl_secs" | "cache_max_keys"))
        })
        .map(|l| format!("{l}\n"))
        .collect::<String>()
        .replace(
            &main_line,
            &format!("backend_module = \"{}\"", faulty.display()),
        );
    conf += &format!(
        "cache_soft_ttl_secs = {}\ncache_max_keys = 1\nkek_mode = \"replicas\"\n\n\
         [[hsm]]\nname = \"b\"\n{main_line}\ntoken_label = \"{REPLICA_LABEL}\"\n",
        SOFT_TTL.as_secs()
    );
    std::fs::write(&conf_path, conf).unwrap_or_else(|e| die(&e.to_string()));
    std::env::set_var("HSM_ENVELOPE_CONF", &conf_path);
    conf_path
}

/// One use of `h`: C_EncryptInit + C_Encrypt of 64 bytes, timed.
fn use_dek(s: &Session, h: ObjectHandle) -> Result<Duration, cryptoki::error::Error> {
    let mut iv = [0u8; 12];
    getrandom::fill(&mut iv).unwrap_or_else(|e| die(&format!("getrandom: {e}")));
    let t = Instant::now();
    s.encrypt(
        &Mechanism::AesGcm(GcmParams::new(&mut iv, &[], 128.into())?),
        h,
        &[0u8; 64],
    )?;
    Ok(t.elapsed())
}

/// `n` uses, each of a DEK other than the last one used (so not cached).
struct Uses<'a> {
    s: &'a Session,
    deks: &'a [ObjectHandle],
    next: usize,
    errors: usize,
}

impl Uses<'_> {
    fn one(&mut self) -> Option<Duration> {
        let h = self.deks[self.next % self.deks.len()];
        self.next += 1;
        match use_dek(self.s, h) {
            Ok(d) => Some(d),
            Err(e) => {
                self.errors += 1;
                eprintln!("application error: {e}");
                None
            }
        }
    }

    fn many(&mut self, n: usize) -> Vec<f64> {
        (0..n).filter_map(|_| self.one()).map(ms).collect()
    }
}

fn main() {
    let o = parse_args();
    let dir = tempfile::Builder::new()
        .prefix("hsm-envelope-bench-replicas-")
        .tempdir()
        .unwrap_or_else(|e| die(&format!("temporary directory: {e}")));
    let conf = setup(dir.path());
    let flag = dir.path().join("main-down");
    let module = built(release_dir().join("libhsm_envelope.so"));
    println!(
        "replicas failover benchmark: 2 members (SoftHSM2 tokens; main through the fault backend), \
         cache_max_keys = 1, {} unwraps per phase; {} CPU(s); module {}",
        o.unwraps,
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        module.display()
    );

    let p = init(&module);
    // The DEK token by its label (SoftHSM2 lists its tokens in no fixed
    // order: the replica's may come first).
    let s = login(&p, slot_labelled(&p, TOKEN_LABEL));
    // More DEKs than one phase uses twice in a row, each used once (made and
    // put in the cache) before timing.
    let deks: Vec<_> = (0..64).map(|_| make_dek(&s, b"replicas")).collect();
    let mut uses = Uses {
        s: &s,
        deks: &deks,
        next: 0,
        errors: 0,
    };
    uses.many(deks.len());

    let mut up = uses.many(o.unwraps);

    std::fs::write(&flag, b"down").unwrap_or_else(|e| die(&e.to_string()));
    let first = uses.one().map(ms).unwrap_or(f64::NAN);
    let mut after = uses.many(o.unwraps);

    std::fs::remove_file(&flag).unwrap_or_else(|e| die(&e.to_string()));
    std::thread::sleep(SOFT_TTL + Duration::from_millis(100));
    let back_first = uses.one().map(ms).unwrap_or(f64::NAN);
    let mut back = uses.many(o.unwraps);

    println!("unwrap latency (C_EncryptInit + C_Encrypt of a DEK not cached):");
    let m_up = summary("both members up", &mut up);
    println!("  {:<44} {first:8.3} ms", "first unwrap after main died");
    let m_after = summary("following unwraps (main down, on b)", &mut after);
    println!(
        "  {:<44} {back_first:8.3} ms",
        "first unwrap after main is back (+ health check)"
    );
    let m_back = summary("following unwraps (main back)", &mut back);
    println!("application errors: {}", uses.errors);

    let added = first - m_up;
    let ok_first = added <= ms(TARGET_FIRST);
    let ratio = m_after / m_up;
    let ok_after = ratio <= TOLERANCE_AFTER;
    println!(
        "verdict: first unwrap after a member died added {added:.3} ms (target <= {} ms): {}",
        ms(TARGET_FIRST),
        if ok_first { "PASS" } else { "FAIL" }
    );
    println!(
        "verdict: following unwraps {ratio:.2}x the healthy median (target: nothing added, <= {TOLERANCE_AFTER}x): {}",
        if ok_after { "PASS" } else { "FAIL" }
    );
    println!(
        "         after main is back: {:.2}x the healthy median",
        m_back / m_up
    );
    let log = std::fs::read_to_string(dir.path().join("hsm-envelope.log")).unwrap_or_default();
    println!(
        "log: main marked down {}, up again {} (config {})",
        log.contains("HSM member 'main' is down"),
        log.contains("HSM member 'main' is up again"),
        conf.display()
    );
    println!("note: the fault backend fails at once; a real HSM that hangs costs hsm_timeout_ms once (its client library's own time-out when that is unset)");

    let errors = uses.errors;
    drop(s);
    let _ = p.finalize();
    if o.keep {
        let path = dir.keep();
        println!("tokens and configuration kept in {}", path.display());
    }
    if errors > 0 || !ok_first || !ok_after {
        std::process::exit(1);
    }
}
