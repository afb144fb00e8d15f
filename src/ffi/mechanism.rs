//! Parsing mechanism parameters for the software engines. Both layouts of
//! CK_GCM_PARAMS are accepted, told apart by ulParameterLen: the 2.40 header
//! (with ulIvBits) and the 2.40 spec text / 3.0 errata (without).

use cryptoki_sys::*;

use crate::crypto::{gcm_iv, Mode};
use crate::error::{Error, Result};
use crate::token::message::Generator;
use crate::token::wrapping::EncryptData;

/// CK_GCM_PARAMS as some callers lay it out: without `ulIvBits`.
#[repr(C)]
#[derive(Clone, Copy)]
struct GcmParamsNoIvBits {
    p_iv: *mut CK_BYTE,
    ul_iv_len: CK_ULONG,
    p_aad: *mut CK_BYTE,
    ul_aad_len: CK_ULONG,
    ul_tag_bits: CK_ULONG,
}

/// Largest GCM IV accepted (the 2.40 limit).
const MAX_GCM_IV: CK_ULONG = 256;

#[inline]
fn param_invalid() -> Error {
    Error::Rv(CKR_MECHANISM_PARAM_INVALID)
}

/// # Safety
/// `m.pParameter` must point to `m.ulParameterLen` readable bytes.
unsafe fn param<T: Copy>(m: &CK_MECHANISM) -> Result<T> {
    // SAFETY: this function's own contract (its `# Safety` section).
    unsafe {
        if m.pParameter.is_null() || m.ulParameterLen as usize != size_of::<T>() {
            return Err(param_invalid());
        }
        Ok(std::ptr::read_unaligned(m.pParameter as *const T))
    }
}

/// The caller's bytes, borrowed: they stay valid for the call (C_EncryptInit)
/// that parses them, which is as long as a `Mode` lives.
///
/// # Safety
/// `p` must point to `len` readable bytes when non-null, for `'a`.
unsafe fn param_bytes<'a>(p: *const u8, len: CK_ULONG) -> Result<&'a [u8]> {
    // SAFETY: this function's own contract (its `# Safety` section).
    unsafe { super::args::bytes(p, len).map_err(|_| param_invalid()) }
}

/// The software mode for `m`, or CKR_MECHANISM_INVALID if it has none. It
/// borrows the parameters' IV and AAD (nothing is copied or allocated).
///
/// # Safety
/// `m` must be a valid CK_MECHANISM with parameters readable for `'a`.
// The C_EncryptInit path: see "Inlining" in `ffi::message`.
#[inline(always)]
pub unsafe fn soft_mode<'a>(m: &'a CK_MECHANISM) -> Result<Mode<'a>> {
    // SAFETY: this function's own contract (its `# Safety` section).
    unsafe {
        match m.mechanism {
            CKM_AES_GCM => {
                let (iv, iv_len, aad, aad_len, tag_bits) =
                    if m.ulParameterLen as usize == size_of::<CK_GCM_PARAMS>() {
                        let p: CK_GCM_PARAMS = param(m)?;
                        (p.pIv, p.ulIvLen, p.pAAD, p.ulAADLen, p.ulTagBits)
                    } else {
                        let p: GcmParamsNoIvBits = param(m)?;
                        (p.p_iv, p.ul_iv_len, p.p_aad, p.ul_aad_len, p.ul_tag_bits)
                    };
                if iv_len == 0 || iv_len > MAX_GCM_IV || iv.is_null() {
                    return Err(param_invalid());
                }
                if !(32..=128).contains(&tag_bits) || tag_bits % 8 != 0 {
                    return Err(param_invalid());
                }
                Ok(Mode::Gcm {
                    iv: param_bytes(iv, iv_len)?,
                    aad: param_bytes(aad, aad_len)?,
                    tag_len: (tag_bits / 8) as usize,
                })
            }
            CKM_AES_CBC_PAD => {
                let iv: [u8; 16] = param(m)?;
                Ok(Mode::CbcPad { iv })
            }
            CKM_AES_CBC => {
                let iv: [u8; 16] = param(m)?;
                Ok(Mode::Cbc { iv })
            }
            CKM_AES_ECB if m.pParameter.is_null() && m.ulParameterLen == 0 => Ok(Mode::Ecb),
            CKM_AES_ECB => Err(param_invalid()),
            CKM_AES_CTR => {
                let p: CK_AES_CTR_PARAMS = param(m)?;
                if p.ulCounterBits == 0 || p.ulCounterBits > 128 {
                    return Err(param_invalid());
                }
                Ok(Mode::Ctr {
                    iv: p.cb,
                    counter_bits: p.ulCounterBits as usize,
                })
            }
            _ => Err(Error::Rv(CKR_MECHANISM_INVALID)),
        }
    }
}

/// A caller's `CK_GCM_MESSAGE_PARAMS` (the per-message parameters of the
/// message functions), checked: where its IV and tag are, and what the IV
/// generator asks for. The bytes are copied by the shim (`ffi::message`).
#[derive(Clone, Copy)]
pub struct GcmMessage {
    pub iv: *mut CK_BYTE,
    pub iv_len: usize,
    pub fixed_bits: usize,
    pub generator: Generator,
    pub tag: *mut CK_BYTE,
    pub tag_len: usize,
}

/// `CK_GCM_MESSAGE_PARAMS` at `(p, len)`, checked for `dir`:
/// - `CKR_ARGUMENTS_BAD`: no parameter, a length other than the
///   structure's, a NULL `pIv` or `pTag` (pointers the call must use);
/// - `CKR_MECHANISM_PARAM_INVALID`: values this mechanism does not take:
///   an IV of 0 or more than 256 bytes, a tag of other than 32 to 128 bits
///   in whole bytes and, for encryption, more fixed bits than the IV has,
///   an unknown generator (`CKG_GENERATE_COUNTER_XOR` included, see the
///   README), or too few free bits for the generator (32 for a counter, 96
///   for random).
///
/// # Safety
/// `p` must point to `len` readable bytes when non-null.
// The per-message path: see "Inlining" in `ffi::message`.
#[inline(always)]
pub unsafe fn gcm_message(
    p: *const std::ffi::c_void,
    len: CK_ULONG,
    dir: crate::crypto::Direction,
) -> Result<GcmMessage> {
    if p.is_null() || len as usize != size_of::<CK_GCM_MESSAGE_PARAMS>() {
        return Err(Error::Rv(CKR_ARGUMENTS_BAD));
    }
    // SAFETY: non-null, and of the structure's size by this function's contract.
    let raw: CK_GCM_MESSAGE_PARAMS = unsafe { std::ptr::read_unaligned(p as *const _) };
    if raw.pIv.is_null() || raw.pTag.is_null() {
        return Err(Error::Rv(CKR_ARGUMENTS_BAD));
    }
    if raw.ulIvLen == 0 || raw.ulIvLen > MAX_GCM_IV {
        return Err(param_invalid());
    }
    if !(32..=128).contains(&raw.ulTagBits) || !raw.ulTagBits.is_multiple_of(8) {
        return Err(param_invalid());
    }
    let iv_len = raw.ulIvLen as usize;
    let generator = match raw.ivGenerator {
        CKG_NO_GENERATE => Generator::Caller,
        CKG_GENERATE | CKG_GENERATE_COUNTER => Generator::Counter,
        CKG_GENERATE_RANDOM => Generator::Random,
        _ if dir == crate::crypto::Direction::Decrypt => Generator::Caller,
        _ => return Err(param_invalid()),
    };
    let fixed_bits = if dir == crate::crypto::Direction::Encrypt {
        let fixed = usize::try_from(raw.ulIvFixedBits).map_err(|_| param_invalid())?;
        let free = gcm_iv::free_bits(iv_len, fixed).map_err(|_| param_invalid())?;
        let least = match generator {
            Generator::Caller => 0,
            Generator::Counter => gcm_iv::COUNTER_BITS,
            Generator::Random => gcm_iv::MIN_RANDOM_BITS,
        };
        if free < least {
            return Err(param_invalid());
        }
        fixed
    } else {
        0
    };
    Ok(GcmMessage {
        iv: raw.pIv,
        iv_len,
        fixed_bits,
        generator: if dir == crate::crypto::Direction::Encrypt {
            generator
        } else {
            Generator::Caller
        },
        tag: raw.pTag,
        tag_len: (raw.ulTagBits / 8) as usize,
    })
}

/// The data of the *_ENCRYPT_DATA derivations, borrowed from the caller's
/// parameters for the call; None for any other mechanism.
///
/// # Safety
/// `m` must be a valid CK_MECHANISM with parameters readable for `'a`.
pub unsafe fn encrypt_data<'a>(m: &'a CK_MECHANISM) -> Result<Option<EncryptData<'a>>> {
    // SAFETY: this function's contract, checked sizes (see `param`).
    unsafe {
        match m.mechanism {
            CKM_AES_ECB_ENCRYPT_DATA => {
                let p: CK_KEY_DERIVATION_STRING_DATA = param(m)?;
                Ok(Some(EncryptData {
                    iv: None,
                    data: param_bytes(p.pData, p.ulLen)?,
                }))
            }
            CKM_AES_CBC_ENCRYPT_DATA => {
                let p: CK_AES_CBC_ENCRYPT_DATA_PARAMS = param(m)?;
                Ok(Some(EncryptData {
                    iv: Some(p.iv),
                    data: param_bytes(p.pData, p.length)?,
                }))
            }
            _ => Ok(None),
        }
    }
}

/// The MAC length of a CMAC mechanism (CKM_AES_CMAC: 16; CKM_AES_CMAC_GENERAL:
/// its parameter, 1 to 16), or None for any other mechanism.
///
/// # Safety
/// `m` must be a valid CK_MECHANISM with readable parameters.
pub unsafe fn mac_len(m: &CK_MECHANISM) -> Option<Result<usize>> {
    match m.mechanism {
        CKM_AES_CMAC if m.pParameter.is_null() && m.ulParameterLen == 0 => Some(Ok(16)),
        CKM_AES_CMAC => Some(Err(param_invalid())),
        CKM_AES_CMAC_GENERAL => Some(
            // SAFETY: this function's contract; `param` checks the size.
            unsafe { param::<CK_MAC_GENERAL_PARAMS>(m) }.and_then(|n| match n {
                1..=16 => Ok(n as usize),
                _ => Err(param_invalid()),
            }),
        ),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mech(p: *mut std::ffi::c_void, len: usize) -> CK_MECHANISM {
        CK_MECHANISM {
            mechanism: CKM_AES_GCM,
            pParameter: p,
            ulParameterLen: len as CK_ULONG,
        }
    }

    #[test]
    fn gcm_both_layouts_and_bad_params() {
        let mut iv = [1u8; 12];
        let mut aad = [2u8; 5];
        let mut full = CK_GCM_PARAMS {
            pIv: iv.as_mut_ptr(),
            ulIvLen: 12,
            ulIvBits: 0,
            pAAD: aad.as_mut_ptr(),
            ulAADLen: 5,
            ulTagBits: 96,
        };
        let m = mech(&mut full as *mut _ as *mut _, size_of::<CK_GCM_PARAMS>());
        // SAFETY: a test mechanism whose parameters live in this frame.
        match unsafe { soft_mode(&m) }.unwrap() {
            Mode::Gcm { iv, aad, tag_len } => {
                assert_eq!((iv.len(), aad.len(), tag_len), (12, 5, 12))
            }
            _ => panic!(),
        }
        let mut short = GcmParamsNoIvBits {
            p_iv: iv.as_mut_ptr(),
            ul_iv_len: 12,
            p_aad: std::ptr::null_mut(),
            ul_aad_len: 0,
            ul_tag_bits: 128,
        };
        let m = mech(
            &mut short as *mut _ as *mut _,
            size_of::<GcmParamsNoIvBits>(),
        );
        // SAFETY: a test mechanism whose parameters live in this frame.
        assert!(unsafe { soft_mode(&m) }.is_ok());
        for (iv_len, tag) in [(0, 128), (12, 24), (12, 136), (12, 100), (300, 128)] {
            let mut p = CK_GCM_PARAMS {
                pIv: iv.as_mut_ptr(),
                ulIvLen: iv_len,
                ulIvBits: 0,
                pAAD: std::ptr::null_mut(),
                ulAADLen: 0,
                ulTagBits: tag,
            };
            let m = mech(&mut p as *mut _ as *mut _, size_of::<CK_GCM_PARAMS>());
            assert_eq!(
                // SAFETY: a test mechanism whose parameters live in this frame.
                unsafe { soft_mode(&m) }.unwrap_err().rv(),
                CKR_MECHANISM_PARAM_INVALID
            );
        }
        let m = mech(&mut full as *mut _ as *mut _, 7);
        assert_eq!(
            // SAFETY: a test mechanism whose parameters live in this frame.
            unsafe { soft_mode(&m) }.unwrap_err().rv(),
            CKR_MECHANISM_PARAM_INVALID
        );
        let m = mech(std::ptr::null_mut(), size_of::<CK_GCM_PARAMS>());
        assert_eq!(
            // SAFETY: a test mechanism whose parameters live in this frame.
            unsafe { soft_mode(&m) }.unwrap_err().rv(),
            CKR_MECHANISM_PARAM_INVALID
        );
    }
}
