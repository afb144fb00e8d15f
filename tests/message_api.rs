//! The PKCS#11 3.0 message-based functions for AES-GCM on DEKs (issue 12):
//! module-made IVs, tags written back to the caller, checked against an
//! independent implementation (RustCrypto's `aes-gcm`); the parameters'
//! codes; multi-part messages; in-place buffers; forwarding for backend
//! keys.
//!
//! Each test makes its own token and runs in its own process
//! (`cargo nextest run --test message_api`).

mod common;

use std::ffi::c_void;
use std::ptr::null_mut;

use aes_gcm::aead::{AeadInOut, KeyInit};
use common::hsms::faulty_backend_path;
use common::p11::*;
use common::*;
use cryptoki::error::RvError;
use cryptoki::mechanism::aead::{GcmMessageParams, GeneratorFunction};
use cryptoki::mechanism::{Mechanism, MessageParam};
use cryptoki::object::{Attribute, AttributeType, ObjectHandle};
use cryptoki::session::Session;
use cryptoki_sys::*;

const KEY: [u8; 32] = [0x42; 32];

/// RustCrypto's AES-256-GCM opening a message with a detached tag.
fn reference_open(key: &[u8], iv: &[u8], aad: &[u8], ct: &[u8], tag: &[u8]) -> Option<Vec<u8>> {
    let c = aes_gcm::Aes256Gcm::new_from_slice(key).unwrap();
    let mut buf = ct.to_vec();
    c.decrypt_inout_detached(
        iv.try_into().unwrap(),
        aad,
        buf.as_mut_slice().into(),
        tag.try_into().unwrap(),
    )
    .ok()?;
    Some(buf)
}

/// RustCrypto's AES-256-GCM sealing under `KEY` and a 96-bit IV,
/// ciphertext and tag apart.
fn reference_seal(iv: &[u8], aad: &[u8], pt: &[u8]) -> (Vec<u8>, Vec<u8>) {
    reference_seal_n::<aes_gcm::aead::consts::U12>(iv, aad, pt)
}

/// A DEK with a known value (session or token).
fn known_dek(s: &Session, token: bool) -> ObjectHandle {
    import(s, &KEY, token, vec![])
}

/// The raw parameters for `iv` and `tag`.
fn params(
    iv: &mut [u8],
    fixed: CK_ULONG,
    generator: CK_ULONG,
    tag: &mut [u8],
) -> CK_GCM_MESSAGE_PARAMS {
    CK_GCM_MESSAGE_PARAMS {
        pIv: iv.as_mut_ptr(),
        ulIvLen: iv.len() as CK_ULONG,
        ulIvFixedBits: fixed,
        ivGenerator: generator,
        pTag: tag.as_mut_ptr(),
        ulTagBits: (tag.len() * 8) as CK_ULONG,
    }
}

const PARAMS_LEN: CK_ULONG = size_of::<CK_GCM_MESSAGE_PARAMS>() as CK_ULONG;

fn gcm() -> CK_MECHANISM {
    CK_MECHANISM {
        mechanism: CKM_AES_GCM,
        pParameter: null_mut(),
        ulParameterLen: 0,
    }
}

/// The module's 3.0 list, for calls whose exact codes matter.
struct Raw {
    l: &'static CK_FUNCTION_LIST_3_0,
    h: CK_SESSION_HANDLE,
}

impl Raw {
    fn new(s: &Session) -> Raw {
        Raw {
            l: raw_list_3_0(),
            h: s.handle(),
        }
    }

    fn encrypt_init(&self, key: ObjectHandle) -> CK_RV {
        let mut m = gcm();
        unsafe { self.l.C_MessageEncryptInit.unwrap()(self.h, &mut m, key.handle()) }
    }

    fn decrypt_init(&self, key: ObjectHandle) -> CK_RV {
        let mut m = gcm();
        unsafe { self.l.C_MessageDecryptInit.unwrap()(self.h, &mut m, key.handle()) }
    }

    /// C_EncryptMessage with `p` (or a NULL parameter), into `out`.
    fn encrypt(
        &self,
        p: Option<&mut CK_GCM_MESSAGE_PARAMS>,
        aad: &[u8],
        pt: &[u8],
        out: &mut [u8],
    ) -> (CK_RV, CK_ULONG) {
        let mut n = out.len() as CK_ULONG;
        let (pp, plen) = match p {
            Some(p) => (p as *mut _ as *mut c_void, PARAMS_LEN),
            None => (null_mut(), PARAMS_LEN),
        };
        let rv = unsafe {
            self.l.C_EncryptMessage.unwrap()(
                self.h,
                pp,
                plen,
                aad.as_ptr() as *mut u8,
                aad.len() as CK_ULONG,
                pt.as_ptr() as *mut u8,
                pt.len() as CK_ULONG,
                out.as_mut_ptr(),
                &mut n,
            )
        };
        (rv, n)
    }

    fn decrypt(
        &self,
        p: &mut CK_GCM_MESSAGE_PARAMS,
        aad: &[u8],
        ct: &[u8],
        out: &mut [u8],
    ) -> (CK_RV, CK_ULONG) {
        let mut n = out.len() as CK_ULONG;
        let rv = unsafe {
            self.l.C_DecryptMessage.unwrap()(
                self.h,
                p as *mut _ as *mut c_void,
                PARAMS_LEN,
                aad.as_ptr() as *mut u8,
                aad.len() as CK_ULONG,
                ct.as_ptr() as *mut u8,
                ct.len() as CK_ULONG,
                out.as_mut_ptr(),
                &mut n,
            )
        };
        (rv, n)
    }

    /// C_EncryptMessage (or C_DecryptMessage) with one buffer for input and
    /// output, declared `declared` bytes long for the output.
    fn in_place(
        &self,
        dir: Direction,
        p: &mut CK_GCM_MESSAGE_PARAMS,
        buf: &mut [u8],
        declared: CK_ULONG,
    ) -> (CK_RV, CK_ULONG) {
        let f = match dir {
            Direction::Encrypt => self.l.C_EncryptMessage.unwrap(),
            Direction::Decrypt => self.l.C_DecryptMessage.unwrap(),
        };
        let mut n = declared;
        let rv = unsafe {
            f(
                self.h,
                p as *mut _ as *mut c_void,
                PARAMS_LEN,
                null_mut(),
                0,
                buf.as_mut_ptr(),
                buf.len() as CK_ULONG,
                buf.as_mut_ptr(),
                &mut n,
            )
        };
        (rv, n)
    }

    fn encrypt_final(&self) -> CK_RV {
        unsafe { self.l.C_MessageEncryptFinal.unwrap()(self.h) }
    }

    fn decrypt_final(&self) -> CK_RV {
        unsafe { self.l.C_MessageDecryptFinal.unwrap()(self.h) }
    }
}

/// Which message function `Raw::in_place` calls.
enum Direction {
    Encrypt,
    Decrypt,
}

/// Every generator makes an IV that RustCrypto's AES-GCM accepts with the
/// tag the module wrote back, keeping the caller's fixed bits; the module
/// decrypts it too. Counter IVs end with consecutive invocation numbers.
#[test]
fn module_made_ivs_and_tags_decrypt_with_the_reference() {
    let _t = TestToken::new();
    let p = ours();
    let s = user_session(&p, token_slot(&p));
    for token in [false, true] {
        let key = known_dek(&s, token);
        let mut last_count = None;
        for (generator, fixed) in [
            (GeneratorFunction::GenerateCounter, 0u64),
            (GeneratorFunction::GenerateCounter, 32),
            (GeneratorFunction::GenerateCounter, 33),
            (GeneratorFunction::Generate, 64),
            (GeneratorFunction::GenerateRandom, 0),
        ] {
            for _ in 0..3 {
                let mut iv = [0xA5u8; 12];
                let mut tag = [0u8; 16];
                let param =
                    GcmMessageParams::new(&mut iv, fixed.into(), generator, &mut tag).unwrap();
                s.message_encrypt_init(&Mechanism::AesGcmMessage(param), key)
                    .unwrap();
                let pt = b"a message the module encrypts with its own IV";
                let ct = s
                    .encrypt_message(&MessageParam::AesGcmMessage(param), b"aad", pt)
                    .unwrap();
                s.message_encrypt_final().unwrap();
                assert_ne!(ct, pt);
                // The caller's fixed bits are kept.
                let whole = (fixed / 8) as usize;
                assert!(
                    iv[..whole].iter().all(|b| *b == 0xA5),
                    "{generator:?} {fixed}: {iv:02x?}"
                );
                if fixed % 8 != 0 {
                    let keep = !(0xffu8 >> (fixed % 8));
                    assert_eq!(iv[whole] & keep, 0xA5 & keep);
                }
                assert_ne!(iv, [0xA5; 12], "the IV was made");
                if !matches!(generator, GeneratorFunction::GenerateRandom) {
                    let count = u32::from_be_bytes(iv[8..].try_into().unwrap());
                    if let Some(last) = last_count {
                        assert_eq!(count, last + 1, "{generator:?} {fixed}");
                    }
                    last_count = Some(count);
                }
                let plain =
                    reference_open(&KEY, &iv, b"aad", &ct, &tag).expect("the reference opens it");
                assert_eq!(plain, pt);

                let param = GcmMessageParams::new(
                    &mut iv,
                    0.into(),
                    GeneratorFunction::NoGenerate,
                    &mut tag,
                )
                .unwrap();
                s.message_decrypt_init(&Mechanism::AesGcmMessage(param), key)
                    .unwrap();
                let back = s
                    .decrypt_message(&MessageParam::AesGcmMessage(param), b"aad", &ct)
                    .unwrap();
                s.message_decrypt_final().unwrap();
                assert_eq!(back, pt);
            }
        }
    }
}

/// The caller's own IV (CKG_NO_GENERATE) gives the reference's ciphertext
/// and tag; shorter tags are the full tag's first bytes; many messages run
/// under one init, each with its own IV and associated data.
#[test]
fn caller_ivs_give_the_references_ciphertext_and_many_messages_share_one_init() {
    let _t = TestToken::new();
    let p = ours();
    let s = user_session(&p, token_slot(&p));
    let key = known_dek(&s, false);
    let raw = Raw::new(&s);
    assert_eq!(raw.encrypt_init(key), CKR_OK);
    assert_eq!(raw.decrypt_init(key), CKR_OK);
    for i in 0..50u8 {
        let pt = vec![i; usize::from(i) * 3];
        let aad = vec![i ^ 0x5a; usize::from(i % 7)];
        let mut iv = [i; 12];
        let mut tag_len = 16 - usize::from(i % 5);
        if cfg!(feature = "fips") && tag_len < 16 {
            // The FIPS build refuses short tags (the FIPS module's API
            // takes 128-bit tags only), then goes on with a full one.
            let mut tag = vec![0u8; tag_len];
            let mut p = params(&mut iv, 0, CKG_NO_GENERATE, &mut tag);
            let mut ct = vec![0u8; pt.len()];
            let (rv, _) = raw.encrypt(Some(&mut p), &aad, &pt, &mut ct);
            assert_eq!(rv, CKR_MECHANISM_PARAM_INVALID);
            tag_len = 16;
        }
        let mut tag = vec![0u8; tag_len];
        let mut p = params(&mut iv, 0, CKG_NO_GENERATE, &mut tag);
        let mut ct = vec![0u8; pt.len()];
        let (rv, n) = raw.encrypt(Some(&mut p), &aad, &pt, &mut ct);
        assert_eq!((rv, n as usize), (CKR_OK, pt.len()));
        let (want_ct, want_tag) = reference_seal(&[i; 12], &aad, &pt);
        assert_eq!(ct, want_ct);
        assert_eq!(tag, want_tag[..tag_len]);
        assert_eq!(iv, [i; 12], "a caller's IV is left alone");
        let mut back = vec![0u8; ct.len()];
        let mut p = params(&mut iv, 0, CKG_NO_GENERATE, &mut tag);
        let (rv, n) = raw.decrypt(&mut p, &aad, &ct, &mut back);
        assert_eq!((rv, n as usize), (CKR_OK, pt.len()));
        assert_eq!(back, pt);
    }
    assert_eq!(raw.encrypt_final(), CKR_OK);
    assert_eq!(raw.decrypt_final(), CKR_OK);
    assert_eq!(raw.encrypt_final(), CKR_OPERATION_NOT_INITIALIZED);
}

/// A reference seal: IV, associated data, plaintext → ciphertext, tag.
type Seal = fn(&[u8], &[u8], &[u8]) -> (Vec<u8>, Vec<u8>);

/// RustCrypto's AES-256-GCM sealing under an IV of `N` bytes (GCM hashes
/// an IV other than 96 bits into its first counter block).
fn reference_seal_n<N: aes_gcm::aead::array::ArraySize>(
    iv: &[u8],
    aad: &[u8],
    pt: &[u8],
) -> (Vec<u8>, Vec<u8>) {
    let c = aes_gcm::AesGcm::<aes::Aes256, N>::new_from_slice(&KEY).unwrap();
    let mut buf = pt.to_vec();
    let tag = c
        .encrypt_inout_detached(iv.try_into().unwrap(), aad, buf.as_mut_slice().into())
        .unwrap();
    (buf, tag.to_vec())
}

/// IVs of the lengths the spec allows besides 96 bits, on both sides of
/// the shim's 16-byte inline room (longer ones go to the heap): the
/// caller's IV gives the reference's ciphertext and tag; a counter IV keeps
/// the fixed field, ends with the invocation number and decrypts. The FIPS
/// build refuses IVs other than 96 bits (its module's AES-GCM takes those
/// only).
#[test]
fn ivs_of_other_lengths_match_the_reference() {
    use aes_gcm::aead::consts::{U1, U12, U13, U16, U17, U255, U256, U32};
    let _t = TestToken::new();
    let p = ours();
    let s = user_session(&p, token_slot(&p));
    let key = known_dek(&s, false);
    let raw = Raw::new(&s);
    assert_eq!(raw.encrypt_init(key), CKR_OK);
    assert_eq!(raw.decrypt_init(key), CKR_OK);
    let seal: [(usize, Seal); 8] = [
        (1, reference_seal_n::<U1>),
        (12, reference_seal_n::<U12>),
        (13, reference_seal_n::<U13>),
        (16, reference_seal_n::<U16>),
        (17, reference_seal_n::<U17>),
        (32, reference_seal_n::<U32>),
        (255, reference_seal_n::<U255>),
        (256, reference_seal_n::<U256>),
    ];
    let pt = b"a message under an IV of another length";
    let mut last: Option<u32> = None;
    for (len, reference) in seal {
        let iv: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
        let (mut caller_iv, mut tag) = (iv.clone(), [0u8; 16]);
        let mut ct = vec![0u8; pt.len()];
        let mut p = params(&mut caller_iv, 0, CKG_NO_GENERATE, &mut tag);
        let (rv, n) = raw.encrypt(Some(&mut p), b"aad", pt, &mut ct);
        if cfg!(feature = "fips") && len != 12 {
            assert_eq!(rv, CKR_MECHANISM_PARAM_INVALID, "{len}-byte IV");
            continue;
        }
        assert_eq!((rv, n as usize), (CKR_OK, pt.len()), "{len}-byte IV");
        assert_eq!((ct.clone(), tag.to_vec()), reference(&iv, b"aad", pt));
        assert_eq!(caller_iv, iv, "a caller's IV is left alone");
        // A counter IV (32 free bits or more): fixed field kept, the last
        // 32 bits the invocation number, and it decrypts here.
        if len < 4 {
            continue;
        }
        for fixed in [0, 8, 8 * (len - 4)] {
            let (mut made, mut tag) = (iv.clone(), [0u8; 16]);
            let mut p = params(&mut made, fixed as CK_ULONG, CKG_GENERATE_COUNTER, &mut tag);
            let (rv, _) = raw.encrypt(Some(&mut p), b"", pt, &mut ct);
            assert_eq!(rv, CKR_OK, "{len}-byte IV, {fixed} fixed bits");
            assert_eq!(made[..fixed / 8], iv[..fixed / 8], "the fixed field");
            assert_ne!(made, iv, "{len}-byte IV, {fixed} fixed bits: made");
            // Every encryption under the key takes the next number.
            let count = u32::from_be_bytes(made[len - 4..].try_into().unwrap());
            assert!(
                last.is_none_or(|l| count > l),
                "{len}: {count} after {last:?}"
            );
            last = Some(count);
            assert_eq!((ct.clone(), tag.to_vec()), reference(&made, b"", pt));
            let mut back = vec![0u8; ct.len()];
            let mut p = params(&mut made, 0, CKG_NO_GENERATE, &mut tag);
            let (rv, n) = raw.decrypt(&mut p, b"", &ct, &mut back);
            assert_eq!((rv, n as usize), (CKR_OK, pt.len()));
            assert_eq!(back, pt);
        }
    }
}

/// A wrong tag, ciphertext or associated data fails with
/// CKR_AEAD_DECRYPT_FAILED, releases nothing, and leaves the operation for
/// the next message.
#[test]
fn a_wrong_tag_is_aead_decrypt_failed_and_releases_nothing() {
    let _t = TestToken::new();
    let p = ours();
    let s = user_session(&p, token_slot(&p));
    let key = known_dek(&s, true);
    let raw = Raw::new(&s);
    let pt = [0x33u8; 64];
    let (ct, tag) = reference_seal(&[9; 12], b"hdr", &pt);
    assert_eq!(raw.decrypt_init(key), CKR_OK);
    for (what, ct, tag, aad) in [
        (
            "tag",
            ct.clone(),
            {
                let mut t = tag.clone();
                t[0] ^= 1;
                t
            },
            &b"hdr"[..],
        ),
        (
            "ciphertext",
            {
                let mut c = ct.clone();
                c[10] ^= 1;
                c
            },
            tag.clone(),
            &b"hdr"[..],
        ),
        ("associated data", ct.clone(), tag.clone(), &b"hdx"[..]),
    ] {
        let mut iv = [9u8; 12];
        let mut t = tag.clone();
        let mut p = params(&mut iv, 0, CKG_NO_GENERATE, &mut t);
        let mut out = [0u8; 64];
        let (rv, _) = raw.decrypt(&mut p, aad, &ct, &mut out);
        assert_eq!(rv, CKR_AEAD_DECRYPT_FAILED, "{what}");
        assert_eq!(out, [0u8; 64], "{what}: nothing released");
    }
    let mut iv = [9u8; 12];
    let mut t = tag.clone();
    let mut p = params(&mut iv, 0, CKG_NO_GENERATE, &mut t);
    let mut out = [0u8; 64];
    assert_eq!(raw.decrypt(&mut p, b"hdr", &ct, &mut out), (CKR_OK, 64));
    assert_eq!(out, pt);
    // Through cryptoki too.
    let mut iv = [9u8; 12];
    let mut bad = tag.clone();
    bad[15] ^= 0x80;
    let param =
        GcmMessageParams::new(&mut iv, 0.into(), GeneratorFunction::NoGenerate, &mut bad).unwrap();
    let e = s
        .decrypt_message(&MessageParam::AesGcmMessage(param), b"hdr", &ct)
        .unwrap_err();
    // cryptoki 0.12 has no name for PKCS#11 3.0's CKR_AEAD_DECRYPT_FAILED.
    assert_eq!(rv(e), RvError::UnknownErrorCode(CKR_AEAD_DECRYPT_FAILED));
}

/// Bad parameters get the specification's codes (see README, "The message
/// API"), and none of them ends the operation.
#[test]
fn bad_parameters_get_the_specs_codes() {
    let _t = TestToken::new();
    let p = ours();
    let s = user_session(&p, token_slot(&p));
    let key = known_dek(&s, false);
    let raw = Raw::new(&s);
    let mut out = [0u8; 16];

    // Before any init.
    let mut iv = [0u8; 12];
    let mut tag = [0u8; 16];
    let mut good = params(&mut iv, 0, CKG_GENERATE_COUNTER, &mut tag);
    assert_eq!(
        raw.encrypt(Some(&mut good), b"", b"x", &mut out).0,
        CKR_OPERATION_NOT_INITIALIZED
    );
    assert_eq!(raw.encrypt_final(), CKR_OPERATION_NOT_INITIALIZED);

    // The init's mechanism: AES-GCM, with no parameter or a message one.
    let init = |m: &mut CK_MECHANISM| unsafe {
        raw.l.C_MessageEncryptInit.unwrap()(raw.h, m, key.handle())
    };
    let mut cbc = CK_MECHANISM {
        mechanism: CKM_AES_CBC_PAD,
        ..gcm()
    };
    assert_eq!(init(&mut cbc), CKR_MECHANISM_INVALID);
    let mut gcm_params = [0u8; 40];
    let mut odd = CK_MECHANISM {
        pParameter: gcm_params.as_mut_ptr() as *mut c_void,
        ulParameterLen: 40,
        ..gcm()
    };
    assert_eq!(init(&mut odd), CKR_MECHANISM_PARAM_INVALID);
    assert_eq!(
        unsafe { raw.l.C_MessageEncryptInit.unwrap()(raw.h, null_mut(), key.handle()) },
        CKR_ARGUMENTS_BAD
    );
    let mut with_params = good;
    let mut m = CK_MECHANISM {
        pParameter: &mut with_params as *mut _ as *mut c_void,
        ulParameterLen: PARAMS_LEN,
        ..gcm()
    };
    assert_eq!(init(&mut m), CKR_OK);
    assert_eq!(raw.encrypt_init(key), CKR_OPERATION_ACTIVE);

    let size = PARAMS_LEN;
    let call = |p: *mut c_void, len: CK_ULONG, out: &mut [u8]| -> CK_RV {
        let mut n = out.len() as CK_ULONG;
        unsafe {
            raw.l.C_EncryptMessage.unwrap()(
                raw.h,
                p,
                len,
                null_mut(),
                0,
                b"x".as_ptr() as *mut u8,
                1,
                out.as_mut_ptr(),
                &mut n,
            )
        }
    };
    assert_eq!(
        call(null_mut(), size, &mut out),
        CKR_ARGUMENTS_BAD,
        "NULL parameter"
    );
    assert_eq!(
        call(&mut good as *mut _ as *mut c_void, size - 8, &mut out),
        CKR_ARGUMENTS_BAD,
        "short parameter"
    );
    let mut iv = [0u8; 12];
    let mut tag = [0u8; 16];
    let base = params(&mut iv, 0, CKG_GENERATE_COUNTER, &mut tag);
    for (what, mut p, want) in [
        (
            "NULL tag",
            CK_GCM_MESSAGE_PARAMS {
                pTag: null_mut(),
                ..base
            },
            CKR_ARGUMENTS_BAD,
        ),
        (
            "NULL IV",
            CK_GCM_MESSAGE_PARAMS {
                pIv: null_mut(),
                ..base
            },
            CKR_ARGUMENTS_BAD,
        ),
        (
            "IV length 0",
            CK_GCM_MESSAGE_PARAMS { ulIvLen: 0, ..base },
            CKR_MECHANISM_PARAM_INVALID,
        ),
        (
            "IV length 257",
            CK_GCM_MESSAGE_PARAMS {
                ulIvLen: 257,
                ..base
            },
            CKR_MECHANISM_PARAM_INVALID,
        ),
        (
            "fixed bits > IV bits",
            CK_GCM_MESSAGE_PARAMS {
                ulIvFixedBits: 97,
                ..base
            },
            CKR_MECHANISM_PARAM_INVALID,
        ),
        (
            "no room for the counter",
            CK_GCM_MESSAGE_PARAMS {
                ulIvFixedBits: 65,
                ..base
            },
            CKR_MECHANISM_PARAM_INVALID,
        ),
        (
            "random with fewer than 96 free bits",
            CK_GCM_MESSAGE_PARAMS {
                ivGenerator: CKG_GENERATE_RANDOM,
                ulIvFixedBits: 8,
                ..base
            },
            CKR_MECHANISM_PARAM_INVALID,
        ),
        (
            "unknown generator",
            CK_GCM_MESSAGE_PARAMS {
                ivGenerator: 77,
                ..base
            },
            CKR_MECHANISM_PARAM_INVALID,
        ),
        (
            "counter XOR",
            CK_GCM_MESSAGE_PARAMS {
                ivGenerator: CKG_GENERATE_COUNTER_XOR,
                ..base
            },
            CKR_MECHANISM_PARAM_INVALID,
        ),
        (
            "tag of 24 bits",
            CK_GCM_MESSAGE_PARAMS {
                ulTagBits: 24,
                ..base
            },
            CKR_MECHANISM_PARAM_INVALID,
        ),
        (
            "tag of 100 bits",
            CK_GCM_MESSAGE_PARAMS {
                ulTagBits: 100,
                ..base
            },
            CKR_MECHANISM_PARAM_INVALID,
        ),
        (
            "tag of 136 bits",
            CK_GCM_MESSAGE_PARAMS {
                ulTagBits: 136,
                ..base
            },
            CKR_MECHANISM_PARAM_INVALID,
        ),
    ] {
        assert_eq!(
            call(&mut p as *mut _ as *mut c_void, size, &mut out),
            want,
            "{what}"
        );
    }
    // NULL length pointer; NULL data with a length.
    let mut p = base;
    let rv = unsafe {
        raw.l.C_EncryptMessage.unwrap()(
            raw.h,
            &mut p as *mut _ as *mut c_void,
            size,
            null_mut(),
            0,
            b"x".as_ptr() as *mut u8,
            1,
            out.as_mut_ptr(),
            null_mut(),
        )
    };
    assert_eq!(rv, CKR_ARGUMENTS_BAD);
    let mut n: CK_ULONG = 16;
    let rv = unsafe {
        raw.l.C_EncryptMessage.unwrap()(
            raw.h,
            &mut p as *mut _ as *mut c_void,
            size,
            null_mut(),
            5,
            b"x".as_ptr() as *mut u8,
            1,
            out.as_mut_ptr(),
            &mut n,
        )
    };
    assert_eq!(rv, CKR_ARGUMENTS_BAD, "NULL associated data of 5 bytes");
    let rv = unsafe {
        raw.l.C_EncryptMessageNext.unwrap()(
            raw.h,
            &mut p as *mut _ as *mut c_void,
            size,
            null_mut(),
            0,
            out.as_mut_ptr(),
            &mut n,
            0x80,
        )
    };
    assert_eq!(rv, CKR_ARGUMENTS_BAD, "an unknown Next flag");
    let rv = unsafe {
        raw.l.C_EncryptMessageNext.unwrap()(
            raw.h,
            &mut p as *mut _ as *mut c_void,
            size,
            null_mut(),
            0,
            out.as_mut_ptr(),
            &mut n,
            0,
        )
    };
    assert_eq!(rv, CKR_OPERATION_NOT_INITIALIZED, "Next without Begin");

    // The operation is still there.
    let mut iv = [0u8; 12];
    let mut tag = [0u8; 16];
    let mut p = params(&mut iv, 0, CKG_GENERATE_COUNTER, &mut tag);
    assert_eq!(raw.encrypt(Some(&mut p), b"", b"x", &mut out), (CKR_OK, 1));
    assert_eq!(raw.encrypt_final(), CKR_OK);
}

/// A length query and a short buffer make nothing, count nothing and write
/// nothing but the length: the next message gets the next invocation.
#[test]
fn a_length_query_or_a_short_buffer_makes_no_iv() {
    let _t = TestToken::new();
    let p = ours();
    let s = user_session(&p, token_slot(&p));
    let key = known_dek(&s, false);
    let raw = Raw::new(&s);
    assert_eq!(raw.encrypt_init(key), CKR_OK);
    let count = |iv: &[u8; 12]| u32::from_be_bytes(iv[8..].try_into().unwrap());
    let mut iv = [0u8; 12];
    let mut tag = [0xEEu8; 16];
    let mut p = params(&mut iv, 0, CKG_GENERATE_COUNTER, &mut tag);
    let mut out = [0u8; 40];
    assert_eq!(
        raw.encrypt(Some(&mut p), b"", &[1; 40], &mut out),
        (CKR_OK, 40)
    );
    let first = count(&iv);
    // Query.
    let mut iv = [0u8; 12];
    let mut tag = [0xEEu8; 16];
    let mut p = params(&mut iv, 0, CKG_GENERATE_COUNTER, &mut tag);
    let mut n: CK_ULONG = 0;
    let rv = unsafe {
        raw.l.C_EncryptMessage.unwrap()(
            raw.h,
            &mut p as *mut _ as *mut c_void,
            PARAMS_LEN,
            null_mut(),
            0,
            [1u8; 40].as_ptr() as *mut u8,
            40,
            null_mut(),
            &mut n,
        )
    };
    assert_eq!((rv, n), (CKR_OK, 40));
    // Short buffer.
    let mut short = [0u8; 39];
    assert_eq!(
        raw.encrypt(Some(&mut p), b"", &[1; 40], &mut short),
        (CKR_BUFFER_TOO_SMALL, 40)
    );
    assert_eq!(short, [0u8; 39]);
    assert_eq!((iv, tag), ([0u8; 12], [0xEE; 16]), "nothing written back");
    let mut p = params(&mut iv, 0, CKG_GENERATE_COUNTER, &mut tag);
    assert_eq!(
        raw.encrypt(Some(&mut p), b"", &[1; 40], &mut out),
        (CKR_OK, 40)
    );
    assert_eq!(count(&iv), first + 1);
}

/// Begin/Next give the same ciphertext and tag as one call; a message
/// decrypted in parts is released only at its last part, after the tag
/// check; a message's parts may be of any size, empty ones included.
/// (The FIPS build holds encryption to the last part and takes full tags
/// only: `fips_mode::the_fips_build_holds_multi_part_gcm_encryption...`.)
#[cfg(not(feature = "fips"))]
#[test]
fn multi_part_messages_match_single_part_ones() {
    let _t = TestToken::new();
    let p = ours();
    let s = user_session(&p, token_slot(&p));
    let key = known_dek(&s, false);
    let raw = Raw::new(&s);
    let l = raw.l;
    let pt: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
    assert_eq!(raw.encrypt_init(key), CKR_OK);
    assert_eq!(raw.decrypt_init(key), CKR_OK);
    for (tag_len, chunks) in [
        (16usize, vec![0usize, 1, 15, 16, 400]),
        (12, vec![999]),
        (16, vec![]),
    ] {
        let mut iv = [0u8; 12];
        let mut tag = vec![0u8; tag_len];
        let mut p = params(&mut iv, 0, CKG_GENERATE_COUNTER, &mut tag);
        let pp = &mut p as *mut _ as *mut c_void;
        assert_eq!(
            unsafe {
                l.C_EncryptMessageBegin.unwrap()(
                    raw.h,
                    pp,
                    PARAMS_LEN,
                    b"ad".as_ptr() as *mut u8,
                    2,
                )
            },
            CKR_OK
        );
        assert_eq!(
            unsafe { l.C_EncryptMessageBegin.unwrap()(raw.h, pp, PARAMS_LEN, null_mut(), 0) },
            CKR_OPERATION_ACTIVE
        );
        let mut ct = Vec::new();
        let mut rest = &pt[..];
        let mut parts: Vec<&[u8]> = Vec::new();
        for c in &chunks {
            let (now, later) = rest.split_at(*c);
            parts.push(now);
            rest = later;
        }
        parts.push(rest);
        for (i, part) in parts.iter().enumerate() {
            let last = i + 1 == parts.len();
            let mut out = vec![0u8; part.len()];
            let mut n = out.len() as CK_ULONG;
            let rv = unsafe {
                l.C_EncryptMessageNext.unwrap()(
                    raw.h,
                    pp,
                    PARAMS_LEN,
                    part.as_ptr() as *mut u8,
                    part.len() as CK_ULONG,
                    out.as_mut_ptr(),
                    &mut n,
                    if last { CKF_END_OF_MESSAGE } else { 0 },
                )
            };
            assert_eq!((rv, n as usize), (CKR_OK, part.len()));
            ct.extend_from_slice(&out);
        }
        let (want_ct, want_tag) = reference_seal(&iv, b"ad", &pt);
        assert_eq!(ct, want_ct);
        assert_eq!(tag, want_tag[..tag_len]);

        // Decrypt in parts.
        let mut p = params(&mut iv, 0, CKG_NO_GENERATE, &mut tag);
        let pp = &mut p as *mut _ as *mut c_void;
        assert_eq!(
            unsafe {
                l.C_DecryptMessageBegin.unwrap()(
                    raw.h,
                    pp,
                    PARAMS_LEN,
                    b"ad".as_ptr() as *mut u8,
                    2,
                )
            },
            CKR_OK
        );
        let (a, b) = ct.split_at(ct.len() / 2);
        let mut out = vec![0u8; ct.len()];
        let mut n = out.len() as CK_ULONG;
        let rv = unsafe {
            l.C_DecryptMessageNext.unwrap()(
                raw.h,
                pp,
                PARAMS_LEN,
                a.as_ptr() as *mut u8,
                a.len() as CK_ULONG,
                out.as_mut_ptr(),
                &mut n,
                0,
            )
        };
        assert_eq!((rv, n), (CKR_OK, 0), "nothing before the tag is checked");
        let mut n: CK_ULONG = 0;
        let rv = unsafe {
            l.C_DecryptMessageNext.unwrap()(
                raw.h,
                pp,
                PARAMS_LEN,
                b.as_ptr() as *mut u8,
                b.len() as CK_ULONG,
                null_mut(),
                &mut n,
                CKF_END_OF_MESSAGE,
            )
        };
        assert_eq!(
            (rv, n as usize),
            (CKR_OK, ct.len()),
            "length query of the last part"
        );
        let mut n = out.len() as CK_ULONG;
        let rv = unsafe {
            l.C_DecryptMessageNext.unwrap()(
                raw.h,
                pp,
                PARAMS_LEN,
                b.as_ptr() as *mut u8,
                b.len() as CK_ULONG,
                out.as_mut_ptr(),
                &mut n,
                CKF_END_OF_MESSAGE,
            )
        };
        assert_eq!((rv, n as usize), (CKR_OK, pt.len()));
        assert_eq!(out, pt);
    }
    // A bad tag at the last part: nothing released; the operation stays.
    let mut iv = [3u8; 12];
    let (ct, mut tag) = reference_seal(&iv, b"", &pt);
    tag[0] ^= 1;
    let mut p = params(&mut iv, 0, CKG_NO_GENERATE, &mut tag);
    let pp = &mut p as *mut _ as *mut c_void;
    assert_eq!(
        unsafe { l.C_DecryptMessageBegin.unwrap()(raw.h, pp, PARAMS_LEN, null_mut(), 0) },
        CKR_OK
    );
    let mut out = vec![0u8; ct.len()];
    let mut n = out.len() as CK_ULONG;
    let rv = unsafe {
        l.C_DecryptMessageNext.unwrap()(
            raw.h,
            pp,
            PARAMS_LEN,
            ct.as_ptr() as *mut u8,
            ct.len() as CK_ULONG,
            out.as_mut_ptr(),
            &mut n,
            CKF_END_OF_MESSAGE,
        )
    };
    assert_eq!(rv, CKR_AEAD_DECRYPT_FAILED);
    assert!(out.iter().all(|b| *b == 0));
    assert_eq!(raw.decrypt_final(), CKR_OK);
    assert_eq!(raw.encrypt_final(), CKR_OK);
}

/// The same buffer for input and output (PKCS#11 allows it): single-part
/// messages run in place, parts of a multi-part one too.
#[test]
fn in_place_buffers_work() {
    let _t = TestToken::new();
    let p = ours();
    let s = user_session(&p, token_slot(&p));
    let key = known_dek(&s, false);
    let raw = Raw::new(&s);
    let l = raw.l;
    assert_eq!(raw.encrypt_init(key), CKR_OK);
    assert_eq!(raw.decrypt_init(key), CKR_OK);
    let pt = [0x61u8; 100];
    let mut buf = pt;
    let mut iv = [0u8; 12];
    let mut tag = [0u8; 16];
    let mut p = params(&mut iv, 0, CKG_GENERATE_COUNTER, &mut tag);
    let done = raw.in_place(Direction::Encrypt, &mut p, &mut buf, 100);
    assert_eq!(done, (CKR_OK, 100));
    assert_eq!(reference_open(&KEY, &iv, b"", &buf, &tag).unwrap(), pt);
    // A buffer declared too short for the message, in place.
    let done = raw.in_place(Direction::Encrypt, &mut p, &mut buf, 99);
    assert_eq!(done, (CKR_BUFFER_TOO_SMALL, 100));
    let mut p = params(&mut iv, 0, CKG_NO_GENERATE, &mut tag);
    let done = raw.in_place(Direction::Decrypt, &mut p, &mut buf, 100);
    assert_eq!(done, (CKR_OK, 100));
    assert_eq!(buf, pt);
    // A part in place.
    let mut iv = [0u8; 12];
    let mut p = params(&mut iv, 0, CKG_GENERATE_COUNTER, &mut tag);
    let pp = &mut p as *mut _ as *mut c_void;
    assert_eq!(
        unsafe { l.C_EncryptMessageBegin.unwrap()(raw.h, pp, PARAMS_LEN, null_mut(), 0) },
        CKR_OK
    );
    let mut n = buf.len() as CK_ULONG;
    let rv = unsafe {
        l.C_EncryptMessageNext.unwrap()(
            raw.h,
            pp,
            PARAMS_LEN,
            buf.as_mut_ptr(),
            100,
            buf.as_mut_ptr(),
            &mut n,
            CKF_END_OF_MESSAGE,
        )
    };
    assert_eq!((rv, n), (CKR_OK, 100));
    assert_eq!(reference_open(&KEY, &iv, b"", &buf, &tag).unwrap(), pt);
}

/// The init checks the key as C_EncryptInit does: a key without
/// CKA_ENCRYPT, a handle of nothing, the KEK.
#[test]
fn the_init_checks_the_key() {
    let _t = TestToken::new();
    let p = ours();
    let s = user_session(&p, token_slot(&p));
    let raw = Raw::new(&s);
    let no_encrypt = import(&s, &KEY, false, vec![Attribute::Encrypt(false)]);
    assert_eq!(raw.encrypt_init(no_encrypt), CKR_KEY_FUNCTION_NOT_PERMITTED);
    assert_eq!(raw.decrypt_init(no_encrypt), CKR_OK);
    assert_eq!(raw.decrypt_final(), CKR_OK);
    let mut m = gcm();
    let rv = unsafe { raw.l.C_MessageEncryptInit.unwrap()(raw.h, &mut m, 987_654) };
    assert_eq!(rv, CKR_KEY_HANDLE_INVALID);
    let kek = s
        .find_objects(&[Attribute::Label(KEK_LABEL.as_bytes().to_vec())])
        .unwrap();
    assert_eq!(raw.encrypt_init(kek[0]), CKR_KEY_FUNCTION_NOT_PERMITTED);
    let _ = AttributeType::Label;
}

/// A DEK destroyed while a message operation uses it: the next message
/// fails as a new init would, and the operation can be finished.
#[test]
fn a_destroyed_dek_ends_its_messages() {
    let _t = TestToken::new();
    let p = ours();
    let s = user_session(&p, token_slot(&p));
    let key = known_dek(&s, true);
    let raw = Raw::new(&s);
    assert_eq!(raw.encrypt_init(key), CKR_OK);
    let mut iv = [0u8; 12];
    let mut tag = [0u8; 16];
    let mut p = params(&mut iv, 0, CKG_GENERATE_COUNTER, &mut tag);
    let mut out = [0u8; 4];
    assert_eq!(
        raw.encrypt(Some(&mut p), b"", b"abcd", &mut out),
        (CKR_OK, 4)
    );
    s.destroy_object(key).unwrap();
    assert_eq!(
        raw.encrypt(Some(&mut p), b"", b"abcd", &mut out).0,
        CKR_KEY_HANDLE_INVALID
    );
    assert_eq!(raw.encrypt_final(), CKR_OK);
}

/// C_SessionCancel with CKF_MESSAGE_ENCRYPT / CKF_MESSAGE_DECRYPT ends the
/// message operations; a logout ends them too.
#[test]
fn session_cancel_and_logout_end_message_operations() {
    let _t = TestToken::new();
    let p = ours();
    let s = user_session(&p, token_slot(&p));
    let key = known_dek(&s, true);
    let raw = Raw::new(&s);
    let cancel = raw.l.C_SessionCancel.unwrap();
    assert_eq!(raw.encrypt_init(key), CKR_OK);
    assert_eq!(raw.decrypt_init(key), CKR_OK);
    assert_eq!(unsafe { cancel(raw.h, CKF_MESSAGE_ENCRYPT) }, CKR_OK);
    assert_eq!(raw.encrypt_final(), CKR_OPERATION_NOT_INITIALIZED);
    assert_eq!(unsafe { cancel(raw.h, CKF_MESSAGE_DECRYPT) }, CKR_OK);
    assert_eq!(raw.decrypt_final(), CKR_OPERATION_NOT_INITIALIZED);
    assert_eq!(raw.encrypt_init(key), CKR_OK);
    s.logout().unwrap();
    assert_eq!(raw.encrypt_final(), CKR_OPERATION_NOT_INITIALIZED);
}

/// The DEK slot says CKM_AES_GCM takes the message functions.
#[test]
fn aes_gcm_is_listed_for_the_message_functions() {
    let _t = TestToken::new();
    let p = ours();
    let slot = token_slot(&p);
    let info = p
        .get_mechanism_info(slot, cryptoki::mechanism::MechanismType::AES_GCM)
        .unwrap();
    assert!(info.message_encrypt(), "{info:?}");
    assert!(info.message_decrypt(), "{info:?}");
    assert!(info.multi_message(), "{info:?}");
    assert!(info.encrypt() && info.decrypt(), "{info:?}");
}

/// Message functions on a backend key go to the backend unchanged: SoftHSM2
/// 2.6 has no 3.0 interface, so the init answers what it would answer,
/// CKR_FUNCTION_NOT_SUPPORTED, and nothing stays active.
#[test]
fn message_functions_on_a_backend_key_are_forwarded() {
    let _t = TestToken::new();
    let p = ours();
    let s = user_session(&p, token_slot(&p));
    let backend_key = s
        .generate_key(
            &Mechanism::AesKeyGen,
            &aes_template(
                false,
                vec![
                    Attribute::VendorDefined((AttributeType::VendorDefined(0xC845_0002), vec![1])),
                    Attribute::ValueLen(32.into()),
                    Attribute::Encrypt(true),
                    Attribute::Decrypt(true),
                ],
            ),
        )
        .unwrap();
    let raw = Raw::new(&s);
    assert_eq!(raw.encrypt_init(backend_key), CKR_FUNCTION_NOT_SUPPORTED);
    assert_eq!(raw.encrypt_final(), CKR_OPERATION_NOT_INITIALIZED);
    // A mechanism the module does not run on DEKs is the backend's to judge.
    let mut ccm = CK_MECHANISM {
        mechanism: CKM_AES_CCM,
        ..gcm()
    };
    let rv = unsafe { raw.l.C_MessageEncryptInit.unwrap()(raw.h, &mut ccm, backend_key.handle()) };
    assert_eq!(rv, CKR_FUNCTION_NOT_SUPPORTED);
}

/// On a 3.0 backend (the fault-injecting module's stand-in, which runs
/// single-part message AES-GCM with the caller's IV), message functions on
/// a backend key reach it with their parameters unchanged: its ciphertext
/// and tag are the reference's, a generator it does not take is its own
/// refusal, and C_SessionCancel and the final calls end its operations.
#[test]
fn message_functions_on_a_backend_key_reach_a_3_0_backend_unchanged() {
    let t = TestToken::new();
    std::env::set_var("FAULTY_BACKEND_TARGET", softhsm_module_path());
    std::env::set_var("FAULTY_BACKEND_FLAG", t.path().join("never-down"));
    std::env::set_var("FAULTY_BACKEND_V3", "1");
    let conf = t.config_text().replace(
        &format!("backend_module = \"{}\"", softhsm_module_path().display()),
        &format!("backend_module = \"{}\"", faulty_backend_path().display()),
    );
    assert!(conf.contains("libfaulty_backend.so"), "{conf}");
    std::fs::write(&t.conf, conf).unwrap();

    let p = ours();
    let s = user_session(&p, token_slot(&p));
    let backend_key = s
        .create_object(&aes_template(
            false,
            vec![
                Attribute::VendorDefined((AttributeType::VendorDefined(0xC845_0002), vec![1])),
                Attribute::Value(KEY.to_vec()),
                Attribute::Encrypt(true),
                Attribute::Decrypt(true),
            ],
        ))
        .unwrap();
    let raw = Raw::new(&s);
    assert_eq!(raw.encrypt_init(backend_key), CKR_OK);
    assert_eq!(raw.encrypt_init(backend_key), CKR_OPERATION_ACTIVE);
    let pt = b"forwarded to the HSM";
    let mut iv = [7u8; 12];
    let mut tag = [0u8; 16];
    let mut prm = params(&mut iv, 0, CKG_NO_GENERATE, &mut tag);
    let mut ct = [0u8; 20];
    assert_eq!(
        raw.encrypt(Some(&mut prm), b"aad", pt, &mut ct),
        (CKR_OK, 20)
    );
    let (want_ct, want_tag) = reference_seal(&[7; 12], b"aad", pt);
    assert_eq!((ct.to_vec(), tag.to_vec()), (want_ct, want_tag));
    // The backend's own answer to what it does not take.
    let mut prm = params(&mut iv, 0, CKG_GENERATE_COUNTER, &mut tag);
    assert_eq!(
        raw.encrypt(Some(&mut prm), b"", pt, &mut ct).0,
        CKR_MECHANISM_PARAM_INVALID
    );

    assert_eq!(raw.decrypt_init(backend_key), CKR_OK);
    let mut prm = params(&mut iv, 0, CKG_NO_GENERATE, &mut tag);
    let mut back = [0u8; 20];
    assert_eq!(raw.decrypt(&mut prm, b"aad", &ct, &mut back), (CKR_OK, 20));
    assert_eq!(&back, pt);
    assert_eq!(raw.decrypt_final(), CKR_OK);
    assert_eq!(raw.decrypt_final(), CKR_OPERATION_NOT_INITIALIZED);

    // C_SessionCancel reaches the backend's operation.
    let cancel = raw.l.C_SessionCancel.unwrap();
    assert_eq!(unsafe { cancel(raw.h, CKF_MESSAGE_ENCRYPT) }, CKR_OK);
    let mut prm = params(&mut iv, 0, CKG_NO_GENERATE, &mut tag);
    assert_eq!(
        raw.encrypt(Some(&mut prm), b"", pt, &mut ct).0,
        CKR_OPERATION_NOT_INITIALIZED
    );
    assert_eq!(
        raw.encrypt_init(backend_key),
        CKR_OK,
        "a new one after the cancel"
    );
    assert_eq!(raw.encrypt_final(), CKR_OK);
    // DEKs still run here, on the same session.
    let dek = known_dek(&s, false);
    assert_eq!(raw.encrypt_init(dek), CKR_OK);
    let mut prm = params(&mut iv, 0, CKG_GENERATE_COUNTER, &mut tag);
    assert_eq!(raw.encrypt(Some(&mut prm), b"", pt, &mut ct), (CKR_OK, 20));
    assert_eq!(reference_open(&KEY, &iv, b"", &ct, &tag).unwrap(), pt);
}

/// `gcm_iv = "module"`: AES-GCM encryption under a DEK with the caller's IV
/// is refused on both paths (C_EncryptInit with CK_GCM_PARAMS, message
/// encryption with CKG_NO_GENERATE) with CKR_MECHANISM_PARAM_INVALID and a
/// log line; module-made IVs work; decryption takes the caller's IV on both
/// paths; other mechanisms and backend keys are not affected.
#[test]
fn gcm_iv_module_refuses_caller_ivs_on_both_paths() {
    let t = TestToken::with_extra_config("gcm_iv = \"module\"\n");
    let p = ours();
    let s = user_session(&p, token_slot(&p));
    let key = known_dek(&s, true);
    let (ct, tag) = reference_seal(&[1; 12], b"a", b"legacy");

    let e = gcm_encrypt(&s, key, &[1; 12], b"a", b"legacy").unwrap_err();
    assert_eq!(rv(e), RvError::MechanismParamInvalid);
    let joined = [ct.clone(), tag.clone()].concat();
    assert_eq!(
        gcm_decrypt(&s, key, &[1; 12], b"a", &joined).unwrap(),
        b"legacy"
    );
    // Twice: the warm path (a remembered key) is held to it too.
    let e = gcm_encrypt(&s, key, &[1; 12], b"a", b"legacy").unwrap_err();
    assert_eq!(rv(e), RvError::MechanismParamInvalid);
    s.encrypt(
        &Mechanism::AesCbcPad([0; 16]),
        key,
        b"other modes are not GCM",
    )
    .unwrap();

    let raw = Raw::new(&s);
    assert_eq!(raw.encrypt_init(key), CKR_OK);
    let mut iv = [1u8; 12];
    let mut t16 = [0u8; 16];
    let mut prm = params(&mut iv, 0, CKG_NO_GENERATE, &mut t16);
    let mut out = [0u8; 6];
    assert_eq!(
        raw.encrypt(Some(&mut prm), b"a", b"legacy", &mut out).0,
        CKR_MECHANISM_PARAM_INVALID
    );
    let pp = &mut prm as *mut _ as *mut c_void;
    let rv = unsafe { raw.l.C_EncryptMessageBegin.unwrap()(raw.h, pp, PARAMS_LEN, null_mut(), 0) };
    assert_eq!(rv, CKR_MECHANISM_PARAM_INVALID);
    let mut prm = params(&mut iv, 32, CKG_GENERATE_COUNTER, &mut t16);
    assert_eq!(
        raw.encrypt(Some(&mut prm), b"a", b"legacy", &mut out),
        (CKR_OK, 6)
    );
    assert_eq!(
        reference_open(&KEY, &iv, b"a", &out, &t16).unwrap(),
        b"legacy"
    );

    assert_eq!(raw.decrypt_init(key), CKR_OK);
    let mut iv = [1u8; 12];
    let mut t16: [u8; 16] = tag.clone().try_into().unwrap();
    let mut prm = params(&mut iv, 0, CKG_NO_GENERATE, &mut t16);
    let mut back = [0u8; 6];
    assert_eq!(raw.decrypt(&mut prm, b"a", &ct, &mut back), (CKR_OK, 6));
    assert_eq!(&back, b"legacy");

    let log = std::fs::read_to_string(t.log_file()).unwrap();
    assert!(
        log.contains("C_EncryptInit") && log.contains("gcm_iv = \"module\""),
        "{log}"
    );
    assert!(log.contains("C_EncryptMessage"), "{log}");
}
