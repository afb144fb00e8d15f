//! The HSMs that hold the KEK. One member ("main", the top-level keys of the
//! configuration) unless `kek_mode = "replicas"` adds `[[hsm]]` members that
//! hold the same KEK material (issue 13). KEK work goes to the members that
//! are up, in configuration order, and fails over to the next on an outage
//! (device errors, lost sessions): the application sees no error while one
//! member is up. A member that failed is skipped until a health check finds
//! it answering again (see `agreement`), so only the first unwrap after it
//! dies pays for the failed attempt.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use cryptoki::slot::Slot;
use cryptoki_sys::*;

use super::service::Envelope;
use crate::backend::kek::KekKey;
use crate::backend::pool::{is_outage, SessionPool};
use crate::backend::{label_of, Backend};
use crate::config::{Config, PinSource, MAIN_MEMBER};
use crate::error::{Error, Result};
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

/// One HSM holding the KEK: its backend, token slot, sessions and handles.
pub struct Member {
    pub name: String,
    pub backend: Arc<Backend>,
    pub pool: SessionPool,
    /// The KEK's label on this member (records name the top-level one).
    pub kek_label: String,
    /// Backend handles of KEK versions, found once per login.
    pub(super) handles: Mutex<HashMap<u32, KekKey>>,
    pin: PinSource,
    state: Mutex<State>,
}

impl Member {
    pub fn new(
        name: String,
        backend: Arc<Backend>,
        slot: Slot,
        kek_label: String,
        pin: PinSource,
    ) -> Self {
        Member {
            name,
            backend,
            pool: SessionPool::new(slot),
            kek_label,
            handles: Mutex::new(HashMap::new()),
            pin,
            state: Mutex::new(State::Up),
        }
    }

    pub fn state(&self) -> State {
        unpoisoned(self.state.lock()).clone()
    }

    pub(super) fn forget_keks(&self) {
        unpoisoned(self.handles.lock()).clear();
    }

    /// Back in service; logs the change.
    pub(super) fn mark_up(&self) {
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

/// Every member, "main" first.
pub struct Members {
    list: Vec<Member>,
}

impl Members {
    pub fn new(main: Member) -> Self {
        Members { list: vec![main] }
    }

    pub fn main(&self) -> &Member {
        &self.list[0]
    }

    pub fn all(&self) -> &[Member] {
        &self.list
    }

    pub fn replicated(&self) -> bool {
        self.list.len() > 1
    }

    pub(super) fn add(&mut self, replicas: Vec<Member>) {
        self.list.extend(replicas);
    }

    /// The members to try, in order: those up, then those down (a member
    /// may be back before the health check sees it). Refused ones never.
    fn order(&self) -> Vec<&Member> {
        let (mut up, mut down) = (Vec::new(), Vec::new());
        for m in &self.list {
            match m.state() {
                State::Up => up.push(m),
                State::Down { .. } => down.push(m),
                State::Refused { .. } => {}
            }
        }
        up.extend(down);
        up
    }
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
    pub(super) fn on_members<T>(&self, f: impl Fn(&Member) -> Result<T>) -> Result<T> {
        let order = self.members.order();
        let mut revoked_on: Vec<&Member> = Vec::new();
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

    /// Add the `[[hsm]]` members of `config` (before the envelope is used).
    pub fn add_replicas(&mut self, config: &Config) -> Result<()> {
        let main = self.members.main().backend.clone();
        let replicas = load_replicas(config, &main)?;
        self.members.add(replicas);
        Ok(())
    }

    /// The replicas' own backends (not main's), to finalise at shutdown.
    pub fn replica_backends(&self) -> Vec<Arc<Backend>> {
        let main = &self.members.main().backend;
        let mut out: Vec<Arc<Backend>> = Vec::new();
        for m in &self.members.all()[1..] {
            if !Arc::ptr_eq(&m.backend, main) && !out.iter().any(|b| Arc::ptr_eq(b, &m.backend)) {
                out.push(m.backend.clone());
            }
        }
        out
    }
}

/// Load the `[[hsm]]` members: their modules (one load per path, main's
/// shared, so a module is initialised and finalised once) and token slots.
fn load_replicas(config: &Config, main: &Arc<Backend>) -> Result<Vec<Member>> {
    let mut loaded: Vec<(PathBuf, Arc<Backend>)> =
        vec![(config.backend_module.clone(), main.clone())];
    let mut out = Vec::new();
    for h in &config.hsm {
        let path = h.module(&config.backend_module).to_path_buf();
        let backend = match loaded.iter().find(|(p, _)| *p == path) {
            Some((_, b)) => b.clone(),
            None => {
                let b =
                    Arc::new(Backend::load(&path).map_err(|e| {
                        Error::BackendLoad(format!("HSM member '{}': {e}", h.name))
                    })?);
                loaded.push((path.clone(), b.clone()));
                b
            }
        };
        let mut slot = None;
        for id in backend.token_slots()? {
            if label_of(&backend.token_info(id)?.label) == h.token_label {
                slot = Some(Slot::try_from(id).map_err(|_| Error::Rv(CKR_GENERAL_ERROR))?);
                break;
            }
        }
        let slot = slot.ok_or_else(|| {
            Error::Config(format!(
                "HSM member '{}': no token labelled '{}' on {}",
                h.name,
                h.token_label,
                path.display()
            ))
        })?;
        let kek_label = h
            .kek_label
            .clone()
            .unwrap_or_else(|| config.kek_label.clone());
        out.push(Member::new(
            h.name.clone(),
            backend,
            slot,
            kek_label,
            h.pin_source(),
        ));
    }
    Ok(out)
}

/// The main member of a single-HSM envelope.
pub(super) fn main_member(backend: Arc<Backend>, slot: Slot, kek_label: String) -> Member {
    Member::new(
        MAIN_MEMBER.to_string(),
        backend,
        slot,
        kek_label,
        PinSource::Login,
    )
}
