//! The envelope service's parts (settings, pooled backend sessions, key
//! cache, store, audit log, health) and the plumbing around them. Sealing,
//! opening and the value lookup are in `service`; KEK handles in
//! `kek_handles`; key wrap with application keys in `app_key_wrap`.

use std::sync::{Arc, Mutex, RwLock};

use cryptoki::slot::Slot;
use cryptoki_sys::*;

use super::cache::KeyCache;
use super::settings::Settings;
use crate::backend::kek;
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::hex::encode as hex;
use crate::runtime::lock::unpoisoned;
use crate::store::Store;

/// This process's view of the KEK versions.
#[derive(Clone, Copy)]
pub(super) struct View {
    pub primary: u32,
    /// When it was read from the store (`clock::mono_ms`).
    pub loaded_ms: u64,
}

pub struct Envelope {
    /// The HSMs that hold the KEK (see `members`); the first, "main", is
    /// the one the token layer's forwarded calls go to.
    pub(super) members: super::members::Members,
    pub(super) settings: Settings,
    pub(super) view: RwLock<Option<View>>,
    /// Opened on first use, in the process that uses it (never across fork).
    pub(super) store: Mutex<Option<Store>>,
    pub cache: KeyCache,
    /// See `kek::TempGate`.
    pub temp_gate: kek::TempGate,
    /// Revocation and outage state (see `health`).
    pub(super) health: super::health::Health,
    /// The tamper-evident audit log, when configured.
    pub(super) audit: std::sync::OnceLock<crate::audit::Audit>,
    /// Who this process is, for leases in the store.
    pub(super) holder: String,
    /// GCM invocation numbers per key (see `gcm_budget`).
    pub gcm: super::gcm_budget::GcmBudgets,
    /// Where this process has read the store's change feed (see `feed`).
    pub(super) feed: super::feed::Feed,
    /// Last uses not yet written to the store (see `last_used`).
    pub(super) last_used: super::last_used::LastUsed,
    /// Any-of and all-of: the members' versions (see `set_versions`) and
    /// which are in use or revoked (see `sets`).
    pub(super) set_versions: super::set_versions::SetVersions,
    pub(super) set_health: super::sets::SetHealth,
}

impl Envelope {
    pub fn backend(&self) -> &Backend {
        self.members.main_backend()
    }

    pub fn new(settings: Settings, slot: Slot, backend: Arc<Backend>) -> Self {
        let cache_max_keys = settings.cache_max_keys;
        let mut tag = [0u8; 4];
        let _ = getrandom::fill(&mut tag);
        let gcm = super::gcm_budget::GcmBudgets::new(
            settings.gcm_limit,
            settings.gcm_block,
            settings.cache_max_keys,
        );
        let main = super::members::main_member(
            backend.clone(),
            slot,
            settings.kek_label.clone(),
            settings.hsm_timeout,
        );
        Envelope {
            members: super::members::Members::new(main, backend),
            settings,
            view: RwLock::new(None),
            store: Mutex::new(None),
            cache: KeyCache::with_max(cache_max_keys),
            temp_gate: kek::TempGate::default(),
            health: super::health::Health::default(),
            audit: std::sync::OnceLock::new(),
            holder: format!("pid {} ({})", std::process::id(), hex(&tag)),
            gcm,
            feed: super::feed::Feed::default(),
            last_used: super::last_used::LastUsed::default(),
            set_versions: Default::default(),
            set_health: Default::default(),
        }
    }

    fn pool_slot(&self) -> Result<Slot> {
        self.members.main().pool.slot()
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
    pub fn open_audit(&self, config: &crate::config::Config) -> Result<()> {
        let backend = self.backend();
        let pkcs11 = backend.pkcs11().clone();
        let slot = self.pool_slot()?;
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

    /// How the HSMs that hold the KEK relate (`kek_mode`).
    pub fn kek_mode(&self) -> crate::config::KekMode {
        self.members.mode()
    }

    pub fn kek_label(&self) -> &str {
        &self.settings.kek_label
    }

    /// Run `f` with the store, opening it on first use.
    pub fn with_store<T>(&self, f: impl FnOnce(&Store) -> Result<T>) -> Result<T> {
        let mut guard = unpoisoned(self.store.lock());
        if guard.is_none() {
            let store = Store::open_at(&self.settings.store)?;
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
        f: impl FnOnce(&cryptoki::session::Session) -> Result<T>,
    ) -> Result<T> {
        self.members.main().pool.with(self.backend().pkcs11(), f)
    }

    /// As `with_session`, retried once on a new session if the first was lost
    /// (an HSM reconnect kills every pooled session at once).
    pub fn with_session_retry<T>(
        &self,
        f: impl Fn(&cryptoki::session::Session) -> Result<T>,
    ) -> Result<T> {
        self.members
            .main()
            .pool
            .with_retry(self.backend().pkcs11(), f)
    }

    /// The user logged in: keep the PIN (locked, zeroized) to log in again
    /// after the HSM comes back from an outage.
    /// With replica HSMs, each logs in now (with its own PIN source or
    /// this one) and must prove it holds the same KEK (see `agreement`).
    pub fn remember_pin(&self, pin: &[u8]) {
        for m in self.members.all() {
            m.remember_pin(pin);
        }
        if self.members.replicated() {
            self.prove_agreement();
        } else if self.set_mode() == Some(super::record_set::SetMode::AllOf) {
            self.prove_independence();
        }
    }

    /// Log a re-opened application backend session in again (see `pool`).
    pub fn login_again(&self, bh: CK_SESSION_HANDLE) {
        self.members.main().pool.login_raw(self.backend(), bh);
    }

    /// Called when the login ends: KEK handles, the PIN and every cached
    /// value go.
    pub fn on_logout(&self) {
        self.forget_keks();
        for m in self.members.all() {
            m.pool.forget_pin();
        }
        self.cache.clear();
    }

    /// The application's last session closed: the pooled backend sessions
    /// go too, so the backend logs out as the spec says it must.
    pub fn close_sessions(&self) {
        self.close_pools();
        self.on_logout();
    }

    pub fn close(&self) {
        self.stop_listening();
        self.gcm_give_back();
        self.wait_given_up();
        self.close_pools();
        self.cache.clear();
        // A call given up on (hsm_timeout_ms) that returns later must not
        // log in again with it.
        for m in self.members.all() {
            m.pool.forget_pin();
        }
    }

    fn close_pools(&self) {
        for m in self.members.all() {
            m.pool.close_all();
        }
    }
}
