//! The module's process-wide state between C_Initialize and C_Finalize, and
//! the rules for reaching it: after fork() the child sees
//! CKR_CRYPTOKI_NOT_INITIALIZED until it calls C_Initialize itself.
//!
//! Reaching the module writes no shared memory (see `inflight`): every call
//! makes one, so a lock or a reference count here would serialise all threads.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cryptoki::slot::Slot;
use cryptoki_sys::*;

use crate::backend::{label_of, Backend};
use crate::config::Config;
use crate::envelope::Envelope;
use crate::error::{Error, Result};
use crate::runtime::fork;
use crate::runtime::lifecycle::{Published, Ref, Retired};
use crate::token::object::table::{Object, Objects};
use crate::token::session::table::Sessions;

pub struct SlotEntry {
    pub backend_id: CK_SLOT_ID,
}

pub struct Module {
    /// Which C_Initialize of this process made this module. Session handles
    /// are unique within a module but start again in the next one, so
    /// anything remembered by handle is remembered with this too.
    pub generation: u64,
    pub config: Config,
    pub backend: Arc<Backend>,
    /// Our slot ids are indexes into this list.
    pub slots: Vec<SlotEntry>,
    /// The slot whose backend token holds the KEK; DEKs live there.
    pub dek_slot: Option<usize>,
    pub envelope: Option<Envelope>,
    pub sessions: Sessions,
    pub objects: Objects,
    /// Who is logged in, per slot (login is per token, for all sessions):
    /// 0 nobody, else the CK_USER_TYPE + 1. Atomic: read on every DEK use.
    login: Vec<AtomicU64>,
    /// Serialises session open and close (see `sessions`).
    pub session_life: Mutex<()>,
}

/// The live module. Publish and retire are serialised (C_Initialize and
/// C_Finalize); every call reaches it without a lock (see
/// `runtime::lifecycle`).
static CURRENT: Published<Module> = Published::new();
/// Counts C_Initialize calls that made a module (see `Module::generation`).
static GENERATIONS: AtomicU64 = AtomicU64::new(0);

/// The module, for the length of one call: C_Finalize waits for every
/// `ModuleRef` to be dropped before it frees the module.
pub type ModuleRef = Ref<Module>;

/// The live module, if this process initialised it.
// The per-message path: see "Inlining" in `ffi::message`.
#[inline(always)]
pub fn get() -> Result<ModuleRef> {
    CURRENT.get().ok_or(Error::Rv(CKR_CRYPTOKI_NOT_INITIALIZED))
}

/// `threads`: whether the application lets the module start threads of
/// its own (not under `CKF_LIBRARY_CANT_CREATE_OS_THREADS`).
pub fn initialize(threads: bool) -> Result<()> {
    if !fork::pin_library_in_memory() {
        crate::log_warn!(
            "could not pin the module in memory; do not dlclose it while threads that used it run"
        );
    }
    if !fork::watch() {
        crate::log_warn!("pthread_atfork failed: a fork child may reuse this process's module");
    }
    let life = CURRENT.lock();
    if CURRENT.is_live(&life) {
        return Err(Error::Rv(CKR_CRYPTOKI_ALREADY_INITIALIZED));
    }
    crate::runtime::threads::set_allowed(threads);
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            // There is no log file yet: the host's stderr is the only place.
            let f = InitFailure::new(e, "correct it in that file".into());
            eprintln!("hsm-envelope: {}", f.line());
            return Err(Error::Rv(f.rv()));
        }
    };
    crate::logging::configure(
        config.log_file.as_deref(),
        crate::logging::Level::parse(&config.log_level).unwrap_or(crate::logging::Level::Info),
        config.log_file_mode,
    );
    // The FIPS build runs on AWS-LC's FIPS module in FIPS mode, or not at all.
    let aes = crate::crypto::module_state();
    if crate::crypto::FIPS_BUILD {
        if let Err(f) = fips_check(&aes) {
            crate::logging::error_to_user(format_args!("{}", f.line()));
            return Err(Error::Rv(f.rv()));
        }
    }
    let m = match Module::start(config) {
        Ok(m) => m,
        Err(f) => {
            // On stderr whatever the log settings, and in the log file. The
            // shim logs a bare Rv at debug level only: one line, not two.
            crate::logging::error_to_user(format_args!("{}", f.line()));
            return Err(Error::Rv(f.rv()));
        }
    };
    crate::log_info!(
        "software AES on {}: {}{}",
        crate::crypto::provider::names(),
        aes.version,
        match (&aes.fips, m.config.fips_mode) {
            (Ok(()), true) => ", FIPS mode, self-tests passed; fips_mode = true (approved-only)",
            (Ok(()), false) => ", FIPS mode, self-tests passed; fips_mode = false",
            (Err(_), _) => "",
        }
    );
    match m.dek_slot {
        Some(i) => crate::log_info!(
            "initialised: {} slot(s); DEKs on slot {i} (token '{}', KEK '{}', key_export = \"{}\")",
            m.slots.len(),
            m.config.token_label,
            m.config.kek_label,
            m.config.key_export.name()
        ),
        None => crate::log_info!(
            "initialised: {} slot(s); pass-through only (passthrough_only = true): no DEKs",
            m.slots.len()
        ),
    }
    let health = m.envelope.as_ref().and_then(|e| e.health_interval());
    let own_threads = health.is_some() || m.config.hsm_timeout_ms > 0;
    let generation = m.generation;
    CURRENT.publish(&life, m);
    if own_threads && crate::runtime::threads::allowed() {
        super::health_thread::guard_exit();
    }
    if let Some(interval) = health {
        super::health_thread::start(generation, interval);
    }
    Ok(())
}

/// The FIPS build's check at start: AWS-LC's FIPS module in FIPS mode, its
/// self-tests passed (they ran at load, and again just now); else the
/// module fails closed.
fn fips_check(aes: &crate::crypto::ModuleState) -> std::result::Result<(), InitFailure> {
    match &aes.fips {
        Ok(()) => Ok(()),
        Err(why) => Err(InitFailure::found(
            format!(
                "the FIPS build's AES module ({}) is not in FIPS mode: {why}",
                aes.version
            ),
            "build the module with --features fips on a platform AWS-LC's FIPS module supports \
             (README, FIPS mode)"
                .into(),
            CKR_GENERAL_ERROR,
        )),
    }
}

/// Why C_Initialize failed, as the one line the user sees: the cause (file,
/// key, path), what to do, and the code returned.
struct InitFailure {
    cause: String,
    todo: String,
    rv: CK_RV,
}

impl InitFailure {
    fn new(error: Error, todo: String) -> Self {
        InitFailure {
            cause: error.to_string(),
            todo,
            rv: error.rv(),
        }
    }

    /// A cause this module found, returned as `rv`.
    fn found(cause: String, todo: String, rv: CK_RV) -> Self {
        InitFailure { cause, todo, rv }
    }

    fn rv(&self) -> CK_RV {
        self.rv
    }

    fn line(&self) -> String {
        format!(
            "C_Initialize failed: {}; {} ({})",
            self.cause,
            self.todo,
            crate::rv_name::rv_name(self.rv)
        )
    }
}

/// Tear down, after every call in progress has finished with the module.
pub fn finalize() -> Result<()> {
    // Before the module is retired: a tick holds it like a call.
    super::health_thread::stop();
    let life = CURRENT.lock();
    // New calls now see NOT_INITIALIZED; wait for those already inside.
    match CURRENT.retire(&life, Instant::now() + Duration::from_secs(30)) {
        Retired::NotPublished => Err(Error::Rv(CKR_CRYPTOKI_NOT_INITIALIZED)),
        Retired::Leaked => {
            crate::log_error!(
                "C_Finalize: calls still in progress after 30 s (or their end could not be \
                 proven); leaving the backend as is"
            );
            Ok(())
        }
        Retired::Done(module) => {
            module.shutdown();
            Ok(())
        }
    }
}

impl Module {
    fn start(config: Config) -> std::result::Result<Module, InitFailure> {
        let at = config.where_to_set();
        let backend = Backend::load(&config.backend_module).map_err(|e| {
            let todo = match &e {
                Error::Backend { .. } => format!(
                    "check the HSM's own configuration (SoftHSM2: the file SOFTHSM2_CONF names), \
                     or set backend_module {at}"
                ),
                _ => format!("set backend_module {at} to the HSM's PKCS#11 module"),
            };
            InitFailure::new(e, todo)
        })?;
        let backend = Arc::new(backend);
        match Module::start_on(config, backend.clone()) {
            Ok(m) => Ok(m),
            Err(f) => {
                // Leave the backend as we found it.
                if let Ok(b) = Arc::try_unwrap(backend) {
                    b.finalize();
                }
                Err(f)
            }
        }
    }

    fn start_on(config: Config, backend: Arc<Backend>) -> std::result::Result<Module, InitFailure> {
        let at = config.where_to_set();
        let backend_failed = |e: Error| {
            InitFailure::new(
                e,
                format!("check that the HSM is reachable, or set backend_module {at}"),
            )
        };
        let mut slots = Vec::new();
        let mut labels = Vec::new();
        let mut dek_slot = None;
        for id in backend.token_slots().map_err(backend_failed)? {
            let info = backend.token_info(id).map_err(backend_failed)?;
            let label = label_of(&info.label);
            if label == config.token_label && dek_slot.is_none() {
                dek_slot = Some(slots.len());
            }
            labels.push(format!("'{label}'"));
            slots.push(SlotEntry { backend_id: id });
        }
        if config.passthrough_only {
            dek_slot = None;
        } else if dek_slot.is_none() {
            // Fail closed: without the KEK's token, a key an application
            // asks for would be a plain backend key, not a DEK.
            let have = if labels.is_empty() {
                "the backend has no initialised token".to_string()
            } else {
                format!("the backend's tokens: {}", labels.join(", "))
            };
            return Err(InitFailure::found(
                format!(
                    "no backend token labelled '{}' ({have})",
                    config.token_label
                ),
                format!(
                    "set token_label {at} to the token that holds the KEK, \
                     or passthrough_only = true to use the module without DEKs"
                ),
                crate::vendor::CKR_HSME_KEK_UNAVAILABLE,
            ));
        }
        let envelope = match dek_slot.and_then(|i| slots.get(i)) {
            Some(s) => {
                let slot = Slot::try_from(s.backend_id)
                    .map_err(|_| backend_failed(Error::Rv(CKR_GENERAL_ERROR)))?;
                let mut env = Envelope::new(
                    crate::envelope::service::Settings::from(&config),
                    slot,
                    backend.clone(),
                );
                // Replica HSMs (kek_mode = "replicas"): looked for now; one
                // that cannot be reached is kept down and looked for again
                // at each health check (main must be reachable).
                env.add_replicas(&config).map_err(|e| {
                    InitFailure::new(
                        e,
                        format!(
                            "correct the [[hsm]] tables {at}, or check that each HSM is reachable"
                        ),
                    )
                })?;
                Some(env)
            }
            None => None,
        };
        if let Some(env) = &envelope {
            // The store opens now, so that a bad path or a purge-protection
            // setting the store refuses is reported here, not at the first DEK.
            // (`record_counts` lists the KEK labels the store's records are
            // under; it reads every row, so only when ours has no versions.)
            let (ours, theirs) = env
                .with_store(|st| {
                    let ours = st.kek_versions(&config.kek_label)?.len();
                    let theirs = if ours == 0 {
                        st.record_counts()?
                    } else {
                        Vec::new()
                    };
                    Ok((ours, theirs))
                })
                .map_err(|e| {
                    let todo = match (&e, &config.store_url) {
                        (Error::Config(_), _) => format!("correct the configuration {at}"),
                        (_, Some(_)) => format!(
                            "check that the PostgreSQL server is up and the database exists, \
                             or correct store_url {at}"
                        ),
                        (_, None) => format!(
                            "create the directory, or set store_path {at} to a file in a writable directory"
                        ),
                    };
                    InitFailure::new(e, todo)
                })?;
            // The KEK is private on the HSM: without a login only the store
            // can tell a mistyped kek_label (C_Login checks the HSM itself).
            let mut others: Vec<String> = theirs
                .into_iter()
                .map(|(label, _, _)| label)
                .filter(|l| *l != config.kek_label)
                .collect();
            others.dedup();
            if ours == 0 && !others.is_empty() {
                return Err(InitFailure::found(
                    format!(
                        "the store {} holds DEKs under KEK {} but no versions of '{}'",
                        config.store_location(),
                        others
                            .iter()
                            .map(|l| format!("'{l}'"))
                            .collect::<Vec<_>>()
                            .join(", "),
                        config.kek_label
                    ),
                    format!("set kek_label {at} to the KEK's label"),
                    crate::vendor::CKR_HSME_KEK_UNAVAILABLE,
                ));
            }
            env.open_audit(&config).map_err(|e| {
                InitFailure::new(
                    e,
                    format!("create its directory, or set audit_log {at} to a writable file"),
                )
            })?;
        }
        let objects = Objects::default();
        objects.set_max_loaded(config.cache_max_keys as usize);
        let n_slots = slots.len();
        Ok(Module {
            generation: GENERATIONS.fetch_add(1, Ordering::Relaxed) + 1,
            config,
            backend,
            slots,
            dek_slot,
            envelope,
            sessions: Sessions::default(),
            objects,
            login: (0..n_slots).map(|_| AtomicU64::new(0)).collect(),
            session_life: Mutex::new(()),
        })
    }

    fn shutdown(self) {
        for s in self.sessions.all() {
            // Threads may still hold it (see `session_cache`): no key stays in it.
            s.close();
            let _ = self.backend.close_session(s.backend());
        }
        if let Some(env) = &self.envelope {
            env.flush_uses();
            if let Some(a) = env.audit() {
                match self.dek_slot {
                    Some(slot) if self.is_user(slot) => a.flush(),
                    // Nobody logged in: the HMAC key is out of sight, and
                    // what follows the last checkpoint stays the
                    // unauthenticated tail `audit verify` reports.
                    _ => a.flush_unsigned(),
                }
            }
            env.close();
        }
        let Module {
            backend, envelope, ..
        } = self;
        let replicas = envelope
            .as_ref()
            .map(|e| e.replica_backends())
            .unwrap_or_default();
        // The envelope holds the only other reference to the backend.
        drop(envelope);
        // A backend still held by a call given up on (hsm_timeout_ms) is
        // left loaded for good: that call returns into its library, which
        // must not be unloaded under it.
        for b in replicas.into_iter().chain([backend]) {
            match Arc::try_unwrap(b) {
                Ok(b) => b.finalize(),
                Err(b) => {
                    crate::log_warn!("a backend is still in use; not finalised, left loaded");
                    std::mem::forget(b);
                }
            }
        }
        crate::log_info!("finalised");
    }

    pub fn slot(&self, id: CK_SLOT_ID) -> Result<&SlotEntry> {
        self.slots
            .get(id as usize)
            .ok_or(Error::Rv(CKR_SLOT_ID_INVALID))
    }

    pub fn is_logged_in(&self, slot: usize) -> bool {
        self.login
            .get(slot)
            .is_some_and(|l| l.load(Ordering::Acquire) != 0)
    }

    /// The normal user is logged in: private objects and DEK use need it
    /// (the Security Officer manages the token, not its private objects).
    #[allow(clippy::unnecessary_cast)]
    pub fn is_user(&self, slot: usize) -> bool {
        self.login
            .get(slot)
            .is_some_and(|l| l.load(Ordering::Acquire) == CKU_USER as u64 + 1)
    }

    // CK_USER_TYPE is 32 or 64 bits depending on the platform.
    #[allow(clippy::unnecessary_cast)]
    pub fn logged_in(&self, slot: usize, user: CK_USER_TYPE) {
        if let Some(l) = self.login.get(slot) {
            l.store(user as u64 + 1, Ordering::Release);
        }
    }

    /// Nobody is logged in on `slot` any more (see `logged_out` for the rest).
    pub fn mark_logged_out(&self, slot: usize) {
        if let Some(l) = self.login.get(slot) {
            l.store(0, Ordering::Release);
        }
    }

    /// Write the audit log's pending use counts and a checkpoint over it,
    /// signed on the HSM, while the user is still logged in to `slot` (the
    /// HMAC key is private): called before the login ends, by C_Logout or
    /// by the close of the application's last session.
    pub fn sign_audit_checkpoint(&self, slot: usize) {
        if self.dek_slot != Some(slot) || !self.is_user(slot) {
            return;
        }
        if let Some(a) = self.envelope.as_ref().and_then(|e| e.audit()) {
            a.flush();
        }
    }

    /// The envelope service, for a session on the DEK slot.
    pub fn envelope_for(&self, slot: usize) -> Result<&Envelope> {
        match (&self.envelope, self.dek_slot) {
            (Some(e), Some(s)) if s == slot => Ok(e),
            _ => Err(Error::Rv(crate::vendor::CKR_HSME_KEK_UNAVAILABLE)),
        }
    }

    /// Login on `slot` ended, by C_Logout (`via` is a backend session still
    /// open) or because its last session closed (`via` is None). As the spec
    /// says: private session objects are destroyed, handles to private
    /// objects become invalid for good, and no key stays in use.
    pub fn logged_out(&self, slot: usize, via: Option<CK_SESSION_HANDLE>) {
        if via.is_none() {
            // The last session closed: the pooled sessions still hold the
            // login, so the audit log's checkpoint can be signed now, and
            // not after (see `sign_audit_checkpoint`).
            self.sign_audit_checkpoint(slot);
        }
        if let Some(l) = self.login.get(slot) {
            l.store(0, Ordering::Release);
        }
        for s in self.sessions.on_slot(slot) {
            if let Ok(mut ops) = s.ops() {
                crate::token::message::hand_over_uses(self, &s, &mut ops);
                ops.drop_soft();
            }
        }
        let backend_gone: Vec<CK_OBJECT_HANDLE> = match via {
            // Without a session nothing can be checked: every backend handle goes.
            None => self
                .objects
                .backend_on(slot)
                .into_iter()
                .map(|(_, bh)| bh)
                .collect(),
            // Private objects are out of sight now: their handles fail.
            Some(bs) => self
                .objects
                .backend_on(slot)
                .into_iter()
                .filter(|(_, bh)| self.backend.attribute_ulong(bs, *bh, CKA_CLASS).is_err())
                .map(|(_, bh)| bh)
                .collect(),
        };
        self.objects.forget(|_, o| match o {
            Object::Dek(d) => d.slot == slot && d.state.read().attrs.flag(CKA_PRIVATE),
            Object::Backend {
                slot: s, handle, ..
            } => *s == slot && backend_gone.contains(handle),
            Object::Stored {
                slot: s, private, ..
            } => *s == slot && *private,
        });
        if self.dek_slot == Some(slot) {
            if let Some(e) = &self.envelope {
                match via {
                    Some(_) => e.on_logout(),
                    None => e.close_sessions(),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::ModuleState;

    #[test]
    fn a_fips_module_not_in_fips_mode_fails_closed_with_one_line() {
        let bad = ModuleState {
            version: "AWS-LC FIPS 4.2.0".into(),
            fips: Err("FIPS mode not enabled!".into()),
        };
        let Err(f) = fips_check(&bad) else {
            panic!("not refused")
        };
        assert_eq!(f.rv(), CKR_GENERAL_ERROR);
        assert_eq!(
            f.line(),
            "C_Initialize failed: the FIPS build's AES module (AWS-LC FIPS 4.2.0) is not in FIPS \
             mode: FIPS mode not enabled!; build the module with --features fips on a platform \
             AWS-LC's FIPS module supports (README, FIPS mode) (CKR_GENERAL_ERROR)"
        );
        let good = ModuleState {
            fips: Ok(()),
            ..bad
        };
        assert!(fips_check(&good).is_ok());
    }

    /// The FIPS build's own module passes the check it makes at start.
    #[cfg(feature = "fips")]
    #[test]
    fn the_fips_build_passes_its_check() {
        assert!(fips_check(&crate::crypto::module_state()).is_ok());
    }
}
