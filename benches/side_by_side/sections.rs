//! The small sections after the table: DEK first use (cold) vs warm, the
//! network-HSM scenario computed from it, DEK generation rates, and
//! C_FindObjects over many DEKs.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use cryptoki_sys::*;

use crate::measure::{mean_secs, median, once_secs};
use crate::p11::{Dir, Module};
use crate::raw::iv_for;
use crate::report::Extra;
use crate::{Res, PIN};

/// What the cold/warm section measured (seconds per C_EncryptInit + C_Encrypt of 64 B).
pub struct ColdWarm {
    /// Number of token DEKs used.
    pub deks: usize,
    /// First use of the first DEK after C_Initialize: finding the KEK, opening
    /// a pooled backend session, and the unwrap.
    pub first_after_init: f64,
    /// Median first use of the other DEKs: one unwrap each (cache miss).
    pub cold: f64,
    /// Median second use of each DEK.
    pub second: f64,
    /// Mean of many further uses (cache hit).
    pub warm: f64,
}

fn ms(s: f64) -> String {
    format!("{:.3} ms", s * 1e3)
}

fn us(s: f64) -> String {
    format!("{:.2} µs", s * 1e6)
}

/// Token DEKs made, then C_Finalize + C_Initialize so the module's DEK cache
/// is empty, then each DEK's first use (one HSM unwrap) and its second use
/// are timed. Runs before SoftHSM2 is loaded directly: our C_Finalize
/// finalises the backend it initialised.
pub fn cold_warm(ours: &Module, slot: CK_SLOT_ID, quick: bool) -> Res<ColdWarm> {
    let k = if quick { 6 } else { 24 };
    {
        let s = ours.open_session(slot)?;
        ours.login(s.h, PIN)?;
        for i in 0..k {
            ours.generate_aes256(s.h, &format!("bench-cold-{i}"), true)
                .map_err(|e| e.describe(ours.name))?;
        }
    }
    ours.finalize()?;
    ours.initialize()?;
    let s = ours.open_session(slot)?;
    ours.login(s.h, PIN)?;
    let mut handles = Vec::with_capacity(k);
    let mut found = Vec::new();
    for i in 0..k {
        let label = format!("bench-cold-{i}");
        let n = ours
            .find(s.h, Some(&label), &mut found, 16)
            .map_err(|e| e.describe(ours.name))?;
        if n != 1 {
            return Err(format!(
                "ours: after C_Finalize + C_Initialize, {n} objects labelled {label:?} (expected 1)"
            ));
        }
        handles.push(found[0]);
    }
    let pt = [0x5au8; 64];
    let mut out = [0u8; 64 + 16];
    let mut n = 0u64;
    let mut use_key = |h: CK_OBJECT_HANDLE| -> Res<()> {
        n += 1;
        let mut iv = iv_for(0, n);
        ours.gcm_single(s.h, Dir::Enc, h, &mut iv, &pt, &mut out)
            .map(|_| ())
            .map_err(|e| e.describe(ours.name))
    };
    let mut cold = Vec::with_capacity(k);
    let mut second = Vec::with_capacity(k);
    for &h in &handles {
        cold.push(once_secs(|| use_key(h))?.0);
        second.push(once_secs(|| use_key(h))?.0);
    }
    let warm = mean_secs(if quick { 2_000 } else { 20_000 }, || use_key(handles[0]))?;
    let first_after_init = cold[0];
    Ok(ColdWarm {
        deks: k,
        first_after_init,
        cold: median(&mut cold[1..]),
        second: median(&mut second),
        warm,
    })
}

pub fn print_cold_warm(cw: &ColdWarm, extras: &mut Vec<Extra>) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "DEK first use (cold) vs warm — ours, C_EncryptInit + C_Encrypt of 64 B, {} token DEKs, \
         after C_Finalize + C_Initialize (empty DEK cache):",
        cw.deks
    );
    let _ = writeln!(
        s,
        "  first DEK after C_Initialize (KEK lookup + backend session + unwrap) {:>12}",
        us(cw.first_after_init)
    );
    let _ = writeln!(
        s,
        "  cold: first use of a DEK, median (one HSM unwrap)                    {:>12}",
        us(cw.cold)
    );
    let _ = writeln!(
        s,
        "  second use of a DEK, median                                          {:>12}",
        us(cw.second)
    );
    let _ = writeln!(
        s,
        "  warm: mean of many uses (cache hit, no backend call)                 {:>12}",
        us(cw.warm)
    );
    let _ = writeln!(
        s,
        "  cold / warm                                                          {:>11.0}x",
        cw.cold / cw.warm
    );
    let sec = "dek_cold_warm";
    let note = "C_EncryptInit+C_Encrypt 64 B, AES-256-GCM";
    for (m, v) in [
        ("first_use_after_initialize", cw.first_after_init),
        ("cold_first_use_median", cw.cold),
        ("second_use_median", cw.second),
        ("warm_mean", cw.warm),
    ] {
        extras.push(Extra {
            section: sec,
            metric: m.into(),
            value: v * 1e6,
            unit: "us",
            note: note.into(),
        });
    }
    s
}

/// "With L µs added per backend call, N messages cost X with the DEK cache
/// vs Y without" — computed from the measured cold and warm times.
pub fn network_scenario(
    cw: &ColdWarm,
    latency_us: f64,
    unwrap_calls: u32,
    extras: &mut Vec<Extra>,
) -> String {
    let mut s = String::new();
    let lat = latency_us * 1e-6;
    let _ = writeln!(
        s,
        "Simulated network HSM — COMPUTED from the cold/warm numbers above, NOT MEASURED \
         (the module has no latency injection):"
    );
    let _ = writeln!(
        s,
        "  +{latency_us:.0} µs per backend call. Backend calls per message: warm (cache hit) 0; \
         cold = one unwrap = {unwrap_calls} calls today"
    );
    let _ = writeln!(
        s,
        "  (C_DecryptInit + C_Decrypt into a buffer sized up front, on the KEK: \
         src/backend/kek.rs gcm_open; flag --unwrap-calls)."
    );
    let _ = writeln!(
        s,
        "  'without a cache' = every message needs one unwrap, i.e. costs a measured cold use."
    );
    let _ = writeln!(
        s,
        "  {:>10} {:>9} | {:>14} {:>14} | {:>10}",
        "messages", "calls/unw", "with cache", "without cache", "saving"
    );
    for calls in [unwrap_calls, 1] {
        for n in [1_000u64, 1_000_000] {
            let unwrap = cw.cold + calls as f64 * lat;
            let with = unwrap + (n - 1) as f64 * cw.warm;
            let without = n as f64 * unwrap;
            let _ = writeln!(
                s,
                "  {:>10} {:>9} | {:>14} {:>14} | {:>9.0}x",
                n,
                calls,
                human_secs(with),
                human_secs(without),
                without / with
            );
            extras.push(Extra {
                section: "network_hsm_computed",
                metric: format!("{n}_messages_{calls}_calls_per_unwrap_with_cache"),
                value: with,
                unit: "s",
                note: format!("COMPUTED: cold + {calls}*{latency_us}us + (n-1)*warm"),
            });
            extras.push(Extra {
                section: "network_hsm_computed",
                metric: format!("{n}_messages_{calls}_calls_per_unwrap_without_cache"),
                value: without,
                unit: "s",
                note: format!("COMPUTED: n*(cold + {calls}*{latency_us}us)"),
            });
        }
        if calls == 1 {
            break;
        }
    }
    s
}

fn human_secs(x: f64) -> String {
    if x >= 1.0 {
        format!("{x:.2} s")
    } else {
        ms(x)
    }
}

/// How many of `make` fit in `dur` (at least 3, at most `max`): (count,
/// elapsed seconds, median seconds per call).
fn rate<F: FnMut(usize) -> Res<()>>(
    dur: Duration,
    max: usize,
    mut make: F,
) -> Res<(usize, f64, f64)> {
    let t0 = Instant::now();
    let mut each = Vec::new();
    while each.len() < max && (each.len() < 3 || t0.elapsed() < dur) {
        let t = Instant::now();
        make(each.len())?;
        each.push(t.elapsed().as_secs_f64());
    }
    let total = t0.elapsed().as_secs_f64();
    let n = each.len();
    Ok((n, total, median(&mut each)))
}

/// Token DEK generation through our module (C_GenerateKey, CKA_TOKEN true:
/// HSM random + seal on the HSM + SQLite insert), and token AES key generation
/// on SoftHSM2 directly for comparison.
pub fn keygen(
    ours: &Module,
    slot: CK_SLOT_ID,
    softhsm: &Module,
    sh_slot: CK_SLOT_ID,
    quick: bool,
    extras: &mut Vec<Extra>,
) -> Res<String> {
    let dur = Duration::from_secs_f64(if quick { 0.25 } else { 1.5 });
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Token key generation (C_GenerateKey CKM_AES_KEY_GEN, AES-256, CKA_TOKEN true), for ~{:.2} s each:",
        dur.as_secs_f64()
    );
    for (m, sl, what) in [
        (
            ours,
            slot,
            "ours: token DEK (HSM random, sealed on the HSM, SQLite insert)",
        ),
        (softhsm, sh_slot, "SoftHSM2 direct: token AES key"),
    ] {
        let sess = m.open_session(sl)?;
        let (n, total, med) = rate(dur, 100_000, |i| {
            m.generate_aes256(sess.h, &format!("bench-gen-{i}"), true)
                .map(|_| ())
                .map_err(|e| e.describe(m.name))
        })?;
        let _ = writeln!(
            s,
            "  {what:<64} {:>9.0} keys/s   median {:>12}   ({n} keys)",
            n as f64 / total,
            us(med)
        );
        extras.push(Extra {
            section: "token_keygen",
            metric: format!("{}_token_key_per_s", m.name),
            value: n as f64 / total,
            unit: "1/s",
            note: format!("{n} keys; median {:.1} us", med * 1e6),
        });
    }
    Ok(s)
}

/// `count` DEKs (session, or token with `token`), then C_FindObjectsInit +
/// C_FindObjects (all, one call) + C_FindObjectsFinal timed: with the empty
/// template (every object) and by CKA_LABEL (one match). The same on SoftHSM2
/// with `count` session keys, for comparison. The objects are made in a
/// dedicated session; closing it at the end removes the session ones.
#[allow(clippy::too_many_arguments)]
pub fn find(
    ours: &Module,
    slot: CK_SLOT_ID,
    softhsm: &Module,
    sh_slot: CK_SLOT_ID,
    count: usize,
    token: bool,
    quick: bool,
    extras: &mut Vec<Extra>,
) -> Res<String> {
    let reps = if quick { 3 } else { 11 };
    let mut s = String::new();
    let _ = writeln!(
        s,
        "C_FindObjects over {count} keys (Init + FindObjects(all, one call) + Final; median of {reps}); \
         ours: {} DEKs, SoftHSM2: session keys:",
        if token { "token (SQLite store)" } else { "session" }
    );
    for (m, sl, kind) in [
        (
            ours,
            slot,
            if token { "token DEKs" } else { "session DEKs" },
        ),
        (softhsm, sh_slot, "session AES keys"),
    ] {
        let sess = m.open_session(sl)?;
        let tok = token && m.name == "ours";
        let t0 = Instant::now();
        for i in 0..count {
            m.generate_aes256(sess.h, &format!("bench-find-{i}"), tok)
                .map_err(|e| format!("making key {i} of {count}: {}", e.describe(m.name)))?;
        }
        let made = t0.elapsed().as_secs_f64();
        let mut handles = Vec::new();
        let mut times = Vec::new();
        let mut found = 0;
        for _ in 0..reps {
            let (t, n) = once_secs(|| {
                m.find(sess.h, None, &mut handles, count + 1024)
                    .map_err(|e| e.describe(m.name))
            })?;
            times.push(t);
            found = n;
        }
        let all = median(&mut times);
        let want = format!("bench-find-{}", count / 2);
        let mut times = Vec::new();
        let mut one = 0;
        for _ in 0..reps {
            let (t, n) = once_secs(|| {
                m.find(sess.h, Some(&want), &mut handles, 16)
                    .map_err(|e| e.describe(m.name))
            })?;
            times.push(t);
            one = n;
        }
        let by_label = median(&mut times);
        let _ = writeln!(
            s,
            "  {:<8} {count} {kind}: made at {:>8.0}/s; find all: {:>11} ({found} objects); \
             find by label: {:>11} ({one} match)",
            m.name,
            count as f64 / made,
            ms(all),
            ms(by_label)
        );
        let sec = "find_objects";
        extras.push(Extra {
            section: sec,
            metric: format!("{}_make_{kind}_per_s", m.name).replace(' ', "_"),
            value: count as f64 / made,
            unit: "1/s",
            note: format!("C_GenerateKey of {count} {kind}"),
        });
        extras.push(Extra {
            section: sec,
            metric: format!("{}_find_all", m.name),
            value: all * 1e3,
            unit: "ms",
            note: format!("{found} objects found over {count} {kind}"),
        });
        extras.push(Extra {
            section: sec,
            metric: format!("{}_find_by_label", m.name),
            value: by_label * 1e3,
            unit: "ms",
            note: format!("{one} match among {count} {kind}"),
        });
    }
    Ok(s)
}

/// The cost of making a DEK real on the HSM for one call (the path of every
/// mechanism the software does not run): C_DigestKey of a DEK through the
/// module (a short-lived copy created on the HSM, digested, destroyed)
/// against C_DigestKey of an AES key on SoftHSM2 directly.
pub fn on_hsm(
    ours: &Module,
    slot: CK_SLOT_ID,
    softhsm: &Module,
    sh_slot: CK_SLOT_ID,
    quick: bool,
    extras: &mut Vec<Extra>,
) -> Res<String> {
    let dur = Duration::from_secs_f64(if quick { 0.25 } else { 1.5 });
    let mut s = String::new();
    let _ = writeln!(
        s,
        "A DEK made real on the HSM for one call (C_DigestInit + C_DigestKey + C_DigestFinal, SHA-256), ~{:.2} s each:",
        dur.as_secs_f64()
    );
    let mut rates = Vec::new();
    for (m, sl, what) in [
        (
            ours,
            slot,
            "ours: DEK (copy made on the HSM, digested, destroyed)",
        ),
        (softhsm, sh_slot, "SoftHSM2 direct: AES key"),
    ] {
        let sess = m.open_session(sl)?;
        let key = m
            .import_aes(sess.h, "bench-digest-key", &[7u8; 32])
            .map_err(|e| e.describe(m.name))?;
        let (n, total, med) = rate(dur, 1_000_000, |_| {
            m.digest_key(sess.h, key).map_err(|e| e.describe(m.name))
        })?;
        let per_s = n as f64 / total;
        rates.push(per_s);
        let _ = writeln!(
            s,
            "  {what:<64} {per_s:>9.0} calls/s   median {:>12}   ({n} calls)",
            us(med)
        );
        extras.push(Extra {
            section: "on_hsm",
            metric: format!("{}_digest_key_per_s", m.name),
            value: per_s,
            unit: "1/s",
            note: format!("{n} calls; median {:.1} us", med * 1e6),
        });
    }
    if let [a, b] = rates[..] {
        let _ = writeln!(s, "  ratio ours/SoftHSM2: {:.2}", a / b);
    }
    Ok(s)
}
