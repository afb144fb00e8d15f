//! Re-wrapping every record under the primary KEK version (`hsm-envelope
//! rewrap`): per record one unwrap with the old version and one wrap with
//! the new, both on the HSM, and one store transaction per batch. Data is
//! never re-encrypted.
//!
//! Two things make it fast without changing what it does:
//! - worker threads, each on a backend session of its own: a local HSM gets
//!   every core, a network HSM several requests in flight;
//! - session copies of the KEK versions in use (`C_CopyObject` with
//!   `CKA_TOKEN` false: sensitive and non-extractable as the original, gone
//!   when the job ends). SoftHSM2 re-reads a token key's file before every
//!   use, two file opens per operation; a session object is used in memory.
//!   Where the HSM refuses the copy (`CKA_COPYABLE` false), the token key is
//!   used as it is. Every batch re-checks the token keys, so revoking a
//!   version stops the job at its next batch.

use crate::runtime::lock::unpoisoned;
use std::collections::HashMap;
use std::sync::Mutex;

use cryptoki::object::{Attribute, AttributeType, ObjectHandle};
use cryptoki_sys::*;

use super::attrs::Attrs;
use super::service::Envelope;
use crate::audit::{Entry, Op};
use crate::backend::kek::{self, KekKey};
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::hex::encode as hex;
use crate::vendor::CKR_HSME_KEK_REVOKED;

/// One batch of a re-wrap run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RewrapBatch {
    /// Rows looked at.
    pub scanned: usize,
    /// Rows now under the primary version.
    pub rewrapped: usize,
    /// Rows left as they were (changed meanwhile, or failed to open).
    pub skipped: usize,
    /// Where the next batch starts (a position in the store); None when
    /// there is nothing after.
    pub next: Option<i64>,
}

/// A re-wrap run: the primary version at its start, the keys it uses, and
/// how many workers.
pub struct RewrapJob<'a> {
    env: &'a Envelope,
    backend: &'a Backend,
    primary: u32,
    threads: usize,
    /// Per version: the token key and the key the job uses (its session
    /// copy, or the token key itself).
    keys: Mutex<HashMap<u32, (KekKey, KekKey)>>,
}

/// A record's new bytes, for `Store::replace_records`.
type Update = ([u8; 16], i64, Vec<u8>, u32);

impl<'a> RewrapJob<'a> {
    pub fn new(env: &'a Envelope, backend: &'a Backend, threads: usize) -> Result<Self> {
        Ok(RewrapJob {
            env,
            backend,
            primary: env.primary()?,
            threads: threads.clamp(1, 64),
            keys: Mutex::new(HashMap::new()),
        })
    }

    pub fn primary(&self) -> u32 {
        self.primary
    }

    /// The key the job uses for `version`, made on first use.
    fn key(&self, version: u32) -> Result<KekKey> {
        let mut keys = unpoisoned(self.keys.lock());
        if let Some((_, used)) = keys.get(&version) {
            return Ok(*used);
        }
        let (token, used) = self.env.with_session(|s| {
            let token = self.env.kek_handle(s, version)?;
            Ok((token, session_copy(s, token)))
        })?;
        keys.insert(version, (token, used));
        Ok(used)
    }

    /// The primary must still be the one the job wraps under (a rotation
    /// meanwhile ends the run: records are written only under the current
    /// primary), and the token keys of the versions in use must still be
    /// enabled (their session copies would work on regardless).
    fn recheck(&self) -> Result<()> {
        let label = self.env.kek_label().to_string();
        let now = self.env.with_store(|st| Ok(st.primary_kek(&label)?))?;
        if now.as_ref().map(|r| r.version) != Some(self.primary) {
            return Err(Error::admin(format!(
                "the primary KEK version changed during the run (was v{}); run rewrap again",
                self.primary
            )));
        }
        let keys: Vec<(u32, KekKey)> = match self.keys.lock() {
            Ok(k) => k.iter().map(|(v, (token, _))| (*v, *token)).collect(),
            Err(_) => return Err(Error::Rv(CKR_GENERAL_ERROR)),
        };
        self.env.with_session(|s| {
            for (version, token) in &keys {
                if !kek::enabled(s, *token)? {
                    crate::log_warn!("re-wrap: KEK v{version} was revoked; stopping");
                    return Err(Error::Rv(CKR_HSME_KEK_REVOKED));
                }
            }
            Ok(())
        })
    }

    /// Re-wrap up to `limit` records not under the primary version, starting
    /// after `after`, then replace each in one transaction, each only if
    /// unchanged meanwhile. Safe to stop at any point and run again.
    pub fn batch(&self, after: i64, limit: u32) -> Result<RewrapBatch> {
        let env = self.env;
        let label = env.kek_label().to_string();
        let primary = self.primary;
        self.recheck()?;
        self.key(primary)?;
        let found = env.with_store(|st| Ok(st.rows_not_under(&label, primary, after, limit)?))?;
        let mut batch = RewrapBatch {
            scanned: found.len(),
            next: found.last().map(|(pos, _)| *pos),
            ..Default::default()
        };
        let rows: Vec<crate::store::DekRow> = found.into_iter().map(|(_, r)| r).collect();
        let mut updates = Vec::with_capacity(rows.len());
        for u in fan_out(&rows, self.threads, |chunk| self.rewrap_rows(chunk))? {
            match u {
                Some(u) => updates.push(u),
                None => batch.skipped += 1,
            }
        }
        let written = env.with_store(|st| Ok(st.replace_records(&label, &updates)?))?;
        batch.rewrapped = written;
        if written > 0 {
            env.log(
                Entry::new(Op::Rewrap, CKR_OK)
                    .kek_version(primary)
                    .count(written as u64),
            );
        }
        batch.skipped += updates.len() - written;
        Ok(batch)
    }

    /// One worker's share, on one backend session: None for a row left as
    /// it was.
    fn rewrap_rows(&self, rows: &[crate::store::DekRow]) -> Result<Vec<Option<Update>>> {
        let (env, backend, primary) = (self.env, self.backend, self.primary);
        let new_key = self.key(primary)?;
        env.with_session(|s| {
            let mut out = Vec::with_capacity(rows.len());
            for row in rows {
                let sealed = Attrs::decode(&row.attrs).and_then(|attrs| {
                    let rec = env.openable(&row.id, &row.record)?;
                    let bound = attrs.bound_encoding();
                    let aad = rec.aad(&row.id, &bound);
                    let old_key = self.key(rec.kek_version)?;
                    let value = Envelope::open_with(backend, s, old_key, &rec, &aad)?;
                    let value = Envelope::check_len(&attrs, value)?;
                    let new = env.seal_with(
                        backend,
                        s,
                        new_key,
                        primary,
                        &row.id,
                        &bound,
                        value.as_slice(),
                    )?;
                    Ok(new.try_encode()?)
                });
                match sealed {
                    Ok(record) => out.push(Some((row.id, row.generation, record, primary))),
                    Err(e) => {
                        crate::log_warn!(
                            "re-wrap: DEK {} left under its version: {e}",
                            hex(&row.id)
                        );
                        out.push(None);
                    }
                }
            }
            Ok(out)
        })
    }
}

impl Drop for RewrapJob<'_> {
    /// The session copies go with the job. Each handle is checked to still
    /// be a session object named like the KEK before it is destroyed: after
    /// an HSM reconnect a stale handle could name something else.
    fn drop(&mut self) {
        let keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        let copies: Vec<ObjectHandle> = keys
            .values()
            .filter(|(token, used)| token != used)
            .flat_map(|(_, used)| used.objects())
            .collect();
        drop(keys);
        let label = self.env.kek_label().as_bytes().to_vec();
        let _ = self.env.with_session(|s| {
            for h in copies {
                let ours = s
                    .get_attributes(h, &[AttributeType::Token, AttributeType::Label])
                    .is_ok_and(|a| {
                        a.contains(&Attribute::Token(false))
                            && a.contains(&Attribute::Label(label.clone()))
                    });
                if ours {
                    let _ = s.destroy_object(h);
                }
            }
            Ok(())
        });
    }
}

/// Run `work` on `rows` shared among `threads` workers (scoped threads, each
/// on sessions of its own); the results in row order. A worker that panics
/// fails the batch, and its rows are left as they were.
pub(super) fn fan_out<T: Sync, U: Send>(
    rows: &[T],
    threads: usize,
    work: impl Fn(&[T]) -> Result<Vec<U>> + Sync,
) -> Result<Vec<U>> {
    let per_worker = rows.len().div_ceil(threads.max(1)).max(1);
    let work = &work;
    let results: Vec<Result<Vec<U>>> = std::thread::scope(|scope| {
        let workers: Vec<_> = rows
            .chunks(per_worker)
            .map(|chunk| scope.spawn(move || work(chunk)))
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join().unwrap_or_else(|_| {
                    crate::log_error!("a re-wrap worker panicked; its rows are left as they were");
                    Err(Error::Rv(CKR_GENERAL_ERROR))
                })
            })
            .collect()
    });
    let mut out = Vec::with_capacity(rows.len());
    for r in results {
        out.extend(r?);
    }
    Ok(out)
}

/// A session copy of a KEK version (or the version itself, if the HSM will
/// not copy it).
fn session_copy(s: &cryptoki::session::Session, token: KekKey) -> KekKey {
    let copy = |h: ObjectHandle| s.copy_object(h, &[Attribute::Token(false)]);
    let made = match token {
        KekKey::Aes(h) => copy(h).map(KekKey::Aes),
        KekKey::Rsa { private, public } => copy(private).and_then(|private| {
            let public = match public.map(copy).transpose() {
                Ok(p) => p,
                Err(e) => {
                    let _ = s.destroy_object(private);
                    return Err(e);
                }
            };
            Ok(KekKey::Rsa { private, public })
        }),
    };
    match made {
        Ok(k) => k,
        Err(e) => {
            crate::log_info!(
                "re-wrap: the HSM did not copy a KEK version ({e}); using it as it is"
            );
            token
        }
    }
}
