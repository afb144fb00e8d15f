//! Sealing and opening DEK values under the KEK. The KEK is only ever used
//! through backend calls; records bind the DEK's id and security attributes
//! as GCM additional data, so a record moved onto another row fails to open.
//!
//! The KEK has numbered versions (see `versions`): new records are sealed
//! under the primary one, and each record names the version that opens it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use cryptoki::slot::Slot;
use cryptoki_sys::*;

use super::attrs::Attrs;
use super::cache::KeyCache;
use super::record::{self, WrapAlg, WrappedRecord};
use crate::backend::kek::KekKey;
use crate::backend::pool::SessionPool;
use crate::backend::{kek, rsa, Backend};
use crate::config::Config;
use crate::crypto::PreparedKey;
use crate::error::{Error, Result};
use crate::hex::encode as hex;
use crate::secret::SecretBytes;
use crate::store::Store;
use crate::vendor::{CKR_HSME_KEK_REVOKED, CKR_HSME_KEK_UNAVAILABLE, CKR_HSME_RECORD_INVALID};

const RECORD_IV_LEN: usize = 12;

/// What the envelope needs from the configuration.
#[derive(Clone, Debug)]
pub struct Settings {
    pub kek_label: String,
    pub store_path: PathBuf,
    /// How long a process trusts its view of the primary KEK version.
    pub refresh: Duration,
    /// Rotate when the primary version is older than this.
    pub rotate_after: Option<Duration>,
    /// Re-wrap a record under the primary version when it is used.
    pub lazy_rewrap: bool,
    /// Refuse to open records under older versions.
    pub min_decrypt_version: Option<u32>,
    /// How long a destroyed token DEK stays recoverable.
    pub retention: Duration,
    /// Purge protection as configured (None: as the store says).
    pub purge_protection: Option<bool>,
    /// Cached DEKs are re-checked against their KEK version this often.
    pub soft_ttl: Duration,
    /// Cached DEKs outlive an unreachable HSM this long (zero: not at all).
    pub hard_ttl: Duration,
}

impl From<&Config> for Settings {
    fn from(c: &Config) -> Settings {
        Settings {
            kek_label: c.kek_label.clone(),
            store_path: c.store_path.clone(),
            refresh: std::time::Duration::from_secs(c.refresh_secs),
            rotate_after: c
                .rotate_after_days
                .map(|d| std::time::Duration::from_secs(u64::from(d) * 86_400)),
            lazy_rewrap: c.lazy_rewrap,
            min_decrypt_version: c.min_decrypt_version,
            retention: std::time::Duration::from_secs(u64::from(c.retention_days) * 86_400),
            purge_protection: c.purge_protection,
            soft_ttl: std::time::Duration::from_secs(c.cache_soft_ttl_secs),
            hard_ttl: std::time::Duration::from_secs(c.cache_hard_ttl_secs),
        }
    }
}

/// This process's view of the KEK versions.
#[derive(Clone, Copy)]
pub(super) struct View {
    pub primary: u32,
    pub loaded: Instant,
}

pub struct Envelope {
    pub(super) settings: Settings,
    pub(super) pool: SessionPool,
    /// Backend handles of KEK versions, found once per login.
    handles: Mutex<HashMap<u32, KekKey>>,
    /// The OAEP hash this backend takes (a `WrapAlg` byte; 0: not known
    /// yet), found by the first seal under an RSA KEK.
    oaep: AtomicU8,
    pub(super) view: RwLock<Option<View>>,
    /// Opened on first use, in the process that uses it (never across fork).
    store: Mutex<Option<Store>>,
    pub cache: KeyCache,
    /// See `kek::TempGate`.
    pub temp_gate: kek::TempGate,
    /// Revocation and outage state (see `health`).
    pub(super) health: super::health::Health,
    /// The tamper-evident audit log, when configured.
    audit: std::sync::OnceLock<crate::audit::Audit>,
    /// Who this process is, for leases in the store.
    pub(super) holder: String,
}

impl Envelope {
    pub fn new(settings: Settings, slot: Slot) -> Self {
        let mut tag = [0u8; 4];
        let _ = getrandom::fill(&mut tag);
        Envelope {
            settings,
            pool: SessionPool::new(slot),
            handles: Mutex::new(HashMap::new()),
            oaep: AtomicU8::new(0),
            view: RwLock::new(None),
            store: Mutex::new(None),
            cache: KeyCache::default(),
            temp_gate: kek::TempGate::default(),
            health: super::health::Health::default(),
            audit: std::sync::OnceLock::new(),
            holder: format!("pid {} ({})", std::process::id(), hex(&tag)),
        }
    }

    fn pool_slot(&self) -> Slot {
        self.pool.slot()
    }

    /// Attach the audit log (once, after start-up).
    pub fn attach_audit(&self, audit: crate::audit::Audit) {
        let _ = self.audit.set(audit);
    }

    pub fn audit(&self) -> Option<&crate::audit::Audit> {
        self.audit.get()
    }

    /// Write one audit line, if there is an audit log.
    pub fn log(&self, e: crate::audit::Entry<'_>) {
        if let Some(a) = self.audit.get() {
            a.record(e);
        }
    }

    /// Open the audit log named by the configuration, its checkpoints
    /// authenticated by the HMAC key on the token (a session of its own per
    /// checkpoint: checkpoints are rare, and never re-enter the pool).
    pub fn open_audit(&self, config: &crate::config::Config, backend: &Backend) -> Result<()> {
        let pkcs11 = backend.pkcs11().clone();
        let slot = self.pool_slot();
        let signer = crate::audit::hsm::HsmMac::new(config.audit_hmac_label.clone(), move |op| {
            let s = pkcs11
                .open_rw_session(slot)
                .map_err(|e| Error::from_cryptoki("C_OpenSession", e))?;
            op(&s)
        });
        if let Some(a) = crate::audit::Audit::from_config(config, Some(Box::new(signer)))? {
            self.attach_audit(a);
        }
        Ok(())
    }

    pub fn kek_label(&self) -> &str {
        &self.settings.kek_label
    }

    /// Run `f` with the store, opening it on first use.
    pub fn with_store<T>(&self, f: impl FnOnce(&Store) -> Result<T>) -> Result<T> {
        let mut guard = self
            .store
            .lock()
            .map_err(|_| Error::Rv(CKR_GENERAL_ERROR))?;
        if guard.is_none() {
            let store = Store::open(&self.settings.store_path)?;
            super::deletion::apply_purge_protection(&store, self.settings.purge_protection)?;
            *guard = Some(store);
        }
        match guard.as_ref() {
            Some(s) => f(s),
            None => Err(Error::Rv(CKR_GENERAL_ERROR)),
        }
    }

    /// Run `f` with a pooled backend session.
    pub fn with_session<T>(
        &self,
        backend: &Backend,
        f: impl FnOnce(&cryptoki::session::Session) -> Result<T>,
    ) -> Result<T> {
        self.pool.with(backend.pkcs11(), f)
    }

    /// As `with_session`, retried once on a new session if the first was lost
    /// (an HSM reconnect kills every pooled session at once).
    pub fn with_session_retry<T>(
        &self,
        backend: &Backend,
        f: impl Fn(&cryptoki::session::Session) -> Result<T>,
    ) -> Result<T> {
        self.pool.with_retry(backend.pkcs11(), f)
    }

    /// The user logged in: keep the PIN (locked, zeroized) to log in again
    /// after the HSM comes back from an outage.
    pub fn remember_pin(&self, pin: &[u8]) {
        self.pool.remember_pin(pin);
    }

    /// Log a re-opened application backend session in again (see `pool`).
    pub fn login_again(&self, backend: &Backend, bh: CK_SESSION_HANDLE) {
        self.pool.login_raw(backend, bh);
    }

    /// Run `f` with a pooled backend session and KEK version `version`.
    fn with_kek<T>(
        &self,
        backend: &Backend,
        version: u32,
        f: impl Fn(&cryptoki::session::Session, KekKey) -> Result<T>,
    ) -> Result<T> {
        self.pool.with_retry(backend.pkcs11(), |s| {
            let handle = self.kek_handle(s, version)?;
            match f(s, handle) {
                // A stale handle (the login was lost and regained, say): find
                // the KEK again once.
                Err(Error::Backend {
                    rv: CKR_KEY_HANDLE_INVALID | CKR_OBJECT_HANDLE_INVALID,
                    ..
                }) => {
                    self.forget_keks();
                    let handle = self.kek_handle(s, version)?;
                    f(s, handle).map_err(|e| self.kek_error(e))
                }
                other => other.map_err(|e| self.kek_error(e)),
            }
        })
    }

    /// The backend objects of a KEK version, checked to be fit for a KEK.
    pub(super) fn kek_handle(
        &self,
        s: &cryptoki::session::Session,
        version: u32,
    ) -> Result<KekKey> {
        if let Some(h) = self
            .handles
            .lock()
            .ok()
            .and_then(|m| m.get(&version).copied())
        {
            return Ok(h);
        }
        let label = &self.settings.kek_label;
        let h = match kek::find(s, label, version) {
            Ok(h) => h,
            // Not there although we are logged in: deleted on the HSM.
            Err(e) if e.rv() == CKR_HSME_KEK_UNAVAILABLE && kek::logged_in(s)? => {
                return Err(Error::Rv(CKR_HSME_KEK_REVOKED));
            }
            Err(e) => return Err(e),
        };
        if !kek::check_policy(s, h)? {
            crate::log_error!(
                "KEK '{label}' v{version} is extractable or not sensitive; refusing to use it"
            );
            return Err(Error::Rv(CKR_HSME_KEK_UNAVAILABLE));
        }
        if !kek::enabled(s, h)? {
            return Err(Error::Rv(CKR_HSME_KEK_REVOKED));
        }
        if let Ok(mut m) = self.handles.lock() {
            m.insert(version, h);
        }
        Ok(h)
    }

    /// A stale KEK handle or a lost login means the KEK must be found again.
    fn kek_error(&self, e: Error) -> Error {
        if let Error::Backend { rv, .. } = &e {
            if matches!(
                *rv,
                CKR_KEY_HANDLE_INVALID | CKR_OBJECT_HANDLE_INVALID | CKR_USER_NOT_LOGGED_IN
            ) {
                self.forget_keks();
                return Error::Rv(CKR_HSME_KEK_UNAVAILABLE);
            }
        }
        e
    }

    pub fn forget_keks(&self) {
        if let Ok(mut m) = self.handles.lock() {
            m.clear();
        }
    }

    /// Called when the login ends: KEK handles, the PIN and every cached
    /// value go.
    pub fn on_logout(&self) {
        self.forget_keks();
        self.pool.forget_pin();
        self.cache.clear();
    }

    /// Wrap `value` for the DEK `id` with attributes `attrs` under the
    /// primary KEK version; returns the encoded record.
    pub fn seal(
        &self,
        backend: &Backend,
        id: &[u8; 16],
        attrs: &Attrs,
        value: &[u8],
    ) -> Result<Vec<u8>> {
        let version = self.primary(backend)?;
        self.seal_under(backend, version, id, attrs, value)
    }

    pub(super) fn seal_under(
        &self,
        backend: &Backend,
        version: u32,
        id: &[u8; 16],
        attrs: &Attrs,
        value: &[u8],
    ) -> Result<Vec<u8>> {
        let bound = attrs.bound_encoding();
        let rec = self.with_kek(backend, version, |s, key| {
            self.seal_with(backend, s, key, version, id, &bound, value)
        })?;
        Ok(rec.try_encode()?)
    }

    /// Seal `value` for DEK `id` (security attributes `bound`, encoded) with
    /// `key`, KEK version `version`, on session `s`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn seal_with(
        &self,
        backend: &Backend,
        s: &cryptoki::session::Session,
        key: KekKey,
        version: u32,
        id: &[u8; 16],
        bound: &[u8],
        value: &[u8],
    ) -> Result<WrappedRecord> {
        let blank = |alg, iv: Vec<u8>| WrappedRecord {
            alg,
            kek_label: self.settings.kek_label.clone(),
            kek_version: version,
            iv,
            ciphertext: Vec::new(),
        };
        match key {
            KekKey::Aes(k) => {
                let mut iv = [0u8; RECORD_IV_LEN];
                getrandom::fill(&mut iv).map_err(|_| Error::Rv(CKR_FUNCTION_FAILED))?;
                let mut rec = blank(WrapAlg::AesGcm256, iv.to_vec());
                let aad = rec.aad(id, bound);
                rec.ciphertext = kek::gcm_seal(backend, s, k, &iv, &aad, value)?;
                Ok(rec)
            }
            KekKey::Rsa { private, public } => {
                let public = public.ok_or_else(|| {
                    crate::log_error!(
                        "RSA KEK '{}' v{version} has no public key on the HSM: nothing can be wrapped under it",
                        self.settings.kek_label
                    );
                    Error::Rv(CKR_HSME_KEK_UNAVAILABLE)
                })?;
                // SHA-256 unless this backend is known to refuse it.
                let known = WrapAlg::from_u8(self.oaep.load(Ordering::Relaxed));
                let mut alg = known.unwrap_or(WrapAlg::RsaOaepSha256);
                loop {
                    let mut rec = blank(alg, Vec::new());
                    let aad = rec.aad(id, bound);
                    let plain = record::rsa_plaintext(&aad, value);
                    match rsa::oaep_seal(backend, s, public, alg, &plain) {
                        Ok(block) => {
                            self.oaep.store(alg.as_u8(), Ordering::Relaxed);
                            let signed = WrappedRecord::rsa_signed(&aad, &block);
                            let signature = rsa::pss_sign(backend, s, private, &signed)?;
                            if signature.len() != block.len() {
                                return Err(Error::Rv(CKR_GENERAL_ERROR));
                            }
                            rec.ciphertext = [block, signature].concat();
                            return Ok(rec);
                        }
                        Err(e) if alg == WrapAlg::RsaOaepSha256 && rsa::is_hash_refused(&e) => {
                            crate::log_info!(
                                "the backend refuses RSA-OAEP with SHA-256; wrapping with SHA-1"
                            );
                            alg = WrapAlg::RsaOaepSha1;
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
        }
    }

    /// Open a decoded record with `key` on session `s`; `aad` is the
    /// record's AAD for the DEK's id and attributes.
    pub(super) fn open_with(
        backend: &Backend,
        s: &cryptoki::session::Session,
        key: KekKey,
        rec: &WrappedRecord,
        aad: &[u8],
    ) -> Result<SecretBytes> {
        match (rec.alg, key) {
            (WrapAlg::AesGcm256, KekKey::Aes(k)) => {
                kek::gcm_open(backend, s, k, &rec.iv, aad, &rec.ciphertext)
            }
            (WrapAlg::RsaOaepSha1 | WrapAlg::RsaOaepSha256, KekKey::Rsa { private, public }) => {
                // The signature first: a block anyone could have made is
                // never decrypted.
                let public = public.ok_or(Error::Rv(CKR_HSME_KEK_UNAVAILABLE))?;
                let (block, signature) = rec.rsa_parts();
                let signed = WrappedRecord::rsa_signed(aad, block);
                if !rsa::pss_verify(backend, s, public, &signed, signature)? {
                    return Err(Error::Rv(CKR_HSME_RECORD_INVALID));
                }
                let plain = rsa::oaep_open(backend, s, private, rec.alg, block)?;
                record::rsa_value(aad, plain.as_slice())
                    .map(SecretBytes::from_slice)
                    .ok_or(Error::Rv(CKR_HSME_RECORD_INVALID))
            }
            // The record's algorithm is not the version's key type.
            _ => Err(Error::Rv(CKR_HSME_RECORD_INVALID)),
        }
    }

    /// Unwrap a record on the HSM, with the KEK version it names. Any change
    /// to the record, the id or the bound attributes makes the HSM's tag
    /// check fail.
    pub fn open(
        &self,
        backend: &Backend,
        id: &[u8; 16],
        attrs: &Attrs,
        record: &[u8],
    ) -> Result<SecretBytes> {
        let rec = self.openable(id, record)?;
        let aad = rec.aad(id, &attrs.bound_encoding());
        let value = self
            .with_kek(backend, rec.kek_version, |s, key| {
                Self::open_with(backend, s, key, &rec, &aad)
            })
            .inspect_err(|e| {
                if e.rv() == CKR_HSME_RECORD_INVALID {
                    crate::log_warn!("wrapped record of DEK {} failed authentication", hex(id));
                }
            })?;
        Self::check_len(attrs, value)
    }

    /// Decode a stored record and check that this module may open it: its
    /// KEK, the decrypt cut-off and revocation.
    pub(super) fn openable(&self, id: &[u8; 16], record: &[u8]) -> Result<WrappedRecord> {
        let rec = WrappedRecord::decode(record)?;
        if rec.kek_label != self.settings.kek_label {
            crate::log_warn!(
                "DEK {} is wrapped under KEK '{}', which this module does not hold",
                hex(id),
                rec.kek_label
            );
            return Err(Error::Rv(CKR_HSME_KEK_UNAVAILABLE));
        }
        if self
            .settings
            .min_decrypt_version
            .is_some_and(|min| rec.kek_version < min)
        {
            crate::log_warn!(
                "DEK {} is under KEK v{}, below min_decrypt_version",
                hex(id),
                rec.kek_version
            );
            return Err(Error::Rv(CKR_HSME_KEK_UNAVAILABLE));
        }
        if self.health.is_revoked(rec.kek_version) {
            return Err(Error::Rv(CKR_HSME_KEK_REVOKED));
        }
        Ok(rec)
    }

    /// An opened value must be as long as the DEK says.
    pub(super) fn check_len(attrs: &Attrs, value: SecretBytes) -> Result<SecretBytes> {
        if Some(value.len() as CK_ULONG) != attrs.ulong(CKA_VALUE_LEN) {
            return Err(Error::Rv(CKR_HSME_RECORD_INVALID));
        }
        Ok(value)
    }

    /// The DEK's prepared key: from the cache when it was unwrapped from this
    /// very record and attributes (`binding`), else unwrapped on the HSM.
    /// `row_generation` is set for token DEKs: a record under an old KEK
    /// version is then re-wrapped under the primary one (lazy re-wrap).
    pub fn value(
        &self,
        backend: &Backend,
        id: &[u8; 16],
        attrs: &Attrs,
        record: &[u8],
        binding: &Arc<[u8]>,
        row_generation: Option<i64>,
    ) -> Result<Arc<PreparedKey>> {
        // Revocation and outage: the KEK versions in use are checked every
        // soft TTL; an error here means nothing cached may be served.
        self.ensure_fresh(backend)?;
        if let Some(v) = self.cache.get(id, binding) {
            return Ok(v);
        }
        let epoch = self.cache.epoch();
        let version = Envelope::record_version(record).unwrap_or(0);
        let opened = self
            .open(backend, id, attrs, record)
            .map_err(|e| self.classify(version, e));
        let v = match opened {
            Ok(v) => {
                if let (true, Some(generation)) = (self.settings.lazy_rewrap, row_generation) {
                    self.rewrap_one(backend, id, attrs, record, generation, v.as_slice());
                }
                v
            }
            // Another process may have re-wrapped the row (and destroyed the
            // version this copy names): open what the store holds now.
            Err(e)
                if row_generation.is_some()
                    && matches!(e.rv(), CKR_HSME_KEK_UNAVAILABLE | CKR_HSME_KEK_REVOKED) =>
            {
                self.open_current_row(backend, id, attrs, record)
                    .ok_or(e)??
            }
            Err(e) => return Err(e),
        };
        self.service_ok(crate::clock::mono_ms());
        // Last use, as `dek list` shows it: written when a token DEK is
        // unwrapped (its first use in a process, or after its cache entry
        // went), so a busy DEK costs no store write per call.
        if row_generation.is_some() {
            let now = crate::clock::unix_secs();
            if let Err(e) = self.with_store(|st| Ok(st.touch_last_used(id, now)?)) {
                crate::log_debug!("last_used of DEK {} not written: {e}", hex(id));
            }
        }
        Ok(self.cache.insert(*id, binding.clone(), version, v, epoch)?)
    }

    /// Open the store's current record of `id` when it differs from ours but
    /// binds the same attributes. None when there is nothing newer to try.
    fn open_current_row(
        &self,
        backend: &Backend,
        id: &[u8; 16],
        attrs: &Attrs,
        record: &[u8],
    ) -> Option<Result<SecretBytes>> {
        let row = self.with_store(|st| Ok(st.get(id)?)).ok().flatten()?;
        let current = Attrs::decode(&row.attrs).ok()?;
        if row.record == record || current.bound_encoding() != attrs.bound_encoding() {
            return None;
        }
        Some(self.open(backend, id, &current, &row.record))
    }

    /// Best effort: a failure here leaves the record as it was.
    fn rewrap_one(
        &self,
        backend: &Backend,
        id: &[u8; 16],
        attrs: &Attrs,
        record: &[u8],
        generation: i64,
        value: &[u8],
    ) {
        let Ok(rec) = WrappedRecord::decode(record) else {
            return;
        };
        let r = self.primary(backend).and_then(|primary| {
            if rec.kek_version == primary {
                return Ok(());
            }
            let new = self.seal_under(backend, primary, id, attrs, value)?;
            let label = &self.settings.kek_label;
            self.with_store(|st| {
                Ok(st.replace_records(label, &[(*id, generation, new, primary)])?)
            })?;
            crate::log_info!(
                "DEK {} re-wrapped on use: KEK v{} -> v{primary}",
                hex(id),
                rec.kek_version
            );
            Ok(())
        });
        if let Err(e) = r {
            crate::log_warn!("lazy re-wrap of DEK {} failed: {e}", hex(id));
        }
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
        let w = kek::object_handle(wrapping);
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
        let w = kek::object_handle(unwrapping);
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
