//! Shims: the PKCS#11 3.0 message-based encryption and decryption
//! functions. AES-GCM on DEKs runs in software (`token::message`); backend
//! keys are forwarded with the caller's own pointers, mechanism and
//! parameters unchanged, to the backend's 3.0 function list.
//!
//! The caller's `CK_GCM_MESSAGE_PARAMS` are read only for operations that
//! run here: what of its IV is input (all of a caller's IV, the fixed field
//! of one the module makes) and, for decryption, its tag are copied into
//! this call's stack frame first, and what the module makes (the IV, when
//! it generates it; the tag) is written back to `pIv` and `pTag` last,
//! after the data buffers are no longer in use. Nothing is allocated on the
//! way unless the input and output buffers partly overlap or the IV is
//! longer than 16 bytes.
//!
//! Inlining: the functions a message passes through, from here down to the
//! AES-GCM seal, are marked `#[inline(always)]`. Called apart, each returned
//! its `Result` through memory and the caller reloaded it at once (a
//! store-forwarding stall per layer): inlined, 20 ns less per 64-byte
//! `C_EncryptMessage` and 25 ns less per `C_DecryptMessage` on the side-by-side
//! benchmark (README, issue 12). The same holds for `C_EncryptInit`'s path
//! to the operation it builds (12 ns); on `C_Encrypt`'s it was slower, and
//! so it is not done there.

use std::ffi::c_void;

use cryptoki_sys::*;

use super::args::*;
use super::cipher::caller_buffers;
use super::mechanism::{gcm_message, GcmMessage};
use crate::backend::bcall3;
use crate::crypto::Direction::{self, Decrypt, Encrypt};
use crate::error::{Error, Result};
use crate::token::crypt::{Out, Step};
use crate::token::forward::{again_after_reconnect, forward_session};
use crate::token::message::{self, Call, Generator, MsgArgs, MsgData, MsgDone, MsgParams, MsgStep};

/// Largest tag the parameters may carry (see `gcm_message`).
const MAX_TAG: usize = 16;
/// IVs up to this long are copied into the call's stack frame; longer ones
/// (up to `gcm_message`'s 256 bytes, and rare) into a heap buffer. Not the
/// largest: the room is zeroed per call, and 256 bytes were a `memset` call.
const INLINE_IV: usize = 16;

/// # Safety
/// `p_m` must be null or a valid CK_MECHANISM whose parameters stay valid
/// for the call.
unsafe fn init(
    h: CK_SESSION_HANDLE,
    dir: Direction,
    p_m: *mut CK_MECHANISM,
    key: CK_OBJECT_HANDLE,
) -> Result<CK_RV> {
    // SAFETY: this function's contract.
    let m = unsafe { mechanism(p_m)? };
    let params_ok = message::init_params_ok(m);
    match message::init(h, dir, m.mechanism, params_ok, key)? {
        Step::ForwardInit(bkey) => {
            let rv = forward_session(h, |b, bs| match dir {
                // SAFETY: the caller's mechanism, passed on unchanged to a
                // function of the backend's own list.
                Encrypt => unsafe { bcall3!(b, C_MessageEncryptInit(bs, p_m, bkey)) },
                // SAFETY: as above.
                Decrypt => unsafe { bcall3!(b, C_MessageDecryptInit(bs, p_m, bkey)) },
            })?;
            if rv != CKR_OK {
                message::forwarded_end(h, dir);
            }
            Ok(rv)
        }
        _ => Ok(CKR_OK),
    }
}

/// The caller's data for a message call. `in_place`: the same pointer for
/// input and output is used as one buffer (single-part calls); otherwise
/// overlapping buffers get the input copied (see `caller_buffers`).
///
/// # Safety
/// As `caller_buffers`.
// The per-message path: see "Inlining" above.
#[inline(always)]
unsafe fn message_data<'a>(
    p_in: *mut u8,
    in_len: CK_ULONG,
    p_out: *mut u8,
    pul: *mut CK_ULONG,
    in_place: bool,
) -> Result<MsgData<'a>> {
    if pul.is_null() {
        return Err(bad());
    }
    // SAFETY: this function's contract; `pul` is non-null.
    unsafe {
        if in_place && !p_out.is_null() && p_in == p_out && in_len > 0 {
            if *pul < in_len {
                let needed = in_len as usize;
                return Err(crate::crypto::CryptoError::BufferTooSmall { needed }.into());
            }
            return Ok(MsgData::InPlace(bytes_mut(p_out, in_len)?));
        }
        let (input, out) = caller_buffers(p_in, in_len, p_out, pul)?;
        Ok(match out {
            Out::Query => MsgData::Query(input.len()),
            Out::Buf(output) => MsgData::Apart { input, output },
        })
    }
}

/// The checked parameters with their IV (and, to decrypt, tag) copied
/// into `c`.
///
/// # Safety
/// `p` must point to `len` readable bytes when non-null, and the pointers
/// in it to `ulIvLen` and `ulTagBits / 8` readable bytes.
// The per-message path: see "Inlining" above.
#[inline(always)]
unsafe fn params<'p>(
    p: *mut c_void,
    len: CK_ULONG,
    dir: Direction,
    c: &'p mut Copied,
) -> Result<MsgParams<'p>> {
    // SAFETY: this function's contract.
    let g = unsafe { gcm_message(p, len, dir)? };
    let Copied { iv, tag, found } = c;
    let iv = iv.room(g.iv_len)?;
    let tag = tag.get_mut(..g.tag_len).ok_or_else(bad)?;
    // Only what is input: the bytes a generator writes may be uninitialised
    // in the caller's buffer, and are zero here until it writes them.
    let input = match g.generator {
        Generator::Caller => g.iv_len,
        Generator::Counter | Generator::Random => g.fixed_bits.div_ceil(8),
    };
    // SAFETY: readable for their lengths by this function's contract.
    unsafe {
        copy_in(g.iv, iv.get_mut(..input).ok_or_else(bad)?)?;
        if dir == Decrypt {
            copy_in(g.tag, tag)?;
        }
    }
    *found = Some(g);
    Ok(MsgParams {
        iv,
        fixed_bits: g.fixed_bits,
        generator: g.generator,
        tag,
    })
}

/// Write back what the module made: the IV it generated, the tag.
///
/// # Safety
/// The pointers of `c.found` must be writable for their lengths (the
/// caller's parameters, by the PKCS#11 contract).
#[inline]
unsafe fn write_back(c: &mut Copied, done: MsgDone) -> Result<()> {
    let Some(g) = c.found else {
        return Ok(());
    };
    // SAFETY: this function's contract; the data buffers' slices are gone.
    unsafe {
        if done.iv_made {
            copy_out(c.iv.filled(g.iv_len).ok_or_else(bad)?, g.iv)?;
        }
        if done.tag_made {
            copy_out(c.tag.get(..g.tag_len).ok_or_else(bad)?, g.tag)?;
        }
    }
    Ok(())
}

/// A message call's pointers and lengths as the caller passed them (null
/// and 0 for what the function has not): the six shims pass one of these,
/// and the closures below carry a reference to it.
struct Caller {
    p_param: *mut c_void,
    param_len: CK_ULONG,
    p_aad: *mut CK_BYTE,
    aad_len: CK_ULONG,
    p_in: *mut CK_BYTE,
    in_len: CK_ULONG,
    p_out: *mut CK_BYTE,
    pul: *mut CK_ULONG,
}

/// What a call copies in from the caller's parameters and writes back:
/// the IV and the tag, and the parameters they came from.
struct Copied {
    iv: Room<INLINE_IV>,
    tag: [u8; MAX_TAG],
    found: Option<GcmMessage>,
}

impl Caller {
    /// A call's `CK_GCM_MESSAGE_PARAMS`; no associated data, no data.
    fn params(p_param: *mut c_void, param_len: CK_ULONG) -> Self {
        let null = std::ptr::null_mut();
        Caller {
            p_param,
            param_len,
            p_aad: null,
            aad_len: 0,
            p_in: null,
            in_len: 0,
            p_out: null,
            pul: std::ptr::null_mut(),
        }
    }

    fn aad(self, p_aad: *mut CK_BYTE, aad_len: CK_ULONG) -> Self {
        Caller {
            p_aad,
            aad_len,
            ..self
        }
    }

    fn data(
        self,
        p_in: *mut CK_BYTE,
        in_len: CK_ULONG,
        p_out: *mut CK_BYTE,
        pul: *mut CK_ULONG,
    ) -> Self {
        Caller {
            p_in,
            in_len,
            p_out,
            pul,
            ..self
        }
    }

    /// The checked arguments of a call on a DEK.
    ///
    /// # Safety
    /// As `call`.
    #[inline]
    unsafe fn read<'a, 'p>(
        &self,
        dir: Direction,
        which: Call,
        c: &'p mut Copied,
    ) -> Result<MsgArgs<'a, 'p>> {
        // SAFETY: this function's contract; every pointer is checked in
        // `args` and `gcm_message` before it is used.
        unsafe {
            let params = params(self.p_param, self.param_len, dir, c)?;
            let aad = bytes(self.p_aad, self.aad_len)?;
            let (p_in, in_len, p_out, pul) = (self.p_in, self.in_len, self.p_out, self.pul);
            let data = match which {
                Call::Begin => MsgData::Query(0),
                Call::Whole => message_data(p_in, in_len, p_out, pul, true)?,
                Call::Next { .. } => message_data(p_in, in_len, p_out, pul, false)?,
            };
            Ok(MsgArgs { params, aad, data })
        }
    }
}

/// One message call on the operation of `dir`.
///
/// # Safety
/// The caller's pointers, under the PKCS#11 contract: `p_param` readable
/// for `param_len` bytes, `p_aad` for `aad_len`, `p_in` for `in_len`,
/// `pul` valid and `p_out` writable for `*pul` bytes when non-null.
// The per-message path: see "Inlining" above.
#[inline(always)]
unsafe fn call(
    h: CK_SESSION_HANDLE,
    dir: Direction,
    which: Call,
    c: &Caller,
    forward: impl FnOnce() -> Result<CK_RV>,
) -> Result<CK_RV> {
    let mut copied = Copied {
        iv: Room::new(),
        tag: [0; MAX_TAG],
        found: None,
    };
    let mut done = MsgDone::default();
    // SAFETY: this function's contract is `read`'s.
    let step = message::run(
        h,
        dir,
        which,
        || unsafe { c.read(dir, which, &mut copied) },
        &mut done,
    );
    match step {
        Ok(MsgStep::Forward) => forward(),
        Ok(MsgStep::Done) => {
            // SAFETY: the caller's parameters, checked by `gcm_message`.
            unsafe { write_back(&mut copied, done)? };
            if which == Call::Begin {
                return Ok(CKR_OK);
            }
            // SAFETY: `pul` was checked non-null by `message_data`.
            unsafe { report_len(Ok(done.len), c.pul) }
        }
        // SAFETY: `report_len` writes `pul` only for a short buffer, which
        // is found after `message_data` checked it.
        Err(e) => unsafe { report_len(Err(e), c.pul) },
    }
}

/// C_MessageEncryptFinal / C_MessageDecryptFinal.
fn finish(h: CK_SESSION_HANDLE, dir: Direction) -> Result<CK_RV> {
    match message::finish(h, dir)? {
        MsgStep::Forward => {
            let rv = forward_session(h, |b, bs| match dir {
                // SAFETY: a function of the backend's own list; no pointers.
                Encrypt => unsafe { bcall3!(b, C_MessageEncryptFinal(bs)) },
                // SAFETY: as above.
                Decrypt => unsafe { bcall3!(b, C_MessageDecryptFinal(bs)) },
            })?;
            message::forwarded_end(h, dir);
            Ok(rv)
        }
        MsgStep::Done => Ok(CKR_OK),
    }
}

/// CKF_END_OF_MESSAGE, or nothing: no other flag is defined for Next.
fn last_part(flags: CK_FLAGS) -> Result<bool> {
    if flags & !CKF_END_OF_MESSAGE != 0 {
        return Err(Error::Rv(CKR_ARGUMENTS_BAD));
    }
    Ok(flags & CKF_END_OF_MESSAGE != 0)
}

#[no_mangle]
pub unsafe extern "C" fn C_MessageEncryptInit(
    h: CK_SESSION_HANDLE,
    p_m: *mut CK_MECHANISM,
    key: CK_OBJECT_HANDLE,
) -> CK_RV {
    // SAFETY: this function's own contract (its `# Safety` section).
    unsafe {
        guard("C_MessageEncryptInit", || {
            again_after_reconnect(|| init(h, Encrypt, p_m, key))
        })
    }
}

#[no_mangle]
pub unsafe extern "C" fn C_MessageDecryptInit(
    h: CK_SESSION_HANDLE,
    p_m: *mut CK_MECHANISM,
    key: CK_OBJECT_HANDLE,
) -> CK_RV {
    // SAFETY: this function's own contract (its `# Safety` section).
    unsafe {
        guard("C_MessageDecryptInit", || {
            again_after_reconnect(|| init(h, Decrypt, p_m, key))
        })
    }
}

#[no_mangle]
pub unsafe extern "C" fn C_EncryptMessage(
    h: CK_SESSION_HANDLE,
    p_param: *mut c_void,
    param_len: CK_ULONG,
    p_aad: *mut CK_BYTE,
    aad_len: CK_ULONG,
    p_in: *mut CK_BYTE,
    in_len: CK_ULONG,
    p_out: *mut CK_BYTE,
    pul: *mut CK_ULONG,
) -> CK_RV {
    // SAFETY: the caller's pointers, under the PKCS#11 contract; null and
    // length rules are checked in `args` before any is used.
    guard("C_EncryptMessage", || unsafe {
        call(
            h,
            Encrypt,
            Call::Whole,
            &Caller::params(p_param, param_len)
                .aad(p_aad, aad_len)
                .data(p_in, in_len, p_out, pul),
            || {
                forward_session(h, |b, bs| {
                    bcall3!(
                        b,
                        C_EncryptMessage(
                            bs, p_param, param_len, p_aad, aad_len, p_in, in_len, p_out, pul
                        )
                    )
                })
            },
        )
    })
}

#[no_mangle]
pub unsafe extern "C" fn C_DecryptMessage(
    h: CK_SESSION_HANDLE,
    p_param: *mut c_void,
    param_len: CK_ULONG,
    p_aad: *mut CK_BYTE,
    aad_len: CK_ULONG,
    p_in: *mut CK_BYTE,
    in_len: CK_ULONG,
    p_out: *mut CK_BYTE,
    pul: *mut CK_ULONG,
) -> CK_RV {
    // SAFETY: as C_EncryptMessage.
    guard("C_DecryptMessage", || unsafe {
        call(
            h,
            Decrypt,
            Call::Whole,
            &Caller::params(p_param, param_len)
                .aad(p_aad, aad_len)
                .data(p_in, in_len, p_out, pul),
            || {
                forward_session(h, |b, bs| {
                    bcall3!(
                        b,
                        C_DecryptMessage(
                            bs, p_param, param_len, p_aad, aad_len, p_in, in_len, p_out, pul
                        )
                    )
                })
            },
        )
    })
}

#[no_mangle]
pub unsafe extern "C" fn C_EncryptMessageBegin(
    h: CK_SESSION_HANDLE,
    p_param: *mut c_void,
    param_len: CK_ULONG,
    p_aad: *mut CK_BYTE,
    aad_len: CK_ULONG,
) -> CK_RV {
    // SAFETY: as C_EncryptMessage; Begin has no data.
    guard("C_EncryptMessageBegin", || unsafe {
        call(
            h,
            Encrypt,
            Call::Begin,
            &Caller::params(p_param, param_len).aad(p_aad, aad_len),
            || {
                forward_session(h, |b, bs| {
                    bcall3!(
                        b,
                        C_EncryptMessageBegin(bs, p_param, param_len, p_aad, aad_len)
                    )
                })
            },
        )
    })
}

#[no_mangle]
pub unsafe extern "C" fn C_DecryptMessageBegin(
    h: CK_SESSION_HANDLE,
    p_param: *mut c_void,
    param_len: CK_ULONG,
    p_aad: *mut CK_BYTE,
    aad_len: CK_ULONG,
) -> CK_RV {
    // SAFETY: as C_EncryptMessage; Begin has no data.
    guard("C_DecryptMessageBegin", || unsafe {
        call(
            h,
            Decrypt,
            Call::Begin,
            &Caller::params(p_param, param_len).aad(p_aad, aad_len),
            || {
                forward_session(h, |b, bs| {
                    bcall3!(
                        b,
                        C_DecryptMessageBegin(bs, p_param, param_len, p_aad, aad_len)
                    )
                })
            },
        )
    })
}

#[no_mangle]
pub unsafe extern "C" fn C_EncryptMessageNext(
    h: CK_SESSION_HANDLE,
    p_param: *mut c_void,
    param_len: CK_ULONG,
    p_in: *mut CK_BYTE,
    in_len: CK_ULONG,
    p_out: *mut CK_BYTE,
    pul: *mut CK_ULONG,
    flags: CK_FLAGS,
) -> CK_RV {
    // SAFETY: as C_EncryptMessage; Next has no associated data.
    guard("C_EncryptMessageNext", || unsafe {
        let last = last_part(flags)?;
        call(
            h,
            Encrypt,
            Call::Next { last },
            &Caller::params(p_param, param_len).data(p_in, in_len, p_out, pul),
            || {
                forward_session(h, |b, bs| {
                    bcall3!(
                        b,
                        C_EncryptMessageNext(
                            bs, p_param, param_len, p_in, in_len, p_out, pul, flags
                        )
                    )
                })
            },
        )
    })
}

#[no_mangle]
pub unsafe extern "C" fn C_DecryptMessageNext(
    h: CK_SESSION_HANDLE,
    p_param: *mut c_void,
    param_len: CK_ULONG,
    p_in: *mut CK_BYTE,
    in_len: CK_ULONG,
    p_out: *mut CK_BYTE,
    pul: *mut CK_ULONG,
    flags: CK_FLAGS,
) -> CK_RV {
    // SAFETY: as C_EncryptMessage; Next has no associated data.
    guard("C_DecryptMessageNext", || unsafe {
        let last = last_part(flags)?;
        call(
            h,
            Decrypt,
            Call::Next { last },
            &Caller::params(p_param, param_len).data(p_in, in_len, p_out, pul),
            || {
                forward_session(h, |b, bs| {
                    bcall3!(
                        b,
                        C_DecryptMessageNext(
                            bs, p_param, param_len, p_in, in_len, p_out, pul, flags
                        )
                    )
                })
            },
        )
    })
}

#[no_mangle]
pub unsafe extern "C" fn C_MessageEncryptFinal(h: CK_SESSION_HANDLE) -> CK_RV {
    guard("C_MessageEncryptFinal", || finish(h, Encrypt))
}

#[no_mangle]
pub unsafe extern "C" fn C_MessageDecryptFinal(h: CK_SESSION_HANDLE) -> CK_RV {
    guard("C_MessageDecryptFinal", || finish(h, Decrypt))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_end_of_message_is_a_next_flag() {
        assert!(!last_part(0).unwrap());
        assert!(last_part(CKF_END_OF_MESSAGE).unwrap());
        assert_eq!(
            last_part(2).unwrap_err().rv(),
            CKR_ARGUMENTS_BAD,
            "unknown flag"
        );
    }

    #[test]
    fn parameters_are_checked_with_the_specs_codes() {
        let mut iv = [0u8; 12];
        let mut tag = [0u8; 16];
        let good = CK_GCM_MESSAGE_PARAMS {
            pIv: iv.as_mut_ptr(),
            ulIvLen: 12,
            ulIvFixedBits: 0,
            ivGenerator: CKG_GENERATE_COUNTER,
            pTag: tag.as_mut_ptr(),
            ulTagBits: 128,
        };
        let size = size_of::<CK_GCM_MESSAGE_PARAMS>() as CK_ULONG;
        let check = |p: CK_GCM_MESSAGE_PARAMS, len: CK_ULONG, dir| {
            // SAFETY: a structure in this frame, of `size` bytes.
            unsafe { gcm_message(&p as *const _ as *const c_void, len, dir) }
                .map(|_| CKR_OK)
                .unwrap_or_else(|e| e.rv())
        };
        assert_eq!(check(good, size, Encrypt), CKR_OK);
        assert_eq!(check(good, size - 1, Encrypt), CKR_ARGUMENTS_BAD);
        // SAFETY: a NULL pointer is refused before anything is read.
        let null = unsafe { gcm_message(std::ptr::null(), size, Encrypt) };
        assert_eq!(null.err().map(|e| e.rv()), Some(CKR_ARGUMENTS_BAD));
        let cases = [
            (
                CK_GCM_MESSAGE_PARAMS {
                    pTag: std::ptr::null_mut(),
                    ..good
                },
                CKR_ARGUMENTS_BAD,
            ),
            (
                CK_GCM_MESSAGE_PARAMS {
                    pIv: std::ptr::null_mut(),
                    ..good
                },
                CKR_ARGUMENTS_BAD,
            ),
            (
                CK_GCM_MESSAGE_PARAMS { ulIvLen: 0, ..good },
                CKR_MECHANISM_PARAM_INVALID,
            ),
            (
                CK_GCM_MESSAGE_PARAMS {
                    ulIvLen: 257,
                    ..good
                },
                CKR_MECHANISM_PARAM_INVALID,
            ),
            (
                CK_GCM_MESSAGE_PARAMS {
                    ulTagBits: 24,
                    ..good
                },
                CKR_MECHANISM_PARAM_INVALID,
            ),
            (
                CK_GCM_MESSAGE_PARAMS {
                    ulTagBits: 100,
                    ..good
                },
                CKR_MECHANISM_PARAM_INVALID,
            ),
            (
                CK_GCM_MESSAGE_PARAMS {
                    ulTagBits: 136,
                    ..good
                },
                CKR_MECHANISM_PARAM_INVALID,
            ),
            (
                CK_GCM_MESSAGE_PARAMS {
                    ulIvFixedBits: 97,
                    ..good
                },
                CKR_MECHANISM_PARAM_INVALID,
            ),
            (
                CK_GCM_MESSAGE_PARAMS {
                    ulIvFixedBits: 65,
                    ..good
                },
                CKR_MECHANISM_PARAM_INVALID,
            ),
            (
                CK_GCM_MESSAGE_PARAMS {
                    ulIvFixedBits: 64,
                    ..good
                },
                CKR_OK,
            ),
            (
                CK_GCM_MESSAGE_PARAMS {
                    ivGenerator: CKG_GENERATE_RANDOM,
                    ulIvFixedBits: 1,
                    ..good
                },
                CKR_MECHANISM_PARAM_INVALID,
            ),
            (
                CK_GCM_MESSAGE_PARAMS {
                    ivGenerator: CKG_GENERATE_RANDOM,
                    ..good
                },
                CKR_OK,
            ),
            (
                CK_GCM_MESSAGE_PARAMS {
                    ivGenerator: 99,
                    ..good
                },
                CKR_MECHANISM_PARAM_INVALID,
            ),
            (
                CK_GCM_MESSAGE_PARAMS {
                    ivGenerator: CKG_GENERATE_COUNTER_XOR,
                    ..good
                },
                CKR_MECHANISM_PARAM_INVALID,
            ),
            (
                CK_GCM_MESSAGE_PARAMS {
                    ivGenerator: CKG_NO_GENERATE,
                    ulIvFixedBits: 96,
                    ..good
                },
                CKR_OK,
            ),
        ];
        for (i, (p, want)) in cases.into_iter().enumerate() {
            assert_eq!(check(p, size, Encrypt), want, "case {i}");
        }
        // Decryption reads neither the generator nor the fixed bits.
        let odd = CK_GCM_MESSAGE_PARAMS {
            ivGenerator: 99,
            ulIvFixedBits: 1000,
            ..good
        };
        assert_eq!(check(odd, size, Decrypt), CKR_OK);
    }
}
