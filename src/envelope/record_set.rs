//! Records that name several HSMs (issue 13, `kek_mode = "any-of"` and
//! `"all-of"`): format version 2, one wrap per HSM.
//!
//! # Layout (format version 2)
//!
//! | offset | size     | field                                          |
//! |--------|----------|------------------------------------------------|
//! | 0      | 4        | magic `b"HEV1"`                                |
//! | 4      | 1        | format version, `2`                            |
//! | 5      | 1        | mode: 1 any-of, 2 all-of                       |
//! | 6      | 1        | number of wraps, 1..=[`MAX_WRAPS`]             |
//!
//! then, per wrap: the HSM's name (u8 length, 1..=[`MAX_HSM_NAME`] bytes of
//! UTF-8, unique within the record), the length of the wrap (u32 BE) and
//! the wrap itself, a format-1 record ([`WrappedRecord`]) naming that HSM's
//! KEK label and version. Nothing may follow the last wrap.
//!
//! Any-of: each wrap holds the DEK value; any one HSM opens it. All-of:
//! each wrap holds one share, and the value is the XOR of every share
//! (`shares`), so every HSM must take part.
//!
//! Each wrap's AAD is the format-1 AAD with [`set_binding`] in place of the
//! bound attributes: the mode and the HSM's name always (a wrap cannot be
//! moved to another HSM's place, nor an all-of share read as an any-of
//! value), and for all-of the names of every party in order (dropping or
//! reordering a share fails every tag). Any-of wraps do not bind each
//! other, so `rewrap` can add one without touching the rest.

use super::record::{RecordError, WrappedRecord, RECORD_MAGIC};

pub const SET_FORMAT_VERSION: u8 = 2;
/// Most HSMs a record may name.
pub const MAX_WRAPS: usize = 8;
/// Longest HSM name, in bytes.
pub const MAX_HSM_NAME: usize = 64;
/// Starts every wrap's binding.
const SET_DOMAIN: &[u8] = b"hsm-envelope/dek-record-set/v2";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SetMode {
    /// Any one wrap opens the value (disaster recovery).
    AnyOf,
    /// The value is the XOR of every wrap's share (double key).
    AllOf,
}

impl SetMode {
    fn as_u8(self) -> u8 {
        match self {
            SetMode::AnyOf => 1,
            SetMode::AllOf => 2,
        }
    }

    fn from_u8(b: u8) -> Option<Self> {
        match b {
            1 => Some(SetMode::AnyOf),
            2 => Some(SetMode::AllOf),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            SetMode::AnyOf => "any-of",
            SetMode::AllOf => "all-of",
        }
    }
}

/// One HSM's wrap.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wrap {
    /// The member's name in the configuration.
    pub hsm: String,
    /// Its KEK label and version, IV and ciphertext.
    pub rec: WrappedRecord,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordSet {
    pub mode: SetMode,
    pub wraps: Vec<Wrap>,
}

/// A stored record of either format.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stored {
    /// Format 1: one KEK (one HSM, or replicas of it).
    One(WrappedRecord),
    /// Format 2: several HSMs.
    Set(RecordSet),
}

impl Stored {
    /// Decode either format (told apart by the version byte).
    pub fn decode(bytes: &[u8]) -> Result<Self, RecordError> {
        if bytes.len() > RECORD_MAGIC.len() && bytes[RECORD_MAGIC.len()] == SET_FORMAT_VERSION {
            RecordSet::decode(bytes).map(Stored::Set)
        } else {
            WrappedRecord::decode(bytes).map(Stored::One)
        }
    }

    /// The KEK version shown in listings: the record's, or its first
    /// wrap's.
    pub fn version(&self) -> u32 {
        match self {
            Stored::One(r) => r.kek_version,
            Stored::Set(s) => s.wraps.first().map_or(0, |w| w.rec.kek_version),
        }
    }
}

/// What the wrap of HSM `hsm` binds in place of the bound attributes (see
/// the module comment); `parties` is every HSM's name in record order for
/// all-of, ignored for any-of. Each part is length-prefixed, so the
/// encoding is injective.
pub fn set_binding(mode: SetMode, hsm: &str, parties: &[&str], bound: &[u8]) -> Vec<u8> {
    let mut names = Vec::new();
    if mode == SetMode::AllOf {
        for p in parties {
            names.extend_from_slice(&(p.len() as u64).to_be_bytes());
            names.extend_from_slice(p.as_bytes());
        }
    }
    let parts: [&[u8]; 5] = [SET_DOMAIN, &[mode.as_u8()], hsm.as_bytes(), &names, bound];
    let mut out = Vec::with_capacity(parts.iter().map(|p| 8 + p.len()).sum());
    for p in parts {
        out.extend_from_slice(&(p.len() as u64).to_be_bytes());
        out.extend_from_slice(p);
    }
    out
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], RecordError> {
        if self.0.len() < n {
            return Err(RecordError::Truncated);
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, RecordError> {
        Ok(self.take(1)?[0])
    }
}

impl RecordSet {
    /// The names of the HSMs, in record order.
    pub fn names(&self) -> Vec<&str> {
        self.wraps.iter().map(|w| w.hsm.as_str()).collect()
    }

    /// The wrap of HSM `hsm`, if the record has one.
    pub fn wrap_of(&self, hsm: &str) -> Option<&Wrap> {
        self.wraps.iter().find(|w| w.hsm == hsm)
    }

    /// The AAD of wrap `i` for DEK `id` with bound attributes `bound`.
    pub fn aad(&self, i: usize, id: &[u8; 16], bound: &[u8]) -> Option<Vec<u8>> {
        let w = self.wraps.get(i)?;
        let binding = set_binding(self.mode, &w.hsm, &self.names(), bound);
        Some(w.rec.aad(id, &binding))
    }

    /// The limits [`RecordSet::decode`] enforces.
    pub fn validate(&self) -> Result<(), RecordError> {
        if self.wraps.is_empty() || self.wraps.len() > MAX_WRAPS {
            return Err(RecordError::Malformed("number of wraps out of range"));
        }
        for (i, w) in self.wraps.iter().enumerate() {
            if w.hsm.is_empty() || w.hsm.len() > MAX_HSM_NAME {
                return Err(RecordError::Malformed("HSM name length out of range"));
            }
            if self.wraps[..i].iter().any(|o| o.hsm == w.hsm) {
                return Err(RecordError::Malformed("an HSM named twice"));
            }
            w.rec.validate()?;
        }
        Ok(())
    }

    pub fn try_encode(&self) -> Result<Vec<u8>, RecordError> {
        self.validate()?;
        let mut out = RECORD_MAGIC.to_vec();
        out.push(SET_FORMAT_VERSION);
        out.push(self.mode.as_u8());
        // validate() bounded the count, names and wraps.
        out.push(self.wraps.len() as u8);
        for w in &self.wraps {
            let inner = w.rec.try_encode()?;
            out.push(w.hsm.len() as u8);
            out.extend_from_slice(w.hsm.as_bytes());
            let len =
                u32::try_from(inner.len()).map_err(|_| RecordError::Malformed("wrap too long"))?;
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(&inner);
        }
        Ok(out)
    }

    /// Strict decoder: never panics, and nothing sized from an unchecked
    /// length is allocated.
    pub fn decode(bytes: &[u8]) -> Result<Self, RecordError> {
        let mut r = Reader(bytes);
        if r.take(RECORD_MAGIC.len())? != RECORD_MAGIC {
            return Err(RecordError::BadMagic);
        }
        let version = r.u8()?;
        if version != SET_FORMAT_VERSION {
            return Err(RecordError::UnsupportedVersion(version));
        }
        let mode = SetMode::from_u8(r.u8()?).ok_or(RecordError::Malformed("unknown set mode"))?;
        let n = usize::from(r.u8()?);
        if n == 0 || n > MAX_WRAPS {
            return Err(RecordError::Malformed("number of wraps out of range"));
        }
        let mut wraps = Vec::with_capacity(n);
        for _ in 0..n {
            let name_len = usize::from(r.u8()?);
            let hsm = std::str::from_utf8(r.take(name_len)?)
                .map_err(|_| RecordError::Malformed("HSM name is not UTF-8"))?
                .to_owned();
            let b = r.take(4)?;
            let len = usize::try_from(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                .map_err(|_| RecordError::Malformed("wrap too long"))?;
            let rec = WrappedRecord::decode(r.take(len)?)?;
            wraps.push(Wrap { hsm, rec });
        }
        if !r.0.is_empty() {
            return Err(RecordError::Malformed("trailing bytes after record"));
        }
        let set = RecordSet { mode, wraps };
        set.validate()?;
        Ok(set)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::record::WrapAlg;

    fn wrap(hsm: &str, version: u32) -> Wrap {
        Wrap {
            hsm: hsm.into(),
            rec: WrappedRecord {
                alg: WrapAlg::AesGcm256,
                kek_label: format!("kek-{hsm}"),
                kek_version: version,
                iv: vec![version as u8; 12],
                ciphertext: vec![0xC3; 48],
            },
        }
    }

    fn sample(mode: SetMode) -> RecordSet {
        RecordSet {
            mode,
            wraps: vec![wrap("main", 1), wrap("dr", 4)],
        }
    }

    #[test]
    fn round_trip_and_either_format() {
        for mode in [SetMode::AnyOf, SetMode::AllOf] {
            let s = sample(mode);
            let enc = s.try_encode().unwrap();
            assert_eq!(
                &enc[..6],
                b"HEV1\x02"
                    .iter()
                    .chain(&[mode.as_u8()])
                    .copied()
                    .collect::<Vec<_>>()
                    .as_slice()
            );
            assert_eq!(RecordSet::decode(&enc), Ok(s.clone()));
            assert_eq!(Stored::decode(&enc), Ok(Stored::Set(s.clone())));
            assert_eq!(Stored::decode(&enc).unwrap().version(), 1);
        }
        let one = wrap("x", 7).rec;
        assert_eq!(Stored::decode(&one.encode()), Ok(Stored::One(one.clone())));
        assert_eq!(Stored::One(one).version(), 7);
    }

    #[test]
    fn decode_rejects() {
        let enc = sample(SetMode::AnyOf).try_encode().unwrap();
        let mut bad = enc.clone();
        bad[5] = 3;
        assert!(RecordSet::decode(&bad).is_err());
        for n in [0u8, 9] {
            let mut bad = enc.clone();
            bad[6] = n;
            assert!(RecordSet::decode(&bad).is_err(), "{n}");
        }
        let mut bad = enc.clone();
        bad.push(0);
        assert!(RecordSet::decode(&bad).is_err());
        // Every truncation fails.
        for n in 0..enc.len() {
            assert!(RecordSet::decode(&enc[..n]).is_err(), "prefix {n}");
        }
        // The same HSM twice, an empty or over-long name, no wraps.
        let twice = RecordSet {
            mode: SetMode::AnyOf,
            wraps: vec![wrap("a", 1), wrap("a", 2)],
        };
        assert!(twice.try_encode().is_err());
        let mut long = wrap("a", 1);
        long.hsm = "n".repeat(MAX_HSM_NAME + 1);
        for w in [wrap("", 1), long] {
            let s = RecordSet {
                mode: SetMode::AllOf,
                wraps: vec![w],
            };
            assert!(s.try_encode().is_err());
        }
        let none = RecordSet {
            mode: SetMode::AllOf,
            wraps: vec![],
        };
        assert!(none.try_encode().is_err());
        // A wrap's length claiming more than there is: Truncated, no
        // allocation.
        let mut bad = enc;
        let len_at = 7 + 1 + 4;
        bad[len_at..len_at + 4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(RecordSet::decode(&bad), Err(RecordError::Truncated));
    }

    #[test]
    fn mutations_never_panic_and_round_trip() {
        let enc = sample(SetMode::AllOf).try_encode().unwrap();
        for i in 0..enc.len() {
            for v in [0u8, 1, 2, 0x7F, 0xFF, enc[i] ^ 1] {
                let mut m = enc.clone();
                m[i] = v;
                if let Ok(Stored::Set(s)) = Stored::decode(&m) {
                    assert_eq!(s.try_encode().unwrap(), m);
                }
            }
        }
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let n = (x % 96) as usize;
            let tail: Vec<u8> = (0..n).map(|i| (x >> (i % 8 * 8)) as u8 ^ i as u8).collect();
            let mut p = b"HEV1\x02".to_vec();
            p.extend_from_slice(&tail);
            let _ = Stored::decode(&p);
        }
    }

    #[test]
    fn bindings_tie_each_wrap_to_its_place() {
        let id = [3u8; 16];
        let any = sample(SetMode::AnyOf);
        let all = sample(SetMode::AllOf);
        // The mode and the HSM's name are bound.
        assert_ne!(any.aad(0, &id, b"a"), all.aad(0, &id, b"a"));
        let mut moved = any.clone();
        moved.wraps[0].hsm = "other".into();
        assert_ne!(any.aad(0, &id, b"a"), moved.aad(0, &id, b"a"));
        // Any-of wraps do not bind each other: adding one leaves the rest.
        let mut more = any.clone();
        more.wraps.push(wrap("dr2", 1));
        assert_eq!(any.aad(0, &id, b"a"), more.aad(0, &id, b"a"));
        // All-of shares bind every party, in order.
        let mut fewer = all.clone();
        fewer.wraps.pop();
        assert_ne!(all.aad(0, &id, b"a"), fewer.aad(0, &id, b"a"));
        let mut swapped = all.clone();
        swapped.wraps.swap(0, 1);
        assert_ne!(all.aad(0, &id, b"a"), swapped.aad(1, &id, b"a"));
        // The attributes and the id, as in format 1.
        assert_ne!(all.aad(0, &id, b"a"), all.aad(0, &id, b"b"));
        assert_ne!(all.aad(0, &id, b"a"), all.aad(0, &[4u8; 16], b"a"));
        assert_eq!(any.aad(2, &id, b"a"), None);
        // Length prefixes: moving a byte between name and attributes.
        assert_ne!(
            set_binding(SetMode::AnyOf, "ab", &[], b"c"),
            set_binding(SetMode::AnyOf, "a", &[], b"bc")
        );
    }
}
