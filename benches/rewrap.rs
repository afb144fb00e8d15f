//! Re-wrap benchmark (issue 3): how fast `hsm-envelope rewrap` moves DEK
//! records to a new KEK version on SoftHSM2. Goal: 100 000 records in ≤ 10 s.
//!
//! # Run
//!
//!     bash scripts/bench.sh rewrap                       # 100 000 records, batch 500
//!     bash scripts/bench.sh rewrap --records 20000 --batch 100
//!
//! The script builds this bench in release mode (`cargo build --release
//! --bench rewrap`) and runs it; `cargo bench --bench rewrap -- FLAGS` works
//! too. Flags: `--records N` (default 100000), `--batch N` (records per
//! batch, default 500 as in `hsm-envelope rewrap`), `--threads N` (workers,
//! default 1 as in `hsm-envelope rewrap`), `--keep` (keep the
//! token directory and print its path). Needs SoftHSM2 and pkcs11-tool
//! (Debian packages softhsm2 and opensc; `scripts/deps.sh`).
//!
//! # What it does
//!
//! 1. Makes a fresh SoftHSM2 token with KEK v1 (`softhsm-config/new-token.sh`)
//!    in a temporary directory, and logs in as the admin tool does
//!    (`Admin::connect`).
//! 2. Makes the records the fastest faithful way: for each DEK, attributes
//!    exactly as `C_GenerateKey` builds them (`policy::new_dek`), a random
//!    AES-256 value, the value sealed under KEK v1 **on the HSM** with
//!    `Envelope::seal` (the module's own call), and the rows inserted with
//!    `Store::insert_many`, 5 000 per transaction. (Through the module each
//!    `C_GenerateKey` would also cost an HSM random call and a durable
//!    commit of its own.) This setup is timed and printed, not the result.
//! 3. Rotates (`Envelope::rotate`: KEK v2 generated on the HSM, primary).
//! 4. Re-wraps everything with the loop `hsm-envelope rewrap` runs:
//!    `RewrapJob::batch` (per record one HSM unwrap under v1 and one
//!    HSM wrap under v2, then one store transaction per batch) until done.
//!    This is the timed part: records/s and total seconds.
//! 5. Checks: nothing left under v1, and a sample of records opens under v2.

mod hsms;

use std::path::Path;
use std::time::Instant;

use cryptoki_sys::*;
use zeroize::Zeroizing;

use hsm_envelope::admin::Admin;
use hsm_envelope::config::Config;
use hsm_envelope::envelope::rewrap::RewrapJob;
use hsm_envelope::hex::encode as hex;
use hsm_envelope::store::DekRow;
use hsm_envelope::token::object::policy::{self, Origin};
use hsm_envelope::token::object::template::{Attrs, TemplateAttr};

const PIN: &str = "1234";
const GOAL_RECORDS: usize = 100_000;
const GOAL_SECS: f64 = 10.0;
const INSERT_CHUNK: usize = 5_000;

struct Opts {
    records: usize,
    batch: u32,
    threads: usize,
    keep: bool,
}

fn parse_args() -> Opts {
    let mut o = Opts {
        records: GOAL_RECORDS,
        batch: 500,
        threads: 1,
        keep: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut num = |name: &str| -> u64 {
            args.next()
                .and_then(|v| v.replace('_', "").parse().ok())
                .unwrap_or_else(|| die(&format!("{name} needs a number")))
        };
        match a.as_str() {
            "--records" => o.records = num("--records") as usize,
            "--batch" => o.batch = num("--batch").clamp(1, 100_000) as u32,
            "--threads" => o.threads = num("--threads").clamp(1, 64) as usize,
            "--keep" => o.keep = true,
            // cargo bench passes --bench; libtest-style filters are ignored.
            "--bench" => {}
            "--help" | "-h" => {
                println!(
                    "usage: bash scripts/bench.sh rewrap [--records N] [--batch N] [--threads N] [--keep]"
                );
                std::process::exit(0);
            }
            other if other.starts_with('-') => die(&format!("unknown flag {other}")),
            _ => {}
        }
    }
    o
}

fn die(msg: &str) -> ! {
    eprintln!("rewrap bench: error: {msg}");
    std::process::exit(2)
}

/// A fresh token with KEK v1 (`hsms::new_token`, which sets SOFTHSM2_CONF
/// for this process), and its configuration.
fn new_token(dir: &Path) -> Config {
    Config::from_file(&hsms::new_token(dir)).unwrap_or_else(|e| die(&e.to_string()))
}

/// The attributes `C_GenerateKey` gives a token AES-256 DEK labelled `label`.
fn dek_attrs(label: &[u8]) -> Attrs {
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
        t(CKA_LABEL, label.to_vec()),
    ];
    policy::new_dek(&template, Origin::Generated)
        .unwrap_or_else(|e| die(&format!("DEK template: {e}")))
        .0
}

fn rate(n: usize, secs: f64) -> f64 {
    if secs > 0.0 {
        n as f64 / secs
    } else {
        0.0
    }
}

fn main() {
    let opts = parse_args();
    let dir = tempfile::Builder::new()
        .prefix("hsm-envelope-bench-rewrap-")
        .tempdir()
        .unwrap_or_else(|e| die(&format!("temporary directory: {e}")));
    let config = new_token(dir.path());
    let module = config.backend_module.display().to_string();
    let admin = Admin::connect(config, PIN).unwrap_or_else(|e| die(&format!("connect: {e}")));
    let env = &admin.env;
    let b = admin.backend();
    let label = env.kek_label().to_string();
    println!(
        "re-wrap benchmark: {} records, batch {}, {} worker thread(s), backend {module}",
        opts.records, opts.batch, opts.threads
    );

    // --- setup: records sealed under v1 -------------------------------------
    let v1 = env
        .primary()
        .unwrap_or_else(|e| die(&format!("primary: {e}")));
    let t0 = Instant::now();
    let mut rows = Vec::with_capacity(INSERT_CHUNK);
    let mut sample = Vec::new();
    for i in 0..opts.records {
        let mut id = [0u8; 16];
        getrandom::fill(&mut id).unwrap();
        let mut value = Zeroizing::new([0u8; 32]);
        getrandom::fill(value.as_mut()).unwrap();
        let mut attrs = dek_attrs(format!("bench-{i}").as_bytes());
        attrs.set(CKA_UNIQUE_ID, hex(&id).into_bytes());
        let record = env
            .seal(&id, &attrs, value.as_ref())
            .unwrap_or_else(|e| die(&format!("seal: {e}")));
        let now = t0.elapsed().as_secs() as i64 + 1_700_000_000;
        if i % (opts.records / 50).max(1) == 0 {
            sample.push((id, attrs.clone(), *value));
        }
        rows.push(DekRow {
            id,
            label: attrs.label().to_vec(),
            ckaid: Vec::new(),
            attrs: attrs.encode(),
            record,
            kek_label: label.clone(),
            kek_version: v1,
            created: now,
            updated: now,
            generation: 0,
        });
        if rows.len() == INSERT_CHUNK || i + 1 == opts.records {
            env.with_store(|st| Ok(st.insert_many(&rows)?))
                .unwrap_or_else(|e| die(&format!("insert: {e}")));
            rows.clear();
        }
    }
    let setup = t0.elapsed().as_secs_f64();
    println!(
        "setup:   {} records sealed under v{v1} on the HSM and stored in {setup:.2} s ({:.0} records/s; not the result)",
        opts.records,
        rate(opts.records, setup)
    );

    // --- rotate ----------------------------------------------------------------
    let t1 = Instant::now();
    let v2 = env
        .rotate()
        .unwrap_or_else(|e| die(&format!("rotate: {e}")));
    println!(
        "rotate:  v{v2} generated on the HSM and made primary in {:.1} ms",
        t1.elapsed().as_secs_f64() * 1e3
    );
    let pending = env.pending_rewrap().unwrap();
    assert_eq!(pending as usize, opts.records);

    // --- re-wrap (timed) ----------------------------------------------------------
    let t2 = Instant::now();
    let (mut rewrapped, mut skipped, mut batches) = (0usize, 0usize, 0usize);
    let mut after = 0i64;
    let job =
        RewrapJob::new(env, b, opts.threads).unwrap_or_else(|e| die(&format!("rewrap job: {e}")));
    loop {
        let batch = job
            .batch(after, opts.batch)
            .unwrap_or_else(|e| die(&format!("rewrap batch: {e}")));
        batches += 1;
        rewrapped += batch.rewrapped;
        skipped += batch.skipped;
        match batch.next {
            Some(next) if batch.scanned >= opts.batch as usize => after = next,
            _ => break,
        }
    }
    // Ending the job (its session copies of the KEK versions) is part of it.
    drop(job);
    let secs = t2.elapsed().as_secs_f64();

    // --- checks ---------------------------------------------------------------
    let left = env.pending_rewrap().unwrap();
    assert_eq!(left, 0, "records left under v{v1}");
    assert_eq!(skipped, 0);
    assert_eq!(rewrapped, opts.records);
    for (id, attrs, value) in &sample {
        let row = env
            .with_store(|st| Ok(st.get(id)?))
            .unwrap()
            .expect("sampled row");
        assert_eq!(row.kek_version, v2);
        let opened = env.open(id, attrs, &row.record).expect("opens under v2");
        assert_eq!(opened.as_slice(), value.as_slice());
    }

    let r = rate(rewrapped, secs);
    println!(
        "re-wrap: {rewrapped} records v{v1} -> v{v2} in {secs:.2} s = {r:.0} records/s ({batches} batches of {}; {} sampled records checked)",
        opts.batch,
        sample.len()
    );
    let projected = GOAL_RECORDS as f64 / r.max(1e-9);
    println!(
        "goal:    {GOAL_RECORDS} records in <= {GOAL_SECS:.0} s: {} ({} s{})",
        if projected <= GOAL_SECS {
            "met"
        } else {
            "MISSED"
        },
        format_args!("{projected:.2}"),
        if opts.records == GOAL_RECORDS {
            ""
        } else {
            ", projected from this run's rate"
        }
    );
    admin.close();
    if opts.keep {
        let path = dir.keep();
        println!("token kept in {}", path.display());
    }
}
