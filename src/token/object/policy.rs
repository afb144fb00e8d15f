//! The PKCS#11 attribute rules for DEKs: what a creating template may say,
//! the defaults, the derived attributes, and what C_SetAttributeValue may
//! change. Defaults are the safe ones (sensitive, not extractable).

use cryptoki_sys::*;
use zeroize::Zeroizing;

use crate::config::KeyExport;
use crate::error::{Error, Result};
use crate::token::object::template::{as_bool, as_ulong, Attrs, Template};
use crate::vendor::{CKA_HSME_KEK_VERSION, CKA_HSME_ON_BACKEND};

/// How a DEK came to be; decides CKA_LOCAL and the "always/never" attributes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    Generated,
    Imported,
    Unwrapped,
    Derived,
}

/// Boolean attributes a template may set, with their defaults.
const BOOL_DEFAULTS: &[(CK_ATTRIBUTE_TYPE, bool)] = &[
    (CKA_TOKEN, false),
    (CKA_PRIVATE, true),
    (CKA_MODIFIABLE, true),
    (CKA_COPYABLE, true),
    (CKA_DESTROYABLE, true),
    (CKA_SENSITIVE, true),
    (CKA_EXTRACTABLE, false),
    (CKA_ENCRYPT, true),
    (CKA_DECRYPT, true),
    // As on SoftHSM2 (PyKCS11's suite relies on it), a DEK may wrap and
    // unwrap unless the template says otherwise; a DEK wraps only with AES
    // key wrap, so this makes it no encryption or decryption oracle. It
    // does not sign (CMAC) unless asked.
    (CKA_WRAP, true),
    (CKA_UNWRAP, true),
    (CKA_SIGN, false),
    (CKA_VERIFY, false),
    (CKA_DERIVE, false),
    (CKA_WRAP_WITH_TRUSTED, false),
    (CKA_TRUSTED, false),
];

/// Attributes only the module sets.
const READ_ONLY: &[CK_ATTRIBUTE_TYPE] = &[
    CKA_LOCAL,
    CKA_ALWAYS_SENSITIVE,
    CKA_NEVER_EXTRACTABLE,
    CKA_KEY_GEN_MECHANISM,
    CKA_UNIQUE_ID,
    CKA_CHECK_VALUE,
    CKA_HSME_KEK_VERSION,
];

pub fn is_valid_aes_len(n: usize) -> bool {
    matches!(n, 16 | 24 | 32)
}

/// Whether a creating template asks for an AES secret key (a DEK) rather
/// than something to pass to the backend.
pub fn wants_dek(template: &Template, default_class_is_secret: bool) -> Result<bool> {
    if let Some(v) = crate::token::object::template::find_in(template, CKA_HSME_ON_BACKEND) {
        if as_bool(v)? {
            return Ok(false);
        }
    }
    let class = match crate::token::object::template::find_in(template, CKA_CLASS) {
        Some(v) => as_ulong(v)?,
        None if default_class_is_secret => CKO_SECRET_KEY,
        None => return Ok(false),
    };
    let ktype = match crate::token::object::template::find_in(template, CKA_KEY_TYPE) {
        Some(v) => Some(as_ulong(v)?),
        None => None,
    };
    Ok(class == CKO_SECRET_KEY && ktype.is_none_or(|k| k == CKK_AES))
}

/// Build a new DEK's attributes from a creating template. Returns the
/// attributes and, for `Imported`, the CKA_VALUE given in the template.
pub fn new_dek(template: &Template, origin: Origin) -> Result<(Attrs, Option<Zeroizing<Vec<u8>>>)> {
    let mut attrs = Attrs::default();
    let mut value = None;
    let mut value_len = None;
    for a in template {
        let v = a.value.as_slice();
        if template
            .iter()
            .filter(|b| b.ty == a.ty)
            .any(|b| b.value.as_slice() != v)
        {
            return Err(Error::Rv(CKR_TEMPLATE_INCONSISTENT));
        }
        match a.ty {
            CKA_CLASS if as_ulong(v)? != CKO_SECRET_KEY => {
                return Err(Error::Rv(CKR_TEMPLATE_INCONSISTENT))
            }
            CKA_KEY_TYPE if as_ulong(v)? != CKK_AES => {
                return Err(Error::Rv(CKR_TEMPLATE_INCONSISTENT))
            }
            CKA_CLASS | CKA_KEY_TYPE => {}
            CKA_HSME_ON_BACKEND => {
                as_bool(v)?;
            }
            CKA_VALUE => {
                if origin != Origin::Imported {
                    return Err(Error::Rv(CKR_TEMPLATE_INCONSISTENT));
                }
                if !is_valid_aes_len(v.len()) {
                    return Err(Error::Rv(CKR_ATTRIBUTE_VALUE_INVALID));
                }
                value = Some(Zeroizing::new(v.to_vec()));
            }
            CKA_VALUE_LEN => {
                let n = as_ulong(v)? as usize;
                if !is_valid_aes_len(n) {
                    return Err(Error::Rv(CKR_ATTRIBUTE_VALUE_INVALID));
                }
                value_len = Some(n);
            }
            CKA_LABEL | CKA_ID => attrs.set(a.ty, v.to_vec()),
            CKA_START_DATE | CKA_END_DATE => {
                if !(v.is_empty() || v.len() == 8) {
                    return Err(Error::Rv(CKR_ATTRIBUTE_VALUE_INVALID));
                }
                attrs.set(a.ty, v.to_vec());
            }
            CKA_ALLOWED_MECHANISMS => {
                if v.len() % size_of::<CK_ULONG>() != 0 {
                    return Err(Error::Rv(CKR_ATTRIBUTE_VALUE_INVALID));
                }
                attrs.set(a.ty, v.to_vec());
            }
            CKA_TRUSTED if as_bool(v)? => return Err(Error::Rv(CKR_ATTRIBUTE_READ_ONLY)),
            ty if BOOL_DEFAULTS.iter().any(|(t, _)| *t == ty) => attrs.set_bool(ty, as_bool(v)?),
            ty if READ_ONLY.contains(&ty) => return Err(Error::Rv(CKR_ATTRIBUTE_READ_ONLY)),
            _ => return Err(Error::Rv(CKR_ATTRIBUTE_TYPE_INVALID)),
        }
    }
    let len = match (origin, &value, value_len) {
        (Origin::Imported, None, _) => return Err(Error::Rv(CKR_TEMPLATE_INCOMPLETE)),
        (Origin::Imported, Some(v), Some(n)) if v.len() != n => {
            return Err(Error::Rv(CKR_TEMPLATE_INCONSISTENT))
        }
        (Origin::Imported, Some(v), _) => Some(v.len()),
        (Origin::Generated, _, None) => return Err(Error::Rv(CKR_TEMPLATE_INCOMPLETE)),
        (_, _, n) => n,
    };
    for &(ty, default) in BOOL_DEFAULTS {
        if !attrs.has(ty) {
            attrs.set_bool(ty, default);
        }
    }
    attrs.set_ulong(CKA_CLASS, CKO_SECRET_KEY);
    attrs.set_ulong(CKA_KEY_TYPE, CKK_AES);
    for ty in [
        CKA_LABEL,
        CKA_ID,
        CKA_START_DATE,
        CKA_END_DATE,
        CKA_ALLOWED_MECHANISMS,
    ] {
        if !attrs.has(ty) {
            attrs.set(ty, Vec::new());
        }
    }
    if let Some(n) = len {
        attrs.set_ulong(CKA_VALUE_LEN, n as CK_ULONG);
    }
    let generated = origin == Origin::Generated;
    attrs.set_bool(CKA_LOCAL, generated);
    attrs.set_ulong(
        CKA_KEY_GEN_MECHANISM,
        if generated {
            CKM_AES_KEY_GEN
        } else {
            CK_UNAVAILABLE_INFORMATION
        },
    );
    // A key that was ever outside a token in clear was never "always sensitive".
    attrs.set_bool(CKA_ALWAYS_SENSITIVE, generated && attrs.flag(CKA_SENSITIVE));
    attrs.set_bool(
        CKA_NEVER_EXTRACTABLE,
        generated && !attrs.flag(CKA_EXTRACTABLE),
    );
    Ok((attrs, value))
}

/// The configuration's `key_export` policy, on the attributes a DEK is made
/// with or changed to by `call`: `wrapped` refuses a DEK that is not
/// sensitive (its value could be read in clear), `none` also an extractable
/// one. `CKR_TEMPLATE_INCONSISTENT`, as PKCS#11 (4.1.1) says for "a template
/// with an attribute that violates some token specific requirement": each
/// value is valid in Cryptoki, this token does not accept it.
pub fn check_export(attrs: &Attrs, policy: KeyExport, call: &str) -> Result<()> {
    let refused = match policy {
        KeyExport::Any => None,
        _ if !attrs.flag(CKA_SENSITIVE) => Some("CKA_SENSITIVE false"),
        KeyExport::None if attrs.flag(CKA_EXTRACTABLE) => Some("CKA_EXTRACTABLE true"),
        _ => None,
    };
    match refused {
        Some(what) => {
            crate::log_warn!(
                "{call}: refused a DEK with {what}: the configuration says key_export = \"{}\"",
                policy.name()
            );
            Err(Error::Rv(CKR_TEMPLATE_INCONSISTENT))
        }
        None => Ok(()),
    }
}

/// Apply a C_SetAttributeValue template to a copy of `attrs`. Every entry is
/// checked before anything changes, so a refused template changes nothing.
pub fn apply_set(attrs: &Attrs, template: &Template) -> Result<Attrs> {
    if !attrs.flag(CKA_MODIFIABLE) {
        return Err(Error::Rv(CKR_ACTION_PROHIBITED));
    }
    let mut out = attrs.clone();
    for a in template {
        let v = a.value.as_slice();
        match a.ty {
            CKA_LABEL | CKA_ID => out.set(a.ty, v.to_vec()),
            CKA_START_DATE | CKA_END_DATE => {
                if !(v.is_empty() || v.len() == 8) {
                    return Err(Error::Rv(CKR_ATTRIBUTE_VALUE_INVALID));
                }
                out.set(a.ty, v.to_vec());
            }
            CKA_ALLOWED_MECHANISMS => {
                if v.len() % size_of::<CK_ULONG>() != 0 {
                    return Err(Error::Rv(CKR_ATTRIBUTE_VALUE_INVALID));
                }
                out.set(a.ty, v.to_vec());
            }
            CKA_ENCRYPT | CKA_DECRYPT | CKA_WRAP | CKA_UNWRAP | CKA_SIGN | CKA_VERIFY
            | CKA_DERIVE => out.set_bool(a.ty, as_bool(v)?),
            // One-way switches: only ever towards the safer value.
            CKA_SENSITIVE | CKA_WRAP_WITH_TRUSTED => {
                let new = as_bool(v)?;
                if attrs.flag(a.ty) && !new {
                    return Err(Error::Rv(CKR_ATTRIBUTE_READ_ONLY));
                }
                out.set_bool(a.ty, new);
            }
            CKA_EXTRACTABLE | CKA_COPYABLE | CKA_DESTROYABLE => {
                let new = as_bool(v)?;
                if !attrs.flag(a.ty) && new {
                    return Err(Error::Rv(CKR_ATTRIBUTE_READ_ONLY));
                }
                out.set_bool(a.ty, new);
            }
            CKA_CLASS | CKA_KEY_TYPE | CKA_VALUE | CKA_VALUE_LEN | CKA_TOKEN | CKA_PRIVATE
            | CKA_MODIFIABLE | CKA_TRUSTED => return Err(Error::Rv(CKR_ATTRIBUTE_READ_ONLY)),
            ty if READ_ONLY.contains(&ty) => return Err(Error::Rv(CKR_ATTRIBUTE_READ_ONLY)),
            _ => return Err(Error::Rv(CKR_ATTRIBUTE_TYPE_INVALID)),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::object::template::{ulong_bytes, TemplateAttr};

    fn t(list: &[(CK_ATTRIBUTE_TYPE, Vec<u8>)]) -> Template {
        list.iter()
            .map(|(ty, v)| TemplateAttr {
                ty: *ty,
                value: Zeroizing::new(v.clone()),
            })
            .collect()
    }

    #[test]
    fn generate_needs_value_len_and_sets_derived() {
        assert_eq!(
            new_dek(&t(&[]), Origin::Generated).unwrap_err().rv(),
            CKR_TEMPLATE_INCOMPLETE
        );
        let (a, v) = new_dek(&t(&[(CKA_VALUE_LEN, ulong_bytes(32))]), Origin::Generated).unwrap();
        assert!(v.is_none());
        assert!(
            a.flag(CKA_SENSITIVE) && a.flag(CKA_ALWAYS_SENSITIVE) && a.flag(CKA_NEVER_EXTRACTABLE)
        );
        assert!(a.flag(CKA_LOCAL));
        let e = new_dek(&t(&[(CKA_VALUE_LEN, ulong_bytes(20))]), Origin::Generated).unwrap_err();
        assert_eq!(e.rv(), CKR_ATTRIBUTE_VALUE_INVALID);
        let e = new_dek(
            &t(&[(CKA_VALUE_LEN, ulong_bytes(16)), (CKA_VALUE, vec![0; 16])]),
            Origin::Generated,
        );
        assert_eq!(e.unwrap_err().rv(), CKR_TEMPLATE_INCONSISTENT);
    }

    #[test]
    fn import_rules() {
        let (a, v) = new_dek(
            &t(&[(CKA_VALUE, vec![7; 24]), (CKA_EXTRACTABLE, vec![1])]),
            Origin::Imported,
        )
        .unwrap();
        assert_eq!(v.unwrap().len(), 24);
        assert_eq!(a.ulong(CKA_VALUE_LEN), Some(24));
        assert!(
            !a.flag(CKA_ALWAYS_SENSITIVE) && !a.flag(CKA_NEVER_EXTRACTABLE) && !a.flag(CKA_LOCAL)
        );
        assert_eq!(
            new_dek(&t(&[(CKA_VALUE, vec![7; 15])]), Origin::Imported)
                .unwrap_err()
                .rv(),
            CKR_ATTRIBUTE_VALUE_INVALID
        );
        assert_eq!(
            new_dek(
                &t(&[(CKA_LOCAL, vec![1]), (CKA_VALUE, vec![1; 16])]),
                Origin::Imported
            )
            .unwrap_err()
            .rv(),
            CKR_ATTRIBUTE_READ_ONLY
        );
        assert_eq!(
            new_dek(
                &t(&[(0x7777, vec![1]), (CKA_VALUE, vec![1; 16])]),
                Origin::Imported
            )
            .unwrap_err()
            .rv(),
            CKR_ATTRIBUTE_TYPE_INVALID
        );
        assert_eq!(
            new_dek(
                &t(&[(CKA_SENSITIVE, vec![1, 0]), (CKA_VALUE, vec![1; 16])]),
                Origin::Imported
            )
            .unwrap_err()
            .rv(),
            CKR_ATTRIBUTE_VALUE_INVALID
        );
    }

    #[test]
    fn key_export_refuses_readable_then_extractable_deks() {
        let dek = |sensitive: u8, extractable: u8| {
            new_dek(
                &t(&[
                    (CKA_VALUE_LEN, ulong_bytes(32)),
                    (CKA_SENSITIVE, vec![sensitive]),
                    (CKA_EXTRACTABLE, vec![extractable]),
                ]),
                Origin::Generated,
            )
            .unwrap()
            .0
        };
        let rv = |a: &Attrs, p| check_export(a, p, "C_GenerateKey").map_err(|e| e.rv());
        let inconsistent = Err(CKR_TEMPLATE_INCONSISTENT);
        for (s, x, any, wrapped, none) in [
            (1, 0, Ok(()), Ok(()), Ok(())),
            (1, 1, Ok(()), Ok(()), inconsistent),
            (0, 0, Ok(()), inconsistent, inconsistent),
            (0, 1, Ok(()), inconsistent, inconsistent),
        ] {
            let a = dek(s, x);
            assert_eq!(rv(&a, KeyExport::Any), any, "sensitive {s} extractable {x}");
            assert_eq!(
                rv(&a, KeyExport::Wrapped),
                wrapped,
                "sensitive {s} extractable {x}"
            );
            assert_eq!(
                rv(&a, KeyExport::None),
                none,
                "sensitive {s} extractable {x}"
            );
        }
        // The defaults (sensitive, not extractable) pass every policy.
        let (a, _) = new_dek(&t(&[(CKA_VALUE_LEN, ulong_bytes(16))]), Origin::Generated).unwrap();
        assert_eq!(rv(&a, KeyExport::None), Ok(()));
    }

    #[test]
    fn set_rules_are_one_way() {
        let (a, _) = new_dek(
            &t(&[
                (CKA_VALUE, vec![1; 16]),
                (CKA_SENSITIVE, vec![0]),
                (CKA_EXTRACTABLE, vec![1]),
            ]),
            Origin::Imported,
        )
        .unwrap();
        let b = apply_set(
            &a,
            &t(&[(CKA_SENSITIVE, vec![1]), (CKA_EXTRACTABLE, vec![0])]),
        )
        .unwrap();
        assert!(b.flag(CKA_SENSITIVE) && !b.flag(CKA_EXTRACTABLE));
        assert!(!b.flag(CKA_ALWAYS_SENSITIVE));
        assert_eq!(
            apply_set(&b, &t(&[(CKA_SENSITIVE, vec![0])]))
                .unwrap_err()
                .rv(),
            CKR_ATTRIBUTE_READ_ONLY
        );
        assert_eq!(
            apply_set(&b, &t(&[(CKA_EXTRACTABLE, vec![1])]))
                .unwrap_err()
                .rv(),
            CKR_ATTRIBUTE_READ_ONLY
        );
        assert_eq!(
            apply_set(&b, &t(&[(CKA_VALUE, vec![1; 16])]))
                .unwrap_err()
                .rv(),
            CKR_ATTRIBUTE_READ_ONLY
        );
        // a refused template changes nothing, even its valid first entry
        assert!(apply_set(&b, &t(&[(CKA_LABEL, b"x".to_vec()), (CKA_TOKEN, vec![1])])).is_err());
        let (ro, _) = new_dek(
            &t(&[(CKA_VALUE, vec![1; 16]), (CKA_MODIFIABLE, vec![0])]),
            Origin::Imported,
        )
        .unwrap();
        assert_eq!(
            apply_set(&ro, &t(&[(CKA_LABEL, b"x".to_vec())]))
                .unwrap_err()
                .rv(),
            CKR_ACTION_PROHIBITED
        );
    }
}
