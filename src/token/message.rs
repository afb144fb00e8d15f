//! The PKCS#11 3.0 message-based functions (`C_MessageEncryptInit`,
//! `C_EncryptMessage`, `C_EncryptMessageBegin`/`Next`,
//! `C_MessageEncryptFinal` and the decrypt side) for AES-GCM on DEKs; on
//! backend keys they are forwarded.
//!
//! One init serves many messages: each message carries its own
//! `CK_GCM_MESSAGE_PARAMS` (IV, IV generator, tag), so a message costs no
//! init, no object-table lookup and no allocation: the session's operation
//! keeps the checked key (`RememberedKey`, re-checked per message by a few
//! atomic loads, and fetched again when it no longer holds: a destroyed or
//! revoked DEK ends its messages), and a run of GCM invocation numbers.
//!
//! An error in one message (a bad parameter, a wrong tag, a short buffer)
//! ends that message, never the operation: only the final call, a logout
//! or the session's close end it.
//!
//! No plaintext leaves the module unauthenticated: a message decrypted in
//! parts is held until its last part, where the tag is checked.

use cryptoki_sys::*;
use zeroize::Zeroizing;

use crate::config::GcmIv;
use crate::crypto::gcm_message::{self, Data};
use crate::crypto::{gcm_iv, new_prepared_op, CipherOp, CryptoError, Direction, Mode, PreparedOp};
use crate::envelope::gcm_budget::{Asker, Lease};
use crate::error::{Error, Result};
use crate::token::approved;
use crate::token::crypt::{key_for, Input, KeyFor, Step};
use crate::token::module::Module;
use crate::token::session::calls::{lookup, with_session};
use crate::token::session::remembered::RememberedKey;
use crate::token::session::table::{MsgOp, Ops, Session};

/// Uses counted in the operation before they are handed to the audit log.
const AUDIT_BATCH: u64 = 256;

/// Who makes a message's IV (`ivGenerator` of `CK_GCM_MESSAGE_PARAMS`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Generator {
    /// `CKG_NO_GENERATE`: the caller's IV as it is.
    Caller,
    /// `CKG_GENERATE`, `CKG_GENERATE_COUNTER`: fixed field, random
    /// per-process prefix, invocation number (`crypto::gcm_iv::counter`).
    Counter,
    /// `CKG_GENERATE_RANDOM`: fixed field, then random bits.
    Random,
}

/// One message's parameters, copied out of the caller's
/// `CK_GCM_MESSAGE_PARAMS` by the shim, which writes back what the call
/// says it wrote.
pub struct MsgParams<'p> {
    /// The IV: the caller's, or (encryption with a generator) overwritten
    /// with the module's.
    pub iv: &'p mut [u8],
    pub fixed_bits: usize,
    pub generator: Generator,
    /// The tag: out for encryption, in for decryption (4 to 16 bytes).
    pub tag: &'p mut [u8],
}

/// A message's data, or a length query.
pub enum MsgData<'a> {
    /// The output pointer was NULL: how long the output would be.
    Query(usize),
    Apart {
        input: Input<'a>,
        output: &'a mut [u8],
    },
    /// One buffer, input and output (the caller passed the same pointer).
    InPlace(&'a mut [u8]),
}

impl MsgData<'_> {
    fn input_len(&self) -> usize {
        match self {
            MsgData::Query(n) => *n,
            MsgData::Apart { input, .. } => input.len(),
            MsgData::InPlace(b) => b.len(),
        }
    }

    /// The data for the cipher; `BufferTooSmall` if the output is short.
    // The per-message path: see "Inlining" in `ffi::message`.
    #[inline(always)]
    fn crypto(&mut self) -> std::result::Result<Data<'_>, CryptoError> {
        match self {
            MsgData::Query(n) => Err(CryptoError::BufferTooSmall { needed: *n }),
            MsgData::Apart { input, output } => {
                if output.len() < input.len() {
                    return Err(CryptoError::BufferTooSmall {
                        needed: input.len(),
                    });
                }
                Ok(Data::Apart {
                    input,
                    output: &mut output[..],
                })
            }
            MsgData::InPlace(b) => Ok(Data::InPlace(b)),
        }
    }
}

/// What a call did, for the shim to report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MsgDone {
    /// Bytes of output (written, or needed for a query).
    pub len: usize,
    /// The module made the IV: write `MsgParams::iv` back to the caller.
    pub iv_made: bool,
    /// The tag is ready: write `MsgParams::tag` back (encryption).
    pub tag_made: bool,
}

/// What the shim does next; what a call did goes to the shim's `MsgDone`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MsgStep {
    Done,
    /// Forward the same call to the backend with the caller's pointers.
    Forward,
}

/// A message operation on a DEK.
pub struct SoftMessages {
    key: RememberedKey,
    /// A message between its Begin and its last Next.
    part: Option<Part>,
    /// Uses not yet handed to the audit log.
    unaudited: u64,
}

struct Part {
    op: PreparedOp,
    tag_len: usize,
    /// Bytes fed so far (decryption holds them until the last part).
    fed: usize,
    /// Bytes of output returned so far: all that was fed when encryption
    /// streams, none when it holds the message (the FIPS build).
    returned: usize,
}

fn invalid() -> Error {
    Error::Rv(CKR_MECHANISM_PARAM_INVALID)
}

/// The IV policy (`gcm_iv`): with "module", AES-GCM encryption under a DEK
/// with an IV the caller chose is refused, with CKR_MECHANISM_PARAM_INVALID
/// (the mechanism is offered; this parameter, the caller's IV, is not) and
/// a log line naming the setting. `call` names the function for the log.
pub fn caller_iv_allowed(m: &Module, call: &str) -> Result<()> {
    if m.config.module_ivs_only() {
        let why = if m.config.gcm_iv == GcmIv::Module {
            "gcm_iv = \"module\""
        } else {
            "fips_mode = true"
        };
        crate::log_warn!(
            "{call}: AES-GCM encryption with the caller's IV refused on a DEK: {why} \
             (use C_EncryptMessage with an IV generator, CKG_GENERATE_COUNTER or CKG_GENERATE_RANDOM)"
        );
        return Err(invalid());
    }
    Ok(())
}

/// The init's parameter: none, or a `CK_GCM_MESSAGE_PARAMS` (whose values
/// are per message, so not read here).
pub fn init_params_ok(m: &CK_MECHANISM) -> Result<()> {
    let none = m.pParameter.is_null() && m.ulParameterLen == 0;
    let gcm =
        !m.pParameter.is_null() && m.ulParameterLen as usize == size_of::<CK_GCM_MESSAGE_PARAMS>();
    match m.mechanism {
        CKM_AES_GCM if none || gcm => Ok(()),
        CKM_AES_GCM => Err(invalid()),
        _ => Err(Error::Rv(CKR_MECHANISM_INVALID)),
    }
}

/// C_MessageEncryptInit / C_MessageDecryptInit. `params_ok` is
/// `init_params_ok` for a DEK; a backend key gets the caller's mechanism
/// unchanged (`Step::ForwardInit`).
pub fn init(
    h: CK_SESSION_HANDLE,
    dir: Direction,
    mech: CK_MECHANISM_TYPE,
    params_ok: Result<()>,
    key: CK_OBJECT_HANDLE,
) -> Result<Step> {
    with_session(h, |m, s| {
        let mut ops = s.ops()?;
        if ops.message(dir).is_active() {
            return Err(Error::Rv(CKR_OPERATION_ACTIVE));
        }
        let soft_ok = move || {
            params_ok?;
            if mech == CKM_AES_GCM {
                Ok(())
            } else {
                Err(Error::Rv(CKR_MECHANISM_INVALID))
            }
        };
        let (next, step) = match key_for(&m, s, dir, mech, key, soft_ok)? {
            KeyFor::Dek(key) => (
                MsgOp::Soft(Box::new(SoftMessages {
                    key,
                    part: None,
                    unaudited: 0,
                })),
                Step::Done(0),
            ),
            KeyFor::Backend(b) => (MsgOp::Backend, Step::ForwardInit(b)),
        };
        *ops.message(dir) = next;
        Ok(step)
    })
}

/// The backend refused a forwarded init, or ended a forwarded operation.
pub fn forwarded_end(h: CK_SESSION_HANDLE, dir: Direction) {
    if let Ok((_, s)) = lookup(h) {
        if let Ok(mut ops) = s.ops() {
            if matches!(ops.message(dir), MsgOp::Backend) {
                *ops.message(dir) = MsgOp::Idle;
            }
        }
    }
}

/// Which call of a message operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Call {
    /// C_EncryptMessage / C_DecryptMessage: one whole message.
    Whole,
    /// C_EncryptMessageBegin / C_DecryptMessageBegin.
    Begin,
    /// C_EncryptMessageNext / C_DecryptMessageNext; `last` with
    /// CKF_END_OF_MESSAGE.
    Next { last: bool },
}

/// The caller's arguments of one call, read by the shim only when the
/// operation runs here.
pub struct MsgArgs<'a, 'p> {
    pub params: MsgParams<'p>,
    /// Associated data (Whole and Begin; empty for Next).
    pub aad: &'a [u8],
    /// The data (Whole and Next; `Query(0)` for Begin).
    pub data: MsgData<'a>,
}

/// One message call. `args` reads the caller's buffers; it runs only for
/// operations on DEKs, whose outcome goes to `done`.
// The per-message path: see "Inlining" in `ffi::message`.
#[inline(always)]
pub fn run<'a, 'p>(
    h: CK_SESSION_HANDLE,
    dir: Direction,
    call: Call,
    args: impl FnOnce() -> Result<MsgArgs<'a, 'p>>,
    done: &mut MsgDone,
) -> Result<MsgStep> {
    // The closure gives back only a `Result<()>`, which returns in
    // registers; the step goes through `step`.
    let mut step = MsgStep::Done;
    with_session(h, |m, s| {
        let mut ops = s.ops()?;
        let (op, gcm) = ops.message_and_gcm(dir);
        let soft = match op {
            MsgOp::Idle => {
                return Err(args()
                    .err()
                    .unwrap_or(Error::Rv(CKR_OPERATION_NOT_INITIALIZED)))
            }
            MsgOp::Backend => {
                step = MsgStep::Forward;
                return Ok(());
            }
            MsgOp::Soft(op) => op,
        };
        let mut a = args()?;
        *done = match call {
            Call::Whole => soft.whole(&m, s, dir, &mut a, gcm)?,
            Call::Begin => soft.begin(&m, s, dir, &mut a, gcm)?,
            Call::Next { last } => soft.next(&m, s, dir, &mut a, last)?,
        };
        Ok(())
    })?;
    Ok(step)
}

/// C_MessageEncryptFinal / C_MessageDecryptFinal.
pub fn finish(h: CK_SESSION_HANDLE, dir: Direction) -> Result<MsgStep> {
    with_session(h, |m, s| {
        let mut ops = s.ops()?;
        match std::mem::replace(ops.message(dir), MsgOp::Idle) {
            MsgOp::Idle => Err(Error::Rv(CKR_OPERATION_NOT_INITIALIZED)),
            MsgOp::Backend => {
                // Ended once the backend says so (`forwarded_end`).
                *ops.message(dir) = MsgOp::Backend;
                Ok(MsgStep::Forward)
            }
            MsgOp::Soft(mut op) => {
                op.hand_over_uses(&m, s);
                Ok(MsgStep::Done)
            }
        }
    })
}

/// Hand the uses that message operations counted to the audit log, before
/// they end other than by their final call (logout, close).
pub fn hand_over_uses(m: &Module, s: &Session, ops: &mut Ops) {
    for dir in [Direction::Encrypt, Direction::Decrypt] {
        if let MsgOp::Soft(op) = ops.message(dir) {
            op.hand_over_uses(m, s);
        }
    }
}

impl SoftMessages {
    fn hand_over_uses(&mut self, m: &Module, s: &Session) {
        if self.unaudited == 0 {
            return;
        }
        if let Some(audit) = m.envelope_for(s.slot).ok().and_then(|e| e.audit()) {
            self.key
                .count_uses(audit, self.unaudited, crate::clock::mono_ms());
        }
        self.unaudited = 0;
    }

    fn used(&mut self, m: &Module, s: &Session) {
        self.unaudited += 1;
        if self.unaudited >= AUDIT_BATCH {
            self.hand_over_uses(m, s);
        }
    }

    /// The key still passes every check of the init (a few atomic loads);
    /// else it is checked and fetched again, and the operation fails with
    /// whatever a new init would (a destroyed DEK, a revoked KEK).
    // The per-message path: see "Inlining" in `ffi::message`.
    #[inline(always)]
    fn check_key(&mut self, m: &Module, s: &Session, dir: Direction) -> Result<()> {
        let handle = self.key.handle();
        if self.key.reuse(handle, CKM_AES_GCM, m).is_some() {
            return Ok(());
        }
        match key_for(m, s, dir, CKM_AES_GCM, handle, || Ok(()))? {
            KeyFor::Dek(fresh) => {
                self.hand_over_uses(m, s);
                self.key = fresh;
                Ok(())
            }
            KeyFor::Backend(_) => Err(Error::Rv(CKR_KEY_HANDLE_INVALID)),
        }
    }

    /// Make the IV, if the module makes it, taking one GCM invocation
    /// number of the key from the session's run `gcm`.
    // The per-message path: see "Inlining" in `ffi::message`.
    #[inline(always)]
    fn make_iv(
        &mut self,
        m: &Module,
        s: &Session,
        p: &mut MsgParams<'_>,
        gcm: &mut Option<Lease>,
    ) -> Result<bool> {
        if approved::on(m) {
            // The FIPS module draws the IV as it seals (`seal`); the
            // invocation is counted all the same.
            let key_len = self.key.key().value().len();
            let random = p.generator == Generator::Random;
            let (iv_len, tag_len) = (p.iv.len(), p.tag.len());
            approved::gcm_encrypt(
                m,
                "C_EncryptMessage",
                key_len,
                random,
                iv_len,
                p.fixed_bits,
                tag_len,
            )?;
            take_invocation(m, s, &self.key, gcm)?;
            return Ok(true);
        }
        if p.generator == Generator::Caller {
            caller_iv_allowed(m, "C_EncryptMessage(Begin)")?;
        }
        let n = take_invocation(m, s, &self.key, gcm)?;
        let prefix = gcm.as_ref().map_or(0, |l| l.prefix());
        let made = match p.generator {
            Generator::Caller => return Ok(false),
            Generator::Counter => gcm_iv::counter(p.iv, p.fixed_bits, prefix, n),
            Generator::Random => gcm_iv::random(p.iv, p.fixed_bits, gcm_iv::random_bytes),
        };
        made.map_err(|_| invalid())?;
        Ok(true)
    }

    // The per-message path: see "Inlining" in `ffi::message`.
    #[inline(always)]
    fn whole(
        &mut self,
        m: &Module,
        s: &Session,
        dir: Direction,
        a: &mut MsgArgs<'_, '_>,
        gcm: &mut Option<Lease>,
    ) -> Result<MsgDone> {
        if self.part.is_some() {
            return Err(Error::Rv(CKR_OPERATION_ACTIVE));
        }
        if let MsgData::Query(len) = a.data {
            // A length query: nothing made, nothing counted.
            return Ok(MsgDone {
                len,
                ..MsgDone::default()
            });
        }
        let len = a.data.input_len();
        // A short buffer is reported before anything is made or counted.
        a.data.crypto()?;
        self.check_key(m, s, dir)?;
        let iv_made = match dir {
            Direction::Encrypt => self.make_iv(m, s, &mut a.params, gcm)?,
            Direction::Decrypt => {
                let p = &a.params;
                let key_len = self.key.key().value().len();
                approved::gcm_decrypt(m, "C_DecryptMessage", key_len, p.iv.len(), p.tag.len())?;
                false
            }
        };
        let key = self.key.key();
        let data = a.data.crypto()?;
        let p = &mut a.params;
        match dir {
            Direction::Encrypt => seal(m, key, p, a.aad, data),
            Direction::Decrypt => gcm_message::open(key, p.iv, a.aad, data, p.tag),
        }
        .map_err(message_error)?;
        self.used(m, s);
        Ok(MsgDone {
            len,
            iv_made,
            tag_made: dir == Direction::Encrypt,
        })
    }

    fn begin(
        &mut self,
        m: &Module,
        s: &Session,
        dir: Direction,
        a: &mut MsgArgs<'_, '_>,
        gcm: &mut Option<Lease>,
    ) -> Result<MsgDone> {
        if self.part.is_some() {
            return Err(Error::Rv(CKR_OPERATION_ACTIVE));
        }
        self.check_key(m, s, dir)?;
        let key_len = self.key.key().value().len();
        let iv_made = match dir {
            Direction::Encrypt => {
                approved::gcm_encrypt_in_parts(m)?;
                self.make_iv(m, s, &mut a.params, gcm)?
            }
            Direction::Decrypt => {
                let p = &a.params;
                let call = "C_DecryptMessageBegin";
                approved::gcm_decrypt(m, call, key_len, p.iv.len(), p.tag.len())?;
                false
            }
        };
        let tag_len = a.params.tag.len();
        let mode = Mode::Gcm {
            iv: a.params.iv,
            aad: a.aad,
            tag_len,
        };
        let op = new_prepared_op(self.key.key(), &mode, dir).map_err(message_error)?;
        self.part = Some(Part {
            op,
            tag_len,
            fed: 0,
            returned: 0,
        });
        Ok(MsgDone {
            len: 0,
            iv_made,
            tag_made: false,
        })
    }

    fn next(
        &mut self,
        m: &Module,
        s: &Session,
        dir: Direction,
        a: &mut MsgArgs<'_, '_>,
        last: bool,
    ) -> Result<MsgDone> {
        let Some(part) = self.part.as_mut() else {
            return Err(Error::Rv(CKR_OPERATION_NOT_INITIALIZED));
        };
        if last && a.params.tag.len() != part.tag_len {
            self.part = None;
            return Err(invalid());
        }
        let input_len = a.data.input_len();
        // What this call writes: what the operation releases now (streamed
        // ciphertext, or nothing); at the last part, all the rest.
        let out_len = if last {
            part.fed
                .saturating_add(input_len)
                .saturating_sub(part.returned)
        } else {
            part.op.update_len(input_len)
        };
        let (input, output): (&[u8], &mut [u8]) = match &mut a.data {
            MsgData::Query(_) => {
                return Ok(MsgDone {
                    len: out_len,
                    ..MsgDone::default()
                })
            }
            MsgData::Apart { input, output } => (&**input, &mut **output),
            // Streaming in place needs the input apart from the output.
            MsgData::InPlace(_) => return Err(Error::Rv(CKR_ARGUMENTS_BAD)),
        };
        if output.len() < out_len {
            return Err(CryptoError::BufferTooSmall { needed: out_len }.into());
        }
        let r = part_step(part, dir, last, input, output, a.params.tag);
        match &r {
            Ok(_) if !last => {}
            _ => {
                self.part = None;
                if r.is_ok() {
                    self.used(m, s);
                }
            }
        }
        Ok(MsgDone {
            len: r?,
            iv_made: false,
            tag_made: last && dir == Direction::Encrypt,
        })
    }
}

/// One GCM invocation number of `key`'s key material, from the session's
/// run `gcm` (a compare and an increment, but for every run's first).
/// `CKR_HSME_INVOCATION_LIMIT` once the key is spent.
// The per-message path: see "Inlining" in `ffi::message`.
#[inline(always)]
pub fn take_invocation(
    m: &Module,
    s: &Session,
    key: &RememberedKey,
    gcm: &mut Option<Lease>,
) -> Result<u32> {
    let print = key.key().print();
    let dek = key.dek();
    if let Some(l) = gcm.as_mut().filter(|l| l.serves(print, &dek.id)) {
        if let Some(n) = l.take_local() {
            return Ok(n);
        }
    }
    let (label, kek_version) = key.tag();
    let who = Asker {
        id: &dek.id,
        token: dek.is_token(),
        label,
        kek_version,
    };
    m.envelope_for(s.slot)?.gcm_invocation(gcm, print, &who)
}

/// One Next call on a multi-part message.
fn part_step(
    part: &mut Part,
    dir: Direction,
    last: bool,
    input: &[u8],
    output: &mut [u8],
    tag: &mut [u8],
) -> Result<usize> {
    match dir {
        Direction::Encrypt => {
            let n = part.op.update(input, output).map_err(message_error)?;
            part.fed = part.fed.saturating_add(input.len());
            part.returned = part.returned.saturating_add(n);
            if !last {
                return Ok(n);
            }
            // The final call releases what was held back, then the tag.
            let mut rest = Zeroizing::new(vec![0u8; part.op.finish_len()]);
            let t = part.op.finish(&mut rest[..]).map_err(message_error)?;
            let made = rest.get(..t).ok_or(Error::Rv(CKR_GENERAL_ERROR))?;
            let ct_len = t
                .checked_sub(tag.len())
                .ok_or(Error::Rv(CKR_GENERAL_ERROR))?;
            let (ct, made_tag) = made.split_at(ct_len);
            output
                .get_mut(n..n + ct_len)
                .ok_or(Error::Rv(CKR_GENERAL_ERROR))?
                .copy_from_slice(ct);
            tag.copy_from_slice(made_tag);
            Ok(n + ct_len)
        }
        Direction::Decrypt => {
            part.op.update(input, &mut []).map_err(message_error)?;
            part.fed = part.fed.saturating_add(input.len());
            if !last {
                return Ok(0);
            }
            part.op.update(tag, &mut []).map_err(message_error)?;
            part.op.finish(output).map_err(message_error)
        }
    }
}

/// Encrypt one message: under the IV the FIPS module draws (`fips_mode`,
/// written to `p.iv`), else under `p.iv`.
// The per-message path: see "Inlining" in `ffi::message`.
#[inline(always)]
fn seal(
    m: &Module,
    key: &crate::crypto::PreparedKey,
    p: &mut MsgParams<'_>,
    aad: &[u8],
    data: Data<'_>,
) -> std::result::Result<(), CryptoError> {
    // fips_mode exists only in the FIPS build, which has aws-lc.
    #[cfg(feature = "aws-lc")]
    if approved::on(m) {
        return gcm_message::seal_module_iv(key, p.iv, aad, data, p.tag);
    }
    #[cfg(not(feature = "aws-lc"))]
    let _ = m;
    gcm_message::seal(key, p.iv, aad, data, p.tag)
}

/// A cipher error as a message call reports it: a failed tag check is
/// `CKR_AEAD_DECRYPT_FAILED` (PKCS#11 3.0's code for it).
fn message_error(e: CryptoError) -> Error {
    match e {
        CryptoError::Invalid => Error::Rv(CKR_AEAD_DECRYPT_FAILED),
        CryptoError::Param => invalid(),
        other => other.into(),
    }
}
