//! What several HSMs with KEKs of their own cost (issue 13): `kek_mode =
//! "any-of"` (disaster recovery) and `"all-of"` (double key) against one
//! HSM, side by side in one process. Targets: at most one extra HSM unwrap
//! on the first use of a DEK, nothing on warm use.
//!
//! # Run
//!
//!     bash scripts/bench.sh modes                    # 3 rounds, 200 first uses per mode and round
//!     bash scripts/bench.sh modes --rounds 5 --uses 500
//!
//! # What it does
//!
//! 1. A fresh SoftHSM2 token (`softhsm-config/new-token.sh`, its KEK) and a
//!    second token "hsm-b" with an AES-256 KEK generated on it: two
//!    independent HSMs. Both are reached directly.
//! 2. Four configurations, one store each: `single` (main alone),
//!    `any-of` and `all-of` (main and b), and all-of with `hsm_timeout_ms`
//!    (what the time-out's hand-over to a worker thread costs);
//!    `cache_max_keys = 1`, so each use of another DEK opens its record on
//!    the HSMs.
//! 3. Rounds, each loading the release module once per mode (C_Initialize
//!    with that mode's configuration, login, then C_Finalize), the modes in
//!    turn, so drift on the machine falls on all three alike. Per mode and
//!    round: 64 token DEKs made (first round only) then found; N first uses
//!    (`C_EncryptInit` + `C_Encrypt`, AES-CBC-PAD of 64 bytes, each on a DEK
//!    other than the last: its record is opened on the HSMs); 10 N warm uses
//!    of one cached DEK.
//!
//! 4. In each round, with the module finalized, SoftHSM2 is loaded directly
//!    and N unwraps of a 32-byte value are timed on main's KEK
//!    (`C_DecryptInit` + `C_Decrypt`, AES-GCM, as the module unwraps): the
//!    cost of one HSM unwrap that the targets are counted in.

mod hsms;
use hsms::*;

use std::path::Path;
use std::time::Instant;

use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, ObjectClass, ObjectHandle};
use cryptoki::session::Session;

/// The configurations compared; the last is all-of with `hsm_timeout_ms`,
/// whose KEK calls go through a worker thread each (`member_kek`).
const MODES: [&str; 4] = ["single", "any-of", "all-of", "all-of+timeout"];
const DEKS: usize = 64;
const LABEL: &[u8] = b"bench-dek";
/// "One extra HSM unwrap at most", with room for noise.
const TOLERANCE_UNWRAPS: f64 = 1.25;
/// "Nothing on warm use": within this factor of single's median.
const TOLERANCE_WARM: f64 = 1.10;

struct Opts {
    rounds: usize,
    uses: usize,
    keep: bool,
}

fn parse_args() -> Opts {
    let mut o = Opts {
        rounds: 3,
        uses: 200,
        keep: false,
    };
    let mut args = std::env::args().skip(1);
    let num = |v: Option<String>, what: &str| -> usize {
        v.and_then(|v| v.replace('_', "").parse().ok())
            .unwrap_or_else(|| die(&format!("{what} needs a number")))
    };
    while let Some(a) = args.next() {
        match a.as_str() {
            "--rounds" => o.rounds = num(args.next(), "--rounds"),
            "--uses" => o.uses = num(args.next(), "--uses"),
            "--keep" => o.keep = true,
            "--bench" => {}
            "--help" | "-h" => {
                println!("usage: bash scripts/bench.sh modes [--rounds N] [--uses N] [--keep]");
                std::process::exit(0);
            }
            other if other.starts_with('-') => die(&format!("unknown flag {other}")),
            _ => {}
        }
    }
    o.rounds = o.rounds.max(1);
    o.uses = o.uses.max(10);
    o
}

/// The token, b with a KEK of its own, and one configuration per mode.
fn setup(dir: &Path) {
    let conf_path = new_token(dir);
    add_token("hsm-b");
    let conf = std::fs::read_to_string(&conf_path).unwrap_or_else(|e| die(&e.to_string()));
    let softhsm = softhsm_module(&conf);
    {
        let hsm = init(&softhsm);
        let s = login(&hsm, slot_labelled(&hsm, "hsm-b"));
        let mut template = kek_template();
        template.push(Attribute::ValueLen(32.into()));
        s.generate_key(&Mechanism::AesKeyGen, &template)
            .unwrap_or_else(|e| die(&format!("C_GenerateKey (KEK of b): {e}")));
        drop(s);
        hsm.finalize()
            .unwrap_or_else(|e| die(&format!("C_Finalize: {e}")));
    }
    let base: String = conf
        .lines()
        .filter(|l| {
            let k = l.split_once('=').map(|(k, _)| k.trim());
            !matches!(
                k,
                Some("cache_soft_ttl_secs" | "cache_max_keys" | "store_path")
            )
        })
        .map(|l| format!("{l}\n"))
        .collect();
    for mode in MODES {
        let mut text = format!(
            "{base}store_path = \"{}\"\ncache_max_keys = 1\ncache_soft_ttl_secs = 3600\n",
            dir.join(format!("deks-{mode}.sqlite")).display()
        );
        if let Some(kek_mode) = mode.strip_suffix("+timeout") {
            text += &format!(
                "hsm_timeout_ms = 5000\nkek_mode = \"{kek_mode}\"\n\n[[hsm]]\nname = \"b\"\ntoken_label = \"hsm-b\"\n"
            );
        } else if mode != "single" {
            text += &format!(
                "kek_mode = \"{mode}\"\n\n[[hsm]]\nname = \"b\"\ntoken_label = \"hsm-b\"\n"
            );
        }
        std::fs::write(dir.join(format!("conf-{mode}.toml")), text)
            .unwrap_or_else(|e| die(&e.to_string()));
    }
}

/// One use of `h`: C_EncryptInit + C_Encrypt of 64 bytes with AES-CBC-PAD,
/// timed. (Not GCM: its first encryption under a key also reserves
/// invocation numbers in the store, a write that would drown the HSM work
/// measured here.)
fn use_dek(s: &Session, h: ObjectHandle) -> f64 {
    let iv = [0x24u8; 16];
    let t = Instant::now();
    s.encrypt(&Mechanism::AesCbcPad(iv), h, &[0u8; 64])
        .unwrap_or_else(|e| die(&format!("C_Encrypt: {e}")));
    ms(t.elapsed())
}

/// N unwraps on SoftHSM2 directly, with main's KEK: what one HSM unwrap
/// costs.
fn raw_unwraps(softhsm: &Path, uses: usize, out: &mut Vec<f64>) {
    let p = init(softhsm);
    let s = login(&p, slot_labelled(&p, TOKEN_LABEL));
    let kek = s
        .find_objects(&[
            Attribute::Label(KEK_LABEL.as_bytes().to_vec()),
            Attribute::Id(KEK_ID.to_vec()),
        ])
        .ok()
        .and_then(|v| v.first().copied())
        .unwrap_or_else(|| die("main's KEK not found"));
    let mut iv = [7u8; 12];
    let aad = [0x5Au8; 100];
    fn gcm<'a>(iv: &'a mut [u8; 12], aad: &'a [u8]) -> Mechanism<'a> {
        Mechanism::AesGcm(
            GcmParams::new(iv, aad, 128.into())
                .unwrap_or_else(|e| die(&format!("GCM parameters: {e}"))),
        )
    }
    let sealed = s
        .encrypt(&gcm(&mut iv, &aad), kek, &[0x42; 32])
        .unwrap_or_else(|e| die(&format!("C_Encrypt with the KEK: {e}")));
    for _ in 0..uses {
        let mut iv = iv;
        let mech = gcm(&mut iv, &aad);
        let t = Instant::now();
        s.decrypt(&mech, kek, &sealed)
            .unwrap_or_else(|e| die(&format!("C_Decrypt with the KEK: {e}")));
        out.push(ms(t.elapsed()));
    }
    drop(s);
    p.finalize()
        .unwrap_or_else(|e| die(&format!("C_Finalize: {e}")));
}

#[derive(Default)]
struct Timings {
    create: Vec<f64>,
    first: Vec<f64>,
    warm: Vec<f64>,
}

/// One round of one mode: the module loaded with its configuration.
fn round(module: &Path, dir: &Path, mode: &str, uses: usize, t: &mut Timings) {
    std::env::set_var("HSM_ENVELOPE_CONF", dir.join(format!("conf-{mode}.toml")));
    let p = init(module);
    let s = login(&p, slot_labelled(&p, TOKEN_LABEL));
    let mut deks = s
        .find_objects(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::Label(LABEL.to_vec()),
        ])
        .unwrap_or_else(|e| die(&format!("C_FindObjects: {e}")));
    while deks.len() < DEKS {
        let start = Instant::now();
        deks.push(make_dek(&s, LABEL));
        t.create.push(ms(start.elapsed()));
    }
    for i in 0..uses {
        t.first.push(use_dek(&s, deks[i % deks.len()]));
    }
    let warm = deks[0];
    use_dek(&s, warm);
    for _ in 0..uses * 10 {
        t.warm.push(use_dek(&s, warm));
    }
    drop(s);
    p.finalize()
        .unwrap_or_else(|e| die(&format!("C_Finalize: {e}")));
}

fn main() {
    let o = parse_args();
    let dir = tempfile::Builder::new()
        .prefix("hsm-envelope-bench-modes-")
        .tempdir()
        .unwrap_or_else(|e| die(&format!("temporary directory: {e}")));
    setup(dir.path());
    let conf = std::fs::read_to_string(dir.path().join("hsm-envelope.toml"))
        .unwrap_or_else(|e| die(&e.to_string()));
    let softhsm = softhsm_module(&conf);
    let module = built(release_dir().join("libhsm_envelope.so"));
    println!(
        "kek_mode benchmark: single vs any-of vs all-of (main and b: SoftHSM2 tokens with KEKs of \
         their own), cache_max_keys = 1, {} round(s) x {} first uses and {} warm uses per mode; \
         {} CPU(s); module {}",
        o.rounds,
        o.uses,
        o.uses * 10,
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        module.display()
    );
    let mut timings: Vec<Timings> = MODES.iter().map(|_| Timings::default()).collect();
    let mut raw = Vec::new();
    let started = Instant::now();
    for _ in 0..o.rounds {
        for (mode, t) in MODES.iter().zip(timings.iter_mut()) {
            round(&module, dir.path(), mode, o.uses, t);
        }
        raw_unwraps(&softhsm, o.uses, &mut raw);
    }
    println!("SoftHSM2 directly:");
    let unwrap = summary("one unwrap with the KEK (C_Decrypt, AES-GCM)", &mut raw);
    let mut medians = Vec::new();
    for (mode, t) in MODES.iter().zip(timings.iter_mut()) {
        println!("{mode}:");
        let c = summary("make a token DEK (C_GenerateKey)", &mut t.create);
        let f = summary("first use (record opened on the HSMs)", &mut t.first);
        let w = summary("warm use (cached)", &mut t.warm);
        medians.push((c, f, w));
    }
    let (c1, f1, w1) = medians[0];
    println!("run took {:.1} s", started.elapsed().as_secs_f64());
    let mut ok = true;
    let (_, f_all, _) = medians[2];
    let (_, f_timed, _) = medians[3];
    println!(
        "hsm_timeout_ms (all-of, two KEK calls per first use through worker threads): first use +{:.1} µs ({:.2}x all-of)",
        (f_timed - f_all) * 1e3,
        f_timed / f_all
    );
    for (mode, (c, f, w)) in MODES.iter().zip(&medians).skip(1).take(2) {
        let extra = (f - f1) / unwrap;
        let warm = w / w1;
        let pass_first = extra <= TOLERANCE_UNWRAPS;
        let pass_warm = warm <= TOLERANCE_WARM;
        ok &= pass_first && pass_warm;
        println!(
            "verdict {mode}: first use {f:.3} ms = single + {extra:.2} HSM unwraps (target <= 1): {}; \
             warm use {warm:.2}x single (target: nothing added, <= {TOLERANCE_WARM}x): {}; \
             making a DEK {:.2}x single",
            if pass_first { "PASS" } else { "FAIL" },
            if pass_warm { "PASS" } else { "FAIL" },
            c / c1
        );
    }
    if o.keep {
        let path = dir.keep();
        println!("tokens and configurations kept in {}", path.display());
    }
    if !ok {
        std::process::exit(1);
    }
}
