//! The HSMs that hold the KEK. One member ("main", the top-level keys of the
//! configuration) unless `kek_mode = "replicas"` adds `[[hsm]]` members that
//! hold the same KEK material (issue 13). KEK work goes to the members that
//! are up, in configuration order, and fails over to the next on an outage
//! (device errors, lost sessions): the application sees no error while one
//! member is up. A member that failed is skipped until a health check finds
//! it answering again (see `agreement`), so only the first unwrap after it
//! dies pays for the failed attempt.
//!
//! A replica whose module cannot be loaded or whose token is not found at
//! start does not stop the module (a highly available deployment must start
//! while one HSM is down): it is kept down, not found yet, and looked for
//! again at each health check. Once found it is used only after it proves it
//! holds the same KEK. Main (the top-level keys) must be found at start.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use cryptoki::slot::Slot;
use cryptoki_sys::*;

use super::service::Envelope;
use crate::backend::kek::KekKey;
use crate::backend::pool::{is_outage, SessionPool};
use crate::backend::{label_of, Backend};
use crate::config::{Config, KekMode, PinSource, MAIN_MEMBER};
use crate::error::{Error, Result};
use crate::runtime::deadline::Deadline;
use crate::runtime::lock::unpoisoned;
use crate::vendor::{CKR_HSME_HSM_UNAVAILABLE, CKR_HSME_KEK_REVOKED};

/// What this process knows of a member.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum State {
    /// Answering (or not tried yet).
    Up,
    /// Failed with an outage; tried again by the health check, or when no
    /// member is up.
    Down { why: String },
    /// Its KEK does not agree with the others' (different material,
    /// missing, disabled) or its login failed: never used until a health
    /// check proves it agrees again.
    Refused { why: String },
}

impl State {
    pub fn name(&self) -> &'static str {
        match self {
            State::Up => "up",
            State::Down { .. } => "down",
            State::Refused { .. } => "refused",
        }
    }

    pub fn why(&self) -> Option<&str> {
        match self {
            State::Up => None,
            State::Down { why } | State::Refused { why } => Some(why),
        }
    }
}

/// Where a replica's token is looked for: its module and token label.
struct Place {
    module: PathBuf,
    token_label: String,
}

/// One HSM holding the KEK: its backend, token slot, sessions and handles.
pub struct Member {
    pub name: String,
    /// Set once its module is loaded and its token found: at start, or
    /// for a replica that could not be reached then, by a health check.
    backend: OnceLock<Arc<Backend>>,
    /// Its sessions; the slot is set together with `backend`.
    pub pool: SessionPool,
    /// Where to look for a replica not found yet (none for main).
    place: Option<Place>,
    /// The KEK's label on this member (records name the top-level one).
    pub kek_label: String,
    /// Under which label the store keeps this member's KEK versions: the
    /// top-level KEK label, but for the further members of any-of and
    /// all-of, which have KEKs of their own, `<kek_label>@<name>`.
    pub store_label: String,
    /// Backend handles of KEK versions, found once per login.
    pub(super) handles: Mutex<HashMap<u32, KekKey>>,
    pin: PinSource,
    state: Mutex<State>,
    /// The OAEP hash this member's backend takes (a `WrapAlg` byte; 0: not
    /// known yet), found by the first seal under an RSA KEK.
    pub(super) oaep: AtomicU8,
    /// With `hsm_timeout_ms`: the runner its KEK calls go through, and the
    /// time-out (see `member_kek`).
    pub(super) deadline: Option<(Deadline, Duration)>,
    /// When it last answered (`clock::mono_ms`): what the hard TTL of the
    /// values that need it counts from.
    last_ok: AtomicU64,
}

impl Member {
    pub fn new(
        name: String,
        backend: Arc<Backend>,
        slot: Slot,
        kek_label: String,
        pin: PinSource,
        timeout: Option<Duration>,
    ) -> Self {
        let m = Member::unfound(name, None, kek_label, pin, timeout);
        m.found_at(backend, slot);
        *unpoisoned(m.state.lock()) = State::Up;
        m
    }

    /// A member not found yet (down until a health check finds it).
    fn unfound(
        name: String,
        place: Option<Place>,
        kek_label: String,
        pin: PinSource,
        timeout: Option<Duration>,
    ) -> Self {
        Member {
            deadline: timeout.map(|t| (Deadline::new(&format!("hsm-{name}"), MAX_GIVEN_UP), t)),
            last_ok: AtomicU64::new(crate::clock::mono_ms()),
            oaep: AtomicU8::new(0),
            name,
            backend: OnceLock::new(),
            pool: SessionPool::unplaced(),
            place,
            store_label: kek_label.clone(),
            kek_label,
            handles: Mutex::new(HashMap::new()),
            pin,
            state: Mutex::new(State::Down {
                why: "not found yet".into(),
            }),
        }
    }

    fn found_at(&self, backend: Arc<Backend>, slot: Slot) {
        self.pool.place(slot);
        let _ = self.backend.set(backend);
    }

    /// Its backend; a member not found yet answers CKR_TOKEN_NOT_PRESENT.
    pub fn backend(&self) -> Result<&Arc<Backend>> {
        self.backend.get().ok_or(Error::Rv(CKR_TOKEN_NOT_PRESENT))
    }

    /// Whether its module is loaded and its token found.
    pub fn found(&self) -> bool {
        self.backend.get().is_some()
    }

    /// Still not found: keep it down, logging the reason when it changes.
    fn still_missing(&self, why: String) {
        let mut st = unpoisoned(self.state.lock());
        if st.why() != Some(why.as_str()) {
            crate::log_warn!(
                "HSM member '{}' is down: {why}; running without it, looked for again at each health check",
                self.name
            );
        }
        *st = State::Down { why };
    }

    pub fn state(&self) -> State {
        unpoisoned(self.state.lock()).clone()
    }

    pub(super) fn forget_keks(&self) {
        unpoisoned(self.handles.lock()).clear();
    }

    /// When it last answered (`clock::mono_ms`).
    pub fn last_ok_ms(&self) -> u64 {
        self.last_ok.load(Ordering::Acquire)
    }

    /// It answered: back in service if it was down (logged). A refused
    /// member stays refused: only a proof clears that (`mark_agreed`), so
    /// a call that happens to work on it never undoes a refusal.
    pub(super) fn mark_up(&self) {
        self.last_ok
            .store(crate::clock::mono_ms(), Ordering::Release);
        let mut st = unpoisoned(self.state.lock());
        if matches!(*st, State::Down { .. }) {
            crate::log_info!("HSM member '{}' is up again", self.name);
            *st = State::Up;
        }
    }

    /// Proven to hold what it should (agreement, independence): in service,
    /// whatever it was.
    pub(super) fn mark_agreed(&self) {
        self.last_ok
            .store(crate::clock::mono_ms(), Ordering::Release);
        let mut st = unpoisoned(self.state.lock());
        if *st != State::Up {
            crate::log_info!("HSM member '{}' is up again", self.name);
            *st = State::Up;
        }
    }

    /// An outage: skipped until it answers again.
    pub(super) fn mark_down(&self, e: &Error) {
        let mut st = unpoisoned(self.state.lock());
        if *st == State::Up {
            crate::log_warn!("HSM member '{}' is down ({e}); failing over", self.name);
        }
        if !matches!(*st, State::Refused { .. }) {
            *st = State::Down { why: e.to_string() };
        }
        drop(st);
        self.forget_keks();
    }

    /// Disagrees with the others: not used until it is proven to agree.
    pub(super) fn refuse(&self, why: String) {
        let mut st = unpoisoned(self.state.lock());
        if !matches!(&*st, State::Refused { why: w } if *w == why) {
            crate::log_error!("HSM member '{}' refused: {why}", self.name);
        }
        *st = State::Refused { why };
        drop(st);
        self.forget_keks();
    }

    /// Keep the PIN this member logs in with: its own (pin_env, pin_file)
    /// or the login's. A PIN that cannot be read refuses the member.
    pub(super) fn remember_pin(&self, login_pin: &[u8]) {
        match self.pin.read() {
            Ok(Some(own)) => self.pool.remember_pin(&own),
            Ok(None) => self.pool.remember_pin(login_pin),
            Err(e) => self.refuse(format!("cannot read its PIN: {e}")),
        }
    }
}

/// Most calls given up on (past `hsm_timeout_ms`) that may still be
/// waiting for a member: past that it takes no more until they return.
pub const MAX_GIVEN_UP: usize = 64;

/// The modules loaded for members, by path: one load per path.
type Loaded = Mutex<Vec<(PathBuf, Arc<Backend>)>>;

/// Every member, "main" first.
pub struct Members {
    list: Vec<Arc<Member>>,
    mode: KekMode,
    main_backend: Arc<Backend>,
    /// The modules loaded, by path, main's first: one load per path, so a
    /// module is initialised and finalised once.
    loaded: Arc<Loaded>,
}

impl Members {
    pub fn new(main: Member, main_backend: Arc<Backend>) -> Self {
        Members {
            list: vec![Arc::new(main)],
            mode: KekMode::Single,
            main_backend,
            loaded: Arc::new(Mutex::new(Vec::new())),
        }
    }

    pub fn main(&self) -> &Arc<Member> {
        &self.list[0]
    }

    /// Main's backend (main is always found: the module does not start
    /// without it).
    pub fn main_backend(&self) -> &Arc<Backend> {
        &self.main_backend
    }

    pub fn all(&self) -> &[Arc<Member>] {
        &self.list
    }

    /// Replicas of one KEK: work fails over between them.
    pub fn replicated(&self) -> bool {
        self.mode == KekMode::Replicas && self.list.len() > 1
    }

    pub fn mode(&self) -> KekMode {
        self.mode
    }

    /// The member named `name`.
    pub fn by_name(&self, name: &str) -> Option<&Arc<Member>> {
        self.list.iter().find(|m| m.name == name)
    }

    pub(super) fn add(&mut self, replicas: Vec<Member>) {
        self.list.extend(replicas.into_iter().map(Arc::new));
    }

    /// The members to try, in order: those up, then those down (a member
    /// may be back before the health check sees it). Refused ones and those
    /// not found yet never. Only replicas stand in for each other: with
    /// independent KEKs (any-of, all-of) work that names one KEK goes to
    /// main alone, and wraps go to each member by name (`sets`).
    pub(super) fn order(&self) -> Vec<&Arc<Member>> {
        let candidates = if self.mode.is_set() {
            &self.list[..1]
        } else {
            &self.list[..]
        };
        self.in_order(candidates)
    }

    /// `members` as `order` ranks them.
    pub(super) fn in_order<'m>(&self, members: &'m [Arc<Member>]) -> Vec<&'m Arc<Member>> {
        let (mut up, mut down) = (Vec::new(), Vec::new());
        for m in members.iter().filter(|m| m.found()) {
            match m.state() {
                State::Up => up.push(m),
                State::Down { .. } => down.push(m),
                State::Refused { .. } => {}
            }
        }
        up.extend(down);
        up
    }

    /// Look again for the members not found yet (health check). A replica
    /// found is refused until the agreement check proves it holds the same
    /// KEK; a member with a KEK of its own (any-of, all-of) is up.
    pub(super) fn find_missing(&self) {
        for m in self.list.iter().filter(|m| !m.found()) {
            match self.locate(m) {
                Ok(()) if self.mode.is_set() => {
                    crate::log_info!("HSM member '{}' found", m.name);
                    *unpoisoned(m.state.lock()) = State::Up;
                }
                Ok(()) => {
                    crate::log_info!(
                        "HSM member '{}' found; used once it proves it holds the same KEK",
                        m.name
                    );
                    *unpoisoned(m.state.lock()) = State::Refused {
                        why: "found; not yet proven to hold the same KEK".into(),
                    };
                }
                Err(why) => m.still_missing(why),
            }
        }
    }

    /// Look for `m` (see `locate`), under its time-out if it has one: a
    /// vendor library that hangs while it loads or lists its tokens must
    /// not hold up the health check for longer.
    fn locate(&self, m: &Arc<Member>) -> std::result::Result<(), String> {
        match &m.deadline {
            Some((runner, timeout)) if crate::runtime::threads::allowed() => {
                let (loaded, me) = (self.loaded.clone(), m.clone());
                runner
                    .run(*timeout, move || locate(&loaded, &me))
                    .unwrap_or_else(|_| {
                        Err(format!(
                            "loading its module or listing its tokens took longer than \
                             hsm_timeout_ms ({} ms)",
                            timeout.as_millis()
                        ))
                    })
            }
            _ => locate(&self.loaded, m),
        }
    }
}

/// Load `m`'s module (or share one loaded for that path) and find its
/// token by label; why not, in words.
fn locate(loaded: &Loaded, m: &Member) -> std::result::Result<(), String> {
    let Some(place) = &m.place else {
        return Ok(());
    };
    // Held throughout: a module is loaded once even if two threads look.
    let mut loaded = unpoisoned(loaded.lock());
    if m.found() {
        return Ok(());
    }
    let backend = match loaded.iter().find(|(p, _)| *p == place.module) {
        Some((_, b)) => b.clone(),
        None => {
            let b = Arc::new(Backend::load(&place.module).map_err(|e| e.to_string())?);
            loaded.push((place.module.clone(), b.clone()));
            b
        }
    };
    let listing = |e: Error| format!("listing the tokens of {}: {e}", place.module.display());
    for id in backend.token_slots().map_err(listing)? {
        let info = backend.token_info(id).map_err(listing)?;
        if label_of(&info.label) == place.token_label {
            let slot = Slot::try_from(id).map_err(|_| format!("slot id {id} out of range"))?;
            m.found_at(backend, slot);
            return Ok(());
        }
    }
    Err(format!(
        "no token labelled '{}' on {}",
        place.token_label,
        place.module.display()
    ))
}

/// Errors after which the next member is tried.
pub(super) fn fails_over(e: &Error) -> bool {
    is_outage(e.rv()) || e.rv() == CKR_HSME_HSM_UNAVAILABLE
}

impl Envelope {
    /// Run `f` on the first member that answers: an outage marks the member
    /// down and tries the next; a KEK missing or disabled on one member while
    /// another serves refuses that member (a replica that disagrees); on
    /// every member it is a revocation. Any other error is the answer.
    pub(super) fn on_members<T>(&self, f: impl Fn(&Arc<Member>) -> Result<T>) -> Result<T> {
        let order = self.members.order();
        let mut revoked_on: Vec<&Arc<Member>> = Vec::new();
        let mut last = None;
        for m in order {
            match f(m) {
                Ok(v) => {
                    m.mark_up();
                    for r in revoked_on {
                        r.refuse(format!(
                            "KEK '{}' is missing or disabled there but not on '{}'",
                            r.kek_label, m.name
                        ));
                    }
                    return Ok(v);
                }
                Err(e) if self.members.replicated() && fails_over(&e) => {
                    m.mark_down(&e);
                    last = Some(e);
                }
                Err(e) if self.members.replicated() && e.rv() == CKR_HSME_KEK_REVOKED => {
                    revoked_on.push(m);
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        match last {
            // Every member tried was unreachable: one code for "no HSM".
            Some(e) if fails_over(&e) => Err(Error::Rv(CKR_HSME_HSM_UNAVAILABLE)),
            Some(e) => Err(e),
            None => {
                crate::log_warn!("no HSM member may be used: every one is refused");
                Err(Error::Rv(CKR_HSME_HSM_UNAVAILABLE))
            }
        }
    }

    /// The members' health, for `status`.
    pub fn member_states(&self) -> Vec<(String, State)> {
        self.members
            .all()
            .iter()
            .map(|m| (m.name.clone(), m.state()))
            .collect()
    }

    /// Add the `[[hsm]]` members of `config` (before the envelope is used)
    /// and look for each: one that cannot be reached is kept down (see the
    /// module comment). Errors in the tables themselves are found earlier,
    /// when the configuration is read.
    pub fn add_replicas(&mut self, config: &Config) -> Result<()> {
        {
            let mut loaded = unpoisoned(self.members.loaded.lock());
            if loaded.is_empty() {
                loaded.push((
                    config.backend_module.clone(),
                    self.members.main_backend.clone(),
                ));
            }
        }
        self.members.mode = config.kek_mode;
        let replicas = config
            .hsm
            .iter()
            .map(|h| {
                let mut m = Member::unfound(
                    h.name.clone(),
                    Some(Place {
                        module: h.module(&config.backend_module).to_path_buf(),
                        token_label: h.token_label.clone(),
                    }),
                    h.kek_label
                        .clone()
                        .unwrap_or_else(|| config.kek_label.clone()),
                    h.pin_source(),
                    self.settings.hsm_timeout,
                );
                if config.kek_mode.is_set() {
                    m.store_label = format!("{}@{}", m.kek_label, m.name);
                }
                m
            })
            .collect();
        self.members.add(replicas);
        for m in &self.members.all()[1..] {
            match self.members.locate(m) {
                Ok(()) => *unpoisoned(m.state.lock()) = State::Up,
                Err(why) => m.still_missing(why),
            }
        }
        Ok(())
    }

    /// The replicas' own backends (not main's), to finalise at shutdown:
    /// every module loaded for a replica, found or not.
    pub fn replica_backends(&self) -> Vec<Arc<Backend>> {
        let main = &self.members.main_backend;
        unpoisoned(self.members.loaded.lock())
            .iter()
            .filter(|(_, b)| !Arc::ptr_eq(b, main))
            .map(|(_, b)| b.clone())
            .collect()
    }
}

/// The main member of a single-HSM envelope.
pub(super) fn main_member(
    backend: Arc<Backend>,
    slot: Slot,
    kek_label: String,
    timeout: Option<Duration>,
) -> Member {
    Member::new(
        MAIN_MEMBER.to_string(),
        backend,
        slot,
        kek_label,
        PinSource::Login,
        timeout,
    )
}
