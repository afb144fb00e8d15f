//! The attribute set of a DEK as its record stores it, and the canonical
//! encoding of the security attributes that the wrapped record binds into
//! its AAD (next to the record format it protects, see `record`).

use std::collections::BTreeMap;

use cryptoki_sys::*;

use crate::error::{Error, Result};

pub fn as_ulong(v: &[u8]) -> Result<CK_ULONG> {
    let b: [u8; size_of::<CK_ULONG>()] = v
        .try_into()
        .map_err(|_| Error::Rv(CKR_ATTRIBUTE_VALUE_INVALID))?;
    Ok(CK_ULONG::from_ne_bytes(b))
}

pub fn ulong_bytes(v: CK_ULONG) -> Vec<u8> {
    v.to_ne_bytes().to_vec()
}

/// The attributes bound into a DEK's wrapped record: changing any of them
/// without the KEK makes the record fail to unwrap.
pub const BOUND: &[CK_ATTRIBUTE_TYPE] = &[
    CKA_CLASS,
    CKA_TOKEN,
    CKA_PRIVATE,
    CKA_MODIFIABLE,
    CKA_KEY_TYPE,
    CKA_DERIVE,
    CKA_LOCAL,
    CKA_KEY_GEN_MECHANISM,
    CKA_SENSITIVE,
    CKA_ENCRYPT,
    CKA_DECRYPT,
    CKA_SIGN,
    CKA_VERIFY,
    CKA_WRAP,
    CKA_UNWRAP,
    CKA_EXTRACTABLE,
    CKA_ALWAYS_SENSITIVE,
    CKA_NEVER_EXTRACTABLE,
    CKA_VALUE_LEN,
    CKA_COPYABLE,
    CKA_DESTROYABLE,
    CKA_ALLOWED_MECHANISMS,
    CKA_WRAP_WITH_TRUSTED,
];

/// An object's attributes (never CKA_VALUE: key values live only wrapped, or
/// unwrapped in the key cache).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Attrs(BTreeMap<CK_ATTRIBUTE_TYPE, Vec<u8>>);

const ENCODING_VERSION: u8 = 1;

/// Attribute types are CK_ULONG: 32 bits on some platforms, 64 on others.
/// Encodings always use 64.
#[allow(clippy::useless_conversion)]
fn wire(ty: CK_ATTRIBUTE_TYPE) -> u64 {
    u64::from(ty)
}

impl Attrs {
    pub fn get(&self, ty: CK_ATTRIBUTE_TYPE) -> Option<&[u8]> {
        self.0.get(&ty).map(Vec::as_slice)
    }
    pub fn has(&self, ty: CK_ATTRIBUTE_TYPE) -> bool {
        self.0.contains_key(&ty)
    }
    pub fn set(&mut self, ty: CK_ATTRIBUTE_TYPE, v: Vec<u8>) {
        self.0.insert(ty, v);
    }
    pub fn set_bool(&mut self, ty: CK_ATTRIBUTE_TYPE, v: bool) {
        self.0.insert(ty, vec![v as u8]);
    }
    pub fn set_ulong(&mut self, ty: CK_ATTRIBUTE_TYPE, v: CK_ULONG) {
        self.0.insert(ty, ulong_bytes(v));
    }
    /// A boolean attribute; absent or malformed reads as false.
    pub fn flag(&self, ty: CK_ATTRIBUTE_TYPE) -> bool {
        matches!(self.get(ty), Some([1]))
    }
    pub fn ulong(&self, ty: CK_ATTRIBUTE_TYPE) -> Option<CK_ULONG> {
        self.get(ty).and_then(|v| as_ulong(v).ok())
    }
    pub fn label(&self) -> &[u8] {
        self.get(CKA_LABEL).unwrap_or(&[])
    }
    pub fn id(&self) -> &[u8] {
        self.get(CKA_ID).unwrap_or(&[])
    }

    /// Mechanisms the key may be used with (CKA_ALLOWED_MECHANISMS; absent or
    /// empty means any).
    pub fn mechanism_allowed(&self, m: CK_MECHANISM_TYPE) -> bool {
        match self.get(CKA_ALLOWED_MECHANISMS) {
            None | Some([]) => true,
            Some(v) => v
                .chunks_exact(size_of::<CK_ULONG>())
                .any(|c| as_ulong(c).ok() == Some(m)),
        }
    }

    /// Canonical, length-prefixed encoding of the BOUND attributes.
    pub fn bound_encoding(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(BOUND.len() * 16);
        for &ty in BOUND {
            if let Some(v) = self.get(ty) {
                out.extend_from_slice(&wire(ty).to_be_bytes());
                out.extend_from_slice(&(v.len() as u32).to_be_bytes());
                out.extend_from_slice(v);
            }
        }
        out
    }

    /// Storage encoding: version, count, then (type u64, len u32, bytes), LE.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![ENCODING_VERSION];
        out.extend_from_slice(&(self.0.len() as u32).to_le_bytes());
        for (ty, v) in &self.0 {
            out.extend_from_slice(&wire(*ty).to_le_bytes());
            out.extend_from_slice(&(v.len() as u32).to_le_bytes());
            out.extend_from_slice(v);
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Attrs> {
        let bad = || Error::Rv(crate::vendor::CKR_HSME_RECORD_INVALID);
        let mut r = Reader(bytes);
        if r.take(1).ok_or_else(bad)? != [ENCODING_VERSION] {
            return Err(bad());
        }
        let n = u32::from_le_bytes(r.array().ok_or_else(bad)?);
        let mut map = BTreeMap::new();
        for _ in 0..n {
            let ty = u64::from_le_bytes(r.array().ok_or_else(bad)?) as CK_ATTRIBUTE_TYPE;
            let len = u32::from_le_bytes(r.array().ok_or_else(bad)?) as usize;
            let v = r.take(len).ok_or_else(bad)?;
            if ty == CKA_VALUE || map.insert(ty, v.to_vec()).is_some() {
                return Err(bad());
            }
        }
        if !r.0.is_empty() {
            return Err(bad());
        }
        Ok(Attrs(map))
    }
}

struct Reader<'a>(&'a [u8]);
impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_round_trip_and_strict_decode() {
        let mut a = Attrs::default();
        a.set_bool(CKA_TOKEN, true);
        a.set(CKA_LABEL, b"x".to_vec());
        a.set_ulong(CKA_VALUE_LEN, 32);
        let e = a.encode();
        assert_eq!(Attrs::decode(&e).unwrap(), a);
        for cut in 0..e.len() {
            assert!(Attrs::decode(&e[..cut]).is_err());
        }
        let mut longer = e.clone();
        longer.push(0);
        assert!(Attrs::decode(&longer).is_err());
    }

    #[test]
    fn bound_encoding_ignores_label_but_not_sensitive() {
        let mut a = Attrs::default();
        a.set_bool(CKA_SENSITIVE, true);
        let base = a.bound_encoding();
        a.set(CKA_LABEL, b"new".to_vec());
        assert_eq!(a.bound_encoding(), base);
        a.set_bool(CKA_SENSITIVE, false);
        assert_ne!(a.bound_encoding(), base);
    }
}
