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
        let backend = self.member.backend()?;
        let used = std::sync::Mutex::new(None);
        let version = self.add_version(make_primary, Op::KekImport, |s, label, next| {
            if crate::backend::kek::exists(s, label, next)? {
                return Err(Error::Admin(format!(
                    "an object named KEK '{label}' v{next} is on the HSM but not in the store; adopt it with `hsm-envelope kek create`, or remove it"
                )));
            }
            let key = import::find_import_key(s, label)?.ok_or_else(|| {
                Error::Admin(format!(
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
}
