//! RSA KEKs on the backend: key pairs, RSA-OAEP sealing and opening of DEK
//! values, and RSA-PSS signatures over the records. OAEP takes SHA-256
//! where the backend does, else SHA-1 (SoftHSM2 2.6 refuses any other hash
//! with `CKR_ARGUMENTS_BAD`); the record says which was used.
//!
//! Why records are signed: anyone can encrypt to a public key, so an OAEP
//! block alone proves nothing about who made it; an application able to
//! write the store could plant a DEK value of its choosing. The PSS
//! signature (made by the HSM with the KEK's private half, checked before
//! the block is opened) makes RSA records as unforgeable as AES-GCM ones.
//! One RSA key serving OAEP and PSS is safe (Haber and Pinkas, "Securely
//! combining public-key cryptosystems", CCS 2001), and the key does nothing
//! else: `CKA_ALLOWED_MECHANISMS` names just these two.

use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use cryptoki_sys::*;

use super::kek::version_id;
use super::wrap_alg::{WrapAlg, RSA_MAX_BLOCK};
use crate::backend::{bcall, oneshot, Backend};
use crate::error::{Error, Result};
use crate::secret::SecretBytes;

/// RSA keys under 2048 bits are refused as KEKs (NIST SP 800-131A).
pub const MIN_KEK_BITS: u32 = 2048;
const PUBLIC_EXPONENT: [u8; 3] = [0x01, 0x00, 0x01];
/// What an RSA KEK may do: wrap (OAEP) and sign records (PSS, SHA-256).
const KEK_MECHANISMS: [MechanismType; 2] = [
    MechanismType::RSA_PKCS_OAEP,
    MechanismType::SHA256_RSA_PKCS_PSS,
];

/// CK_RSA_PKCS_PSS_PARAMS: SHA-256, MGF1-SHA-256, 32-byte salt.
fn pss_params() -> CK_RSA_PKCS_PSS_PARAMS {
    CK_RSA_PKCS_PSS_PARAMS {
        hashAlg: CKM_SHA256,
        mgf: CKG_MGF1_SHA256,
        sLen: 32,
    }
}

fn pss_mechanism(params: &mut CK_RSA_PKCS_PSS_PARAMS) -> CK_MECHANISM {
    CK_MECHANISM {
        mechanism: CKM_SHA256_RSA_PKCS_PSS,
        pParameter: params as *mut CK_RSA_PKCS_PSS_PARAMS as *mut _,
        ulParameterLen: size_of::<CK_RSA_PKCS_PSS_PARAMS>() as CK_ULONG,
    }
}

/// RSA-PSS signature over `data` with the KEK's private half, on the HSM.
pub fn pss_sign(
    backend: &Backend,
    session: &Session,
    private: ObjectHandle,
    data: &[u8],
) -> Result<Vec<u8>> {
    let mut params = pss_params();
    let mut mech = pss_mechanism(&mut params);
    let sh = session.handle();
    crate::backend::check(
        "C_SignInit",
        // SAFETY: a function of the backend's own list; every pointer is to a
        // local or buffer that outlives the call.
        unsafe { bcall!(backend, C_SignInit(sh, &mut mech, private.handle())) },
    )?;
    let mut out = vec![0u8; RSA_MAX_BLOCK];
    let mut len = out.len() as CK_ULONG;
    // SAFETY: a function of the backend's own list; every pointer is to a
    // local or buffer that outlives the call.
    let rv = unsafe {
        bcall!(
            backend,
            C_Sign(
                sh,
                data.as_ptr() as *mut u8,
                data.len() as CK_ULONG,
                out.as_mut_ptr(),
                &mut len
            )
        )
    };
    crate::backend::check("C_Sign", rv)?;
    out.truncate(len as usize);
    Ok(out)
}

/// Whether `signature` is the KEK's RSA-PSS signature over `data`, checked
/// on the HSM with the public half.
pub fn pss_verify(
    backend: &Backend,
    session: &Session,
    public: ObjectHandle,
    data: &[u8],
    signature: &[u8],
) -> Result<bool> {
    let mut params = pss_params();
    let mut mech = pss_mechanism(&mut params);
    let sh = session.handle();
    crate::backend::check(
        "C_VerifyInit",
        // SAFETY: a function of the backend's own list; every pointer is to a
        // local or buffer that outlives the call.
        unsafe { bcall!(backend, C_VerifyInit(sh, &mut mech, public.handle())) },
    )?;
    // SAFETY: a function of the backend's own list; every pointer is to a
    // local or buffer that outlives the call.
    let rv = unsafe {
        bcall!(
            backend,
            C_Verify(
                sh,
                data.as_ptr() as *mut u8,
                data.len() as CK_ULONG,
                signature.as_ptr() as *mut u8,
                signature.len() as CK_ULONG
            )
        )
    };
    match rv {
        CKR_OK => Ok(true),
        CKR_SIGNATURE_INVALID | CKR_SIGNATURE_LEN_RANGE => Ok(false),
        rv => Err(Error::backend("C_Verify", rv)),
    }
}

/// CK_RSA_PKCS_OAEP_PARAMS for `alg`, with an empty label.
fn oaep_params(alg: WrapAlg) -> CK_RSA_PKCS_OAEP_PARAMS {
    let (hash, mgf) = match alg {
        WrapAlg::RsaOaepSha256 => (CKM_SHA256, CKG_MGF1_SHA256),
        _ => (CKM_SHA_1, CKG_MGF1_SHA1),
    };
    CK_RSA_PKCS_OAEP_PARAMS {
        hashAlg: hash,
        mgf,
        source: CKZ_DATA_SPECIFIED,
        pSourceData: std::ptr::null_mut(),
        ulSourceDataLen: 0,
    }
}

/// The same parameters for cryptoki's typed API.
pub fn oaep_mechanism(alg: WrapAlg) -> Mechanism<'static> {
    use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsOaepParams, PkcsOaepSource};
    use cryptoki::mechanism::MechanismType;
    let (hash, mgf) = match alg {
        WrapAlg::RsaOaepSha256 => (MechanismType::SHA256, PkcsMgfType::MGF1_SHA256),
        _ => (MechanismType::SHA1, PkcsMgfType::MGF1_SHA1),
    };
    Mechanism::RsaPkcsOaep(PkcsOaepParams::new(hash, mgf, PkcsOaepSource::empty()))
}

/// Whether a backend error means "this OAEP hash is not taken here".
pub fn is_hash_refused(e: &Error) -> bool {
    matches!(
        e,
        Error::Backend(b) if b.func == "C_EncryptInit"
            && matches!(b.rv, CKR_ARGUMENTS_BAD | CKR_MECHANISM_PARAM_INVALID | CKR_MECHANISM_INVALID)
    )
}

fn oaep_mechanism_raw(params: &mut CK_RSA_PKCS_OAEP_PARAMS) -> CK_MECHANISM {
    CK_MECHANISM {
        mechanism: CKM_RSA_PKCS_OAEP,
        pParameter: params as *mut CK_RSA_PKCS_OAEP_PARAMS as *mut _,
        ulParameterLen: size_of::<CK_RSA_PKCS_OAEP_PARAMS>() as CK_ULONG,
    }
}

/// RSA-OAEP encryption of `plain` with a public key, on the HSM (two calls).
pub fn oaep_seal(
    backend: &Backend,
    session: &Session,
    public: ObjectHandle,
    alg: WrapAlg,
    plain: &[u8],
) -> Result<Vec<u8>> {
    let mut params = oaep_params(alg);
    let mut mech = oaep_mechanism_raw(&mut params);
    oneshot::encrypt(backend, session, &mut mech, public, plain, RSA_MAX_BLOCK)
}

/// RSA-OAEP decryption of one block with the private key, on the HSM,
/// straight into locked memory. A block that does not decrypt is
/// `CKR_HSME_RECORD_INVALID`.
pub fn oaep_open(
    backend: &Backend,
    session: &Session,
    private: ObjectHandle,
    alg: WrapAlg,
    block: &[u8],
) -> Result<SecretBytes> {
    let mut params = oaep_params(alg);
    let mut mech = oaep_mechanism_raw(&mut params);
    oneshot::decrypt(backend, session, &mut mech, private, block)
}

/// Which OAEP hash the backend takes with this public key: SHA-256 if a
/// trial encryption with it works, else SHA-1.
pub fn detect_oaep(backend: &Backend, session: &Session, public: ObjectHandle) -> Result<WrapAlg> {
    match oaep_seal(backend, session, public, WrapAlg::RsaOaepSha256, &[0u8; 32]) {
        Ok(_) => Ok(WrapAlg::RsaOaepSha256),
        Err(e) if is_hash_refused(&e) => Ok(WrapAlg::RsaOaepSha1),
        Err(e) => Err(e),
    }
}

/// Length in bits of an RSA key's modulus (public on both halves).
pub fn modulus_bits(session: &Session, key: ObjectHandle) -> Result<u32> {
    let n = modulus(session, key)?;
    let lead = n.iter().position(|b| *b != 0).unwrap_or(n.len());
    let n = &n[lead..];
    let top = n.first().map_or(0, |b| 8 - b.leading_zeros());
    Ok(((n.len().saturating_sub(1)) * 8) as u32 + top)
}

/// CKA_MODULUS and CKA_PUBLIC_EXPONENT of an RSA key.
pub fn public_parts(session: &Session, key: ObjectHandle) -> Result<(Vec<u8>, Vec<u8>)> {
    let attrs = session
        .get_attributes(
            key,
            &[AttributeType::Modulus, AttributeType::PublicExponent],
        )
        .map_err(|e| Error::from_cryptoki("C_GetAttributeValue", e))?;
    let (mut n, mut e) = (None, None);
    for a in attrs {
        match a {
            Attribute::Modulus(v) => n = Some(v),
            Attribute::PublicExponent(v) => e = Some(v),
            _ => {}
        }
    }
    match (n, e) {
        (Some(n), Some(e)) if !n.is_empty() && !e.is_empty() => Ok((n, e)),
        _ => Err(Error::Rv(CKR_KEY_TYPE_INCONSISTENT)),
    }
}

fn modulus(session: &Session, key: ObjectHandle) -> Result<Vec<u8>> {
    public_parts(session, key).map(|(n, _)| n)
}

/// The public half of an RSA KEK version: a private token object (visible
/// only when logged in), to seal values and check record signatures.
pub fn public_template(label: &str, id: Vec<u8>) -> Vec<Attribute> {
    vec![
        Attribute::Class(ObjectClass::PUBLIC_KEY),
        Attribute::KeyType(KeyType::RSA),
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Encrypt(true),
        Attribute::Verify(true),
        Attribute::Wrap(false),
        Attribute::VerifyRecover(false),
        Attribute::Derive(false),
        Attribute::AllowedMechanisms(KEK_MECHANISMS.to_vec()),
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Id(id),
    ]
}

/// The private half: sensitive, never extractable, to open values and sign
/// records, nothing else.
pub fn private_template(label: &str, id: Vec<u8>) -> Vec<Attribute> {
    vec![
        Attribute::Class(ObjectClass::PRIVATE_KEY),
        Attribute::KeyType(KeyType::RSA),
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Decrypt(true),
        Attribute::Unwrap(true),
        Attribute::Sign(true),
        Attribute::SignRecover(false),
        Attribute::Derive(false),
        Attribute::AllowedMechanisms(KEK_MECHANISMS.to_vec()),
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Id(id),
    ]
}

/// Whether an RSA public exponent is acceptable for a KEK: odd and at
/// least 65537 (FIPS 186-5 asks for 2^16 < e < 2^256).
pub fn exponent_ok(e: &[u8]) -> bool {
    let lead = e.iter().position(|b| *b != 0).unwrap_or(e.len());
    let e = &e[lead..];
    let odd = e.last().is_some_and(|b| b & 1 == 1);
    let big_enough = e.len() > 3 || (e.len() == 3 && e >= [0x01, 0x00, 0x01].as_slice());
    odd && big_enough && e.len() <= 32
}

/// Make an RSA KEK version: a key pair of `bits` bits, exponent 65537.
pub fn generate(
    session: &Session,
    label: &str,
    version: u32,
    bits: u32,
) -> Result<Vec<ObjectHandle>> {
    if bits < MIN_KEK_BITS {
        return Err(Error::Rv(CKR_KEY_SIZE_RANGE));
    }
    let mut public = public_template(label, version_id(version));
    public.push(Attribute::ModulusBits(u64::from(bits).into()));
    public.push(Attribute::PublicExponent(PUBLIC_EXPONENT.to_vec()));
    let (public, private) = session
        .generate_key_pair(
            &Mechanism::RsaPkcsKeyPairGen,
            &public,
            &private_template(label, version_id(version)),
        )
        .map_err(|e| Error::from_cryptoki("C_GenerateKeyPair", e))?;
    Ok(vec![private, public])
}

/// The public half of an RSA private key, made as a token object from the
/// private key's modulus and exponent.
pub fn make_public(
    session: &Session,
    private: ObjectHandle,
    template: Vec<Attribute>,
) -> Result<ObjectHandle> {
    let (n, e) = public_parts(session, private)?;
    let mut template = template;
    template.push(Attribute::Modulus(n));
    template.push(Attribute::PublicExponent(e));
    session
        .create_object(&template)
        .map_err(|e| Error::from_cryptoki("C_CreateObject", e))
}

/// The DER SubjectPublicKeyInfo of an RSA public key (RFC 8017 A.1.1 inside
/// RFC 5280 4.1), for exporting a public half to openssl and friends.
pub fn spki_der(modulus: &[u8], exponent: &[u8]) -> Vec<u8> {
    // rsaEncryption (1.2.840.113549.1.1.1) with NULL parameters.
    const ALG_ID: &[u8] = &[
        0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
    ];
    let rsa_key = der(0x30, &[der_uint(modulus), der_uint(exponent)].concat());
    let mut bits = vec![0u8]; // no unused bits
    bits.extend_from_slice(&rsa_key);
    der(0x30, &[ALG_ID.to_vec(), der(0x03, &bits)].concat())
}

/// PEM of a DER SubjectPublicKeyInfo.
pub fn spki_pem(der: &[u8]) -> String {
    let b64 = base64(der);
    let mut out = String::from("-----BEGIN PUBLIC KEY-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str("-----END PUBLIC KEY-----\n");
    out
}

fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let n = content.len();
    if n < 0x80 {
        out.push(n as u8);
    } else {
        let len = (n as u64).to_be_bytes();
        let first = len.iter().position(|b| *b != 0).unwrap_or(7);
        out.push(0x80 | (8 - first) as u8);
        out.extend_from_slice(&len[first..]);
    }
    out.extend_from_slice(content);
    out
}

/// A DER INTEGER of an unsigned big-endian number: leading zeros dropped,
/// one added when the top bit is set.
fn der_uint(n: &[u8]) -> Vec<u8> {
    let lead = n.iter().position(|b| *b != 0).unwrap_or(n.len());
    let n = &n[lead..];
    let mut v = Vec::with_capacity(n.len() + 1);
    if n.first().is_none_or(|b| b & 0x80 != 0) {
        v.push(0);
    }
    v.extend_from_slice(n);
    der(0x02, &v)
}

fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_exponents() {
        assert!(exponent_ok(&[1, 0, 1]));
        assert!(exponent_ok(&[0, 0, 1, 0, 1]));
        assert!(exponent_ok(&[1, 0, 0, 0, 1]));
        assert!(!exponent_ok(&[3]));
        assert!(!exponent_ok(&[1]));
        assert!(!exponent_ok(&[]));
        assert!(!exponent_ok(&[1, 0, 0]));
        assert!(!exponent_ok(&[0, 0xff, 0xff]));
    }

    #[test]
    fn base64_matches_rfc_4648_vectors() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(i.as_bytes()), o);
        }
    }

    #[test]
    fn der_lengths_and_integers() {
        assert_eq!(der(0x04, &[1, 2]), vec![0x04, 2, 1, 2]);
        let long = der(0x04, &[0; 300]);
        assert_eq!(&long[..4], &[0x04, 0x82, 0x01, 0x2c]);
        assert_eq!(der_uint(&[0x01, 0x00, 0x01]), vec![0x02, 3, 1, 0, 1]);
        assert_eq!(der_uint(&[0x00, 0x80]), vec![0x02, 2, 0, 0x80]);
        assert_eq!(der_uint(&[0, 0]), vec![0x02, 1, 0]);
    }

    /// A 2048-bit modulus gives the 294-byte SPKI every RSA-2048 public key
    /// file has (openssl reads these in the BYOK tests).
    #[test]
    fn spki_of_rsa_2048_has_the_usual_shape() {
        let mut n = vec![0xC5u8; 256];
        n[255] = 0x01;
        let d = spki_der(&n, &PUBLIC_EXPONENT);
        assert_eq!(d.len(), 294);
        assert_eq!(&d[..4], &[0x30, 0x82, 0x01, 0x22]);
        assert!(spki_pem(&d).starts_with(
            "-----BEGIN PUBLIC KEY-----\nMIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAxcXF"
        ));
    }
}
