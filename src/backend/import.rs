//! Bring-your-own-key on the backend. The customer's key material arrives
//! as the usual two-layer transfer blob (what `CKM_RSA_AES_KEY_WRAP` makes,
//! and Azure, AWS KMS and Vault accept):
//!
//! ```text
//! RSA-OAEP(import public key, ephemeral AES-256 key) || AES-KWP(ephemeral, key material)
//! ```
//!
//! The import key pair is made on the HSM for this (label: the KEK's, so the
//! module guards it like the KEK; CKA_ID [`IMPORT_KEY_ID`]), and only its
//! public half leaves. The blob is opened in two unwraps on the HSM (many
//! backends, SoftHSM2 among them, lack `CKM_RSA_AES_KEY_WRAP`), so neither
//! the ephemeral key nor the material is ever outside it. The material is an
//! AES-256 key, or an RSA private key as PKCS#8 PrivateKeyInfo.

use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;

use super::kek::{aes_template, version_id};
use super::rsa;
use cryptoki_sys::*;

use super::wrap_alg::WrapAlg;
use crate::backend::{bcall, Backend};
use crate::error::{Error, Result};

/// CKA_ID of the import key pair. No KEK version has it: version IDs are 1
/// to 4 bytes.
pub const IMPORT_KEY_ID: &[u8] = b"byok-import";
/// AES-KWP output for a 32-byte key (RFC 5649: padded to 8, plus 8).
const AES256_KWP_LEN: usize = 40;
/// Size of a new import key. AWS and Azure offer 2048 to 4096 bits.
pub const DEFAULT_IMPORT_BITS: u32 = 3072;

/// The import key pair on the HSM.
#[derive(Clone, Copy, Debug)]
pub struct ImportKey {
    pub private: ObjectHandle,
    pub public: ObjectHandle,
}

/// The kind of material a blob carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Material {
    Aes256,
    /// An RSA private key of 2048 bits or more, PKCS#8.
    Rsa,
}

fn id_template(label: &str) -> [Attribute; 3] {
    [
        Attribute::Token(true),
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Id(IMPORT_KEY_ID.to_vec()),
    ]
}

/// The import key pair of KEK `label`, if there is one.
pub fn find_import_key(session: &Session, label: &str) -> Result<Option<ImportKey>> {
    let found = |class| {
        let mut t = id_template(label).to_vec();
        t.push(Attribute::Class(class));
        session
            .find_objects(&t)
            .map_err(|e| Error::from_cryptoki("C_FindObjects", e))
    };
    match (
        found(ObjectClass::PRIVATE_KEY)?.as_slice(),
        found(ObjectClass::PUBLIC_KEY)?.as_slice(),
    ) {
        ([], []) => Ok(None),
        ([private], [public]) => Ok(Some(ImportKey {
            private: *private,
            public: *public,
        })),
        _ => Err(Error::admin(format!(
            "the import key of KEK '{label}' is incomplete or ambiguous on the HSM; run `hsm-envelope kek import-key --new`"
        ))),
    }
}

/// Make a new import key pair (destroying any old one): the private half
/// only unwraps, and only the public half can be read.
pub fn create_import_key(session: &Session, label: &str, bits: u32) -> Result<ImportKey> {
    destroy_import_key(session, label)?;
    let id = IMPORT_KEY_ID.to_vec();
    let public = vec![
        Attribute::Class(ObjectClass::PUBLIC_KEY),
        Attribute::KeyType(KeyType::RSA),
        Attribute::Token(true),
        Attribute::Private(false),
        // Encrypt: the OAEP hash the HSM takes is found by a trial encryption.
        Attribute::Encrypt(true),
        Attribute::Wrap(true),
        Attribute::Verify(false),
        Attribute::VerifyRecover(false),
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Id(id.clone()),
        Attribute::ModulusBits(u64::from(bits).into()),
        Attribute::PublicExponent(vec![1, 0, 1]),
    ];
    // Only unwraps, only with OAEP: no decryption or signing oracle.
    let mut private = rsa::private_template(label, id);
    for a in private.iter_mut() {
        match a {
            Attribute::Decrypt(d) | Attribute::Sign(d) => *d = false,
            Attribute::AllowedMechanisms(m) => *m = vec![MechanismType::RSA_PKCS_OAEP],
            _ => {}
        }
    }
    let (public, private) = session
        .generate_key_pair(&Mechanism::RsaPkcsKeyPairGen, &public, &private)
        .map_err(|e| Error::from_cryptoki("C_GenerateKeyPair", e))?;
    Ok(ImportKey { private, public })
}

impl ImportKey {
    /// Destroy this pair (after a successful import: each import key brings
    /// in one key).
    pub fn destroy(&self, session: &Session) -> Result<()> {
        for h in [self.private, self.public] {
            session
                .destroy_object(h)
                .map_err(|e| Error::from_cryptoki("C_DestroyObject", e))?;
        }
        Ok(())
    }
}

/// Destroy the import key pair of `label`, if any.
pub fn destroy_import_key(session: &Session, label: &str) -> Result<()> {
    let found = session
        .find_objects(&id_template(label))
        .map_err(|e| Error::from_cryptoki("C_FindObjects", e))?;
    for h in found {
        session
            .destroy_object(h)
            .map_err(|e| Error::from_cryptoki("C_DestroyObject", e))?;
    }
    Ok(())
}

/// What the customer needs to make a blob: the public key (DER
/// SubjectPublicKeyInfo), its size and the OAEP hash to use.
pub struct ImportKeyInfo {
    pub spki: Vec<u8>,
    pub bits: u32,
    pub oaep: WrapAlg,
}

pub fn describe(backend: &Backend, session: &Session, key: &ImportKey) -> Result<ImportKeyInfo> {
    let (n, e) = rsa::public_parts(session, key.public)?;
    Ok(ImportKeyInfo {
        spki: rsa::spki_der(&n, &e),
        bits: rsa::modulus_bits(session, key.public)?,
        oaep: rsa::detect_oaep(backend, session, key.public)?,
    })
}

/// The AES-KWP (RFC 5649) mechanism: `CKM_AES_KEY_WRAP_KWP` where the
/// backend offers it, else `CKM_AES_KEY_WRAP_PAD`, which SoftHSM2 implements
/// as RFC 5649. (On a backend whose `CKM_AES_KEY_WRAP_PAD` is something
/// else, the unwrap fails and the import is refused; nothing is guessed.)
fn kwp(backend: &Backend, session: &Session) -> Result<CK_MECHANISM_TYPE> {
    let slot = session
        .get_session_info()
        .map_err(|e| Error::from_cryptoki("C_GetSessionInfo", e))?
        .slot_id()
        .id();
    let mut info = CK_MECHANISM_INFO::default();
    // SAFETY: a function of the backend's own list; every pointer is to a
    // local or buffer that outlives the call.
    let rv = unsafe {
        bcall!(
            backend,
            C_GetMechanismInfo(slot, CKM_AES_KEY_WRAP_KWP, &mut info)
        )
    };
    Ok(if rv == CKR_OK {
        CKM_AES_KEY_WRAP_KWP
    } else {
        CKM_AES_KEY_WRAP_PAD
    })
}

/// Open a transfer blob with the import key and make its material KEK
/// version `version` of `label`. Returns the new version's objects.
pub fn import(
    backend: &Backend,
    session: &Session,
    key: &ImportKey,
    blob: &[u8],
    material: Material,
    label: &str,
    version: u32,
) -> Result<Vec<ObjectHandle>> {
    let block = (rsa::modulus_bits(session, key.public)? as usize).div_ceil(8);
    // KWP output is at least 16 bytes.
    if blob.len() < block + 16 {
        return Err(Error::admin(format!(
            "the transfer file is {} bytes: too short for a {}-byte RSA-OAEP block followed by AES-KWP output",
            blob.len(),
            block
        )));
    }
    let (wrapped_key, wrapped_material) = blob.split_at(block);
    let oaep = rsa::detect_oaep(backend, session, key.public)?;
    let ephemeral = session
        .unwrap_key(
            &rsa::oaep_mechanism(oaep),
            key.private,
            wrapped_key,
            &[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::AES),
                Attribute::Token(false),
                Attribute::Private(true),
                Attribute::Sensitive(true),
                Attribute::Extractable(false),
                Attribute::Unwrap(true),
                Attribute::Encrypt(false),
                Attribute::Decrypt(false),
            ],
        )
        .map_err(|e| {
            crate::log_warn!("BYOK: RSA-OAEP unwrap of the transfer key failed: {e}");
            Error::admin(format!(
                "the transfer file's first {block} bytes do not open with this HSM's import key: was it made for this import key's public half, with {}?",
                oaep_name(oaep)
            ))
        })?;
    let result = unwrap_material(
        backend,
        session,
        ephemeral,
        wrapped_material,
        material,
        label,
        version,
    );
    let _ = session.destroy_object(ephemeral);
    result
}

pub fn oaep_name(alg: WrapAlg) -> &'static str {
    match alg {
        WrapAlg::RsaOaepSha256 => "RSA-OAEP with SHA-256 and MGF1-SHA-256",
        _ => "RSA-OAEP with SHA-1 and MGF1-SHA-1",
    }
}

fn unwrap_material(
    backend: &Backend,
    session: &Session,
    ephemeral: ObjectHandle,
    wrapped: &[u8],
    material: Material,
    label: &str,
    version: u32,
) -> Result<Vec<ObjectHandle>> {
    let template = match material {
        Material::Aes256 => {
            // The backend may not say how long an unwrapped key is
            // (SoftHSM2 leaves CKA_VALUE_LEN 0 and refuses it in the
            // template), so the length is checked here: AES-KWP of 32
            // bytes is exactly 40, of 25 to 31 no AES key at all.
            if wrapped.len() != AES256_KWP_LEN {
                return Err(Error::admin(format!(
                    "the wrapped key material is {} bytes, not the {AES256_KWP_LEN} of AES-KWP over a 32-byte key: this is not an AES-256 key",
                    wrapped.len()
                )));
            }
            aes_template(label, version)
        }
        Material::Rsa => rsa::private_template(label, version_id(version)),
    };
    let mech = kwp(backend, session)?;
    let made = super::kek::unwrap_raw(backend, session, mech, ephemeral, wrapped, &template)
        .map_err(|e| {
            crate::log_warn!("BYOK: AES-KWP unwrap of the key material failed: {e}");
            Error::admin(format!(
                "the key material does not unwrap: the file is corrupt, or it is not {}",
                match material {
                    Material::Aes256 => "an AES-256 key",
                    Material::Rsa => "an RSA private key in PKCS#8",
                }
            ))
        })?;
    let checked = match material {
        Material::Aes256 => Ok(vec![made]),
        Material::Rsa => check_rsa(session, made, label, version),
    };
    if checked.is_err() {
        let _ = session.destroy_object(made);
    }
    checked
}

/// An imported RSA key must be 2048 bits or more; its public half is made
/// from the private key's modulus and exponent.
fn check_rsa(
    session: &Session,
    private: ObjectHandle,
    label: &str,
    version: u32,
) -> Result<Vec<ObjectHandle>> {
    let bits = rsa::modulus_bits(session, private)?;
    if bits < rsa::MIN_KEK_BITS {
        return Err(Error::admin(format!(
            "the RSA key has {bits} bits; a KEK needs {} or more",
            rsa::MIN_KEK_BITS
        )));
    }
    let (_, e) = rsa::public_parts(session, private)?;
    if !rsa::exponent_ok(&e) {
        return Err(Error::admin(
            "the RSA key's public exponent is even or under 65537; a KEK needs 65537 or more",
        ));
    }
    let public = rsa::make_public(
        session,
        private,
        rsa::public_template(label, version_id(version)),
    )?;
    Ok(vec![private, public])
}
