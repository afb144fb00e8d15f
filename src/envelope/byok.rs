//! Bring-your-own-key: an import key pair on the HSM whose public half the
//! customer wraps key material to, and the import of that material as a new
//! KEK version (see `backend::import` for the transfer format).

use super::kek_scope::KekScope;
use crate::audit::Op;
use crate::backend::import::{self, ImportKeyInfo, Material};
use crate::error::{Error, Result};
use crate::runtime::lock::unpoisoned;

impl KekScope<'_> {
    /// The import key's public half and instructions; `new` (or no key yet)
    /// makes a fresh pair of `bits` bits, replacing any old one.
    pub fn import_key(&self, new: bool, bits: u32) -> Result<ImportKeyInfo> {
        let backend = self.member.backend()?;
        let label = self.kek_label().to_string();
        // Under the rotation lease: an import in progress keeps its key.
        self.with_lease(|| {
            self.with_session(|s| {
                let key = match import::find_import_key(s, &label) {
                    Ok(Some(key)) if !new => key,
                    // Absent, unwanted or broken: a new pair replaces it.
                    Ok(_) | Err(Error::Admin(_)) => {
                        let key = import::create_import_key(s, &label, bits)?;
                        crate::log_info!("KEK '{label}': new {bits}-bit BYOK import key made");
                        key
                    }
                    Err(e) => return Err(e),
                };
                import::describe(backend, s, &key)
            })
        })
    }

    /// Import the key material in `blob` as the next KEK version, then
    /// destroy the import key that opened it (one import per import key).
    pub fn import_version(
        &self,
        blob: &[u8],
        material: Material,
        make_primary: bool,
    ) -> Result<u32> {
        if self.is_replica() {
            return Err(Error::admin(format!(
                "'{}' is a replica: name the version of main it is to hold (--kek-version N)",
                self.member.name
            )));
        }
        if make_primary && self.env.members.replicated() {
            return Err(Error::admin(
                "with replicas, import decrypt-only, import the same material into each replica \
                 (`kek --hsm NAME import --kek-version N`), then `kek set-primary N`",
            ));
        }
        let backend = self.member.backend()?;
        let used = std::sync::Mutex::new(None);
        let version = self.add_version(make_primary, Op::KekImport, |s, label, next| {
            if crate::backend::kek::exists(s, label, next)? {
                return Err(Error::admin(format!(
                    "an object named KEK '{label}' v{next} is on the HSM but not in the store; adopt it with `hsm-envelope kek create`, or remove it"
                )));
            }
            let key = import::find_import_key(s, label)?.ok_or_else(|| {
                Error::admin(format!(
                    "KEK '{label}' has no import key on the HSM: run `hsm-envelope kek import-key` and wrap the key material to its public key"
                ))
            })?;
            let made = import::import(backend, s, &key, blob, material, label, next)?;
            {
        let mut u = unpoisoned(used.lock());
                *u = Some(key);
            }
            Ok(made)
        })?;
        let key = used.lock().ok().and_then(|mut u| u.take());
        if let Some(key) = key {
            if let Err(e) = self.with_session(|s| key.destroy(s)) {
                crate::log_warn!(
                    "{}: the used import key was not destroyed: {e}",
                    self.describe()
                );
            }
        }
        Ok(version)
    }

    /// Replicas: import the key material in `blob` into this replica as
    /// main's version `version` (recorded, not destroyed, not on the
    /// replica yet), then prove the replica opens what main seals under it;
    /// if it does not (other material), the imported objects go again.
    pub fn import_into_replica(&self, blob: &[u8], material: Material, version: u32) -> Result<()> {
        if !self.is_replica() {
            return Err(Error::admin(
                "--kek-version imports a version main has into a replica: name the replica with --hsm",
            ));
        }
        let env = self.env;
        let store_label = env.settings.kek_label.clone();
        let known = env
            .with_store(|st| Ok(st.kek_versions(&store_label)?))?
            .into_iter()
            .any(|r| r.version == version && r.state != crate::store::KekState::Destroyed);
        if !known {
            return Err(Error::admin(format!(
                "main has no version {version} (import it there first, decrypt-only)"
            )));
        }
        // Under the KEK's lease: no import key replaced, no version destroyed
        // meanwhile.
        let (_made, key) = self.with_lease(|| self.import_and_prove(blob, material, version))?;
        if let Err(e) = self.with_session(|s| key.destroy(s)) {
            crate::log_warn!(
                "{}: the used import key was not destroyed: {e}",
                self.describe()
            );
        }
        crate::log_info!(
            "KEK v{version} imported into replica '{}'",
            self.member.name
        );
        let hsm = format!("hsm={}", self.member.name);
        env.log(
            crate::audit::Entry::new(Op::KekImport, cryptoki_sys::CKR_OK)
                .kek_version(version)
                .detail(&hsm),
        );
        Ok(())
    }

    /// `import_into_replica`'s work under the lease: the objects made and
    /// the import key used, once the replica has proven it agrees.
    fn import_and_prove(
        &self,
        blob: &[u8],
        material: Material,
        version: u32,
    ) -> Result<(Vec<cryptoki::object::ObjectHandle>, import::ImportKey)> {
        let env = self.env;
        let backend = self.member.backend()?;
        let label = self.member.kek_label.clone();
        let name = self.member.name.clone();
        let (made, key) = self.with_session(|s| {
            if crate::backend::kek::exists(s, &label, version)? {
                return Err(Error::admin(format!(
                    "replica '{name}' already holds an object named KEK '{label}' v{version}: \
                     remove it there first"
                )));
            }
            let key = import::find_import_key(s, &label)?.ok_or_else(|| {
                Error::admin(format!(
                    "replica '{name}' has no import key: run `hsm-envelope kek --hsm {name} import-key`"
                ))
            })?;
            let made = import::import(backend, s, &key, blob, material, &label, version)?;
            Ok((made, key))
        })?;
        self.member.forget_keks();
        let member = env
            .members
            .by_name(&name)
            .ok_or(Error::Rv(cryptoki_sys::CKR_GENERAL_ERROR))?;
        let Err(e) = env.proves_same(member, version) else {
            return Ok((made, key));
        };
        // Not proven: the objects go again (the import key stays, so the
        // same transfer file can be tried again).
        let left: Vec<String> = self
            .with_session(|s| {
                Ok(made
                    .iter()
                    .filter(|h| s.destroy_object(**h).is_err())
                    .map(|h| h.to_string())
                    .collect())
            })
            .unwrap_or_else(|_| made.iter().map(|h| h.to_string()).collect());
        self.member.forget_keks();
        let removed = if left.is_empty() {
            "removed".to_string()
        } else {
            format!(
                "could not remove objects {} there: remove them by hand",
                left.join(", ")
            )
        };
        let why = if super::members::fails_over(&e) {
            format!(
                "could not be proven: main or the replica did not answer ({e}); {removed}; \
                 try again when both answer"
            )
        } else {
            format!("was not proven to be main's v{version} ({e}); {removed}")
        };
        Err(Error::admin(format!(
            "the material imported into replica '{name}' {why}"
        )))
    }
}
