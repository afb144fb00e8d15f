//! Builds of the module side by side in one process: the per-call cells of
//! issue 12 (64-byte `C_EncryptMessage` with a counter IV and with the
//! caller's IV, `C_DecryptMessage`, `C_EncryptInit` + `C_Encrypt`) timed in
//! short blocks, the builds' blocks interleaved (their order reversed every
//! round) so that the machine's slow spells fall on every build alike.
//! Prints, per cell and build, the 10th percentile and the median of the
//! blocks' ns per call, the 10th percentile's difference from the first
//! build, and how far it is over the raw aws-lc-rs seal of 64 bytes (the
//! reference of issue 12's targets, timed in the same rounds).
//!
//! Why: on a shared VM a cell of `side_by_side` moves by 3 to 6 ns between
//! runs of one build, more than most single changes on the hot path are
//! worth; interleaved blocks in one process tell two builds apart to about
//! 1 ns. Usage, with copies of each build's library:
//!
//! ```text
//! cp target/release/libhsm_envelope.so /tmp/before.so    # on the old commit
//! cargo bench --bench builds_ab -- /tmp/before.so target/release/libhsm_envelope.so
//! ```
//!
//! Flags: `--rounds N` (default 101), `--block N` calls per block (default
//! 20000; a tenth as many run first, untimed). One token
//! (`softhsm-config/new-token.sh`); each build is initialised in turn (the
//! later ones find SoftHSM2 initialised and the token logged in: both
//! fine) and gets its own session AES-256 DEK.
//!
//! Under `cargo test --benches` (no `--bench` flag) the program does nothing.

#[path = "side_by_side/p11.rs"]
#[allow(dead_code)]
mod p11;
#[path = "side_by_side/raw.rs"]
#[allow(dead_code)]
mod raw;
#[path = "side_by_side/token.rs"]
mod token;

use std::ffi::c_void;
use std::path::PathBuf;
use std::ptr::null_mut;
use std::time::Instant;

use cryptoki_sys::*;

use p11::{gcm_message_params, Dir, Module};

pub type Res<T> = Result<T, String>;

const PIN: &str = "1234";
const SIZE: usize = 64;
const PARAMS_LEN: CK_ULONG = size_of::<CK_GCM_MESSAGE_PARAMS>() as CK_ULONG;

#[derive(Clone, Copy)]
enum Cell {
    Counter,
    CallerIv,
    Decrypt,
    Legacy,
}

impl Cell {
    const ALL: [Cell; 4] = [Cell::Counter, Cell::CallerIv, Cell::Decrypt, Cell::Legacy];

    fn label(self) -> &'static str {
        match self {
            Cell::Counter => "C_EncryptMessage, CKG_GENERATE_COUNTER",
            Cell::CallerIv => "C_EncryptMessage, CKG_NO_GENERATE",
            Cell::Decrypt => "C_DecryptMessage",
            Cell::Legacy => "C_EncryptInit + C_Encrypt",
        }
    }
}

/// One build, ready: a session with a message encryption, one with a
/// message decryption, one for the legacy calls, and a ciphertext of its
/// own key to decrypt.
struct Build {
    name: &'static str,
    m: &'static Module,
    l: &'static CK_FUNCTION_LIST_3_0,
    enc: CK_SESSION_HANDLE,
    dec: CK_SESSION_HANDLE,
    legacy: CK_SESSION_HANDLE,
    key: CK_OBJECT_HANDLE,
    /// IV, ciphertext and tag of `SIZE` bytes of 0x5a.
    sealed: ([u8; 12], [u8; SIZE], [u8; 16]),
}

fn check(b: &str, func: &str, rv: CK_RV) -> Res<()> {
    match rv {
        CKR_OK => Ok(()),
        _ => Err(format!(
            "{b}: {func} returned {} ({rv:#x})",
            p11::rv_name(rv)
        )),
    }
}

impl Build {
    fn new(path: PathBuf) -> Res<Build> {
        let name: &'static str = Box::leak(path.display().to_string().into_boxed_str());
        let m = Module::load(name, &path)?;
        m.initialize()?;
        let l = m
            .list3()
            .ok_or(format!("{name}: no PKCS#11 3.0 function list"))?;
        let slot = m.slot_by_label("hsm-envelope")?;
        // The sessions live as long as the process (the builds are leaked).
        let open = || m.open_session(slot).map(std::mem::ManuallyDrop::new);
        let (enc, dec, legacy) = (open()?, open()?, open()?);
        m.login(enc.h, PIN)?;
        let key = m
            .generate_aes256(enc.h, "ab", false)
            .map_err(|e| e.describe(name))?;
        let mut mech = CK_MECHANISM {
            mechanism: CKM_AES_GCM,
            pParameter: null_mut(),
            ulParameterLen: 0,
        };
        // SAFETY: the module's own 3.0 functions, with a live mechanism.
        unsafe {
            let f = l.C_MessageEncryptInit.ok_or("no C_MessageEncryptInit")?;
            check(name, "C_MessageEncryptInit", f(enc.h, &mut mech, key))?;
            let f = l.C_MessageDecryptInit.ok_or("no C_MessageDecryptInit")?;
            check(name, "C_MessageDecryptInit", f(dec.h, &mut mech, key))?;
        }
        let mut b = Build {
            name,
            m,
            l,
            enc: enc.h,
            dec: dec.h,
            legacy: legacy.h,
            key,
            sealed: ([0; 12], [0; SIZE], [0; 16]),
        };
        let (mut iv, mut ct, mut tag) = ([0u8; 12], [0u8; SIZE], [0u8; 16]);
        let mut p = gcm_message_params(&mut iv, CKG_GENERATE_COUNTER, &mut tag);
        check(name, "C_EncryptMessage", b.encrypt(&mut p, &mut ct))?;
        b.sealed = (iv, ct, tag);
        Ok(b)
    }

    #[inline]
    fn encrypt(&self, p: &mut CK_GCM_MESSAGE_PARAMS, out: &mut [u8; SIZE]) -> CK_RV {
        let pt = [0x5au8; SIZE];
        let mut n = SIZE as CK_ULONG;
        let Some(f) = self.l.C_EncryptMessage else {
            return CKR_FUNCTION_NOT_SUPPORTED;
        };
        let pp = (p as *mut CK_GCM_MESSAGE_PARAMS).cast::<c_void>();
        let pt = pt.as_ptr().cast_mut();
        // SAFETY: live parameters and buffers of the stated sizes.
        unsafe {
            f(
                self.enc,
                pp,
                PARAMS_LEN,
                null_mut(),
                0,
                pt,
                SIZE as CK_ULONG,
                out.as_mut_ptr(),
                &mut n,
            )
        }
    }

    /// One call of `cell`, the `i`th of its block.
    #[inline]
    fn call(&self, cell: Cell, i: u64) -> CK_RV {
        let mut out = [0u8; SIZE];
        let mut tag = [0u8; 16];
        // Distinct caller IVs: the build's run of `i`, tagged by the cell.
        let mut iv = [0u8; 12];
        iv[0] = cell as u8;
        iv[4..].copy_from_slice(&i.to_be_bytes());
        let rv = match cell {
            Cell::Counter | Cell::CallerIv => {
                let generator = match cell {
                    Cell::Counter => CKG_GENERATE_COUNTER,
                    _ => CKG_NO_GENERATE,
                };
                let mut p = gcm_message_params(&mut iv, generator, &mut tag);
                self.encrypt(&mut p, &mut out)
            }
            Cell::Decrypt => {
                let (mut iv, ct, mut tag) = self.sealed;
                let mut p = gcm_message_params(&mut iv, CKG_NO_GENERATE, &mut tag);
                let mut n = SIZE as CK_ULONG;
                let Some(f) = self.l.C_DecryptMessage else {
                    return CKR_FUNCTION_NOT_SUPPORTED;
                };
                let pp = (&mut p as *mut CK_GCM_MESSAGE_PARAMS).cast::<c_void>();
                let ct = ct.as_ptr().cast_mut();
                // SAFETY: live parameters and buffers of the stated sizes.
                unsafe {
                    f(
                        self.dec,
                        pp,
                        PARAMS_LEN,
                        null_mut(),
                        0,
                        ct,
                        SIZE as CK_ULONG,
                        out.as_mut_ptr(),
                        &mut n,
                    )
                }
            }
            Cell::Legacy => {
                let pt = [0x5au8; SIZE];
                let mut sealed = [0u8; SIZE + 16];
                match self
                    .m
                    .gcm_single(self.legacy, Dir::Enc, self.key, &mut iv, &pt, &mut sealed)
                {
                    Ok(_) => CKR_OK,
                    Err(e) => e.rv,
                }
            }
        };
        std::hint::black_box((&out, &tag));
        rv
    }

    /// ns per call over `n` calls of `cell`, after n/10 untimed ones.
    fn block(&self, cell: Cell, n: u64, next: &mut u64) -> Res<f64> {
        timed_block(n, || {
            *next += 1;
            check(self.name, cell.label(), self.call(cell, *next))
        })
    }
}

/// ns per call over `n` calls of `f`, after n/10 untimed ones.
fn timed_block(n: u64, mut f: impl FnMut() -> Res<()>) -> Res<f64> {
    for _ in 0..n / 10 {
        f()?;
    }
    let t = Instant::now();
    for _ in 0..n {
        f()?;
    }
    Ok(t.elapsed().as_nanos() as f64 / n as f64)
}

fn main() {
    if let Err(e) = run() {
        eprintln!("builds_ab: {e}");
        std::process::exit(1);
    }
}

fn run() -> Res<()> {
    let mut rounds = 101usize;
    let mut block = 20_000u64;
    let mut paths = Vec::new();
    // `cargo bench` passes --bench; `cargo test --benches` does not, and
    // may pass a test filter: then nothing runs.
    if !std::env::args().any(|a| a == "--bench") {
        return Ok(());
    }
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut number = |what: &str| {
            args.next()
                .and_then(|v| v.parse::<u64>().ok())
                .filter(|v| *v > 0)
                .ok_or(format!("{what} wants a number > 0"))
        };
        match a.as_str() {
            "--bench" => {}
            "--rounds" => rounds = number("--rounds")?.min(10_000) as usize,
            "--block" => block = number("--block")?,
            flag if flag.starts_with("--") => return Err(format!("unknown flag {flag}")),
            path => paths.push(PathBuf::from(path)),
        }
    }
    if paths.is_empty() {
        // A plain `cargo bench` runs every bench: nothing to compare here.
        eprintln!("builds_ab: no builds named (cargo bench --bench builds_ab -- A.so B.so)");
        return Ok(());
    }
    let _token = token::make_token(PIN)?;
    let builds = paths.into_iter().map(Build::new).collect::<Res<Vec<_>>>()?;
    println!(
        "{} builds, {rounds} rounds of {block}-call blocks (10th percentile, median; ns per call)",
        builds.len()
    );
    let mut raw_key = [0u8; 32];
    getrandom::fill(&mut raw_key).map_err(|e| format!("getrandom: {e}"))?;
    let raw_key = raw::Key::new(raw::Lib::AwsLc, &raw_key)?;
    let mut raw_seal = raw::worker(&raw_key, 0, Dir::Enc, SIZE, &[]);
    println!("  10th pct   median  vs first  over raw seal");
    let mut next = vec![0u64; builds.len()];
    for cell in Cell::ALL {
        let mut times: Vec<Vec<f64>> = builds.iter().map(|_| Vec::with_capacity(rounds)).collect();
        let mut raw_times = Vec::with_capacity(rounds);
        for round in 0..rounds {
            raw_times.push(timed_block(block, &mut raw_seal)?);
            for j in 0..builds.len() {
                let i = if round % 2 == 0 {
                    j
                } else {
                    builds.len() - 1 - j
                };
                times[i].push(builds[i].block(cell, block, &mut next[i])?);
            }
        }
        let (raw, raw_med) = p10_median(&mut raw_times);
        println!("{}:", cell.label());
        println!("  {raw:>8.1} {raw_med:>8.1}                     raw aws-lc-rs seal");
        let mut first = None;
        for (b, t) in builds.iter().zip(&mut times) {
            let (p10, med) = p10_median(t);
            let base = *first.get_or_insert(p10);
            let (vs, over) = (p10 - base, p10 - raw);
            println!(
                "  {p10:>8.1} {med:>8.1}  {vs:>+7.1}  {over:>+13.1}  {}",
                b.name
            );
        }
    }
    // Before the token's directory goes. The builds share SoftHSM2: the
    // first C_Finalize finalises it, and the later ones may say so.
    for b in builds.iter().rev() {
        if let Err(e) = b.m.finalize() {
            eprintln!("builds_ab: {e}");
        }
    }
    Ok(())
}

/// The 10th percentile and the median of `t` (sorted here).
fn p10_median(t: &mut [f64]) -> (f64, f64) {
    t.sort_by(f64::total_cmp);
    (t[t.len() / 10], t[t.len() / 2])
}
