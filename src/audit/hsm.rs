//! Checkpoint MACs on the HSM: HMAC-SHA256 (CKM_SHA256_HMAC) with a
//! generic-secret token key found by its label (`audit_hmac_label`). The key
//! never leaves the HSM; verifying recomputes the MAC there and compares in
//! constant time.

use crate::runtime::lock::unpoisoned;
use std::sync::Mutex;

use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;

use super::{CheckpointSigner, CheckpointVerifier};
use crate::error::{Error, Result};

/// Runs an operation on a logged-in backend session.
pub type WithSession =
    dyn Fn(&dyn Fn(&Session) -> Result<Vec<u8>>) -> Result<Vec<u8>> + Send + Sync;

/// Signs and verifies checkpoints with the HMAC key labelled `label`.
pub struct HsmMac {
    label: String,
    with_session: Box<WithSession>,
}

impl HsmMac {
    /// `with_session(op)` must run `op` on a logged-in session of the token
    /// that holds the key, e.g. the module's backend session pool:
    /// `HsmMac::new(label, move |op| pool.with(&pkcs11, |s| op(s)))`.
    /// It is called while the audit log is locked: it must not itself write
    /// to the audit log.
    pub fn new(
        label: impl Into<String>,
        with_session: impl Fn(&dyn Fn(&Session) -> Result<Vec<u8>>) -> Result<Vec<u8>>
            + Send
            + Sync
            + 'static,
    ) -> HsmMac {
        HsmMac {
            label: label.into(),
            with_session: Box::new(with_session),
        }
    }

    /// Uses one session of its own (logged in as the user), e.g. in the
    /// admin tool or in tests. Dropping the `HsmMac` closes the session (a
    /// backend call): inside the module use [`HsmMac::new`] with the backend
    /// session pool instead.
    pub fn from_session(session: Session, label: impl Into<String>) -> HsmMac {
        let session = Mutex::new(session);
        HsmMac::new(label, move |op| {
            let s = unpoisoned(session.lock());
            op(&s)
        })
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    /// HMAC-SHA256 of `msg` on the HSM.
    pub fn mac(&self, msg: &[u8]) -> Result<Vec<u8>> {
        let label = self.label.as_str();
        (self.with_session)(&|s: &Session| {
            let key = find_key(s, label)?;
            s.sign(&Mechanism::Sha256Hmac, key, msg)
                .map_err(|e| Error::from_cryptoki("C_Sign", e))
        })
    }
}

impl CheckpointSigner for HsmMac {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>> {
        self.mac(msg)
    }
}

impl CheckpointVerifier for HsmMac {
    fn verify(&self, msg: &[u8], mac: &[u8]) -> Result<bool> {
        Ok(ct_eq(&self.mac(msg)?, mac))
    }
}

/// Constant-time in the contents (the lengths are public).
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y));
    std::hint::black_box(diff) == 0
}

fn key_template(label: &str) -> Vec<Attribute> {
    vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::GENERIC_SECRET),
        Attribute::Token(true),
        Attribute::Label(label.as_bytes().to_vec()),
    ]
}

/// The token's one generic-secret key labelled `label` that may sign.
/// None, or more than one (which one would the verifier use?), is an error.
pub fn find_key(session: &Session, label: &str) -> Result<ObjectHandle> {
    let mut template = key_template(label);
    template.push(Attribute::Sign(true));
    let found = session
        .find_objects(&template)
        .map_err(|e| Error::from_cryptoki("C_FindObjects", e))?;
    match found.as_slice() {
        [one] => Ok(*one),
        [] => Err(Error::admin(format!(
            "audit HMAC key '{label}' (generic secret, CKA_SIGN) not found on the token \
             (is the session logged in? softhsm-config/new-token.sh creates it)"
        ))),
        many => Err(Error::admin(format!(
            "{} generic-secret keys are labelled '{label}': expected exactly one",
            many.len()
        ))),
    }
}

/// Makes the audit HMAC key if the token has none labelled `label`: 32
/// bytes generated on the HSM, token, private, sensitive, never extractable,
/// sign/verify only. Returns true if it made one. For `kek create`.
pub fn ensure_key(session: &Session, label: &str) -> Result<bool> {
    let found = session
        .find_objects(&key_template(label))
        .map_err(|e| Error::from_cryptoki("C_FindObjects", e))?;
    if !found.is_empty() {
        find_key(session, label)?;
        return Ok(false);
    }
    let mut template = key_template(label);
    template.extend([
        Attribute::ValueLen(32.into()),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Sign(true),
        Attribute::Verify(true),
        Attribute::Encrypt(false),
        Attribute::Decrypt(false),
        Attribute::Wrap(false),
        Attribute::Unwrap(false),
        Attribute::Derive(false),
    ]);
    session
        .generate_key(&Mechanism::GenericSecretKeyGen, &template)
        .map_err(|e| Error::from_cryptoki("C_GenerateKey", e))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::ct_eq;

    #[test]
    fn ct_eq_compares_contents_and_lengths() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"ab"));
        assert!(ct_eq(b"", b""));
    }
}
