//! Sealing and opening DEK values under the KEK. The KEK is only ever used
//! through backend calls; records bind the DEK's id and security attributes
//! as GCM additional data, so a record moved onto another row fails to open.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use cryptoki::object::ObjectHandle;
use cryptoki::slot::Slot;
use cryptoki_sys::*;

use super::cache::KeyCache;
use super::record::{WrapAlg, WrappedRecord};
use super::secret::SecretBytes;
use crate::backend::pool::SessionPool;
use crate::backend::{kek, Backend};
use crate::crypto::PreparedKey;
use crate::error::{Error, Result};
use crate::store::Store;
use crate::token::attributes::Attrs;
use crate::vendor::{CKR_HSME_KEK_UNAVAILABLE, CKR_HSME_RECORD_INVALID};

/// KEK version written into records; versions arrive with rotation.
pub const KEK_VERSION: u32 = 1;
const RECORD_IV_LEN: usize = 12;

pub struct Envelope {
    kek_label: String,
    pool: SessionPool,
    /// The KEK's backend handle, found once per login.
    kek: Mutex<Option<ObjectHandle>>,
    store_path: PathBuf,
    /// Opened on first use, in the process that uses it (never across fork).
    store: Mutex<Option<Store>>,
    pub cache: KeyCache,
    /// See `kek::TempGate`.
    pub temp_gate: kek::TempGate,
}

impl Envelope {
    pub fn new(kek_label: String, slot: Slot, store_path: PathBuf) -> Self {
        Envelope {
            kek_label,
            pool: SessionPool::new(slot),
            kek: Mutex::new(None),
            store_path,
            store: Mutex::new(None),
            cache: KeyCache::default(),
            temp_gate: kek::TempGate::default(),
        }
    }

    /// Run `f` with the store, opening it on first use.
    pub fn with_store<T>(&self, f: impl FnOnce(&Store) -> Result<T>) -> Result<T> {
        let mut guard = self
            .store
            .lock()
            .map_err(|_| Error::Rv(CKR_GENERAL_ERROR))?;
        if guard.is_none() {
            *guard = Some(Store::open(&self.store_path)?);
        }
        match guard.as_ref() {
            Some(s) => f(s),
            None => Err(Error::Rv(CKR_GENERAL_ERROR)),
        }
    }

    /// Run `f` with a pooled backend session and the KEK handle.
    fn with_kek<T>(
        &self,
        backend: &Backend,
        f: impl Fn(&cryptoki::session::Session, ObjectHandle) -> Result<T>,
    ) -> Result<T> {
        self.pool.with(backend.pkcs11(), |s| {
            let cached = *self.kek.lock().map_err(|_| Error::Rv(CKR_GENERAL_ERROR))?;
            let handle = match cached {
                Some(h) => h,
                None => {
                    let h = kek::find(s, &self.kek_label, KEK_VERSION)?;
                    if !kek::check_policy(s, h)? {
                        crate::log_error!(
                            "KEK '{}' is extractable or not sensitive; refusing to use it",
                            self.kek_label
                        );
                        return Err(Error::Rv(CKR_HSME_KEK_UNAVAILABLE));
                    }
                    if let Ok(mut k) = self.kek.lock() {
                        *k = Some(h);
                    }
                    h
                }
            };
            f(s, handle).map_err(|e| self.kek_error(e))
        })
    }

    /// A stale KEK handle or a lost login means the KEK must be found again.
    fn kek_error(&self, e: Error) -> Error {
        if let Error::Backend { rv, .. } = &e {
            if matches!(
                *rv,
                CKR_KEY_HANDLE_INVALID | CKR_OBJECT_HANDLE_INVALID | CKR_USER_NOT_LOGGED_IN
            ) {
                self.forget_kek();
                return Error::Rv(CKR_HSME_KEK_UNAVAILABLE);
            }
        }
        e
    }

    pub fn forget_kek(&self) {
        if let Ok(mut k) = self.kek.lock() {
            *k = None;
        }
    }

    /// Called when the login ends: KEK handle and every cached value go.
    pub fn on_logout(&self) {
        self.forget_kek();
        self.cache.clear();
    }

    /// Wrap `value` for the DEK `id` with attributes `attrs`; returns the
    /// encoded record.
    pub fn seal(
        &self,
        backend: &Backend,
        id: &[u8; 16],
        attrs: &Attrs,
        value: &[u8],
    ) -> Result<Vec<u8>> {
        let mut iv = [0u8; RECORD_IV_LEN];
        getrandom::fill(&mut iv).map_err(|_| Error::Rv(CKR_FUNCTION_FAILED))?;
        let mut rec = WrappedRecord {
            alg: WrapAlg::AesGcm256,
            kek_label: self.kek_label.clone(),
            kek_version: KEK_VERSION,
            iv: iv.to_vec(),
            ciphertext: Vec::new(),
        };
        let aad = rec.aad(id, &attrs.bound_encoding());
        rec.ciphertext = self.with_kek(backend, |s, k| kek::gcm_seal(s, k, &iv, &aad, value))?;
        Ok(rec.try_encode()?)
    }

    /// Unwrap a record on the HSM. Any change to the record, the id or the
    /// bound attributes makes the HSM's tag check fail.
    pub fn open(
        &self,
        backend: &Backend,
        id: &[u8; 16],
        attrs: &Attrs,
        record: &[u8],
    ) -> Result<SecretBytes> {
        let rec = WrappedRecord::decode(record)?;
        if rec.kek_label != self.kek_label || rec.kek_version != KEK_VERSION {
            crate::log_warn!(
                "DEK {} is wrapped under KEK '{}' v{}, which this module does not hold",
                hex(id),
                rec.kek_label,
                rec.kek_version
            );
            return Err(Error::Rv(CKR_HSME_KEK_UNAVAILABLE));
        }
        let aad = rec.aad(id, &attrs.bound_encoding());
        let value = self
            .with_kek(backend, |s, k| {
                kek::gcm_open(s, k, &rec.iv, &aad, &rec.ciphertext)
            })
            .inspect_err(|e| {
                if e.rv() == CKR_HSME_RECORD_INVALID {
                    crate::log_warn!("wrapped record of DEK {} failed authentication", hex(id));
                }
            })?;
        if Some(value.len() as CK_ULONG) != attrs.ulong(CKA_VALUE_LEN) {
            return Err(Error::Rv(CKR_HSME_RECORD_INVALID));
        }
        Ok(value)
    }

    /// The DEK's value: from the cache, or unwrapped on the HSM and cached.
    /// The DEK's prepared key: from the cache when it was unwrapped from this
    /// very record and attributes (`binding`), else unwrapped on the HSM.
    pub fn value(
        &self,
        backend: &Backend,
        id: &[u8; 16],
        attrs: &Attrs,
        record: &[u8],
        binding: &Arc<[u8]>,
    ) -> Result<Arc<PreparedKey>> {
        if let Some(v) = self.cache.get(id, binding) {
            return Ok(v);
        }
        let epoch = self.cache.epoch();
        let v = self.open(backend, id, attrs, record)?;
        Ok(self.cache.insert(*id, binding.clone(), v, epoch)?)
    }

    pub fn random(&self, backend: &Backend, out: &mut [u8]) -> Result<()> {
        self.pool.with(backend.pkcs11(), |s| kek::random(s, out))
    }

    /// Wrap `value` with the backend key `wrapping` (any AES key the
    /// caller may use, the KEK included) using an AES key-wrap mechanism.
    pub fn keywrap(
        &self,
        backend: &Backend,
        wrapping: CK_OBJECT_HANDLE,
        mech: CK_MECHANISM_TYPE,
        value: &[u8],
    ) -> Result<Vec<u8>> {
        // SAFETY: `wrapping` is a handle the backend gave this process.
        let w = unsafe { ObjectHandle::new_from_raw(wrapping) };
        self.pool.with(backend.pkcs11(), |s| {
            kek::keywrap(backend, &self.temp_gate, s, w, mech, value)
        })
    }

    pub fn keyunwrap(
        &self,
        backend: &Backend,
        unwrapping: CK_OBJECT_HANDLE,
        mech: CK_MECHANISM_TYPE,
        wrapped: &[u8],
    ) -> Result<SecretBytes> {
        // SAFETY: as above.
        let w = unsafe { ObjectHandle::new_from_raw(unwrapping) };
        self.pool.with(backend.pkcs11(), |s| {
            kek::keyunwrap(backend, &self.temp_gate, s, w, mech, wrapped)
        })
    }

    /// The application's last session closed: the pooled backend sessions
    /// go too, so the backend logs out as the spec says it must.
    pub fn close_sessions(&self) {
        self.pool.close_all();
        self.on_logout();
    }

    pub fn close(&self) {
        self.pool.close_all();
        self.cache.clear();
    }
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
