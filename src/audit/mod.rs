//! The tamper-evident audit log (`audit_log` in the configuration).
//!
//! # Format
//!
//! JSON lines, appended, never rewritten. Every line has, in this order:
//! `seq` (1, 2, 3, ... — equal to the line number), `prev` (SHA-256 in hex
//! of the previous line's exact bytes without its newline; 64 zeros on the
//! first line), `time` (RFC 3339, UTC), `unix`, `pid`, `uid`, `token` (label),
//! `op`, then as they apply `key_id` (hex), `label` (or `label_hex` when the
//! label is not UTF-8; `label_truncated` past 1 KiB), `kek_version`, `count`,
//! `since` (start of a use interval), `detail`, `mac`, and last `result`
//! (`ok` or the `CKR_` name). Escaping is serde_json's: a label cannot break
//! a line. No key bytes, PINs or plaintext: [`Entry`] has no field for them.
//!
//! `op` is one of [`Op::name`], or `checkpoint`: a line whose `mac` is
//! HMAC-SHA256, computed on the HSM with the generic-secret key labelled
//! `audit_hmac_label`, over [`checkpoint_message`]`(seq - 1, prev)`, i.e.
//! the chain head just before it. A checkpoint follows a line once
//! `audit_checkpoint_lines` lines were written since the last one, or
//! `audit_checkpoint_secs` seconds have passed since it (checked when a
//! line is written: there is no timer thread), and [`Audit::flush`] writes
//! one if any line follows the last.
//!
//! # What [`verify`] guarantees
//!
//! Any edited, removed, reordered or inserted line, and a line cut short,
//! breaks the chain; [`verify`] names the first bad line and why, and checks
//! every checkpoint's HMAC on the HSM. Lines after the last checkpoint are
//! chain-checked but not authenticated: whoever can write the file can drop
//! or rewrite that tail (including the log's last line, which no later line
//! commits to), or start a new file. [`Report::unauthenticated_tail`] says
//! how many lines that is.
//!
//! # Several processes
//!
//! Each append takes an exclusive `flock` on the log, reads the chain head
//! from the end of the file only if the file changed since this process last
//! wrote (the head is cached with the file length), and writes its lines in
//! one write(2) on an `O_APPEND` descriptor. A forked child, or a log that
//! was renamed or removed, gets a fresh descriptor (a flock belongs to the
//! open file description, which a fork shares).
//!
//! # Durability (fsync policy)
//!
//! `fdatasync` after every append, once the lock is released. Lines are
//! rare (DEK use is counted, not logged per call), and each audited event
//! then survives a power failure once the call that logged it returns.
//!
//! # Failures
//!
//! Nothing here fails or panics into the PKCS#11 call that logs: an I/O or
//! HSM error goes to `log_warn!` and is counted in [`Stats`]. A failed
//! checkpoint is retried at the next line after a pause (or at `flush`);
//! the next successful one covers everything before it.

#![forbid(unsafe_code)]

mod file;
pub mod hsm;
mod line;
mod uses;
pub use uses::UseCounter;
mod verify;

use crate::runtime::lock::unpoisoned;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use cryptoki_sys::{CKR_OK, CK_RV};

use crate::error::{Error, Result};
use line::{Body, Stamp};

pub use hsm::HsmMac;
pub use line::{checkpoint_message, rv_name};
pub use verify::{verify, BadLine, Report};

/// Computes checkpoint MACs (on the HSM: [`HsmMac`]).
pub trait CheckpointSigner: Send + Sync {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>>;
}

/// Checks checkpoint MACs (on the HSM: [`HsmMac`]).
pub trait CheckpointVerifier {
    fn verify(&self, msg: &[u8], mac: &[u8]) -> Result<bool>;
}

/// What every line of one [`Audit`] shares.
#[derive(Clone, Debug)]
pub struct Context {
    /// Label of the token the module serves.
    pub token: String,
}

/// An audited operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    KekCreate,
    KekRotate,
    /// A customer key brought in as a new version (BYOK).
    KekImport,
    KekSetPrimary,
    KekDestroyVersion,
    /// A re-wrap job's summary (`count`: records re-wrapped).
    Rewrap,
    DekCreate,
    DekDestroy,
    DekRecover,
    DekPurge,
    Login,
    Logout,
    /// A KEK version was found deleted or disabled on the HSM.
    Revoked,
    OutageStart,
    OutageEnd,
    /// Uses of one DEK in one interval (`count`); written by the counters.
    DekUse,
    /// A key material reached its AES-GCM invocation limit (`count`: the
    /// limit); further encryptions under it are refused. Written once per
    /// key by each process that meets it.
    GcmLimit,
    /// Records of several HSMs (any-of, all-of) opened in one interval
    /// (`count`), per combination of HSMs that took part (`detail`).
    DekUnwrap,
}

impl Op {
    pub const ALL: [Op; 18] = [
        Op::KekCreate,
        Op::KekRotate,
        Op::KekImport,
        Op::KekSetPrimary,
        Op::KekDestroyVersion,
        Op::Rewrap,
        Op::DekCreate,
        Op::DekDestroy,
        Op::DekRecover,
        Op::DekPurge,
        Op::Login,
        Op::Logout,
        Op::Revoked,
        Op::OutageStart,
        Op::OutageEnd,
        Op::DekUse,
        Op::GcmLimit,
        Op::DekUnwrap,
    ];

    /// The `op` written on the line.
    pub fn name(self) -> &'static str {
        match self {
            Op::KekCreate => "kek_create",
            Op::KekRotate => "kek_rotate",
            Op::KekImport => "kek_import",
            Op::KekSetPrimary => "kek_set_primary",
            Op::KekDestroyVersion => "kek_destroy_version",
            Op::Rewrap => "rewrap",
            Op::DekCreate => "dek_create",
            Op::DekDestroy => "dek_destroy",
            Op::DekRecover => "dek_recover",
            Op::DekPurge => "dek_purge",
            Op::Login => "login",
            Op::Logout => "logout",
            Op::Revoked => "revoked",
            Op::OutageStart => "outage_start",
            Op::OutageEnd => "outage_end",
            Op::DekUse => "dek_use",
            Op::GcmLimit => "gcm_limit",
            Op::DekUnwrap => "dek_unwrap",
        }
    }

    pub fn from_name(name: &str) -> Option<Op> {
        Op::ALL.into_iter().find(|op| op.name() == name)
    }
}

/// One event. Build with [`Entry::new`] and the setters, or literally.
#[derive(Clone, Copy, Debug)]
pub struct Entry<'a> {
    pub op: Op,
    /// The key's id (for DEKs: the record id), written in hex.
    pub key_id: Option<&'a [u8]>,
    /// The key's CKA_LABEL (user data, escaped).
    pub label: Option<&'a [u8]>,
    pub kek_version: Option<u32>,
    pub count: Option<u64>,
    /// Free text for the operator, e.g. "version 3 -> 4" or a reason.
    /// Never secrets.
    pub detail: Option<&'a str>,
    /// CKR_OK, or what the operation failed with.
    pub result: CK_RV,
}

impl<'a> Entry<'a> {
    pub fn new(op: Op, result: CK_RV) -> Self {
        Entry {
            op,
            key_id: None,
            label: None,
            kek_version: None,
            count: None,
            detail: None,
            result,
        }
    }
    pub fn key(mut self, key_id: &'a [u8], label: &'a [u8]) -> Self {
        self.key_id = Some(key_id);
        self.label = Some(label);
        self
    }
    pub fn kek_version(mut self, v: u32) -> Self {
        self.kek_version = Some(v);
        self
    }
    pub fn count(mut self, n: u64) -> Self {
        self.count = Some(n);
        self
    }
    pub fn detail(mut self, d: &'a str) -> Self {
        self.detail = Some(d);
        self
    }
}

/// Counters for health output.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Lines written by this process, checkpoints included.
    pub lines: u64,
    pub checkpoints: u64,
    /// Appends that failed (the events are lost; see the warnings).
    pub errors: u64,
    /// Checkpoints that could not be signed (retried later).
    pub checkpoint_failures: u64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Checkpoint {
    IfDue,
    Force,
    /// No backend call (from Drop, or nobody logged in to sign).
    Never,
}

struct State {
    log: file::LogFile,
    /// No checkpoint attempt before this (`clock::mono_ms`) after a failed
    /// one (unless forced).
    retry_at: Option<u64>,
}

/// The audit log of one process. Share it (it is `Sync`); see the module
/// documentation for the format and guarantees.
pub struct Audit {
    path: PathBuf,
    ctx: Context,
    every_lines: u64,
    every_secs: u64,
    signer: Option<Box<dyn CheckpointSigner>>,
    state: Mutex<State>,
    uses: uses::UseCounts,
    pid: AtomicU32,
    lines: AtomicU64,
    checkpoints: AtomicU64,
    errors: AtomicU64,
    checkpoint_failures: AtomicU64,
}

impl Audit {
    /// Opens (creating, mode 0600) the log at `path`. `checkpoint_every`:
    /// a checkpoint after this many lines or this much time; `use_interval`:
    /// how long DEK uses are counted before they are written. Without a
    /// signer no checkpoints are written (every line is then "unauthenticated
    /// tail" to [`verify`]).
    pub fn open(
        path: &Path,
        ctx: Context,
        checkpoint_every: (u32, Duration),
        use_interval: Duration,
        signer: Option<Box<dyn CheckpointSigner>>,
    ) -> Result<Audit> {
        Audit::open_with_mode(
            path,
            crate::logging::DEFAULT_FILE_MODE,
            ctx,
            checkpoint_every,
            use_interval,
            signer,
        )
    }

    /// [`Audit::open`], creating the file with `mode` (`audit_log_mode`).
    pub fn open_with_mode(
        path: &Path,
        mode: u32,
        ctx: Context,
        checkpoint_every: (u32, Duration),
        use_interval: Duration,
        signer: Option<Box<dyn CheckpointSigner>>,
    ) -> Result<Audit> {
        let log = file::LogFile::open(path, mode).map_err(|e| {
            Error::config(format!(
                "key `audit_log`: cannot open {}: {e}",
                path.display()
            ))
        })?;
        Ok(Audit {
            path: path.to_path_buf(),
            ctx,
            every_lines: u64::from(checkpoint_every.0.max(1)),
            every_secs: checkpoint_every.1.as_secs().max(1),
            signer,
            state: Mutex::new(State {
                log,
                retry_at: None,
            }),
            uses: uses::UseCounts::new(use_interval, now_unix()),
            pid: AtomicU32::new(std::process::id()),
            lines: AtomicU64::new(0),
            checkpoints: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            checkpoint_failures: AtomicU64::new(0),
        })
    }

    /// [`Audit::open`] with the configuration's `audit_*` keys and token
    /// label; `Ok(None)` when `audit_log` is not set.
    pub fn from_config(
        cfg: &crate::config::Config,
        signer: Option<Box<dyn CheckpointSigner>>,
    ) -> Result<Option<Audit>> {
        let Some(path) = &cfg.audit_log else {
            return Ok(None);
        };
        Audit::open_with_mode(
            path,
            cfg.audit_log_mode,
            Context {
                token: cfg.token_label.clone(),
            },
            (
                cfg.audit_checkpoint_lines,
                Duration::from_secs(cfg.audit_checkpoint_secs),
            ),
            Duration::from_secs(cfg.audit_use_interval_secs),
            signer,
        )
        .map(Some)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn stats(&self) -> Stats {
        Stats {
            lines: self.lines.load(Ordering::Relaxed),
            checkpoints: self.checkpoints.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            checkpoint_failures: self.checkpoint_failures.load(Ordering::Relaxed),
        }
    }

    /// Writes one line (and any use counts that are due, and a checkpoint
    /// if one is due). Never fails: errors are warned about and counted.
    pub fn record(&self, e: Entry<'_>) {
        self.check_fork();
        let used = self.uses.due().then(|| self.uses.take(now_unix()));
        let mut bodies = used.as_ref().map_or_else(Vec::new, use_bodies);
        bodies.push(Body {
            op: e.op.name(),
            key_id: e.key_id,
            label: e.label,
            kek_version: e.kek_version,
            count: e.count,
            detail: e.detail,
            result: e.result,
            ..Body::default()
        });
        self.append(&bodies, Checkpoint::IfDue);
    }

    /// Counts one use of a DEK: in memory (a shared lock and an atomic add),
    /// written as one `dek_use` line per DEK and KEK version with the count
    /// when the use interval has passed (noticed by a later call) or at
    /// [`Audit::flush`].
    pub fn count_use(&self, key_id: &[u8; 16], label: &[u8], kek_version: u32) {
        self.count_uses(key_id, label, kek_version, 1);
    }

    /// Counts one opening of a record of several HSMs (any-of, all-of) on
    /// the HSMs `hsms` (their names, e.g. "main,b"); written as one
    /// `dek_unwrap` line per combination and interval, with the use counts.
    pub fn count_unwrap(&self, hsms: &str) {
        self.uses.add_unwrap(hsms);
        self.drain_if_due();
    }

    /// The use counter of DEK `key_id` under `kek_version`, for a caller
    /// that counts its uses often ([`Audit::count_on`]).
    pub fn use_counter(&self, key_id: &[u8; 16], label: &[u8], kek_version: u32) -> UseCounter {
        self.uses.counter(key_id, label, kek_version)
    }

    /// Counts `n` uses on a counter from [`Audit::use_counter`] of this
    /// log: one atomic add, and the interval's end noticed as
    /// [`Audit::count_use`] notices it, by the caller's reading of
    /// `clock::mono_ms` (`now_ms`).
    pub fn count_on(&self, c: &UseCounter, n: u64, now_ms: u64) {
        if n == 0 {
            return;
        }
        self.uses.add_on(c, n);
        if self.uses.due_at(now_ms) {
            self.drain();
        }
    }

    /// Counts `n` uses of a DEK at once (callers that count in their own
    /// memory first, such as the message functions, hand them over in
    /// batches); written as [`Audit::count_use`]'s are.
    pub fn count_uses(&self, key_id: &[u8; 16], label: &[u8], kek_version: u32, n: u64) {
        if n == 0 {
            return;
        }
        self.uses.add(key_id, label, kek_version, n);
        self.drain_if_due();
    }

    /// Writes the counted uses when the interval is over.
    fn drain_if_due(&self) {
        if self.uses.due() {
            self.drain();
        }
    }

    /// Writes the counted uses (the interval is over).
    fn drain(&self) {
        self.check_fork();
        let used = self.uses.take(now_unix());
        self.append(&use_bodies(&used), Checkpoint::IfDue);
    }

    /// Writes the pending use counts and a checkpoint over everything
    /// written so far (if anything follows the last one). Call it at
    /// C_Finalize and at session close, while the backend is logged in.
    pub fn flush(&self) {
        self.check_fork();
        let used = self.uses.take(now_unix());
        self.append(&use_bodies(&used), Checkpoint::Force);
    }

    /// Writes the pending use counts without a checkpoint: at C_Finalize
    /// when nobody is logged in to sign one. The lines since the last
    /// checkpoint stay chain-protected only (`verify` counts them).
    pub fn flush_unsigned(&self) {
        self.check_fork();
        let used = self.uses.take(now_unix());
        if !used.is_empty() {
            self.append(&use_bodies(&used), Checkpoint::Never);
        }
    }

    /// After fork() the counters hold the parent's uses: drop them.
    fn check_fork(&self) {
        let pid = std::process::id();
        if self.pid.swap(pid, Ordering::Relaxed) != pid {
            self.uses.discard(now_unix());
        }
    }

    fn fail(&self, what: std::fmt::Arguments<'_>) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        crate::log_warn!("audit log {}: {what}", self.path.display());
    }

    fn append(&self, bodies: &[Body<'_>], ckpt: Checkpoint) {
        let mut st = unpoisoned(self.state.lock());
        match self.append_locked(&mut st, bodies, ckpt) {
            Ok(false) => {}
            Ok(true) => {
                if let Err(e) = st.log.sync() {
                    self.fail(format_args!("fdatasync: {e}"));
                }
            }
            Err(e) => {
                st.log.forget_head();
                self.fail(format_args!(
                    "cannot append ({} lines lost): {e}",
                    bodies.len()
                ));
            }
        }
    }

    fn append_locked(
        &self,
        st: &mut State,
        bodies: &[Body<'_>],
        ckpt: Checkpoint,
    ) -> std::io::Result<bool> {
        let uid = crate::runtime::process::uid();
        let stamp = Stamp {
            unix: now_unix(),
            pid: std::process::id(),
            uid,
            token: &self.ctx.token,
        };
        let mut locked = st.log.lock()?;
        let mut head = locked.head();
        let mut buf = Vec::with_capacity(320 * (bodies.len() + 1));
        if head.needs_newline {
            // Terminate a torn last line so ours stays a line of its own.
            buf.push(b'\n');
            head.len += 1;
            head.needs_newline = false;
        }
        let (mut written, mut ckpts) = (0u64, 0u64);
        for body in bodies {
            let line = line::render(head.seq + 1, &head.hash, &stamp, body)
                .map_err(std::io::Error::other)?;
            buf.extend_from_slice(&line);
            buf.push(b'\n');
            head.advance(&line);
            written += 1;
            if ckpt == Checkpoint::IfDue
                && self.checkpoint_due(&head, stamp.unix)
                && self.checkpoint(&mut buf, &mut head, &stamp, &mut st.retry_at, false)?
            {
                ckpts += 1;
            }
        }
        if ckpt == Checkpoint::Force
            && head.seq > head.ckpt_seq
            && self.checkpoint(&mut buf, &mut head, &stamp, &mut st.retry_at, true)?
        {
            ckpts += 1;
        }
        if buf.is_empty() {
            return Ok(false);
        }
        locked.append(&buf, head)?;
        drop(locked);
        self.lines.fetch_add(written + ckpts, Ordering::Relaxed);
        self.checkpoints.fetch_add(ckpts, Ordering::Relaxed);
        Ok(true)
    }

    fn checkpoint_due(&self, head: &file::Head, unix: u64) -> bool {
        self.signer.is_some()
            && head.seq > head.ckpt_seq
            && (head.seq - head.ckpt_seq >= self.every_lines
                || unix.saturating_sub(head.ckpt_unix) >= self.every_secs)
    }

    /// Signs the chain head on the HSM and adds a checkpoint line to `buf`.
    /// A signing failure is counted and leaves no line (`Ok(false)`).
    fn checkpoint(
        &self,
        buf: &mut Vec<u8>,
        head: &mut file::Head,
        stamp: &Stamp<'_>,
        retry_at: &mut Option<u64>,
        force: bool,
    ) -> std::io::Result<bool> {
        let Some(signer) = &self.signer else {
            return Ok(false);
        };
        if !force && retry_at.is_some_and(|t| crate::clock::mono_ms() < t) {
            return Ok(false);
        }
        let msg = checkpoint_message(head.seq, &head.hash);
        let mac = match signer.sign(&msg) {
            Ok(mac) => mac,
            Err(e) => {
                self.checkpoint_failures.fetch_add(1, Ordering::Relaxed);
                crate::log_warn!(
                    "audit log {}: cannot sign a checkpoint on the HSM: {e}",
                    self.path.display()
                );
                let pause_ms = self.every_secs.min(30) * 1000;
                *retry_at = Some(crate::clock::mono_ms().saturating_add(pause_ms));
                return Ok(false);
            }
        };
        let body = Body {
            op: line::CHECKPOINT,
            mac: Some(&mac),
            result: CKR_OK,
            ..Body::default()
        };
        let line =
            line::render(head.seq + 1, &head.hash, stamp, &body).map_err(std::io::Error::other)?;
        buf.extend_from_slice(&line);
        buf.push(b'\n');
        head.advance(&line);
        head.ckpt_seq = head.seq;
        head.ckpt_unix = stamp.unix;
        *retry_at = None;
        Ok(true)
    }
}

impl Drop for Audit {
    /// Writes pending use counts, without a checkpoint (no backend calls in
    /// destructors). Nothing in a forked child (the counts are the parent's).
    fn drop(&mut self) {
        if self.pid.load(Ordering::Relaxed) != std::process::id() {
            return;
        }
        let used = self.uses.take(now_unix());
        if !used.is_empty() {
            self.append(&use_bodies(&used), Checkpoint::Never);
        }
    }
}

fn use_bodies(d: &uses::Drained) -> Vec<Body<'_>> {
    let uses = d.used.iter().map(|u| Body {
        op: Op::DekUse.name(),
        key_id: Some(&u.key_id),
        label: Some(&u.label),
        kek_version: Some(u.kek_version),
        count: Some(u.count),
        since: Some(d.since),
        result: CKR_OK,
        ..Body::default()
    });
    let unwraps = d.unwraps.iter().map(|(hsms, n)| Body {
        op: Op::DekUnwrap.name(),
        count: Some(*n),
        detail: Some(hsms),
        since: Some(d.since),
        result: CKR_OK,
        ..Body::default()
    });
    uses.chain(unwraps).collect()
}

#[cfg(test)]
mod tests;

/// Unix seconds for audit lines (the module clock, see `clock`).
fn now_unix() -> u64 {
    u64::try_from(crate::clock::unix_secs()).unwrap_or(0)
}
