//! One member's KEK versions, for the admin tool and rotation: list,
//! create (rotate), import, promote, destroy. The top-level KEK is main's;
//! with any-of and all-of each further member has KEKs of its own and
//! rotates on its own (`hsm-envelope kek ... --hsm NAME`). Replicas share
//! main's versions.
//!
//! Changes to one KEK's versions run under a lease in the store, so only one
//! process or command changes them at a time. A new version must pass the
//! checks of any use and seal and open a test value before it is recorded.

use cryptoki::object::ObjectHandle;
use cryptoki_sys::*;

use super::members::Member;
use super::service::Envelope;
use crate::audit::{Entry, Op};
use crate::backend::kek::{self, KekType};
use crate::error::{Error, Result};
use crate::store::{KekState, KekVersionRow, StoreError};

/// How long a rotation may hold its lease.
const ROTATE_LEASE_SECS: i64 = 120;

/// Every format-1 record of a label: no record is under this version.
pub(super) const ANY_VERSION: u32 = u32::MAX;

/// One member's KEK, as the admin tool changes it.
pub struct KekScope<'a> {
    pub(super) env: &'a Envelope,
    pub(super) member: &'a Member,
}

impl Envelope {
    /// The KEK of member `hsm` (None: the top-level one, main's). A
    /// replica's versions are main's: on a replica only the import key and
    /// the import of a version main has are offered (see `byok`).
    pub fn kek_scope(&self, hsm: Option<&str>) -> Result<KekScope<'_>> {
        let member = match hsm {
            None => self.members.main(),
            Some(name) => {
                let m = self.members.by_name(name).ok_or_else(|| {
                    let names: Vec<&str> =
                        self.members.all().iter().map(|m| m.name.as_str()).collect();
                    Error::admin(format!(
                        "no HSM member named '{name}' (members: {})",
                        names.join(", ")
                    ))
                })?;
                m
            }
        };
        Ok(KekScope { env: self, member })
    }
}

impl<'a> KekScope<'a> {
    fn is_main(&self) -> bool {
        std::ptr::eq(self.member, self.env.members.main().as_ref())
    }

    /// A replica: it holds main's versions, imported into it.
    pub(super) fn is_replica(&self) -> bool {
        !self.is_main() && self.env.members.replicated()
    }

    /// Refuse `what` on a replica, or (`on_main`) on main with replicas,
    /// saying how versions reach replicas instead.
    fn not_with_replicas(&self, what: &str, on_main: bool) -> Result<()> {
        const HOW: &str = "with replicas a version is imported into each member: `kek import` \
            (decrypt-only) on main, `kek --hsm NAME import --kek-version N` on each replica, \
            then `kek set-primary N`";
        if self.is_replica() {
            return Err(Error::admin(format!(
                "'{}' is a replica: it holds main's KEK versions, so {what} is done on main \
                 (without --hsm); {HOW}",
                self.member.name
            )));
        }
        if on_main && self.env.members.replicated() {
            return Err(Error::admin(format!(
                "{what} is refused with replicas (a key made on one HSM cannot be copied to \
                 the others); {HOW}"
            )));
        }
        Ok(())
    }

    /// The KEK's label on its HSM.
    pub fn kek_label(&self) -> &str {
        &self.member.kek_label
    }

    /// The member's name.
    pub fn hsm(&self) -> &str {
        &self.member.name
    }

    /// "KEK 'label'", and the HSM for a member other than main.
    pub fn describe(&self) -> String {
        if self.is_main() {
            format!("KEK '{}'", self.member.kek_label)
        } else {
            format!(
                "KEK '{}' on HSM '{}'",
                self.member.kek_label, self.member.name
            )
        }
    }

    fn store_label(&self) -> String {
        self.member.store_label.clone()
    }

    pub fn primary(&self) -> Result<u32> {
        self.env.primary_on(self.member)
    }

    pub(super) fn with_session<T>(
        &self,
        f: impl Fn(&cryptoki::session::Session) -> Result<T>,
    ) -> Result<T> {
        self.env.with_session_on(self.member, f)
    }

    /// How many records need version `version`, soft-deleted ones included:
    /// those of its label and, with several HSMs, those of every set
    /// version that names it.
    fn records_under(&self, version: u32) -> Result<u64> {
        let env = self.env;
        let mut n = if self.is_main() || self.is_replica() {
            let label = env.settings.kek_label.clone();
            env.with_store(|st| Ok(st.count_under(&label, version)?))?
        } else {
            0
        };
        // Records of several HSMs of either mode, whatever the configured
        // one: a record made before the mode changed still needs the KEK.
        for (label, sv) in env.set_versions_using(self.member, version)? {
            n += env.with_store(|st| Ok(st.count_under(&label, sv)?))?;
        }
        Ok(n)
    }

    /// Every version, oldest first, with how many records need each.
    pub fn versions(&self) -> Result<Vec<(KekVersionRow, u64)>> {
        self.primary()?;
        let label = self.store_label();
        let rows = self.env.with_store(|st| Ok(st.kek_versions(&label)?))?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let n = self.records_under(r.version)?;
            out.push((r, n));
        }
        Ok(out)
    }

    /// Records not under the primary version; with several HSMs, not under
    /// the primary combination of the configured mode (format-1 records and
    /// records of the other mode included).
    pub fn pending_rewrap(&self) -> Result<u64> {
        let env = self.env;
        let main_label = env.settings.kek_label.clone();
        if let Some(mode) = env.set_mode() {
            let primary = match env.settle_set_primary() {
                Ok(v) => v,
                Err(e) => {
                    crate::log_warn!("the set's primary combination is not known: {e}");
                    ANY_VERSION
                }
            };
            return env.with_store(|st| {
                let mut n = st.count_not_under(&main_label, ANY_VERSION)?;
                for m in super::set_versions::SET_MODES {
                    let label = env.set_label_for(m);
                    let keep = if m == mode { primary } else { ANY_VERSION };
                    n += st.count_not_under(&label, keep)?;
                }
                Ok(n)
            });
        }
        let primary = env.primary()?;
        env.with_store(|st| Ok(st.count_not_under(&main_label, primary)?))
    }

    /// Make a new version of the primary's type on the HSM and make it
    /// primary. A key left on the HSM by a rotation that died before
    /// recording it is adopted, not duplicated.
    pub fn rotate(&self) -> Result<u32> {
        self.not_with_replicas("rotation", true)?;
        self.create_version(None, true)
    }

    /// Make a new version on the HSM, of type `ty` (None: the primary's);
    /// primary or not (a version made ahead of time can be promoted with
    /// `set_primary`).
    pub fn create_version(&self, ty: Option<KekType>, make_primary: bool) -> Result<u32> {
        self.not_with_replicas("making a version on the HSM", true)?;
        self.add_version(make_primary, Op::KekCreate, |s, label, next| {
            if kek::exists(s, label, next)? {
                if !kek::made_on_hsm(s, label, next)? {
                    return Err(Error::admin(format!(
                        "KEK '{label}' v{next} is on the HSM but not recorded, and was not \
                         made there (its value may be known outside it): refusing to adopt \
                         it; remove it from the HSM, or bring a key of your own with `kek import`"
                    )));
                }
                crate::log_warn!(
                    "KEK '{label}' v{next} is on the HSM but not recorded: adopting it"
                );
                return Ok(Vec::new());
            }
            let ty = match ty {
                Some(ty) => ty,
                None => self.primary_type()?,
            };
            kek::generate(s, label, next, ty)
        })
    }

    /// The type of the primary version, as the store records it.
    fn primary_type(&self) -> Result<KekType> {
        let label = self.store_label();
        let row = self.env.with_store(|st| Ok(st.primary_kek(&label)?))?;
        Ok(row
            .and_then(|r| KekType::parse(&r.kind))
            .unwrap_or(KekType::Aes256))
    }

    /// Run `f` holding the rotation lease of this KEK.
    pub(super) fn with_lease<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let env = self.env;
        let lease = format!("rotate:{}", self.store_label());
        if !env.with_store(|st| Ok(st.take_lease(&lease, &env.holder, ROTATE_LEASE_SECS)?))? {
            return Err(Error::admin(
                "another process is changing this KEK's versions",
            ));
        }
        let result = f();
        let _ = env.with_store(|st| Ok(st.release_lease(&lease, &env.holder)?));
        result
    }

    /// Add the next version, made on the HSM by `make(session, label on the
    /// HSM, version)` (which returns the objects it made: none when it
    /// adopts one), under the rotation lease; `op` is what the audit log
    /// calls it (a rotation when it becomes primary). If the new version
    /// fails its checks, the objects made are destroyed.
    pub(super) fn add_version(
        &self,
        make_primary: bool,
        op: Op,
        make: impl Fn(&cryptoki::session::Session, &str, u32) -> Result<Vec<ObjectHandle>>,
    ) -> Result<u32> {
        let result = self.with_lease(|| self.add_locked(make_primary, op, make));
        self.settled();
        result
    }

    fn add_locked(
        &self,
        make_primary: bool,
        op: Op,
        make: impl Fn(&cryptoki::session::Session, &str, u32) -> Result<Vec<ObjectHandle>>,
    ) -> Result<u32> {
        let env = self.env;
        let label = self.store_label();
        let on_hsm = self.member.kek_label.clone();
        // Registering version 1 first keeps numbering right on a new store.
        if env.with_store(|st| Ok(st.primary_kek(&label)?))?.is_none() {
            env.bootstrap_on(self.member)?;
        }
        let next = env
            .with_store(|st| Ok(st.kek_versions(&label)?))?
            .iter()
            .map(|r| r.version)
            .max()
            .unwrap_or(0)
            + 1;
        self.with_session(|s| {
            let made = make(s, &on_hsm, next)?;
            let added = self.check_new(s, next).and_then(|ty| {
                let kind = ty.name();
                env.with_store(|st| Ok(st.add_kek_version(&label, next, &kind, make_primary)?))?;
                crate::log_info!(
                    "{} v{next} ({kind}) added (primary: {make_primary})",
                    self.describe()
                );
                Ok(())
            });
            if let Err(e) = added {
                self.member.forget_keks();
                for h in made {
                    let _ = s.destroy_object(h);
                }
                return Err(e);
            }
            Ok(())
        })?;
        let op = match op {
            Op::KekCreate if make_primary => Op::KekRotate,
            op => op,
        };
        self.audit(op, next);
        Ok(next)
    }

    fn audit(&self, op: Op, version: u32) {
        let hsm = format!("hsm={}", self.member.name);
        let e = Entry::new(op, CKR_OK).kek_version(version);
        self.env
            .log(if self.is_main() { e } else { e.detail(&hsm) });
    }

    /// A new version passes the checks of any use (found once, sensitive,
    /// not extractable, RSA of 2048 bits or more with matching halves) and
    /// seals and opens a test value: an imported AES key of 25 to 31 bytes,
    /// say, fails here rather than after it is primary.
    fn check_new(&self, s: &cryptoki::session::Session, version: u32) -> Result<KekType> {
        let backend = self.member.backend()?;
        let key = self.member.kek_handle(s, version)?;
        let ty = kek::kek_type(s, key)?;
        let id = [0xA5u8; 16];
        let bound = b"hsm-envelope/kek-self-test";
        let mut value = [0u8; 32];
        getrandom::fill(&mut value).map_err(|_| Error::Rv(CKR_FUNCTION_FAILED))?;
        let at = (self.member.kek_label.as_str(), version);
        let trial = self
            .member
            .seal(backend, s, key, at, &id, bound, &value)
            .and_then(|rec| {
                let aad = rec.aad(&id, bound);
                Envelope::open_with(backend, s, key, &rec, &aad)
            });
        match trial {
            Ok(v) if v.as_slice() == value => Ok(ty),
            Ok(_) => Err(Error::admin(format!(
                "the new KEK v{version} opened a test value wrongly; not recorded"
            ))),
            Err(e) => Err(Error::admin(format!(
                "the new KEK v{version} does not work as a KEK ({e}); not recorded, and its objects were destroyed"
            ))),
        }
    }

    /// After a change of versions: this process reads them again, and with
    /// several HSMs the set's primary follows (best effort: `rewrap`
    /// settles it too).
    fn settled(&self) {
        let env = self.env;
        env.refresh_now();
        if env.members.mode().is_set() {
            if let Err(e) = env.settle_set_primary() {
                crate::log_warn!("the set's primary combination was not updated: {e}");
            }
        }
    }

    /// Make an existing version primary (new DEKs wrap under it at once here,
    /// within `refresh_secs` in other processes).
    pub fn set_primary(&self, version: u32) -> Result<()> {
        self.not_with_replicas("changing the primary version", false)?;
        let env = self.env;
        let label = self.store_label();
        self.with_session(|s| self.member.kek_handle(s, version).map(|_| ()))?;
        // Every replica must hold it, or failing over loses the new DEKs:
        // each one proves it, or the change is refused.
        if self.is_main() && env.members.replicated() {
            for r in env.members.all().iter().skip(1) {
                let checked = if r.found() {
                    env.proves_same(r, version)
                } else {
                    Err(Error::admin(
                        r.state().why().unwrap_or("not found").to_string(),
                    ))
                };
                if let Err(e) = checked {
                    return Err(Error::admin(format!(
                        "replica '{}' was not proven to hold v{version} as main does ({e}): \
                         bring it up and import the version there (`kek --hsm {} import \
                         --kek-version {version}`), or take it out of the configuration",
                        r.name, r.name
                    )));
                }
            }
        }
        env.with_store(|st| Ok(st.set_primary_kek(&label, version)?))?;
        self.settled();
        self.audit(Op::KekSetPrimary, version);
        Ok(())
    }

    /// Destroy version `version` on the HSM, only if it is not primary and no
    /// record at all (soft-deleted ones included: they are rows) needs it.
    /// With replicas, also on each replica: the ones where it could not be
    /// destroyed are returned (name, why).
    pub fn destroy_version(&self, version: u32) -> Result<Vec<(String, String)>> {
        self.not_with_replicas("destroying a version", false)?;
        let env = self.env;
        let label = self.store_label();
        let what = self.describe();
        let rows = env.with_store(|st| Ok(st.kek_versions(&label)?))?;
        let row = rows
            .iter()
            .find(|r| r.version == version)
            .ok_or_else(|| Error::admin(format!("{what} has no version {version}")))?;
        match row.state {
            KekState::Primary => {
                return Err(Error::admin(format!(
                    "v{version} is the primary version; rotate first"
                )))
            }
            KekState::Destroyed => {
                return Err(Error::admin(format!("v{version} is already destroyed")))
            }
            KekState::DecryptOnly => {}
        }
        // Until every process has re-read the versions, one may still seal
        // new DEKs under the version that was primary.
        let settled = row
            .retired
            .unwrap_or(0)
            .saturating_add(env.settings.refresh.as_secs() as i64 + 1);
        if crate::clock::unix_secs() < settled {
            return Err(Error::admin(format!(
                "v{version} was primary until moments ago; processes may still wrap new DEKs under it until {settled} (unix time): try again then"
            )));
        }
        let needed = self.records_under(version)?;
        if needed > 0 {
            return Err(Error::admin(format!(
                "{needed} record(s) still need v{version}; run `hsm-envelope rewrap` first"
            )));
        }
        self.with_session(|s| {
            for h in self.member.kek_handle(s, version)?.objects() {
                s.destroy_object(h)
                    .map_err(|e| Error::from_cryptoki("C_DestroyObject", e))?;
            }
            Ok(())
        })?;
        self.member.forget_keks();
        env.with_store(|st| Ok(st.mark_kek_destroyed(&label, version)?))?;
        crate::log_info!("{what} v{version} destroyed");
        let left = if self.is_main() && env.members.replicated() {
            env.destroy_on_replicas(version)
        } else {
            Vec::new()
        };
        self.audit(Op::KekDestroyVersion, version);
        Ok(left)
    }
}

/// A store that had no version for a member gets version 1 registered by
/// whichever process comes first.
pub(super) fn ignore_duplicate(r: Result<()>) -> Result<()> {
    match r {
        Ok(()) => Ok(()),
        Err(Error::Store(e)) if matches!(*e, StoreError::Duplicate) => Ok(()),
        Err(e) => Err(e),
    }
}
