//! Side-by-side benchmark (issue 4, item 1): AES-256-GCM through our PKCS#11
//! module vs SoftHSM2 directly vs the raw AES-GCM libraries, in one process
//! and one run.
//!
//! # Run
//!
//! One command (builds the module in release mode, then this bench; ~2 min):
//!
//!     bash scripts/bench.sh                  # full run, for the README / the note
//!     bash scripts/bench.sh --quick          # short cells (~30 s), while developing
//!     bash scripts/bench.sh --csv out.csv --threads 2
//!
//! The script builds the module and this bench in one `cargo build --release
//! --lib --bench side_by_side` and runs the bench executable with `--bench
//! FLAGS`; `cargo bench --bench side_by_side -- FLAGS` works too (it rebuilds
//! the library under the bench profile, and the newest `libhsm_envelope.so`
//! is the one loaded). Flags (`--help` lists them all): `--quick`, `--csv
//! PATH` (default `target/bench/side_by_side.csv`; the extra sections go to
//! `PATH` with `.sections.csv`), `--threads N` (default: available cores),
//! `--duration SECS`, `--rounds N`, `--sizes 64,1K,4K,64K,1M`, `--chunk
//! BYTES`, `--only ours,...`, `--module PATH`, `--softhsm PATH`,
//! `--find-count N`, `--find-session`, `--latency-us US`, `--unwrap-calls N`,
//! `--no-sections`, `--message-only`. To profile the module's hot path:
//! `perf record -g target/release/deps/side_by_side-* --bench --only ours
//! --sizes 64 --no-sections --duration 5` (the legacy calls), or `... --bench
//! --message-only --duration 5` (the message API).
//! Needs SoftHSM2 (`libsofthsm2.so`, `softhsm2-util`) and `pkcs11-tool`
//! (Debian packages `softhsm2`, `opensc`; `scripts/deps.sh` installs them).
//! Run it on an idle machine: the numbers are only as quiet as the host.
//!
//! # What it measures
//!
//! For each size (64 B, 1 KiB, 4 KiB, 64 KiB, 1 MiB), encrypt and decrypt,
//! AES-256-GCM with a 12-byte IV, no AAD and a 16-byte tag:
//!
//! * raw libraries, no PKCS#11: aws-lc-rs `LessSafeKey` and RustCrypto
//!   `aes-gcm` 0.11 (see `side_by_side/raw.rs` for the exact calls);
//! * **ours**: `target/release/libhsm_envelope.so` loaded with `libloading`
//!   and called through its `CK_FUNCTION_LIST` like a C client, on a session
//!   DEK generated through the module;
//! * **SoftHSM2** directly, through the same calls, on a session AES-256 key
//!   generated on SoftHSM2.
//!
//! "single" is `C_EncryptInit` + `C_Encrypt` (`C_Decrypt...`) per message
//! into a caller-sized buffer (no length query); "multi" is Init +
//! `C_EncryptUpdate` per `--chunk` bytes (default 16 KiB, so 1 update up to
//! 16 KiB, 4 for 64 KiB, 64 for 1 MiB) + `C_EncryptFinal`. The raw libraries
//! have no multi-part API: multi rows repeat their one-shot numbers. Each
//! encryption uses a fresh IV; decryption repeats one valid ciphertext (the
//! tag is checked every time). Every cell is time-based: `--rounds` (3)
//! round-robin measurements of all implementations, each a warm-up and then
//! `--duration / --rounds` seconds (0.1 s), median shown; buffers are reused
//! (nothing is allocated in the timed loop), and "N threads" means N threads
//! started together, one session each, sharing one key; ops/s and GB/s are
//! aggregates (GB = 10^9 bytes of plaintext). Columns: ours/aws-lc and
//! ours/SoftHSM are ops/s ratios; "overhead ns/op" is ours' per-thread time
//! per operation minus raw aws-lc-rs's; "xN/x1" is ours at N threads over
//! ours at 1 thread. The issue-4 targets are checked under the table.
//!
//! Before timing anything, every implementation is checked: single-part and
//! multi-part give the same ciphertext, decrypt round-trips, a flipped tag
//! bit is refused, and ours and SoftHSM2 with an imported known key match
//! both raw libraries byte for byte. A failed check prints the reason, shows
//! that cell as n/a, and makes the exit status 1.
//!
//! The sections after the table: the PKCS#11 3.0 message API (issue 12:
//! 64-byte `C_EncryptMessage` with module-made IVs against the raw seal, our
//! and SoftHSM2's `C_EncryptInit` + `C_Encrypt`, and the cost of counting GCM
//! invocations; `side_by_side/message.rs`); DEK first use (cold: one HSM unwrap, after
//! `C_Finalize` + `C_Initialize` so the DEK cache is empty) vs warm; a
//! network-HSM scenario *computed* (not measured) from those numbers; token
//! key generation rate (ours and SoftHSM2); `C_FindObjects` over 10 000 DEKs
//! (token DEKs, so the SQLite store is part of it; `--find-session` for session
//! DEKs), next to SoftHSM2 over 10 000 session keys.
//!
//! # Setup in the process
//!
//! A fresh token from `softhsm-config/new-token.sh` in a temporary directory
//! (user PIN 1234, label `hsm-envelope`); `SOFTHSM2_CONF` and
//! `HSM_ENVELOPE_CONF` are set before either module is loaded. Our module is
//! loaded and initialised first (it initialises SoftHSM2 inside), then
//! SoftHSM2 directly, whose `C_Initialize` answers
//! `CKR_CRYPTOKI_ALREADY_INITIALIZED` and whose `C_Login` may answer
//! `CKR_USER_ALREADY_LOGGED_IN`: both fine. The cold/warm section runs before
//! SoftHSM2 is loaded directly, because our `C_Finalize` finalises the
//! backend it initialised.
//!
//! Under `cargo test --benches` (no `--bench` flag and no other flag) the
//! program does nothing, so test runs stay fast.

#[path = "side_by_side/measure.rs"]
mod measure;
#[path = "side_by_side/message.rs"]
mod message;
#[path = "side_by_side/p11.rs"]
mod p11;
#[path = "side_by_side/raw.rs"]
mod raw;
#[path = "side_by_side/report.rs"]
mod report;
#[path = "side_by_side/sections.rs"]
mod sections;
#[path = "side_by_side/token.rs"]
mod token;

use std::path::{Path, PathBuf};
use std::time::Duration;

use cryptoki_sys::*;

use measure::{throughput, Timing};
use p11::{Dir, Module};
use raw::{iv_for, Lib, TAG};
use report::{Mode, Row};

pub type Res<T> = Result<T, String>;

/// User PIN of the token new-token.sh makes (a fixed test value).
pub const PIN: &str = "1234";
const TOKEN_LABEL: &str = "hsm-envelope";

/// Implementation names for `--only`.
const IMPLS: &[&str] = &["aws-lc", "aes-gcm", "ours", "softhsm"];

const USAGE: &str = "\
usage: bash scripts/bench.sh [FLAGS]
   or: cargo bench --bench side_by_side -- [FLAGS]

  --quick            short cells (one round of 50 ms) and smaller sections
  --csv PATH         table CSV (default target/bench/side_by_side.csv); the extra
                     sections go to PATH with the extension .sections.csv
  --threads N        thread count of the multi-thread rows (default: available cores;
                     1 = single-thread rows only)
  --duration SECS    measured time per cell (default 0.3, --quick 0.05), split over the rounds
  --rounds N         measurements per cell, round-robin over the implementations, median
                     shown (default 3, --quick 1); each is preceded by a warm-up of 1/3 its time
  --only LIST        measure only these of aws-lc,aes-gcm,ours,softhsm (e.g. `--only ours`
                     under perf); the others show n/a
  --sizes LIST       message sizes, e.g. 64,1K,4K,64K,1M (the default)
  --chunk BYTES      bytes per C_EncryptUpdate in multi-part mode (default 16K)
  --module PATH      our module (default target/release/libhsm_envelope.so)
  --softhsm PATH     SoftHSM2 (default $SOFTHSM2_MODULE, else the first that exists of
                     SOFTHSM2_CANDIDATES in src/config.rs)
  --find-count N     keys for the C_FindObjects section (default 10000)
  --find-session     make those DEKs session DEKs instead of token DEKs (SQLite store)
  --latency-us US    per-backend-call latency of the computed network-HSM scenario (500)
  --unwrap-calls N   backend calls per DEK unwrap in that scenario (default 2, see output)
  --no-sections      the table only
  --message-only     the message-API section only (issue 12; for profiling
                     and for quieter numbers with a longer --duration)
  --help             this text
";

struct Args {
    quick: bool,
    csv: PathBuf,
    threads: usize,
    timing: Timing,
    sizes: Vec<usize>,
    /// Measurements per cell, round-robin over the implementations; the median is shown.
    rounds: usize,
    /// Implementations to measure: aws-lc, aes-gcm, ours, softhsm.
    only: Vec<String>,
    chunk: usize,
    module: Option<PathBuf>,
    softhsm: Option<PathBuf>,
    find_count: usize,
    find_token: bool,
    latency_us: f64,
    unwrap_calls: u32,
    sections: bool,
    message_only: bool,
}

enum Parsed {
    Run(Box<Args>),
    /// Nothing to do (help printed, test-harness mode, `--list`).
    Exit,
}

fn parse_size(s: &str) -> Res<usize> {
    let t = s.trim();
    let (num, mult) = match t.chars().last() {
        Some('K' | 'k') => (&t[..t.len() - 1], 1 << 10),
        Some('M' | 'm') => (&t[..t.len() - 1], 1 << 20),
        _ => (t, 1),
    };
    let n: usize = num
        .parse()
        .map_err(|_| format!("bad size {s:?} (want e.g. 64, 4K, 1M)"))?;
    if n == 0 {
        return Err(format!("bad size {s:?}: must be > 0"));
    }
    Ok(n * mult)
}

fn parse_args() -> Res<Parsed> {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.iter().any(|a| a == "--list") {
        // libtest-style listing (cargo nextest / cargo test --benches): no tests here.
        return Ok(Parsed::Exit);
    }
    if argv.is_empty() {
        eprintln!(
            "side_by_side: not started by `cargo bench` (no --bench flag) and no flags given: \
             nothing to do. Run `bash scripts/bench.sh [--quick]`."
        );
        return Ok(Parsed::Exit);
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut a = Args {
        quick: false,
        csv: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench/side_by_side.csv"),
        threads: cores,
        timing: Timing {
            warmup: Duration::from_millis(100),
            measure: Duration::from_millis(300),
        },
        sizes: vec![64, 1 << 10, 4 << 10, 64 << 10, 1 << 20],
        rounds: 3,
        only: IMPLS.iter().map(|s| s.to_string()).collect(),
        chunk: 16 << 10,
        module: None,
        softhsm: None,
        find_count: 10_000,
        find_token: true,
        latency_us: 500.0,
        unwrap_calls: 2,
        sections: true,
        message_only: false,
    };
    let mut duration = None;
    let mut rounds = None;
    let mut it = argv.into_iter();
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .ok_or_else(|| format!("{flag} needs a value\n\n{USAGE}"))
        };
        match flag.as_str() {
            "--bench" => {}
            "--help" | "-h" => {
                print!("{USAGE}");
                return Ok(Parsed::Exit);
            }
            "--quick" => a.quick = true,
            "--csv" => a.csv = PathBuf::from(value()?),
            "--threads" => {
                a.threads = value()?
                    .parse()
                    .ok()
                    .filter(|&n| n >= 1)
                    .ok_or("--threads wants a number >= 1")?
            }
            "--duration" => {
                let v: f64 = value()?
                    .parse()
                    .ok()
                    .filter(|&d: &f64| d > 0.0 && d < 60.0)
                    .ok_or("--duration wants seconds, 0 < SECS < 60")?;
                duration = Some(v);
            }
            "--sizes" => {
                a.sizes = value()?
                    .split(',')
                    .map(parse_size)
                    .collect::<Res<Vec<_>>>()?
            }
            "--chunk" => a.chunk = parse_size(&value()?)?,
            "--rounds" => {
                rounds = Some(
                    value()?
                        .parse()
                        .ok()
                        .filter(|&n| (1..=100).contains(&n))
                        .ok_or("--rounds wants a number, 1..=100")?,
                )
            }
            "--only" => {
                a.only = value()?
                    .split(',')
                    .map(|s| s.trim().to_lowercase())
                    .collect();
                if let Some(bad) = a.only.iter().find(|o| !IMPLS.contains(&o.as_str())) {
                    return Err(format!(
                        "--only: unknown implementation {bad:?} (want {})",
                        IMPLS.join(",")
                    ));
                }
            }
            "--module" => a.module = Some(PathBuf::from(value()?)),
            "--softhsm" => a.softhsm = Some(PathBuf::from(value()?)),
            "--find-count" => {
                a.find_count = value()?
                    .parse()
                    .ok()
                    .filter(|&n| n >= 2)
                    .ok_or("--find-count wants a number >= 2")?
            }
            "--find-session" => a.find_token = false,
            "--latency-us" => {
                a.latency_us = value()?
                    .parse()
                    .ok()
                    .filter(|&x: &f64| x >= 0.0)
                    .ok_or("--latency-us wants a number >= 0")?
            }
            "--unwrap-calls" => {
                a.unwrap_calls = value()?
                    .parse()
                    .ok()
                    .filter(|&n| n >= 1)
                    .ok_or("--unwrap-calls wants a number >= 1")?
            }
            "--no-sections" => a.sections = false,
            "--message-only" => {
                a.message_only = true;
                a.sections = false;
            }
            other => return Err(format!("unknown flag {other:?}\n\n{USAGE}")),
        }
    }
    // The measured time per cell is split over the rounds; each round warms up
    // for a third of its share.
    let total = duration.unwrap_or(if a.quick { 0.05 } else { 0.3 });
    a.rounds = rounds.unwrap_or(if a.quick { 1 } else { 3 });
    let each = total / a.rounds as f64;
    a.timing = Timing {
        warmup: Duration::from_secs_f64(each / 3.0),
        measure: Duration::from_secs_f64(each),
    };
    Ok(Parsed::Run(Box::new(a)))
}

fn main() {
    match run() {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("side_by_side: error: {e}");
            std::process::exit(1);
        }
    }
}

/// What the message-API section needs from the run.
fn message_setup<'a>(
    args: &Args,
    ours: &'static Module,
    slot: CK_SLOT_ID,
    (softhsm, sh_slot, sh_key): (&'static Module, CK_SLOT_ID, CK_OBJECT_HANDLE),
    raw: &'a raw::Key,
) -> message::Setup<'a> {
    message::Setup {
        ours,
        slot,
        softhsm,
        sh_slot,
        sh_key,
        raw,
        timing: args.timing,
        rounds: args.rounds,
        threads: args.threads,
        quick: args.quick,
    }
}

/// Ok(false): the run finished but some correctness check failed.
fn run() -> Res<bool> {
    let args = match parse_args()? {
        Parsed::Run(a) => a,
        Parsed::Exit => return Ok(true),
    };
    let module_path = our_module_path(args.module.as_deref())?;
    let softhsm_path = softhsm_path(args.softhsm.as_deref())?;
    let token = token::make_token(PIN)?;
    print_header(&args, &module_path, &softhsm_path, token.path());

    // Our module first: it initialises SoftHSM2 inside.
    let ours = Module::load("ours", &module_path)?;
    if !ours.initialize()? {
        return Err(
            "ours: C_Initialize answered CKR_CRYPTOKI_ALREADY_INITIALIZED in a fresh process"
                .into(),
        );
    }
    let slot = ours.slot_by_label(TOKEN_LABEL)?;
    let mut extras = Vec::new();
    let mut sections_text = Vec::new();

    // Needs C_Finalize + C_Initialize of ours: before SoftHSM2 is loaded directly.
    if args.sections {
        progress("DEK cold vs warm");
        let cw = sections::cold_warm(ours, slot, args.quick)?;
        let mut t = sections::print_cold_warm(&cw, &mut extras);
        t.push('\n');
        t += &sections::network_scenario(&cw, args.latency_us, args.unwrap_calls, &mut extras);
        sections_text.push(t);
    }
    let main_s = ours.open_session(slot)?;
    ours.login(main_s.h, PIN)?;

    let softhsm = Module::load("SoftHSM", &softhsm_path)?;
    let fresh = softhsm.initialize()?;
    eprintln!(
        "SoftHSM2 direct: C_Initialize {}",
        if fresh {
            "CKR_OK (unexpected: our module should have initialised it; carrying on)"
        } else {
            "CKR_CRYPTOKI_ALREADY_INITIALIZED (our module initialised it): carrying on"
        }
    );
    let sh_slot = softhsm.slot_by_label(TOKEN_LABEL)?;
    let sh_s = softhsm.open_session(sh_slot)?;
    let rv = softhsm.login(sh_s.h, PIN)?;
    eprintln!("SoftHSM2 direct: C_Login {}", p11::rv_name(rv));

    // The keys.
    let ours_key = ours
        .generate_aes256(main_s.h, "bench-dek", false)
        .map_err(|e| e.describe("ours"))?;
    let sh_key = softhsm
        .generate_aes256(sh_s.h, "bench-softhsm-key", false)
        .map_err(|e| e.describe("SoftHSM"))?;
    let mut raw_key = [0u8; 32];
    getrandom::fill(&mut raw_key).map_err(|e| format!("getrandom: {e}"))?;
    let raws = [
        (Lib::AwsLc, raw::Key::new(Lib::AwsLc, &raw_key)?),
        (Lib::AesGcm, raw::Key::new(Lib::AesGcm, &raw_key)?),
    ];
    if args.message_only {
        progress("message API section");
        let st = message_setup(&args, ours, slot, (softhsm, sh_slot, sh_key), &raws[0].1);
        println!("{}", message::section(&st, &mut extras)?);
        drop(sh_s);
        drop(main_s);
        ours.finalize()?;
        softhsm.finalize()?;
        drop(token);
        return Ok(true);
    }
    let imps = [
        Imp {
            m: ours,
            slot,
            key: ours_key,
        },
        Imp {
            m: softhsm,
            slot: sh_slot,
            key: sh_key,
        },
    ];

    // Correctness first.
    progress("checking every implementation");
    let mut failures = Vec::new();
    let checked = check_all(
        &args,
        &imps,
        main_s.h,
        sh_s.h,
        &raws,
        &raw_key,
        &mut failures,
    );
    for f in &failures {
        eprintln!("side_by_side: CHECK FAILED: {f}");
    }

    // The table.
    let rows = table_rows(&args, &imps, &raws, &checked)?;
    println!();
    println!(
        "AES-256-GCM, 12-byte IV, 16-byte tag, no AAD. ops/s and GB/s aggregate over the threads; \
         raw libraries one-shot (also in multi rows)."
    );
    println!("{}", report::table(&rows));
    println!("issue-4 targets (this run; meaningful only on an idle machine):");
    print!("{}", report::targets(&rows, args.threads));
    report::write_table_csv(&args.csv, &rows)?;

    if args.sections {
        progress("message API section");
        let st = message_setup(&args, ours, slot, (softhsm, sh_slot, sh_key), &raws[0].1);
        sections_text.push(message::section(&st, &mut extras)?);
        progress("C_FindObjects section");
        sections_text.push(sections::find(
            ours,
            slot,
            softhsm,
            sh_slot,
            args.find_count,
            args.find_token,
            args.quick,
            &mut extras,
        )?);
        progress("a DEK made real on the HSM");
        sections_text.push(sections::on_hsm(
            ours,
            slot,
            softhsm,
            sh_slot,
            args.quick,
            &mut extras,
        )?);
        progress("token key generation section");
        sections_text.push(sections::keygen(
            ours,
            slot,
            softhsm,
            sh_slot,
            args.quick,
            &mut extras,
        )?);
        for t in &sections_text {
            println!();
            print!("{t}");
        }
        let extra_csv = args.csv.with_extension("sections.csv");
        report::write_extra_csv(&extra_csv, &extras)?;
        println!();
        println!("CSV: {} and {}", args.csv.display(), extra_csv.display());
    } else {
        println!();
        println!("CSV: {}", args.csv.display());
    }

    // Sessions first, then our module (which finalises SoftHSM2: it initialised
    // it), then SoftHSM2 (already finalised: CKR_CRYPTOKI_NOT_INITIALIZED is fine).
    drop(sh_s);
    drop(main_s);
    ours.finalize()?;
    softhsm.finalize()?;
    drop(token);
    if failures.is_empty() {
        Ok(true)
    } else {
        eprintln!(
            "side_by_side: {} correctness check(s) failed (cells shown as n/a)",
            failures.len()
        );
        Ok(false)
    }
}

fn progress(what: &str) {
    eprintln!("side_by_side: {what} ...");
}

/// A PKCS#11 implementation under test: module, slot, key.
#[derive(Clone, Copy)]
struct Imp {
    m: &'static Module,
    slot: CK_SLOT_ID,
    key: CK_OBJECT_HANDLE,
}

/// What passed the checks, and each size's ciphertext (decrypt input) per
/// implementation made with IV (0, 0).
struct Checked {
    /// [imp][size index] -> ciphertext || tag, if encrypt single works.
    ct: Vec<Vec<Option<Vec<u8>>>>,
    /// (imp, size index, dir, mode) that passed.
    ok: Vec<(usize, usize, Dir, Mode)>,
    /// [lib][size index] -> ciphertext || tag.
    raw_ct: Vec<Vec<Vec<u8>>>,
}

impl Checked {
    fn passed(&self, imp: usize, si: usize, dir: Dir, mode: Mode) -> bool {
        self.ok.contains(&(imp, si, dir, mode))
    }
}

fn plaintext(size: usize) -> Vec<u8> {
    (0..size).map(|i| (i * 131 + 7) as u8).collect()
}

fn check_all(
    args: &Args,
    imps: &[Imp; 2],
    ours_s: CK_SESSION_HANDLE,
    sh_s: CK_SESSION_HANDLE,
    raws: &[(Lib, raw::Key); 2],
    raw_key: &[u8; 32],
    failures: &mut Vec<String>,
) -> Checked {
    let sessions = [ours_s, sh_s];
    let mut c = Checked {
        ct: vec![vec![None; args.sizes.len()]; 2],
        ok: Vec::new(),
        raw_ct: vec![Vec::new(); 2],
    };
    let iv0 = iv_for(0, 0);
    for (si, &size) in args.sizes.iter().enumerate() {
        let pt = plaintext(size);
        // The raw libraries against each other.
        for (li, (lib, key)) in raws.iter().enumerate() {
            let ct = key.seal(iv0, &pt).unwrap_or_default();
            if key.open(iv0, &ct).ok().as_deref() != Some(&pt[..]) {
                failures.push(format!("{}: {size} B round trip failed", lib.label()));
            }
            c.raw_ct[li].push(ct);
        }
        if c.raw_ct[0][si] != c.raw_ct[1][si] {
            failures.push(format!("aws-lc-rs and aes-gcm disagree on {size} B"));
        }
        for (ii, imp) in imps.iter().enumerate() {
            let s = sessions[ii];
            let name = imp.m.name;
            let mut fail = |what: String| {
                failures.push(format!("{name}: {} {what}", report::size_label(size)))
            };
            let mut out = vec![0u8; size + TAG];
            let mut iv = iv0;
            let single = imp
                .m
                .gcm_single(s, Dir::Enc, imp.key, &mut iv, &pt, &mut out);
            let ct = match single {
                Ok(n) if n == size + TAG => out.clone(),
                Ok(n) => {
                    fail(format!(
                        "encrypt single: {n} bytes out, expected {}",
                        size + TAG
                    ));
                    continue;
                }
                Err(e) => {
                    fail(format!("encrypt single: {}", e.describe(name)));
                    continue;
                }
            };
            c.ok.push((ii, si, Dir::Enc, Mode::Single));
            let mut iv = iv0;
            out.fill(0);
            match imp
                .m
                .gcm_multi(s, Dir::Enc, imp.key, &mut iv, &pt, &mut out, args.chunk)
            {
                Ok(n) if n == size + TAG && out == ct => c.ok.push((ii, si, Dir::Enc, Mode::Multi)),
                Ok(n) => fail(format!(
                    "encrypt multi: {n} bytes, differs from single-part"
                )),
                Err(e) => fail(format!("encrypt multi: {}", e.describe(name))),
            }
            let mut back = vec![0u8; size + TAG];
            for mode in [Mode::Single, Mode::Multi] {
                let mut iv = iv0;
                back.fill(0);
                let r = match mode {
                    Mode::Single => imp
                        .m
                        .gcm_single(s, Dir::Dec, imp.key, &mut iv, &ct, &mut back),
                    Mode::Multi => {
                        imp.m
                            .gcm_multi(s, Dir::Dec, imp.key, &mut iv, &ct, &mut back, args.chunk)
                    }
                };
                match r {
                    Ok(n) if n == size && back[..n] == pt[..] => {
                        c.ok.push((ii, si, Dir::Dec, mode))
                    }
                    Ok(n) => fail(format!(
                        "decrypt {}: {n} bytes, not the plaintext",
                        mode.label()
                    )),
                    Err(e) => fail(format!("decrypt {}: {}", mode.label(), e.describe(name))),
                }
            }
            // A flipped tag bit must be refused.
            let mut bad = ct.clone();
            if let Some(last) = bad.last_mut() {
                *last ^= 1;
            }
            let mut iv = iv0;
            if imp
                .m
                .gcm_single(s, Dir::Dec, imp.key, &mut iv, &bad, &mut back)
                .is_ok()
            {
                fail("decrypt accepted a ciphertext with a flipped tag bit".into());
                c.ok.retain(|&(i, z, d, _)| !(i == ii && z == si && d == Dir::Dec));
            }
            c.ct[ii][si] = Some(ct);
        }
    }
    // Known key: ours and SoftHSM2 must produce the raw libraries' bytes.
    for (ii, imp) in imps.iter().enumerate() {
        let s = sessions[ii];
        match imp.m.import_aes(s, "bench-known-key", raw_key) {
            Err(e) => failures.push(format!(
                "{}: importing a known AES key for the cross-check: {}",
                imp.m.name,
                e.describe(imp.m.name)
            )),
            Ok(k) => {
                for (si, &size) in args.sizes.iter().enumerate() {
                    let pt = plaintext(size);
                    let mut out = vec![0u8; size + TAG];
                    let mut iv = iv_for(0, 0);
                    match imp.m.gcm_single(s, Dir::Enc, k, &mut iv, &pt, &mut out) {
                        Ok(_) if out == c.raw_ct[0][si] => {}
                        Ok(_) => failures.push(format!(
                            "{}: {} with a known key: ciphertext differs from aws-lc-rs / aes-gcm",
                            imp.m.name,
                            report::size_label(size)
                        )),
                        Err(e) => failures.push(format!(
                            "{}: known-key encrypt: {}",
                            imp.m.name,
                            e.describe(imp.m.name)
                        )),
                    }
                }
            }
        }
    }
    c
}

/// One measurement of a (size, op, threads) group.
#[derive(Clone, Copy)]
enum Job {
    Raw(usize),
    P11(usize, Mode),
}

impl Job {
    fn impl_name(self) -> &'static str {
        match self {
            Job::Raw(0) => "aws-lc",
            Job::Raw(_) => "aes-gcm",
            Job::P11(0, _) => "ours",
            Job::P11(_, _) => "softhsm",
        }
    }
}

/// The table: for each size, op and thread count, every implementation is
/// measured `--rounds` times, round-robin (so a burst of load on a shared
/// machine hits all of them alike), and the median is kept.
fn table_rows(
    args: &Args,
    imps: &[Imp; 2],
    raws: &[(Lib, raw::Key); 2],
    checked: &Checked,
) -> Res<Vec<Row>> {
    let mut thread_counts = vec![1];
    if args.threads > 1 {
        thread_counts.push(args.threads);
    }
    let jobs = [
        Job::Raw(0),
        Job::Raw(1),
        Job::P11(0, Mode::Single),
        Job::P11(1, Mode::Single),
        Job::P11(0, Mode::Multi),
        Job::P11(1, Mode::Multi),
    ];
    let mut rows: Vec<Row> = Vec::new();
    for (si, &size) in args.sizes.iter().enumerate() {
        let pt = plaintext(size);
        for dir in [Dir::Enc, Dir::Dec] {
            for &threads in &thread_counts {
                progress(&format!(
                    "{} {} x{threads}",
                    report::size_label(size),
                    report::dir_label(dir)
                ));
                let mut samples: Vec<Vec<f64>> = vec![Vec::new(); jobs.len()];
                for _ in 0..args.rounds {
                    for (k, &job) in jobs.iter().enumerate() {
                        if !args.only.iter().any(|o| o == job.impl_name()) {
                            continue;
                        }
                        let v = match job {
                            Job::Raw(li) => {
                                let (key, ct) = (&raws[li].1, &checked.raw_ct[li][si]);
                                throughput(threads, args.timing, |i| {
                                    Ok(raw::worker(key, i as u32, dir, size, ct))
                                })?
                            }
                            Job::P11(ii, mode) => {
                                if !checked.passed(ii, si, dir, mode) {
                                    continue;
                                }
                                let input: &[u8] = match dir {
                                    Dir::Enc => &pt,
                                    Dir::Dec => checked.ct[ii][si].as_deref().unwrap_or_default(),
                                };
                                p11_throughput(args, imps[ii], dir, mode, size, threads, input)?
                            }
                        };
                        samples[k].push(v);
                    }
                }
                let med: Vec<Option<f64>> = samples
                    .iter_mut()
                    .map(|v| (!v.is_empty()).then(|| measure::median(v)))
                    .collect();
                for (mode, ours, sh) in [
                    (Mode::Single, med[2], med[3]),
                    (Mode::Multi, med[4], med[5]),
                ] {
                    let base = (threads > 1)
                        .then(|| {
                            rows.iter().find(|r| {
                                r.size == size && r.dir == dir && r.mode == mode && r.threads == 1
                            })
                        })
                        .flatten();
                    let scale = |now: Option<f64>, one: Option<f64>| match (now, one) {
                        (Some(n), Some(o)) if o > 0.0 => Some(n / o),
                        _ => None,
                    };
                    rows.push(Row {
                        size,
                        dir,
                        mode,
                        threads,
                        awslc: med[0],
                        aesgcm: med[1],
                        ours,
                        softhsm: sh,
                        ours_scaling: base.and_then(|b| scale(ours, b.ours)),
                        softhsm_scaling: base.and_then(|b| scale(sh, b.softhsm)),
                    });
                }
            }
        }
    }
    // Table order: size, op, mode, threads.
    rows.sort_by_key(|r| (r.size, r.dir == Dir::Dec, r.mode == Mode::Multi, r.threads));
    Ok(rows)
}

/// Aggregate ops/s of `imp` doing `dir`/`mode` on `size`-byte messages in
/// `threads` threads, each with its own session, sharing `imp.key`.
fn p11_throughput(
    args: &Args,
    imp: Imp,
    dir: Dir,
    mode: Mode,
    size: usize,
    threads: usize,
    input: &[u8],
) -> Res<f64> {
    let chunk = args.chunk;
    throughput(threads, args.timing, |i| {
        let s = imp.m.open_session(imp.slot)?;
        let input = input.to_vec();
        let mut out = vec![0u8; size + TAG];
        let mut n = 0u64;
        Ok(move || {
            // Capture the whole guard (not just `s.h`), so the session stays open.
            let s = &s;
            let mut iv = match dir {
                Dir::Enc => {
                    n += 1;
                    iv_for(i as u32, n)
                }
                Dir::Dec => iv_for(0, 0),
            };
            let r = match mode {
                Mode::Single => imp
                    .m
                    .gcm_single(s.h, dir, imp.key, &mut iv, &input, &mut out),
                Mode::Multi => imp
                    .m
                    .gcm_multi(s.h, dir, imp.key, &mut iv, &input, &mut out, chunk),
            };
            r.map(|_| ()).map_err(|e| e.describe(imp.m.name))
        })
    })
}

/// `--module`, else the newest of target/<profile>/libhsm_envelope.so (this
/// bench executable is target/<profile>/deps/side_by_side-*), the copy in
/// deps/ and target/release/libhsm_envelope.so in the source tree.
fn our_module_path(flag: Option<&Path>) -> Res<PathBuf> {
    const NAME: &str = "libhsm_envelope.so";
    if let Some(p) = flag {
        return if p.is_file() {
            Ok(p.to_path_buf())
        } else {
            Err(format!("--module {}: no such file", p.display()))
        };
    }
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this executable: {e}"))?;
    let exe_dir = exe.parent().unwrap_or(Path::new("."));
    let mut candidates = Vec::new();
    if exe_dir.file_name().is_some_and(|n| n == "deps") {
        if let Some(profile) = exe_dir.parent() {
            candidates.push(profile.join(NAME));
        }
    }
    candidates.push(exe_dir.join(NAME));
    candidates.push(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("target/release")
            .join(NAME),
    );
    // `cargo bench` builds the cdylib into deps/ (bench profile) without
    // refreshing target/release/: take the newest copy, so it is never stale.
    let mtime = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let found = candidates
        .iter()
        .filter(|p| p.is_file())
        .max_by_key(|p| mtime(p))
        .cloned()
        .ok_or_else(|| {
            format!(
                "our module {NAME} not found (looked at {}). Build it first: \
             `cargo build --release --lib` (scripts/bench.sh does), or pass --module PATH",
                candidates
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })?;
    Ok(found)
}

fn softhsm_path(flag: Option<&Path>) -> Res<PathBuf> {
    if let Some(p) = flag {
        return if p.is_file() {
            Ok(p.to_path_buf())
        } else {
            Err(format!("--softhsm {}: no such file", p.display()))
        };
    }
    hsm_envelope::config::find_softhsm2().map_err(|e| format!("{e}, or pass --softhsm PATH"))
}

fn print_header(args: &Args, module: &Path, softhsm: &Path, token_dir: &Path) {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default();
    println!(
        "hsm-envelope side-by-side benchmark{}",
        if args.quick { " (--quick)" } else { "" }
    );
    println!("  CPU: {cpu}; {cores} cores available; load average {load}");
    println!("  ours:    {}", module.display());
    println!("  SoftHSM: {}", softhsm.display());
    println!(
        "  token:   {} (new-token.sh; removed at exit)",
        token_dir.display()
    );
    println!(
        "  cells: {} round(s) of (warm-up {:.0} ms + {:.0} ms measured), median; threads 1{}; \
         multi-part chunk {} B",
        args.rounds,
        args.timing.warmup.as_secs_f64() * 1e3,
        args.timing.measure.as_secs_f64() * 1e3,
        if args.threads > 1 {
            format!(" and {}", args.threads)
        } else {
            String::new()
        },
        args.chunk
    );
}
