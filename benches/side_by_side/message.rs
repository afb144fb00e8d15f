//! The message-API section (issue 12): 64-byte AES-256-GCM encryption with
//! `C_EncryptMessage` (one `C_MessageEncryptInit`, then one call per
//! message, the IV made by the module from its invocation counter) next to
//! the raw AEAD seal, our legacy `C_EncryptInit` + `C_Encrypt`, and
//! SoftHSM2's `C_EncryptInit` + `C_Encrypt`; then what counting GCM
//! invocations costs.
//!
//! Every cell is single-threaded but the last message row (N threads, a
//! session each, one DEK); `--rounds` round-robin measurements, median
//! shown, as in the table. The counting cost is measured in its two parts:
//! the in-memory hot path (`GcmBudgets::take_here`, what a session does per
//! encryption: a compare and an increment, a mutex every 256 numbers), and
//! one block reservation in a SQLite store like the module's
//! (`reserve_gcm`, one transaction, `synchronous=FULL`), spread over the
//! block (`gcm_invocation_block`'s default, 2^20 numbers, once a process
//! has warmed up; blocks start at 64 and double).

use std::ffi::c_void;
use std::fmt::Write as _;
use std::ptr::null_mut;

use cryptoki_sys::*;
use hsm_envelope::envelope::gcm_budget::GcmBudgets;

use crate::measure::{mean_secs, median, throughput, Timing};
use crate::p11::{gcm_message_params, Dir, Module};
use crate::raw::{self, iv_for, Key};
use crate::report::Extra;
use crate::{Res, PIN};

const SIZE: usize = 64;
const PARAMS_LEN: CK_ULONG = size_of::<CK_GCM_MESSAGE_PARAMS>() as CK_ULONG;

/// Calls a function of `m`'s 3.0 list (present: checked before use).
macro_rules! p11v3 {
    ($l:expr, $f:ident ( $($arg:expr),* $(,)? )) => {{
        match $l.$f {
            // SAFETY: the module follows the PKCS#11 ABI; callers pass pointers
            // to live buffers of the stated sizes.
            #[allow(unused_unsafe, clippy::macro_metavars_in_unsafe)]
            Some(f) => unsafe { f($($arg),*) },
            None => CKR_FUNCTION_NOT_SUPPORTED,
        }
    }};
}

fn check(m: &Module, func: &str, rv: CK_RV) -> Res<()> {
    if rv == CKR_OK {
        Ok(())
    } else {
        Err(format!(
            "{}: {func} returned {} ({rv:#x})",
            m.name,
            crate::p11::rv_name(rv)
        ))
    }
}

/// A session of ours with a message operation on `key` in direction `dir`.
fn message_session(
    m: &'static Module,
    slot: CK_SLOT_ID,
    key: CK_OBJECT_HANDLE,
    dir: Dir,
) -> Res<crate::p11::Session<'static>> {
    let l = m.list3().ok_or("ours: no PKCS#11 3.0 function list")?;
    let s = m.open_session(slot)?;
    let mut mech = CK_MECHANISM {
        mechanism: CKM_AES_GCM,
        pParameter: null_mut(),
        ulParameterLen: 0,
    };
    let rv = match dir {
        Dir::Enc => p11v3!(l, C_MessageEncryptInit(s.h, &mut mech, key)),
        Dir::Dec => p11v3!(l, C_MessageDecryptInit(s.h, &mut mech, key)),
    };
    check(m, "C_MessageEncryptInit", rv)?;
    Ok(s)
}

/// One C_EncryptMessage of `pt` with `generator` (the IV: `iv`, in and
/// out), tag into `tag`.
#[inline]
fn encrypt_message(
    l: &CK_FUNCTION_LIST_3_0,
    h: CK_SESSION_HANDLE,
    generator: CK_ULONG,
    iv: &mut [u8; 12],
    tag: &mut [u8; 16],
    pt: &[u8],
    out: &mut [u8],
) -> CK_RV {
    let mut p = gcm_message_params(iv, generator, tag);
    let mut n = out.len() as CK_ULONG;
    p11v3!(
        l,
        C_EncryptMessage(
            h,
            (&mut p as *mut CK_GCM_MESSAGE_PARAMS).cast::<c_void>(),
            PARAMS_LEN,
            null_mut(),
            0,
            pt.as_ptr().cast_mut(),
            pt.len() as CK_ULONG,
            out.as_mut_ptr(),
            &mut n
        )
    )
}

/// The cells of the section.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Cell {
    RawSeal,
    MessageCounterSession,
    MessageCounterToken,
    MessageCaller,
    MessageRandom,
    DecryptMessage,
    OursLegacy,
    SoftHsmLegacy,
}

impl Cell {
    const ALL: [Cell; 8] = [
        Cell::RawSeal,
        Cell::MessageCounterSession,
        Cell::MessageCounterToken,
        Cell::MessageCaller,
        Cell::MessageRandom,
        Cell::DecryptMessage,
        Cell::OursLegacy,
        Cell::SoftHsmLegacy,
    ];

    fn label(self) -> &'static str {
        match self {
            Cell::RawSeal => "raw aws-lc-rs seal (no PKCS#11)",
            Cell::MessageCounterSession => {
                "ours C_EncryptMessage, CKG_GENERATE_COUNTER, session DEK"
            }
            Cell::MessageCounterToken => "ours C_EncryptMessage, CKG_GENERATE_COUNTER, token DEK",
            Cell::MessageCaller => "ours C_EncryptMessage, CKG_NO_GENERATE (caller's IV)",
            Cell::MessageRandom => "ours C_EncryptMessage, CKG_GENERATE_RANDOM",
            Cell::DecryptMessage => "ours C_DecryptMessage",
            Cell::OursLegacy => "ours C_EncryptInit + C_Encrypt",
            Cell::SoftHsmLegacy => "SoftHSM2 C_EncryptInit + C_Encrypt",
        }
    }

    fn csv(self) -> &'static str {
        match self {
            Cell::RawSeal => "raw_awslc_seal",
            Cell::MessageCounterSession => "encrypt_message_counter_session_dek",
            Cell::MessageCounterToken => "encrypt_message_counter_token_dek",
            Cell::MessageCaller => "encrypt_message_caller_iv",
            Cell::MessageRandom => "encrypt_message_random_iv",
            Cell::DecryptMessage => "decrypt_message",
            Cell::OursLegacy => "ours_encrypt_init_encrypt",
            Cell::SoftHsmLegacy => "softhsm_encrypt_init_encrypt",
        }
    }
}

/// What the section needs from the run.
pub struct Setup<'a> {
    pub ours: &'static Module,
    pub slot: CK_SLOT_ID,
    pub softhsm: &'static Module,
    pub sh_slot: CK_SLOT_ID,
    pub sh_key: CK_OBJECT_HANDLE,
    pub raw: &'a Key,
    pub timing: Timing,
    pub rounds: usize,
    pub threads: usize,
    pub quick: bool,
}

/// ops/s of `cell` on `threads` threads.
fn measure(
    st: &Setup<'_>,
    cell: Cell,
    keys: (CK_OBJECT_HANDLE, CK_OBJECT_HANDLE),
    threads: usize,
    ct: &[u8],
) -> Res<f64> {
    let (session_dek, token_dek) = keys;
    let pt = [0x5au8; SIZE];
    match cell {
        Cell::RawSeal => throughput(threads, st.timing, |i| {
            Ok(raw::worker(st.raw, i as u32, Dir::Enc, SIZE, &[]))
        }),
        Cell::MessageCounterSession
        | Cell::MessageCounterToken
        | Cell::MessageCaller
        | Cell::MessageRandom => {
            let (key, generator) = match cell {
                Cell::MessageCounterSession => (session_dek, CKG_GENERATE_COUNTER),
                Cell::MessageCounterToken => (token_dek, CKG_GENERATE_COUNTER),
                Cell::MessageRandom => (session_dek, CKG_GENERATE_RANDOM),
                _ => (session_dek, CKG_NO_GENERATE),
            };
            let l = st
                .ours
                .list3()
                .ok_or("ours: no PKCS#11 3.0 function list")?;
            throughput(threads, st.timing, |i| {
                let s = message_session(st.ours, st.slot, key, Dir::Enc)?;
                let mut out = [0u8; SIZE];
                let mut tag = [0u8; 16];
                let mut n = 0u64;
                Ok(move || {
                    // The whole session, not just its handle: it closes on drop.
                    let s = &s;
                    n += 1;
                    // The caller's IV when it chooses it; else overwritten.
                    let mut iv = iv_for(1000 + i as u32, n);
                    let rv = encrypt_message(l, s.h, generator, &mut iv, &mut tag, &pt, &mut out);
                    check(st.ours, "C_EncryptMessage", rv)?;
                    std::hint::black_box((&out, &tag, &iv));
                    Ok(())
                })
            })
        }
        Cell::DecryptMessage => {
            let l = st
                .ours
                .list3()
                .ok_or("ours: no PKCS#11 3.0 function list")?;
            let (c, t) = ct.split_at(SIZE);
            throughput(threads, st.timing, |_| {
                let s = message_session(st.ours, st.slot, session_dek, Dir::Dec)?;
                let mut out = [0u8; SIZE];
                let mut tag: [u8; 16] = t.try_into().map_err(|_| "tag length")?;
                Ok(move || {
                    let s = &s;
                    let mut iv = iv_for(0, 0);
                    let mut p = gcm_message_params(&mut iv, CKG_NO_GENERATE, &mut tag);
                    let mut n = out.len() as CK_ULONG;
                    let rv = p11v3!(
                        l,
                        C_DecryptMessage(
                            s.h,
                            (&mut p as *mut CK_GCM_MESSAGE_PARAMS).cast::<c_void>(),
                            PARAMS_LEN,
                            null_mut(),
                            0,
                            c.as_ptr().cast_mut(),
                            SIZE as CK_ULONG,
                            out.as_mut_ptr(),
                            &mut n
                        )
                    );
                    check(st.ours, "C_DecryptMessage", rv)?;
                    std::hint::black_box(&out);
                    Ok(())
                })
            })
        }
        Cell::OursLegacy | Cell::SoftHsmLegacy => {
            let (m, slot, key) = match cell {
                Cell::OursLegacy => (st.ours, st.slot, session_dek),
                _ => (st.softhsm, st.sh_slot, st.sh_key),
            };
            throughput(threads, st.timing, |i| {
                let s = m.open_session(slot)?;
                let mut out = [0u8; SIZE + 16];
                let mut n = 0u64;
                Ok(move || {
                    let s = &s;
                    n += 1;
                    let mut iv = iv_for(2000 + i as u32, n);
                    m.gcm_single(s.h, Dir::Enc, key, &mut iv, &pt, &mut out)
                        .map_err(|e| e.describe(m.name))?;
                    std::hint::black_box(&out);
                    Ok(())
                })
            })
        }
    }
}

/// The section: measures, prints, and adds its numbers to `extras`.
pub fn section(st: &Setup<'_>, extras: &mut Vec<Extra>) -> Res<String> {
    let s = st.ours.open_session(st.slot)?;
    st.ours.login(s.h, PIN)?;
    let session_dek = st
        .ours
        .generate_aes256(s.h, "bench-message-session", false)
        .map_err(|e| e.describe("ours"))?;
    let token_dek = st
        .ours
        .generate_aes256(s.h, "bench-message-token", true)
        .map_err(|e| e.describe("ours"))?;
    // A ciphertext to decrypt: the caller's IV (0, 0).
    let l = st
        .ours
        .list3()
        .ok_or("ours: no PKCS#11 3.0 function list")?;
    let ct = {
        let ms = message_session(st.ours, st.slot, session_dek, Dir::Enc)?;
        let mut iv = iv_for(0, 0);
        let mut tag = [0u8; 16];
        let mut out = [0u8; SIZE];
        let rv = encrypt_message(
            l,
            ms.h,
            CKG_NO_GENERATE,
            &mut iv,
            &mut tag,
            &[0x5a; SIZE],
            &mut out,
        );
        check(st.ours, "C_EncryptMessage", rv)?;
        [&out[..], &tag[..]].concat()
    };

    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); Cell::ALL.len()];
    for _ in 0..st.rounds.max(1) {
        for (i, cell) in Cell::ALL.iter().enumerate() {
            let r = measure(st, *cell, (session_dek, token_dek), 1, &ct);
            samples[i].push(r.map_err(|e| format!("{}: {e}", cell.label()))?);
        }
    }
    let ops: Vec<f64> = samples.iter_mut().map(|v| median(v)).collect();
    let of = |c: Cell| ops[Cell::ALL.iter().position(|x| *x == c).unwrap_or(0)];
    let ns = |c: Cell| 1e9 / of(c);
    let mut threaded = Vec::new();
    if st.threads > 1 {
        for _ in 0..st.rounds.max(1) {
            threaded.push(measure(
                st,
                Cell::MessageCounterSession,
                (session_dek, token_dek),
                st.threads,
                &ct,
            )?);
        }
    }

    // Counting: the in-memory hot path, and one store reservation.
    let block = hsm_envelope::config::Config::default().gcm_invocation_block;
    let budgets = GcmBudgets::new(1 << 32, block, usize::MAX);
    let mut lease = None;
    let print = [0x42u8; 16];
    let calls = if st.quick { 2_000_000 } else { 20_000_000 };
    let hot = mean_secs(calls, || {
        std::hint::black_box(budgets.take_here(&mut lease, &print, &[1; 16]))
            .map(|_| ())
            .ok_or_else(|| "the in-memory budget ran out".to_string())
    })?;
    let dir = tempfile::tempdir().map_err(|e| format!("tempdir: {e}"))?;
    let store = hsm_envelope::store::Store::open(&dir.path().join("deks.sqlite"))
        .map_err(|e| format!("store: {e}"))?;
    let reservations = if st.quick { 20 } else { 200 };
    let mut k = 0u8;
    let reserve = mean_secs(reservations, || {
        k = k.wrapping_add(1);
        store
            .reserve_gcm(&[k; 16], None, block, 1 << 32, 0)
            .map(|_| ())
            .map_err(|e| format!("reserve_gcm: {e}"))
    })?;
    let counting_ns = hot * 1e9 + reserve * 1e9 / block as f64;

    let mut t = String::new();
    let _ = writeln!(
        t,
        "PKCS#11 3.0 message API (issue 12): AES-256-GCM, {SIZE}-byte messages, 16-byte tag, no AAD, 1 thread"
    );
    let _ = writeln!(
        t,
        "  {:<62} {:>12} {:>9} {:>12}",
        "", "ops/s", "ns/op", "over raw ns"
    );
    for c in Cell::ALL {
        let over = ns(c) - ns(Cell::RawSeal);
        let _ = writeln!(
            t,
            "  {:<62} {:>12.0} {:>9.1} {:>12}",
            c.label(),
            of(c),
            ns(c),
            if c == Cell::RawSeal {
                "-".to_string()
            } else {
                format!("{over:.1}")
            }
        );
        extras.push(Extra {
            section: "message_api",
            metric: format!("{}_ops_per_s", c.csv()),
            value: of(c),
            unit: "ops/s",
            note: "64 B, 1 thread".into(),
        });
    }
    if let Some(tn) = (!threaded.is_empty()).then(|| median(&mut threaded)) {
        let _ = writeln!(
            t,
            "  C_EncryptMessage counter, {} threads (a session each, one DEK): {:.0} ops/s ({:.2}x one thread)",
            st.threads,
            tn,
            tn / of(Cell::MessageCounterSession)
        );
        extras.push(Extra {
            section: "message_api",
            metric: format!("encrypt_message_counter_{}_threads_ops_per_s", st.threads),
            value: tn,
            unit: "ops/s",
            note: "64 B".into(),
        });
    }
    let _ = writeln!(
        t,
        "  counting: {:.2} ns per encryption in memory (lease, and a run every 256); one store block \
         reservation {:.3} ms (SQLite, synchronous=FULL) = {:.2} ns per encryption over a block of \
         {block}; total {:.2} ns",
        hot * 1e9,
        reserve * 1e3,
        reserve * 1e9 / block as f64,
        counting_ns
    );
    let _ = writeln!(
        t,
        "  token DEK (store-counted) vs session DEK (counted in the process): {:+.1} ns per message",
        ns(Cell::MessageCounterToken) - ns(Cell::MessageCounterSession)
    );
    for (metric, value, unit) in [
        ("counting_in_memory_ns", hot * 1e9, "ns"),
        ("store_reservation_ms", reserve * 1e3, "ms"),
        ("counting_total_ns", counting_ns, "ns"),
    ] {
        extras.push(Extra {
            section: "message_api",
            metric: metric.into(),
            value,
            unit,
            note: format!("per encryption, block {block}"),
        });
    }

    // The issue-12 targets.
    let msg_over = ns(Cell::MessageCounterSession) - ns(Cell::RawSeal);
    let vs_softhsm = of(Cell::MessageCounterSession) / of(Cell::SoftHsmLegacy);
    let legacy_over = ns(Cell::OursLegacy) - ns(Cell::RawSeal);
    let mark = |ok: bool| if ok { "met" } else { "MISSED" };
    let _ = writeln!(
        t,
        "issue-12 targets (this run; meaningful only on an idle machine):"
    );
    let _ = writeln!(
        t,
        "  C_EncryptMessage 64 B within 60 ns of the raw seal: {msg_over:.1} ns ({})",
        mark(msg_over <= 60.0)
    );
    let _ = writeln!(
        t,
        "  C_EncryptMessage >= 40x SoftHSM2's C_EncryptInit + C_Encrypt: {vs_softhsm:.1}x ({})",
        mark(vs_softhsm >= 40.0)
    );
    let _ = writeln!(
        t,
        "  legacy C_EncryptInit + C_Encrypt 64 B overhead <= 150 ns: {legacy_over:.1} ns ({})",
        mark(legacy_over <= 150.0)
    );
    let _ = writeln!(
        t,
        "  invocation counting <= 5 ns per message: {counting_ns:.2} ns ({})",
        mark(counting_ns <= 5.0)
    );
    drop(s);
    Ok(t)
}
