//! KEK versions: which one is primary (refreshed from the store every
//! `refresh` interval, so a rotation reaches every process without a
//! restart), rotation under a lease, batched re-wrapping, and destroying a
//! version nothing needs any more. Data is never re-encrypted: only the
//! wrapped DEK records change.

use crate::runtime::lock::unpoisoned;
use std::time::Duration;

use cryptoki::object::ObjectHandle;
use cryptoki_sys::*;

use super::record::WrappedRecord;
use super::service::{Envelope, View};
use crate::audit::{Entry, Op};
use crate::backend::kek;
use crate::backend::kek::KekType;
use crate::error::{Error, Result};
use crate::store::{KekState, KekVersionRow, StoreError};
use crate::vendor::CKR_HSME_KEK_UNAVAILABLE;

/// How long a rotation may hold its lease.
const ROTATE_LEASE_SECS: i64 = 120;

impl Envelope {
    /// The primary KEK version, from this process's view while fresh, else
    /// from the store. Registers version 1 on first use, and rotates when
    /// the policy says the primary is too old.
    pub fn primary(&self) -> Result<u32> {
        if let Some(v) = *unpoisoned(self.view.read()) {
            let age = Duration::from_millis(crate::clock::mono_ms().saturating_sub(v.loaded_ms));
            if age < self.settings.refresh {
                return Ok(v.primary);
            }
        }
        let label = self.settings.kek_label.clone();
        let row = match self.with_store(|st| Ok(st.primary_kek(&label)?))? {
            Some(row) => row,
            None => self.bootstrap()?,
        };
        let mut primary = row.version;
        if let (Some(max_age), Some(since)) = (self.settings.rotate_after, row.primary_since) {
            let age = crate::clock::unix_secs().saturating_sub(since);
            if age >= max_age.as_secs() as i64 {
                match self.rotate() {
                    Ok(v) => primary = v,
                    // Someone else is rotating, or we cannot: keep sealing
                    // under the current primary and try again later.
                    Err(e) => crate::log_warn!("rotation due by policy did not run here: {e}"),
                }
            }
        }
        {
            let mut w = unpoisoned(self.view.write());
            *w = Some(View {
                primary,
                loaded_ms: crate::clock::mono_ms(),
            });
        }
        Ok(primary)
    }

    /// Forget the view of versions (the next seal reads the store).
    pub fn refresh_now(&self) {
        {
            let mut w = unpoisoned(self.view.write());
            *w = None;
        }
    }

    /// A store with no versions yet: version 1 is the KEK made with the
    /// token (label, CKA_ID 01). Another process may register it first.
    fn bootstrap(&self) -> Result<KekVersionRow> {
        let label = self.settings.kek_label.clone();
        let ty = self.with_session(|s| {
            let key = self.kek_handle(s, 1)?;
            kek::kek_type(s, key)
        })?;
        match self.with_store(|st| Ok(st.add_kek_version(&label, 1, &ty.name(), true)?)) {
            Ok(()) | Err(Error::Store(StoreError::Duplicate)) => {}
            Err(e) => return Err(e),
        }
        self.with_store(|st| Ok(st.primary_kek(&label)?))?
            .ok_or(Error::Rv(CKR_HSME_KEK_UNAVAILABLE))
    }

    /// Whether the configured KEK is there at all: versions of its label
    /// recorded in the store, or else (nothing recorded yet) version 1 on
    /// the HSM. The KEK is private: call it logged in as the user.
    pub fn kek_present(&self) -> Result<bool> {
        let label = self.settings.kek_label.clone();
        if !self
            .with_store(|st| Ok(st.kek_versions(&label)?))?
            .is_empty()
        {
            return Ok(true);
        }
        self.with_session(|s| kek::exists(s, &label, 1))
    }

    /// Every version, oldest first, with how many records each holds.
    pub fn versions(&self) -> Result<Vec<(KekVersionRow, u64)>> {
        self.primary()?;
        let label = self.settings.kek_label.clone();
        self.with_store(|st| {
            let rows = st.kek_versions(&label)?;
            let mut out = Vec::with_capacity(rows.len());
            for r in rows {
                let n = st.count_under(&label, r.version)?;
                out.push((r, n));
            }
            Ok(out)
        })
    }

    /// Make a new version of the primary's type on the HSM and make it
    /// primary, under a lease so that only one process or command rotates at
    /// a time. A key left on the HSM by a rotation that died before recording
    /// it is adopted, not duplicated.
    pub fn rotate(&self) -> Result<u32> {
        self.create_version(None, true)
    }

    /// Make a new version on the HSM, of type `ty` (None: the primary's);
    /// primary or not (a version made ahead of time can be promoted with
    /// `set_primary`).
    pub fn create_version(&self, ty: Option<KekType>, make_primary: bool) -> Result<u32> {
        self.add_version(make_primary, Op::KekCreate, |s, label, next| {
            if kek::exists(s, label, next)? {
                if !kek::made_on_hsm(s, label, next)? {
                    return Err(Error::Admin(format!(
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
        let label = self.settings.kek_label.clone();
        let row = self.with_store(|st| Ok(st.primary_kek(&label)?))?;
        Ok(row
            .and_then(|r| KekType::parse(&r.kind))
            .unwrap_or(KekType::Aes256))
    }

    /// Run `f` holding the rotation lease, so that only one process or
    /// command changes the KEK's versions at a time.
    pub(super) fn with_lease<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let lease = format!("rotate:{}", self.settings.kek_label);
        if !self.with_store(|st| Ok(st.take_lease(&lease, &self.holder, ROTATE_LEASE_SECS)?))? {
            return Err(Error::Admin(
                "another process is changing this KEK's versions".into(),
            ));
        }
        let result = f();
        let _ = self.with_store(|st| Ok(st.release_lease(&lease, &self.holder)?));
        result
    }

    /// Add the next version, made on the HSM by `make(session, label,
    /// version)` (which returns the objects it made: none when it adopts
    /// one), under the rotation lease; `op` is what the audit log calls it
    /// (a rotation when it becomes primary). Before it is recorded, the new
    /// version must pass the checks of any use and seal and open a test
    /// value; if anything fails, the objects made are destroyed.
    pub(super) fn add_version(
        &self,
        make_primary: bool,
        op: Op,
        make: impl Fn(&cryptoki::session::Session, &str, u32) -> Result<Vec<ObjectHandle>>,
    ) -> Result<u32> {
        let label = self.settings.kek_label.clone();
        let result = self.with_lease(|| self.add_locked(&label, make_primary, op, make));
        self.refresh_now();
        result
    }

    fn add_locked(
        &self,
        label: &str,
        make_primary: bool,
        op: Op,
        make: impl Fn(&cryptoki::session::Session, &str, u32) -> Result<Vec<ObjectHandle>>,
    ) -> Result<u32> {
        // Registering version 1 first keeps numbering right on a new store.
        if self.with_store(|st| Ok(st.primary_kek(label)?))?.is_none() {
            self.bootstrap()?;
        }
        let next = self
            .with_store(|st| Ok(st.kek_versions(label)?))?
            .iter()
            .map(|r| r.version)
            .max()
            .unwrap_or(0)
            + 1;
        self.with_session(|s| {
            let made = make(s, label, next)?;
            let added = self.check_new(s, next).and_then(|ty| {
                let kind = ty.name();
                self.with_store(|st| Ok(st.add_kek_version(label, next, &kind, make_primary)?))?;
                crate::log_info!("KEK '{label}' v{next} ({kind}) added (primary: {make_primary})");
                Ok(())
            });
            if let Err(e) = added {
                self.forget_keks();
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
        self.log(Entry::new(op, CKR_OK).kek_version(next));
        Ok(next)
    }

    /// A new version passes the checks of any use (found once, sensitive,
    /// not extractable, RSA of 2048 bits or more with matching halves) and
    /// seals and opens a test value: an imported AES key of 25 to 31 bytes,
    /// say, fails here rather than after it is primary.
    fn check_new(&self, s: &cryptoki::session::Session, version: u32) -> Result<KekType> {
        let backend = self.backend();
        let key = self.kek_handle(s, version)?;
        let ty = kek::kek_type(s, key)?;
        let id = [0xA5u8; 16];
        let bound = b"hsm-envelope/kek-self-test";
        let mut value = [0u8; 32];
        getrandom::fill(&mut value).map_err(|_| Error::Rv(CKR_FUNCTION_FAILED))?;
        let trial = self
            .seal_with(backend, s, key, version, &id, bound, &value)
            .and_then(|rec| {
                let aad = rec.aad(&id, bound);
                Envelope::open_with(backend, s, key, &rec, &aad)
            });
        match trial {
            Ok(v) if v.as_slice() == value => Ok(ty),
            Ok(_) => Err(Error::Admin(format!(
                "the new KEK v{version} opened a test value wrongly; not recorded"
            ))),
            Err(e) => Err(Error::Admin(format!(
                "the new KEK v{version} does not work as a KEK ({e}); not recorded, and its objects were destroyed"
            ))),
        }
    }

    /// Make an existing version primary (new DEKs wrap under it at once here,
    /// within `refresh_secs` in other processes).
    pub fn set_primary(&self, version: u32) -> Result<()> {
        let label = self.settings.kek_label.clone();
        self.with_session(|s| self.kek_handle(s, version).map(|_| ()))?;
        self.with_store(|st| Ok(st.set_primary_kek(&label, version)?))?;
        self.refresh_now();
        self.log(Entry::new(Op::KekSetPrimary, CKR_OK).kek_version(version));
        Ok(())
    }

    /// Records not under the primary version.
    pub fn pending_rewrap(&self) -> Result<u64> {
        let primary = self.primary()?;
        let label = self.settings.kek_label.clone();
        self.with_store(|st| Ok(st.count_not_under(&label, primary)?))
    }

    /// Destroy version `version` on the HSM, only if it is not primary and no
    /// record at all (soft-deleted ones included: they are rows) needs it.
    pub fn destroy_version(&self, version: u32) -> Result<()> {
        let label = self.settings.kek_label.clone();
        let rows = self.with_store(|st| Ok(st.kek_versions(&label)?))?;
        let row = rows
            .iter()
            .find(|r| r.version == version)
            .ok_or_else(|| Error::Admin(format!("KEK '{label}' has no version {version}")))?;
        match row.state {
            KekState::Primary => {
                return Err(Error::Admin(format!(
                    "v{version} is the primary version; rotate first"
                )))
            }
            KekState::Destroyed => {
                return Err(Error::Admin(format!("v{version} is already destroyed")))
            }
            KekState::DecryptOnly => {}
        }
        // Until every process has re-read the versions, one may still seal
        // new DEKs under the version that was primary.
        let settled = row
            .retired
            .unwrap_or(0)
            .saturating_add(self.settings.refresh.as_secs() as i64 + 1);
        if crate::clock::unix_secs() < settled {
            return Err(Error::Admin(format!(
                "v{version} was primary until moments ago; processes may still wrap new DEKs under it until {settled} (unix time): try again then"
            )));
        }
        let needed = self.with_store(|st| Ok(st.count_under(&label, version)?))?;
        if needed > 0 {
            return Err(Error::Admin(format!(
                "{needed} record(s) still need v{version}; run `hsm-envelope rewrap` first"
            )));
        }
        self.with_session(|s| {
            for h in self.kek_handle(s, version)?.objects() {
                s.destroy_object(h)
                    .map_err(|e| Error::from_cryptoki("C_DestroyObject", e))?;
            }
            Ok(())
        })?;
        self.forget_keks();
        self.with_store(|st| Ok(st.mark_kek_destroyed(&label, version)?))?;
        crate::log_info!("KEK '{label}' v{version} destroyed");
        self.log(Entry::new(Op::KekDestroyVersion, CKR_OK).kek_version(version));
        Ok(())
    }

    /// The KEK version a record names (for listings).
    pub fn record_version(record: &[u8]) -> Option<u32> {
        WrappedRecord::decode(record).ok().map(|r| r.kek_version)
    }
}
