//! Sealing and opening DEK values under the KEK. The KEK is only ever used
//! through backend calls; records bind the DEK's id and security attributes
//! as GCM additional data, so a record moved onto another row fails to open.
//!
//! The KEK has numbered versions (see `versions`): new records are sealed
//! under the primary one, and each record names the version that opens it.

use std::sync::Arc;

use cryptoki_sys::*;

use super::attrs::Attrs;
use super::record::{self, WrapAlg, WrappedRecord};
use super::record_set::Stored;
use crate::backend::kek::KekKey;
use crate::backend::{kek, rsa, Backend};
use crate::crypto::PreparedKey;
use crate::error::{Error, Result};
use crate::hex::encode as hex;
use crate::secret::SecretBytes;
use crate::vendor::{CKR_HSME_KEK_REVOKED, CKR_HSME_KEK_UNAVAILABLE, CKR_HSME_RECORD_INVALID};

pub use super::instance::Envelope;
pub(super) use super::instance::View;
pub use super::settings::Settings;

/// Which DEK, as the object that holds it sees it: what `value` needs to
/// find its key in the cache or unwrap it.
#[derive(Clone, Copy)]
pub struct DekRef<'a> {
    pub id: &'a [u8; 16],
    pub attrs: &'a Attrs,
    pub record: &'a [u8],
    /// Record and bound attributes together (see `cache`).
    pub binding: &'a Arc<[u8]>,
    /// The store row's generation, for token DEKs (lazy re-wrap writes it).
    pub row_generation: Option<i64>,
}

impl Envelope {
    /// Wrap `value` for the DEK `id` with attributes `attrs` under the
    /// primary KEK version; returns the encoded record.
    pub fn seal(&self, id: &[u8; 16], attrs: &Attrs, value: &[u8]) -> Result<Vec<u8>> {
        if let Some(mode) = self.set_mode() {
            return self.seal_set(mode, id, attrs, value, None);
        }
        let version = self.primary()?;
        self.seal_under(version, id, attrs, value)
    }

    pub(super) fn seal_under(
        &self,
        version: u32,
        id: &[u8; 16],
        attrs: &Attrs,
        value: &[u8],
    ) -> Result<Vec<u8>> {
        // Owned, shared by the tries on each member (see `with_kek`).
        let label: Arc<str> = self.settings.kek_label.as_str().into();
        let bound: Arc<[u8]> = attrs.bound_encoding().into();
        let value = Arc::new(SecretBytes::from_slice(value));
        let id = *id;
        let rec = self.with_kek(version, move |m, backend, s, key| {
            m.seal(
                backend,
                s,
                key,
                (&label, version),
                &id,
                &bound,
                value.as_slice(),
            )
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
        let label = &self.settings.kek_label;
        self.members
            .main()
            .seal(backend, s, key, (label, version), id, bound, value)
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
    pub fn open(&self, id: &[u8; 16], attrs: &Attrs, record: &[u8]) -> Result<SecretBytes> {
        self.open_saying(id, attrs, record).map(|(v, _)| v)
    }

    /// `open`, also saying which HSMs of a set took part (None for a record
    /// of one KEK).
    fn open_saying(
        &self,
        id: &[u8; 16],
        attrs: &Attrs,
        record: &[u8],
    ) -> Result<(SecretBytes, Option<String>)> {
        if let Stored::Set(set) = Stored::decode(record)? {
            let (value, took_part) = self.open_set(id, attrs, &set).inspect_err(|e| {
                if e.rv() == CKR_HSME_RECORD_INVALID {
                    crate::log_warn!("wrapped record of DEK {} failed authentication", hex(id));
                }
            })?;
            return Ok((Self::check_len(attrs, value)?, Some(took_part)));
        }
        let rec = Arc::new(self.openable(id, record)?);
        let aad: Arc<[u8]> = rec.aad(id, &attrs.bound_encoding()).into();
        let version = rec.kek_version;
        let value = self
            .with_kek(version, move |_, backend, s, key| {
                Self::open_with(backend, s, key, &rec, &aad)
            })
            .inspect_err(|e| {
                if e.rv() == CKR_HSME_RECORD_INVALID {
                    crate::log_warn!("wrapped record of DEK {} failed authentication", hex(id));
                }
            })?;
        Ok((Self::check_len(attrs, value)?, None))
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
    pub fn value(&self, dek: DekRef<'_>) -> Result<Arc<PreparedKey>> {
        let DekRef {
            id,
            attrs,
            record,
            binding,
            row_generation,
        } = dek;
        // Revocation and outage: the KEK versions in use are checked every
        // soft TTL; an error here means nothing cached may be served.
        self.ensure_fresh()?;
        if let Some(v) = self.cache.get(id, binding) {
            return Ok(v);
        }
        let epoch = self.cache.epoch();
        let version = Envelope::cache_tag(record);
        let opened = self
            .open_saying(id, attrs, record)
            .map_err(|e| self.classify(version, e));
        let v = match opened {
            Ok((v, took_part)) => {
                if let Some(hsms) = took_part {
                    self.audit_set_unwrap(&hsms);
                }
                if let (true, Some(generation)) = (self.settings.lazy_rewrap, row_generation) {
                    self.rewrap_one(id, attrs, record, generation, v.as_slice());
                }
                v
            }
            // Another process may have re-wrapped the row (and destroyed the
            // version this copy names): open what the store holds now.
            Err(e)
                if row_generation.is_some()
                    && matches!(e.rv(), CKR_HSME_KEK_UNAVAILABLE | CKR_HSME_KEK_REVOKED) =>
            {
                self.open_current_row(id, attrs, record).ok_or(e)??
            }
            Err(e) => return Err(e),
        };
        self.service_ok(crate::clock::mono_ms());
        // Last use, as `dek list` shows it: noted when a token DEK is
        // unwrapped (its first use in a process, or after its cache entry
        // went) and written in batches (`last_used`), so neither a busy DEK
        // nor a first use costs a store write of its own.
        if row_generation.is_some() {
            self.note_use(id, crate::clock::unix_secs());
        }
        Ok(self.cache.insert(*id, binding.clone(), version, v, epoch)?)
    }

    /// Open the store's current record of `id` when it differs from ours but
    /// binds the same attributes. None when there is nothing newer to try.
    fn open_current_row(
        &self,
        id: &[u8; 16],
        attrs: &Attrs,
        record: &[u8],
    ) -> Option<Result<SecretBytes>> {
        let row = self.with_store(|st| Ok(st.get(id)?)).ok().flatten()?;
        let current = Attrs::decode(&row.attrs).ok()?;
        if row.record == record || current.bound_encoding() != attrs.bound_encoding() {
            return None;
        }
        Some(self.open(id, &current, &row.record))
    }

    /// Best effort: a failure here leaves the record as it was.
    fn rewrap_one(
        &self,
        id: &[u8; 16],
        attrs: &Attrs,
        record: &[u8],
        generation: i64,
        value: &[u8],
    ) {
        if let Some(mode) = self.set_mode() {
            self.rewrap_one_to_set(mode, id, attrs, record, generation, value);
            return;
        }
        let Ok(rec) = WrappedRecord::decode(record) else {
            return;
        };
        let r = self.primary().and_then(|primary| {
            if rec.kek_version == primary {
                return Ok(());
            }
            let new = self.seal_under(primary, id, attrs, value)?;
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

    /// Lazy re-wrap with several HSMs: a format-1 record, or one of the
    /// other set mode, becomes a record of the configured mode (records of
    /// the configured mode under an older combination are `rewrap`'s).
    /// Best effort, written only under the primary combination.
    fn rewrap_one_to_set(
        &self,
        mode: super::record_set::SetMode,
        id: &[u8; 16],
        attrs: &Attrs,
        record: &[u8],
        generation: i64,
        value: &[u8],
    ) {
        if matches!(Stored::decode(record), Ok(Stored::Set(s)) if s.mode == mode) {
            return;
        }
        let r = self.seal_set(mode, id, attrs, value, None).and_then(|new| {
            let (label, version) = self.store_key(&new)?;
            let n = self.with_store(|st| {
                Ok(st.replace_records(&label, &[(*id, generation, new, version)])?)
            })?;
            if n == 1 {
                crate::log_info!("DEK {} re-wrapped on use into {}", hex(id), mode.name());
            }
            Ok(())
        });
        if let Err(e) = r {
            crate::log_warn!("lazy re-wrap of DEK {} failed: {e}", hex(id));
        }
    }
}
