//! The sample check of `store migrate`: a few records, spread over the
//! store, opened from the target through the HSM with the configured KEK,
//! and compared with what the same rows of the source open to. Values are
//! compared by their SHA-256 in memory and never shown.

use sha2::{Digest, Sha256};

use hsm_envelope::envelope::attrs::Attrs;
use hsm_envelope::envelope::Envelope;
use hsm_envelope::error::Result;
use hsm_envelope::hex::encode as hex;
use hsm_envelope::store::copy::FullRow;

/// Records opened at most.
pub const SIZE: u64 = 8;

/// Picks up to [`SIZE`] (source, target) pairs spread evenly over the
/// `total` rows of KEK `kek_label` (the only ones this configuration can
/// open), as the rows go by in id order.
pub struct Picker<'a> {
    kek_label: &'a str,
    total: u64,
    seen: u64,
    next: u64,
    pub picked: Vec<(FullRow, FullRow)>,
}

impl<'a> Picker<'a> {
    pub fn new(kek_label: &'a str, total: u64) -> Self {
        let mut p = Picker {
            kek_label,
            total,
            seen: 0,
            next: 0,
            picked: Vec::new(),
        };
        p.next = p.position(0);
        p
    }

    /// The middle of the `i`th of `SIZE` equal slices.
    fn position(&self, i: u64) -> u64 {
        let n = self.total.clamp(1, SIZE);
        (2 * i + 1) * self.total / (2 * n)
    }

    pub fn offer(&mut self, source: &FullRow, target: &FullRow) {
        if target.row.kek_label != self.kek_label {
            return;
        }
        let i = self.picked.len() as u64;
        if self.seen == self.next && i < SIZE.min(self.total) {
            self.picked.push((source.clone(), target.clone()));
            self.next = self.position(i + 1);
        }
        self.seen += 1;
    }
}

/// What opening the sample found.
#[derive(Default)]
pub struct Outcome {
    /// Opened from the target, the same value as from the source.
    pub matched: u64,
    /// The source's record did not open either (a KEK version this
    /// configuration cannot use, say): nothing to compare.
    pub unopenable: u64,
    /// Opened from the source, but not from the target or to another
    /// value: the copy is wrong. Their ids.
    pub failed: Vec<String>,
}

fn digest(env: &Envelope, r: &FullRow) -> Result<[u8; 32]> {
    let attrs = Attrs::decode(&r.row.attrs)?;
    let value = env.open(&r.row.id, &attrs, &r.row.record)?;
    Ok(Sha256::digest(value.as_slice()).into())
}

pub fn check(env: &Envelope, picked: &[(FullRow, FullRow)]) -> Outcome {
    let mut out = Outcome::default();
    for (source, target) in picked {
        let id = hex(&source.row.id);
        let expected = match digest(env, source) {
            Ok(d) => d,
            Err(e) => {
                hsm_envelope::log_warn!(
                    "store migrate: sample DEK {id} does not open from the source: {e}"
                );
                out.unopenable += 1;
                continue;
            }
        };
        match digest(env, target) {
            Ok(d) if d == expected => out.matched += 1,
            Ok(_) => {
                hsm_envelope::log_error!(
                    "store migrate: sample DEK {id} opens to another value from the target"
                );
                out.failed.push(id);
            }
            Err(e) => {
                hsm_envelope::log_error!(
                    "store migrate: sample DEK {id} does not open from the target: {e}"
                );
                out.failed.push(id);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use hsm_envelope::store::DekRow;

    fn full(n: u32, label: &str) -> FullRow {
        let mut id = [0u8; 16];
        id[..4].copy_from_slice(&n.to_be_bytes());
        FullRow {
            row: DekRow {
                id,
                label: vec![],
                ckaid: vec![],
                attrs: vec![],
                record: vec![],
                kek_label: label.into(),
                kek_version: 1,
                created: 0,
                updated: 0,
                generation: 0,
            },
            last_used: None,
            deleted_at: None,
            purge_after: None,
            gcm_print: None,
        }
    }

    fn picks(total: u32, other_every: u32) -> Vec<u32> {
        let ours = (0..total).filter(|n| other_every == 0 || n % other_every != 0);
        let mut p = Picker::new("kek", ours.count() as u64);
        for n in 0..total {
            let label = if other_every != 0 && n % other_every == 0 {
                "other"
            } else {
                "kek"
            };
            let r = full(n, label);
            p.offer(&r, &r);
        }
        p.picked
            .iter()
            .map(|(a, _)| u32::from_be_bytes(a.row.id[..4].try_into().unwrap()))
            .collect()
    }

    #[test]
    fn picks_spread_over_the_rows_of_the_kek() {
        assert_eq!(picks(0, 0), Vec::<u32>::new());
        assert_eq!(picks(1, 0), vec![0]);
        assert_eq!(picks(3, 0), vec![0, 1, 2]);
        assert_eq!(picks(8, 0), (0..8).collect::<Vec<_>>());
        assert_eq!(picks(80, 0), vec![5, 15, 25, 35, 45, 55, 65, 75]);
        assert_eq!(picks(1_000_000, 0).len(), 8);
        // Rows of another KEK are skipped and not counted.
        let p = picks(30, 3);
        assert_eq!(p.len(), 8);
        assert!(p.iter().all(|n| n % 3 != 0), "{p:?}");
    }
}
