//! The module's process-wide state between C_Initialize and C_Finalize, and
//! the rules for reaching it: after fork() the child sees
//! CKR_CRYPTOKI_NOT_INITIALIZED until it calls C_Initialize itself.
//!
//! Reaching the module writes no shared memory (see `inflight`): every call
//! makes one, so a lock or a reference count here would serialise all threads.

use std::ptr::NonNull;
use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use cryptoki::slot::Slot;
use cryptoki_sys::*;

use super::inflight;
use super::objects::{Object, Objects};
use super::session::Sessions;
use crate::backend::Backend;
use crate::config::Config;
use crate::envelope::Envelope;
use crate::error::{Error, Result};

pub struct SlotEntry {
    pub backend_id: CK_SLOT_ID,
}

pub struct Module {
    /// `FORKS` when this module was initialised: another value means this
    /// process is a fork child of the one that initialised it.
    pub forks: u64,
    /// Which C_Initialize of this process made this module. Session handles
    /// are unique within a module but start again in the next one, so
    /// anything remembered by handle is remembered with this too.
    pub generation: u64,
    pub config: Config,
    pub backend: Backend,
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

/// The live module (a leaked `Box`), or null. Written only under `LIFECYCLE`.
static CURRENT: AtomicPtr<Module> = AtomicPtr::new(std::ptr::null_mut());
/// Serialises C_Initialize and C_Finalize (which waits for calls in
/// progress), so a new module never starts under one still shutting down.
static LIFECYCLE: Mutex<()> = Mutex::new(());
/// Counts C_Initialize calls that made a module (see `Module::generation`).
static GENERATIONS: AtomicU64 = AtomicU64::new(0);

// Every thread reaches the module through a raw pointer, which the
// compiler cannot check for thread safety: this does.
const _: fn() = || {
    fn shared<T: Send + Sync>() {}
    shared::<Module>();
};

/// The module, for the length of one call: C_Finalize waits for every
/// `ModuleRef` to be dropped before it frees the module.
pub struct ModuleRef {
    module: NonNull<Module>,
    stripe: usize,
}

impl std::ops::Deref for ModuleRef {
    type Target = Module;
    fn deref(&self) -> &Module {
        // SAFETY: counted in by `get`, so C_Finalize has not freed it.
        unsafe { self.module.as_ref() }
    }
}

impl Drop for ModuleRef {
    fn drop(&mut self) {
        inflight::leave(self.stripe);
    }
}

/// The live module, if this process initialised it.
pub fn get() -> Result<ModuleRef> {
    let stripe = inflight::enter();
    let p = CURRENT.load(Ordering::SeqCst);
    // SAFETY: a non-null `CURRENT` is a leaked Box that C_Finalize frees only
    // after taking it out of `CURRENT` and seeing this call counted out; a
    // fork child's copy of the parent's module is never freed.
    match unsafe { p.as_ref() } {
        Some(m) if m.forks == FORKS.load(Ordering::Acquire) => Ok(ModuleRef {
            module: NonNull::from(m),
            stripe,
        }),
        _ => {
            inflight::leave(stripe);
            Err(Error::Rv(CKR_CRYPTOKI_NOT_INITIALIZED))
        }
    }
}

/// How many fork()s this process descends from since the module was loaded:
/// bumped in the child by a pthread_atfork handler. Comparing it is a load,
/// where comparing pids would be a system call on every PKCS#11 call.
static FORKS: AtomicU64 = AtomicU64::new(0);

/// The fork generation of this process (see `FORKS`), for state that must
/// not be carried into a child, such as which pages are locked.
pub fn fork_generation() -> u64 {
    FORKS.load(Ordering::Acquire)
}

extern "C" fn forked_child() {
    FORKS.fetch_add(1, Ordering::AcqRel);
    inflight::reset_after_fork();
}

fn watch_forks() {
    static WATCHING: std::sync::Once = std::sync::Once::new();
    WATCHING.call_once(|| {
        // SAFETY: registers a handler that only touches atomics.
        let rc = unsafe { libc::pthread_atfork(None, None, Some(forked_child)) };
        if rc != 0 {
            crate::log_warn!(
                "pthread_atfork failed ({rc}): a fork child may reuse this process's module"
            );
        }
    });
}

/// Keep this module mapped until the process exits. Libraries inside it
/// (AWS-LC's per-thread error state, for one) register thread-exit
/// destructors; if the host dlclose()d us, a thread exiting later would jump
/// into unmapped code.
fn pin_module_in_memory() {
    static PINNED: std::sync::Once = std::sync::Once::new();
    PINNED.call_once(|| {
        // SAFETY: dladdr/dlopen on our own address; the handle is kept
        // forever on purpose (RTLD_NODELETE), nothing is freed.
        unsafe {
            let mut info: libc::Dl_info = std::mem::zeroed();
            let here = pin_module_in_memory as *const libc::c_void;
            if libc::dladdr(here, &mut info) != 0 && !info.dli_fname.is_null() {
                let h = libc::dlopen(info.dli_fname, libc::RTLD_NOW | libc::RTLD_NOLOAD | libc::RTLD_NODELETE);
                if h.is_null() {
                    crate::log_warn!("could not pin the module in memory; do not dlclose it while threads that used it run");
                }
            }
        }
    });
}

pub fn initialize() -> Result<()> {
    pin_module_in_memory();
    watch_forks();
    let _life = LIFECYCLE.lock().unwrap_or_else(PoisonError::into_inner);
    // SAFETY: as in `get`; under LIFECYCLE nobody frees it meanwhile.
    if let Some(old) = unsafe { CURRENT.load(Ordering::SeqCst).as_ref() } {
        if old.forks == FORKS.load(Ordering::Acquire) {
            return Err(Error::Rv(CKR_CRYPTOKI_ALREADY_INITIALIZED));
        }
        // A fork child: the parent's backend sessions and store connection
        // are not ours to use or close. The module is leaked (replaced
        // below, never freed).
    }
    let config = Config::from_env().inspect_err(|e| {
        // There is no log file yet: the host's stderr is the only place.
        eprintln!("hsm-envelope: C_Initialize failed: {e}");
    })?;
    crate::logging::configure(
        config.log_file.as_deref(),
        crate::logging::Level::parse(&config.log_level).unwrap_or(crate::logging::Level::Info),
    );
    let m = Module::start(config).inspect_err(|e| crate::log_error!("C_Initialize failed: {e}"))?;
    crate::log_info!(
        "initialised: {} slot(s), DEK slot {:?}",
        m.slots.len(),
        m.dek_slot
    );
    CURRENT.store(Box::into_raw(Box::new(m)), Ordering::SeqCst);
    Ok(())
}

/// Tear down, after every call in progress has finished with the module.
///
/// Why no call can still be using the module when it is freed: a call does
/// (A) increment its stripe, then (B) load `CURRENT`; this does (S) swap
/// `CURRENT` to null, then (L) read every stripe until it reads zero. All
/// four are SeqCst, so they fall in one total order that agrees with each
/// thread's program order. A call that got the module at (B) read the
/// pointer before (S) replaced it (nothing else writes `CURRENT` while we
/// hold LIFECYCLE), so A < B < S < L: (L) on its stripe sees its increment,
/// and reads zero only once its matching decrement has happened (each
/// call's decrement follows its own increment on the same counter, so no
/// other call can cancel it out). That decrement is a release and (L) an
/// acquire, so everything the call did with the module happens before the
/// drop below. A call whose increment comes after (S) loads null at (B)
/// and never touches the module; it only delays (L) for a moment.
pub fn finalize() -> Result<()> {
    let _life = LIFECYCLE.lock().unwrap_or_else(PoisonError::into_inner);
    let p = CURRENT.load(Ordering::SeqCst);
    // SAFETY: as in `get`; under LIFECYCLE nobody frees it meanwhile.
    match unsafe { p.as_ref() } {
        Some(m) if m.forks == FORKS.load(Ordering::Acquire) => {}
        _ => return Err(Error::Rv(CKR_CRYPTOKI_NOT_INITIALIZED)),
    }
    // New calls now see NOT_INITIALIZED; wait for those already inside.
    CURRENT.swap(std::ptr::null_mut(), Ordering::SeqCst);
    if !inflight::wait_idle(Instant::now() + Duration::from_secs(30)) {
        crate::log_error!(
            "C_Finalize: calls still in progress after 30 s; leaving the backend as is"
        );
        // Leaked: a call may still be using it.
        return Ok(());
    }
    // SAFETY: `p` came from Box::into_raw in `initialize`, is no longer
    // reachable through `CURRENT`, and no call holds it (see above).
    let module = *unsafe { Box::from_raw(p) };
    module.shutdown();
    Ok(())
}

impl Module {
    fn start(config: Config) -> Result<Module> {
        let backend = Backend::load(&config.backend_module)?;
        let mut slots = Vec::new();
        let mut dek_slot = None;
        for id in backend.token_slots()? {
            let info = backend.token_info(id)?;
            if label_of(&info.label) == config.token_label && dek_slot.is_none() {
                dek_slot = Some(slots.len());
            }
            slots.push(SlotEntry { backend_id: id });
        }
        if dek_slot.is_none() {
            crate::log_warn!(
                "no backend token labelled '{}': DEKs are unavailable, other calls pass through",
                config.token_label
            );
        }
        let envelope = match dek_slot.and_then(|i| slots.get(i)) {
            Some(s) => {
                let slot =
                    Slot::try_from(s.backend_id).map_err(|_| Error::Rv(CKR_GENERAL_ERROR))?;
                Some(Envelope::new(config.envelope_settings(), slot))
            }
            None => None,
        };
        // A purge-protection setting the store refuses is a configuration
        // error, reported now rather than at the first DEK.
        if let Some(env) = &envelope {
            env.with_store(|_| Ok(()))?;
            env.open_audit(&config, &backend)?;
        }
        let n_slots = slots.len();
        Ok(Module {
            forks: FORKS.load(Ordering::Acquire),
            generation: GENERATIONS.fetch_add(1, Ordering::Relaxed) + 1,
            config,
            backend,
            slots,
            dek_slot,
            envelope,
            sessions: Sessions::default(),
            objects: Objects::default(),
            login: (0..n_slots).map(|_| AtomicU64::new(0)).collect(),
            session_life: Mutex::new(()),
        })
    }

    fn shutdown(self) {
        for s in self.sessions.all() {
            // Threads may still hold it (see `session_cache`): no key stays in it.
            s.close();
            let _ = crate::backend::bcall!(self.backend, C_CloseSession(s.backend()));
        }
        if let Some(env) = &self.envelope {
            if let Some(a) = env.audit() {
                a.flush();
            }
            env.close();
        }
        self.backend.finalize();
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
        if let Some(l) = self.login.get(slot) {
            l.store(0, Ordering::Release);
        }
        for s in self.sessions.on_slot(slot) {
            if let Ok(mut ops) = s.ops() {
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
                .filter(|(_, bh)| {
                    let mut class: CK_OBJECT_CLASS = 0;
                    let mut a = CK_ATTRIBUTE {
                        type_: CKA_CLASS,
                        pValue: &mut class as *mut _ as *mut _,
                        ulValueLen: size_of::<CK_OBJECT_CLASS>() as CK_ULONG,
                    };
                    crate::backend::bcall!(self.backend, C_GetAttributeValue(bs, *bh, &mut a, 1))
                        != CKR_OK
                })
                .map(|(_, bh)| bh)
                .collect(),
        };
        self.objects.forget(|_, o| match o {
            Object::Dek(d) => {
                d.slot == slot
                    && d.state
                        .read()
                        .map(|st| st.attrs.flag(CKA_PRIVATE))
                        .unwrap_or(true)
            }
            Object::Backend {
                slot: s, handle, ..
            } => *s == slot && backend_gone.contains(handle),
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

/// A blank-padded 32-byte PKCS#11 label as a string.
pub fn label_of(raw: &[u8]) -> String {
    String::from_utf8_lossy(raw)
        .trim_end_matches([' ', '\0'])
        .to_string()
}
