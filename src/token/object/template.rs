//! A caller's attribute template, copied out of caller memory, and how it
//! is read and matched against a DEK's attributes.

use cryptoki_sys::*;
use zeroize::Zeroizing;

pub use crate::envelope::attrs::{as_ulong, ulong_bytes, Attrs};
use crate::error::{Error, Result};

/// One attribute of a caller's template, copied out of caller memory. The
/// value may be key material (CKA_VALUE), so it is zeroized on drop.
pub struct TemplateAttr {
    pub ty: CK_ATTRIBUTE_TYPE,
    pub value: Zeroizing<Vec<u8>>,
}

pub type Template = Vec<TemplateAttr>;

pub fn find_in(template: &Template, ty: CK_ATTRIBUTE_TYPE) -> Option<&[u8]> {
    template
        .iter()
        .find(|a| a.ty == ty)
        .map(|a| a.value.as_slice())
}

pub fn as_bool(v: &[u8]) -> Result<bool> {
    match v {
        [0] => Ok(false),
        [1] => Ok(true),
        _ => Err(Error::Rv(CKR_ATTRIBUTE_VALUE_INVALID)),
    }
}

/// Whether every (type, value) of a search template matches `attrs`.
/// CKA_VALUE is never matched: a search must not become an oracle for key
/// bytes.
pub fn matches(attrs: &Attrs, template: &Template) -> bool {
    template
        .iter()
        .all(|a| a.ty != CKA_VALUE && attrs.get(a.ty) == Some(a.value.as_slice()))
}
