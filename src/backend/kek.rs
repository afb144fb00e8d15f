//! Operations with the KEK. Every one of them is a backend call: the KEK
//! never leaves the HSM.

use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use cryptoki_sys::*;
use zeroize::Zeroize;

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::secret::SecretBytes;
use crate::vendor::CKR_HSME_KEK_UNAVAILABLE;

/// CKA_ID of a KEK version: the version number, big-endian, no leading zeros
/// (version 1 is `01`, as `softhsm-config/new-token.sh` makes it).
/// A backend object handle as cryptoki's type, for handles the backend gave
/// this process (an application's key for key wrap, say).
pub fn object_handle(raw: CK_OBJECT_HANDLE) -> ObjectHandle {
    // SAFETY: `new_from_raw` is unsafe only because a made-up handle could
    // name another object; every caller passes one the backend returned,
    // and the backend checks it on use.
    unsafe { ObjectHandle::new_from_raw(raw) }
}

pub fn version_id(version: u32) -> Vec<u8> {
    let b = version.to_be_bytes();
    let first = b.iter().position(|x| *x != 0).unwrap_or(b.len() - 1);
    b[first..].to_vec()
}

/// What a KEK version is on the backend: an AES key, or an RSA key pair
/// (the private half opens records, the public half seals them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KekKey {
    Aes(ObjectHandle),
    Rsa {
        private: ObjectHandle,
        /// Missing public half: records still open, none can be sealed.
        public: Option<ObjectHandle>,
    },
}

impl KekKey {
    /// The object that opens records: whether it may decrypt and unwrap is
    /// whether the version is enabled, and it must be sensitive and not
    /// extractable.
    pub fn opener(&self) -> ObjectHandle {
        match *self {
            KekKey::Aes(h) => h,
            KekKey::Rsa { private, .. } => private,
        }
    }

    /// Every backend object of the version (what destroying it destroys).
    pub fn objects(&self) -> Vec<ObjectHandle> {
        match *self {
            KekKey::Aes(h) => vec![h],
            KekKey::Rsa { private, public } => std::iter::once(private).chain(public).collect(),
        }
    }
}

/// The type of a KEK version, as `kek create --type` names it and the store
/// records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KekType {
    Aes256,
    /// RSA with a modulus of this many bits.
    Rsa(u32),
}

impl KekType {
    pub fn name(self) -> String {
        match self {
            KekType::Aes256 => "aes256".into(),
            KekType::Rsa(bits) => format!("rsa{bits}"),
        }
    }

    /// The inverse of `name`.
    pub fn parse(s: &str) -> Option<KekType> {
        match s {
            "aes256" => Some(KekType::Aes256),
            _ => s
                .strip_prefix("rsa")
                .and_then(|b| b.parse().ok())
                .map(KekType::Rsa),
        }
    }
}

/// Find version `version` of the KEK labelled `label`: the token keys with
/// that label and CKA_ID, which must be exactly one AES key, or one RSA
/// private key with at most one RSA public key. Certificates and data
/// objects that share the name are ignored. Missing (or invisible: not
/// logged in) and ambiguous are both `CKR_HSME_KEK_UNAVAILABLE`.
pub fn find(session: &Session, label: &str, version: u32) -> Result<KekKey> {
    let template = [
        Attribute::Token(true),
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Id(version_id(version)),
    ];
    let found = session
        .find_objects(&template)
        .map_err(|e| Error::from_cryptoki("C_FindObjects", e))?;
    let (mut aes, mut private, mut public, mut other) = (vec![], vec![], vec![], 0);
    for h in found {
        let attrs = session
            .get_attributes(h, &[AttributeType::Class, AttributeType::KeyType])
            .map_err(|e| Error::from_cryptoki("C_GetAttributeValue", e))?;
        let (mut class, mut ktype) = (None, None);
        for a in attrs {
            match a {
                Attribute::Class(c) => class = Some(c),
                Attribute::KeyType(k) => ktype = Some(k),
                _ => {}
            }
        }
        match (class, ktype) {
            (Some(ObjectClass::SECRET_KEY), Some(KeyType::AES)) => aes.push(h),
            (Some(ObjectClass::PRIVATE_KEY), Some(KeyType::RSA)) => private.push(h),
            (Some(ObjectClass::PUBLIC_KEY), Some(KeyType::RSA)) => public.push(h),
            // A key of another type under the KEK's name makes it ambiguous.
            (
                Some(ObjectClass::SECRET_KEY | ObjectClass::PRIVATE_KEY | ObjectClass::PUBLIC_KEY),
                _,
            ) => other += 1,
            _ => {}
        }
    }
    match (aes.as_slice(), private.as_slice(), public.as_slice(), other) {
        ([one], [], [], 0) => Ok(KekKey::Aes(*one)),
        ([], [private], [], 0) => Ok(KekKey::Rsa {
            private: *private,
            public: None,
        }),
        ([], [private], [public], 0) => Ok(KekKey::Rsa {
            private: *private,
            public: Some(*public),
        }),
        ([], [], _, 0) => {
            crate::log_warn!("KEK '{label}' v{version} not found on the backend token");
            Err(Error::Rv(CKR_HSME_KEK_UNAVAILABLE))
        }
        _ => {
            crate::log_error!(
                "KEK '{label}' v{version} names {} AES, {} RSA private, {} RSA public and {other} other keys; refusing to guess",
                aes.len(),
                private.len(),
                public.len()
            );
            Err(Error::Rv(CKR_HSME_KEK_UNAVAILABLE))
        }
    }
}

/// Whether the KEK is fit to be one: the key that opens records is
/// sensitive and not extractable, and an RSA modulus has 2048 bits or more.
pub fn check_policy(session: &Session, kek: KekKey) -> Result<bool> {
    let opener = kek.opener();
    let attrs = session
        .get_attributes(
            opener,
            &[AttributeType::Sensitive, AttributeType::Extractable],
        )
        .map_err(|e| Error::from_cryptoki("C_GetAttributeValue", e))?;
    let mut sensitive = false;
    let mut extractable = true;
    for a in attrs {
        match a {
            Attribute::Sensitive(b) => sensitive = b,
            Attribute::Extractable(b) => extractable = b,
            _ => {}
        }
    }
    match kek {
        KekKey::Rsa { private, public } => {
            use super::rsa;
            if rsa::modulus_bits(session, private)? < rsa::MIN_KEK_BITS {
                crate::log_error!("an RSA KEK has a modulus under 2048 bits");
                return Ok(false);
            }
            let (n, e) = rsa::public_parts(session, private)?;
            if !rsa::exponent_ok(&e) {
                crate::log_error!("an RSA KEK has a public exponent under 65537 or even");
                return Ok(false);
            }
            // A public half planted beside the private one would capture
            // every new DEK value.
            if let Some(public) = public {
                if rsa::public_parts(session, public)? != (n, e) {
                    crate::log_error!("an RSA KEK's public half does not match its private half");
                    return Ok(false);
                }
            }
        }
        KekKey::Aes(h) => {
            let len = session
                .get_attributes(h, &[AttributeType::ValueLen])
                .map_err(|e| Error::from_cryptoki("C_GetAttributeValue", e))?;
            // 0: not recorded (SoftHSM2 leaves it so for unwrapped keys;
            // an import checks the length itself).
            if let [Attribute::ValueLen(n)] = len.as_slice() {
                if !matches!(u64::from(*n), 0 | 32) {
                    crate::log_error!("an AES KEK is not AES-256");
                    return Ok(false);
                }
            }
        }
    }
    Ok(sensitive && !extractable)
}

/// CK_GCM_PARAMS (2.40 header layout, which SoftHSM2 and most HSMs read)
/// for a 128-bit tag; points into `iv` and `aad`.
fn gcm_params(iv: &[u8], aad: &[u8]) -> CK_GCM_PARAMS {
    CK_GCM_PARAMS {
        pIv: iv.as_ptr() as *mut u8,
        ulIvLen: iv.len() as CK_ULONG,
        ulIvBits: (iv.len() * 8) as CK_ULONG,
        pAAD: aad.as_ptr() as *mut u8,
        ulAADLen: aad.len() as CK_ULONG,
        ulTagBits: 128,
    }
}

fn gcm_mechanism(params: &mut CK_GCM_PARAMS) -> CK_MECHANISM {
    CK_MECHANISM {
        mechanism: CKM_AES_GCM,
        pParameter: params as *mut CK_GCM_PARAMS as *mut _,
        ulParameterLen: size_of::<CK_GCM_PARAMS>() as CK_ULONG,
    }
}

/// AES-GCM encryption of a DEK value under the KEK, on the HSM (two
/// backend calls).
pub fn gcm_seal(
    backend: &Backend,
    session: &Session,
    kek: ObjectHandle,
    iv: &[u8],
    aad: &[u8],
    value: &[u8],
) -> Result<Vec<u8>> {
    let mut params = gcm_params(iv, aad);
    let mut mech = gcm_mechanism(&mut params);
    super::oneshot::encrypt(backend, session, &mut mech, kek, value, value.len() + 16)
}

/// AES-GCM decryption of a wrapped DEK value on the HSM; the tag check binds
/// the record's identity (the AAD). Two backend calls, as for sealing.
pub fn gcm_open(
    backend: &Backend,
    session: &Session,
    kek: ObjectHandle,
    iv: &[u8],
    aad: &[u8],
    sealed: &[u8],
) -> Result<SecretBytes> {
    let mut params = gcm_params(iv, aad);
    let mut mech = gcm_mechanism(&mut params);
    super::oneshot::decrypt(backend, session, &mut mech, kek, sealed)
}

/// Random bytes from the HSM's generator (DEK values come from the HSM).
pub fn random(session: &Session, out: &mut [u8]) -> Result<()> {
    session
        .generate_random_slice(out)
        .map_err(|e| Error::from_cryptoki("C_GenerateRandom", e))
}

/// Wrap a DEK value with the KEK using an AES key-wrap mechanism (RFC 3394 /
/// 5649): the value becomes a short-lived session object on the HSM, is
/// wrapped there, and the object is destroyed.
pub fn keywrap(
    backend: &Backend,
    gate: &TempGate,
    session: &Session,
    kek: ObjectHandle,
    mech: CK_MECHANISM_TYPE,
    value: &[u8],
) -> Result<Vec<u8>> {
    let mut template = [
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::Token(false),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(true),
        Attribute::Value(value.to_vec()),
    ];
    // No search may see the short-lived copy (see `TempGate`).
    let _gate = gate.hold();
    let created = session.create_object(&template);
    for a in template.iter_mut() {
        if let Attribute::Value(v) = a {
            v.zeroize();
        }
    }
    let temp = created.map_err(|e| Error::from_cryptoki("C_CreateObject", e))?;
    let result = raw_wrap(backend, session, kek, mech, temp);
    let _ = session.destroy_object(temp);
    result
}

fn raw_wrap(
    backend: &Backend,
    session: &Session,
    kek: ObjectHandle,
    mech: CK_MECHANISM_TYPE,
    key: ObjectHandle,
) -> Result<Vec<u8>> {
    let mut m = CK_MECHANISM {
        mechanism: mech,
        pParameter: std::ptr::null_mut(),
        ulParameterLen: 0,
    };
    let mut len: CK_ULONG = 0;
    // SAFETY: a function of the backend's own list; every pointer is to a
    // local or buffer that outlives the call.
    let rv = unsafe {
        crate::backend::bcall!(
            backend,
            C_WrapKey(
                session.handle(),
                &mut m,
                kek.handle(),
                key.handle(),
                std::ptr::null_mut(),
                &mut len
            )
        )
    };
    crate::backend::check("C_WrapKey", rv)?;
    let mut out = vec![0u8; len as usize];
    // SAFETY: a function of the backend's own list; every pointer is to a
    // local or buffer that outlives the call.
    let rv = unsafe {
        crate::backend::bcall!(
            backend,
            C_WrapKey(
                session.handle(),
                &mut m,
                kek.handle(),
                key.handle(),
                out.as_mut_ptr(),
                &mut len
            )
        )
    };
    crate::backend::check("C_WrapKey", rv)?;
    out.truncate(len as usize);
    Ok(out)
}

/// Unwrap an AES key wrapped with `mech` under the KEK and return its value.
/// The HSM unwraps into a short-lived, extractable session object whose value
/// is read once and destroyed at once.
pub fn keyunwrap(
    backend: &Backend,
    gate: &TempGate,
    session: &Session,
    kek: ObjectHandle,
    mech: CK_MECHANISM_TYPE,
    wrapped: &[u8],
) -> Result<SecretBytes> {
    let template = [
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::Token(false),
        Attribute::Sensitive(false),
        Attribute::Extractable(true),
    ];
    let _gate = gate.hold();
    let temp = unwrap_raw(backend, session, mech, kek, wrapped, &template)?;
    let handle = temp.handle();
    let value = read_value(backend, session, handle);
    let _ = session.destroy_object(temp);
    value
}

/// C_UnwrapKey with a parameterless mechanism (AES key wrap; cryptoki 0.12
/// has no `CKM_AES_KEY_WRAP_KWP`).
pub fn unwrap_raw(
    backend: &Backend,
    session: &Session,
    mech: CK_MECHANISM_TYPE,
    key: ObjectHandle,
    wrapped: &[u8],
    template: &[Attribute],
) -> Result<ObjectHandle> {
    let mut m = CK_MECHANISM {
        mechanism: mech,
        pParameter: std::ptr::null_mut(),
        ulParameterLen: 0,
    };
    let mut raw: Vec<CK_ATTRIBUTE> = template.iter().map(CK_ATTRIBUTE::from).collect();
    let mut handle: CK_OBJECT_HANDLE = 0;
    // SAFETY: a function of the backend's own list; every pointer is to a
    // local or buffer that outlives the call.
    let rv = unsafe {
        crate::backend::bcall!(
            backend,
            C_UnwrapKey(
                session.handle(),
                &mut m,
                key.handle(),
                wrapped.as_ptr() as *mut u8,
                wrapped.len() as CK_ULONG,
                raw.as_mut_ptr(),
                raw.len() as CK_ULONG,
                &mut handle
            )
        )
    };
    crate::backend::check("C_UnwrapKey", rv)?;
    // SAFETY: the backend just returned this handle for this session.
    Ok(unsafe { ObjectHandle::new_from_raw(handle) })
}

/// CKA_VALUE of a backend key straight into locked, zeroized memory (no
/// intermediate copy that would be freed unwiped).
fn read_value(
    backend: &Backend,
    session: &Session,
    handle: CK_OBJECT_HANDLE,
) -> Result<SecretBytes> {
    let mut attr = CK_ATTRIBUTE {
        type_: CKA_VALUE,
        pValue: std::ptr::null_mut(),
        ulValueLen: 0,
    };
    // SAFETY: a function of the backend's own list; every pointer is to a
    // local or buffer that outlives the call.
    let rv = unsafe {
        crate::backend::bcall!(
            backend,
            C_GetAttributeValue(session.handle(), handle, &mut attr, 1)
        )
    };
    crate::backend::check("C_GetAttributeValue", rv)?;
    let len = attr.ulValueLen as usize;
    if !(1..=64).contains(&len) {
        return Err(Error::Rv(CKR_WRAPPED_KEY_INVALID));
    }
    let mut out = SecretBytes::new(len);
    attr.pValue = out.as_mut_slice().as_mut_ptr() as *mut _;
    // SAFETY: a function of the backend's own list; every pointer is to a
    // local or buffer that outlives the call.
    let rv = unsafe {
        crate::backend::bcall!(
            backend,
            C_GetAttributeValue(session.handle(), handle, &mut attr, 1)
        )
    };
    crate::backend::check("C_GetAttributeValue", rv)?;
    if attr.ulValueLen as usize != len {
        return Err(Error::Rv(CKR_GENERAL_ERROR));
    }
    Ok(out)
}

/// Serialises the short-lived key copies made on the backend for key wrap
/// with searches through the module: while a search collects backend
/// objects, no such copy exists, so none is ever handed to a caller.
///
/// Re-entrant within a thread: a call that makes two copies (a DEK wrapping
/// a DEK on the HSM) holds it once.
#[derive(Default)]
pub struct TempGate(std::sync::RwLock<()>);

thread_local! {
    /// How many holds this thread has open (see `TempGate::hold`).
    static HOLDS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// An open hold of the gate; the outermost one has the lock.
pub struct TempHold<'a>(#[allow(dead_code)] Option<std::sync::RwLockWriteGuard<'a, ()>>);

impl Drop for TempHold<'_> {
    fn drop(&mut self) {
        HOLDS.with(|h| h.set(h.get().saturating_sub(1)));
    }
}

impl TempGate {
    /// Held while a temporary object exists.
    pub fn hold(&self) -> TempHold<'_> {
        let depth = HOLDS.with(|h| {
            let d = h.get();
            h.set(d + 1);
            d
        });
        TempHold(if depth == 0 {
            Some(crate::runtime::lock::unpoisoned(self.0.write()))
        } else {
            None
        })
    }
    /// Held while a search runs.
    pub fn search(&self) -> Option<std::sync::RwLockReadGuard<'_, ()>> {
        self.0.read().ok()
    }
}

/// The attributes of an AES KEK version, generated or imported: a private,
/// sensitive, never extractable token key for encrypt/decrypt/wrap/unwrap.
pub fn aes_template(label: &str, version: u32) -> Vec<Attribute> {
    vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Encrypt(true),
        Attribute::Decrypt(true),
        Attribute::Wrap(true),
        Attribute::Unwrap(true),
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Id(version_id(version)),
    ]
}

/// Make KEK version `version` on the HSM: AES-256 (see `aes_template`), or
/// an RSA key pair (see `rsa::generate`).
/// Returns the objects made.
pub fn generate(
    session: &Session,
    label: &str,
    version: u32,
    ty: KekType,
) -> Result<Vec<ObjectHandle>> {
    match ty {
        KekType::Aes256 => {
            let mut template = aes_template(label, version);
            template.push(Attribute::ValueLen(32.into()));
            let key = session
                .generate_key(&Mechanism::AesKeyGen, &template)
                .map_err(|e| Error::from_cryptoki("C_GenerateKey", e))?;
            Ok(vec![key])
        }
        KekType::Rsa(bits) => super::rsa::generate(session, label, version, bits),
    }
}

/// The type of a found KEK version.
pub fn kek_type(session: &Session, kek: KekKey) -> Result<KekType> {
    Ok(match kek {
        KekKey::Aes(_) => KekType::Aes256,
        KekKey::Rsa { private, .. } => KekType::Rsa(super::rsa::modulus_bits(session, private)?),
    })
}

/// Whether a KEK version object exists on the token (found by label and ID,
/// whatever its other attributes).
pub fn exists(session: &Session, label: &str, version: u32) -> Result<bool> {
    let template = [
        Attribute::Token(true),
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Id(version_id(version)),
    ];
    let found = session
        .find_objects(&template)
        .map_err(|e| Error::from_cryptoki("C_FindObjects", e))?;
    Ok(!found.is_empty())
}

/// Whether every object of KEK version `version` was made on the HSM and
/// never left it (CKA_LOCAL; secret and private keys also
/// CKA_ALWAYS_SENSITIVE and CKA_NEVER_EXTRACTABLE): only such leftovers of
/// a crashed rotation are adopted. A key someone imported under the KEK's
/// label has a value they know.
pub fn made_on_hsm(session: &Session, label: &str, version: u32) -> Result<bool> {
    let template = [
        Attribute::Token(true),
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Id(version_id(version)),
    ];
    let found = session
        .find_objects(&template)
        .map_err(|e| Error::from_cryptoki("C_FindObjects", e))?;
    for h in found {
        let class = session
            .get_attributes(h, &[AttributeType::Class, AttributeType::Local])
            .map_err(|e| Error::from_cryptoki("C_GetAttributeValue", e))?;
        let mut local = false;
        let mut public = false;
        for a in class {
            match a {
                Attribute::Local(l) => local = l,
                Attribute::Class(c) => public = c == ObjectClass::PUBLIC_KEY,
                _ => {}
            }
        }
        if !local {
            return Ok(false);
        }
        if public {
            continue;
        }
        let kept = session
            .get_attributes(
                h,
                &[
                    AttributeType::AlwaysSensitive,
                    AttributeType::NeverExtractable,
                ],
            )
            .map_err(|e| Error::from_cryptoki("C_GetAttributeValue", e))?;
        let on = kept
            .iter()
            .filter(|a| {
                matches!(
                    a,
                    Attribute::AlwaysSensitive(true) | Attribute::NeverExtractable(true)
                )
            })
            .count();
        if on != 2 {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Whether a KEK version may still be used: CKA_DECRYPT and CKA_UNWRAP both
/// on. The customer revokes by turning either off, or by deleting the key.
pub fn enabled(session: &Session, kek: KekKey) -> Result<bool> {
    let attrs = session
        .get_attributes(
            kek.opener(),
            &[AttributeType::Decrypt, AttributeType::Unwrap],
        )
        .map_err(|e| Error::from_cryptoki("C_GetAttributeValue", e))?;
    let mut on = 0;
    for a in attrs {
        if matches!(a, Attribute::Decrypt(true) | Attribute::Unwrap(true)) {
            on += 1;
        }
    }
    Ok(on == 2)
}

/// Whether the session's user is logged in (so a KEK that cannot be found
/// is really gone, not merely private).
pub fn logged_in(session: &Session) -> Result<bool> {
    let info = session
        .get_session_info()
        .map_err(|e| Error::from_cryptoki("C_GetSessionInfo", e))?;
    Ok(matches!(
        info.session_state(),
        cryptoki::session::SessionState::RoUser | cryptoki::session::SessionState::RwUser
    ))
}
