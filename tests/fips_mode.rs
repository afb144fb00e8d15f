//! FIPS mode (issue 15). In the FIPS build (`--features fips`): the module
//! refuses what AWS-LC's FIPS module API cannot do rather than doing it
//! elsewhere, and `fips_mode = true` makes it approved-only: the mechanism
//! list, C_GetInfo, C_GetTokenInfo and `status` say so, AES-GCM encryption
//! runs under IVs the FIPS module draws itself (checked against RustCrypto's
//! `aes-gcm` as an independent reference), and sizes and parameters outside
//! the approved ranges are refused. In other builds `fips_mode = true`
//! stops C_Initialize and `status` reports FIPS off.
//!
//! Each test makes its own token and runs in its own process
//! (`cargo nextest run [--features fips] --test fips_mode`).

mod common;

use common::cli::*;
use common::*;

#[cfg(not(feature = "fips"))]
mod other_builds {
    use super::*;
    use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
    use cryptoki::error::{Error, RvError};

    #[test]
    fn fips_mode_stops_c_initialize_outside_the_fips_build() {
        let t = TestToken::with_extra_config("fips_mode = true\n");
        let p = Pkcs11::new(module_path()).unwrap();
        let r = p.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK));
        assert!(
            matches!(r, Err(Error::Pkcs11(RvError::GeneralError, _))),
            "{r:?}"
        );
        // The admin tool reads the same file and says why.
        let o = cli(&t, &["status"]);
        assert_ne!(code(&o), 0, "{}", show(&o));
        assert!(
            stderr(&o).contains("fips_mode = true needs the FIPS build"),
            "{}",
            show(&o)
        );
    }

    #[test]
    fn status_says_fips_is_off() {
        let t = TestToken::new();
        let doc = ok_json(&t, &["status"]);
        assert_eq!(doc["fips"], false, "{doc:#}");
        assert_eq!(doc["fips_build"], false);
        assert_eq!(doc["fips_mode"], false);
        assert_eq!(doc["aes_module_fips_mode"], false);
        let out = ok(&t, &["status"]);
        assert!(out.contains("fips             off: "), "{out}");
    }
}

#[cfg(feature = "fips")]
mod fips_build {
    use std::ffi::c_void;
    use std::ptr::null_mut;

    use super::*;
    use aes_gcm::aead::{AeadInOut, KeyInit};
    use common::p11::*;
    use cryptoki::error::RvError;
    use cryptoki::mechanism::aead::GcmParams;
    use cryptoki::mechanism::{Mechanism, MechanismType};
    use cryptoki::object::{Attribute, ObjectHandle};
    use cryptoki::session::Session;
    use cryptoki_sys::*;

    const KEY: [u8; 32] = [0x42; 32];

    fn reference_open(iv: &[u8], aad: &[u8], ct: &[u8], tag: &[u8]) -> Option<Vec<u8>> {
        let c = aes_gcm::Aes256Gcm::new_from_slice(&KEY).unwrap();
        let mut buf = ct.to_vec();
        c.decrypt_inout_detached(
            iv.try_into().ok()?,
            aad,
            buf.as_mut_slice().into(),
            tag.try_into().ok()?,
        )
        .ok()?;
        Some(buf)
    }

    /// C_MessageEncryptInit, then C_EncryptMessage of "hello" with a generator.
    fn encrypt_message(
        s: &Session,
        key: ObjectHandle,
        generator: CK_ULONG,
        iv: &mut [u8],
        fixed_bits: CK_ULONG,
        tag: &mut [u8],
        out: &mut [u8],
    ) -> CK_RV {
        let pt = b"hello";
        let l = raw_list_3_0();
        let mut m = CK_MECHANISM {
            mechanism: CKM_AES_GCM,
            pParameter: null_mut(),
            ulParameterLen: 0,
        };
        let mut p = CK_GCM_MESSAGE_PARAMS {
            pIv: iv.as_mut_ptr(),
            ulIvLen: iv.len() as CK_ULONG,
            ulIvFixedBits: fixed_bits,
            ivGenerator: generator,
            pTag: tag.as_mut_ptr(),
            ulTagBits: (tag.len() * 8) as CK_ULONG,
        };
        let mut n = out.len() as CK_ULONG;
        // SAFETY: every pointer is to a live buffer of the length passed.
        unsafe {
            let rv = l.C_MessageEncryptInit.unwrap()(s.handle(), &mut m, key.handle());
            if rv != CKR_OK {
                return rv;
            }
            let rv = l.C_EncryptMessage.unwrap()(
                s.handle(),
                &mut p as *mut _ as *mut c_void,
                size_of::<CK_GCM_MESSAGE_PARAMS>() as CK_ULONG,
                b"aad".as_ptr() as *mut u8,
                3,
                pt.as_ptr() as *mut u8,
                pt.len() as CK_ULONG,
                out.as_mut_ptr(),
                &mut n,
            );
            l.C_MessageEncryptFinal.unwrap()(s.handle());
            rv
        }
    }

    /// C_SignInit with CKM_AES_CMAC_GENERAL and a `mac_len`-byte MAC.
    fn cmac_general_init(s: &Session, key: ObjectHandle, mac_len: CK_ULONG) -> CK_RV {
        let mut n = mac_len;
        let mut mech = CK_MECHANISM {
            mechanism: CKM_AES_CMAC_GENERAL,
            pParameter: &mut n as *mut _ as *mut c_void,
            ulParameterLen: size_of::<CK_ULONG>() as CK_ULONG,
        };
        // SAFETY: the mechanism and its parameter live across the call.
        unsafe { raw_list().C_SignInit.unwrap()(s.handle(), &mut mech, key.handle()) }
    }

    /// AES-CTR (32-bit counter) over `data` through the raw list, either way.
    fn ctr(s: &Session, key: ObjectHandle, encrypt: bool, data: &[u8]) -> Vec<u8> {
        let l = raw_list();
        let mut p = CK_AES_CTR_PARAMS {
            ulCounterBits: 32,
            cb: [9; 16],
        };
        let mut mech = CK_MECHANISM {
            mechanism: CKM_AES_CTR,
            pParameter: &mut p as *mut _ as *mut c_void,
            ulParameterLen: size_of::<CK_AES_CTR_PARAMS>() as CK_ULONG,
        };
        let mut out = vec![0u8; data.len()];
        let mut n = out.len() as CK_ULONG;
        let mut input = data.to_vec();
        // SAFETY: every pointer is to a live buffer of the length passed.
        unsafe {
            let (init, run) = if encrypt {
                (l.C_EncryptInit.unwrap(), l.C_Encrypt.unwrap())
            } else {
                (l.C_DecryptInit.unwrap(), l.C_Decrypt.unwrap())
            };
            assert_eq!(init(s.handle(), &mut mech, key.handle()), CKR_OK);
            let rv = run(
                s.handle(),
                input.as_mut_ptr(),
                input.len() as CK_ULONG,
                out.as_mut_ptr(),
                &mut n,
            );
            assert_eq!(rv, CKR_OK);
        }
        out.truncate(n as usize);
        out
    }

    /// C_GetMechanismList through the raw list (cryptoki drops the types it
    /// does not know, MD5 among them).
    fn mechanism_list(slot: CK_SLOT_ID) -> Vec<CK_MECHANISM_TYPE> {
        let l = raw_list();
        let mut n: CK_ULONG = 0;
        let mut list = vec![0; 512];
        // SAFETY: a count query, then a buffer of the count's length.
        unsafe {
            assert_eq!(
                l.C_GetMechanismList.unwrap()(slot, null_mut(), &mut n),
                CKR_OK
            );
            list.resize(n as usize, 0);
            assert_eq!(
                l.C_GetMechanismList.unwrap()(slot, list.as_mut_ptr(), &mut n),
                CKR_OK
            );
        }
        list.truncate(n as usize);
        list
    }

    fn approved_session(t_extra: &str) -> (TestToken, cryptoki::context::Pkcs11, Session) {
        let t = TestToken::with_extra_config(t_extra);
        let p = ours();
        let s = user_session(&p, token_slot(&p));
        (t, p, s)
    }

    #[test]
    fn approved_only_says_fips_and_lists_only_approved_mechanisms() {
        let (t, p, _s) = approved_session("fips_mode = true\n");
        let info = p.get_library_info().unwrap();
        assert_eq!(
            info.library_description(),
            "hsm-envelope KEK/DEK module FIPS"
        );
        let slot = token_slot(&p);
        assert_eq!(p.get_token_info(slot).unwrap().model(), "envelope FIPS");
        let list = mechanism_list(slot.id());
        for gone in [
            CKM_AES_ECB_ENCRYPT_DATA,
            CKM_AES_CBC_ENCRYPT_DATA,
            CKM_MD5,
            CKM_DES_ECB,
        ] {
            assert!(!list.contains(&gone), "{gone:#x} listed");
        }
        for kept in [
            CKM_AES_GCM,
            CKM_AES_CBC_PAD,
            CKM_AES_CTR,
            CKM_AES_CMAC,
            CKM_AES_KEY_WRAP_KWP,
        ] {
            assert!(list.contains(&kept), "{kept:#x} not listed");
        }
        let gcm = p.get_mechanism_info(slot, MechanismType::AES_GCM).unwrap();
        // (CKF_ENCRYPT stays when the HSM has it: backend keys are the HSM's.)
        assert!(gcm.decrypt() && gcm.message_encrypt(), "{gcm:?}");
        let mut info = CK_MECHANISM_INFO {
            ulMinKeySize: 0,
            ulMaxKeySize: 0,
            flags: 0,
        };
        // SAFETY: `info` lives across the call.
        let rv_md5 =
            unsafe { raw_list().C_GetMechanismInfo.unwrap()(slot.id(), CKM_MD5, &mut info) };
        assert_eq!(rv_md5, CKR_MECHANISM_INVALID);

        let doc = ok_json(&t, &["status"]);
        assert_eq!(doc["fips"], true, "{doc:#}");
        assert_eq!(doc["fips_build"], true);
        assert_eq!(doc["aes_module_fips_mode"], true);
        assert!(
            doc["aes_module"]
                .as_str()
                .unwrap()
                .starts_with("AWS-LC FIPS "),
            "{doc:#}"
        );
        let out = ok(&t, &["status"]);
        assert!(out.contains("fips             on: AWS-LC FIPS "), "{out}");
        let log = std::fs::read_to_string(t.log_file()).unwrap();
        assert!(
            log.contains("FIPS mode, self-tests passed; fips_mode = true"),
            "{log}"
        );
    }

    #[test]
    fn approved_only_gcm_encrypts_under_ivs_the_fips_module_draws() {
        let (t, _p, s) = approved_session("fips_mode = true\n");
        let key = import(&s, &KEY, true, vec![]);
        // The caller's IV: refused on both paths.
        let e = gcm_encrypt(&s, key, &[1; 12], b"aad", b"data").unwrap_err();
        assert_eq!(rv(e), RvError::MechanismParamInvalid);
        let (mut tag, mut out) = ([0u8; 16], [0u8; 5]);
        let mut iv = [0u8; 12];
        let rv_caller = encrypt_message(&s, key, CKG_NO_GENERATE, &mut iv, 0, &mut tag, &mut out);
        assert_eq!(rv_caller, CKR_MECHANISM_PARAM_INVALID);
        // This module's counter IVs and fixed fields: not drawn by the FIPS module.
        let rv_counter = encrypt_message(
            &s,
            key,
            CKG_GENERATE_COUNTER,
            &mut iv,
            0,
            &mut tag,
            &mut out,
        );
        assert_eq!(rv_counter, CKR_MECHANISM_PARAM_INVALID);
        let rv_fixed = encrypt_message(
            &s,
            key,
            CKG_GENERATE_RANDOM,
            &mut [0; 16],
            32,
            &mut tag,
            &mut out,
        );
        assert_eq!(rv_fixed, CKR_MECHANISM_PARAM_INVALID);
        let rv_short_tag = encrypt_message(
            &s,
            key,
            CKG_GENERATE_RANDOM,
            &mut iv,
            0,
            &mut [0; 12],
            &mut out,
        );
        assert_eq!(rv_short_tag, CKR_MECHANISM_PARAM_INVALID);
        // CKG_GENERATE_RANDOM, 96 bits: the FIPS module's own IV, written back.
        let mut seen = Vec::new();
        for _ in 0..3 {
            let mut iv = [0u8; 12];
            let rv_ok =
                encrypt_message(&s, key, CKG_GENERATE_RANDOM, &mut iv, 0, &mut tag, &mut out);
            assert_eq!(rv_ok, CKR_OK);
            assert_ne!(iv, [0; 12]);
            assert!(!seen.contains(&iv), "an IV came twice");
            seen.push(iv);
            assert_eq!(reference_open(&iv, b"aad", &out, &tag).unwrap(), b"hello");
            // Decryption takes the caller's IV (C_DecryptInit here).
            let joined = [out.to_vec(), tag.to_vec()].concat();
            assert_eq!(
                gcm_decrypt(&s, key, &iv, b"aad", &joined).unwrap(),
                b"hello"
            );
        }
        let log = std::fs::read_to_string(t.log_file()).unwrap();
        assert!(log.contains("refused by fips_mode = true"), "{log}");
    }

    #[test]
    fn approved_only_refuses_sizes_and_mechanisms_outside_the_approved_ranges() {
        let (_t, _p, s) = approved_session("fips_mode = true\n");
        let k192 = import(
            &s,
            &[7; 24],
            true,
            vec![Attribute::Sign(true), Attribute::Verify(true)],
        );
        let joined = [0u8; 32];
        let e = gcm_decrypt(&s, k192, &[1; 12], b"", &joined).unwrap_err();
        assert_eq!(rv(e), RvError::KeySizeRange);
        let e = s.sign(&Mechanism::AesCMac, k192, b"data").unwrap_err();
        assert_eq!(rv(e), RvError::KeySizeRange);
        // AES-192 in the block modes is approved.
        let ct = s
            .encrypt(&Mechanism::AesCbcPad([3; 16]), k192, b"block modes")
            .unwrap();
        assert_eq!(
            s.decrypt(&Mechanism::AesCbcPad([3; 16]), k192, &ct)
                .unwrap(),
            b"block modes"
        );

        let k256 = import(
            &s,
            &KEY,
            true,
            vec![
                Attribute::Sign(true),
                Attribute::Verify(true),
                Attribute::Derive(true),
            ],
        );
        let mac = s.sign(&Mechanism::AesCMac, k256, b"data").unwrap();
        assert_eq!(mac.len(), 16);
        assert_eq!(cmac_general_init(&s, k256, 4), CKR_MECHANISM_PARAM_INVALID);
        assert_eq!(cmac_general_init(&s, k256, 8), CKR_OK);
        let (mut out, mut n, mut msg) = ([0u8; 16], 16 as CK_ULONG, *b"data");
        // SAFETY: live buffers of the lengths passed.
        let rv_sign = unsafe {
            raw_list().C_Sign.unwrap()(s.handle(), msg.as_mut_ptr(), 4, out.as_mut_ptr(), &mut n)
        };
        assert_eq!((rv_sign, &out[..n as usize]), (CKR_OK, &mac[..8]));
        let e = gcm_decrypt(&s, k256, &[1; 16], b"", &joined).unwrap_err();
        assert_eq!(rv(e), RvError::MechanismParamInvalid);
        // Derivation by encryption is not an approved KDF.
        let data = [5u8; 32];
        let params = cryptoki::mechanism::ekdf::AesCbcDeriveParams::new([6; 16], &data);
        let template = aes_template(false, vec![Attribute::ValueLen(32.into())]);
        let e = s
            .derive_key(&Mechanism::AesCbcEncryptData(params), k256, &template)
            .unwrap_err();
        assert_eq!(rv(e), RvError::MechanismInvalid);
    }

    /// Without fips_mode the FIPS build still runs every software AES
    /// operation on the FIPS module, and refuses what its API cannot do.
    #[test]
    fn the_fips_build_refuses_what_the_fips_module_cannot_do() {
        let (t, p, s) = approved_session("");
        assert_eq!(
            p.get_library_info().unwrap().library_description(),
            "hsm-envelope KEK/DEK module"
        );
        let key = import(
            &s,
            &KEY,
            true,
            vec![
                Attribute::Wrap(true),
                Attribute::Sensitive(false),
                Attribute::Extractable(true),
            ],
        );
        let e = gcm_encrypt(&s, key, &[1; 16], b"", b"data").unwrap_err();
        assert_eq!(rv(e), RvError::MechanismParamInvalid);
        let mut iv = [1u8; 12];
        let short_tag = Mechanism::AesGcm(GcmParams::new(&mut iv, b"", 96.into()).unwrap());
        assert_eq!(
            rv(s.encrypt(&short_tag, key, b"data").unwrap_err()),
            RvError::MechanismParamInvalid
        );
        // The caller's 96-bit IV and a full tag: on the FIPS module, as RustCrypto computes it.
        let sealed = gcm_encrypt(&s, key, &[1; 12], b"a", b"data").unwrap();
        let (ct, tag) = sealed.split_at(4);
        assert_eq!(reference_open(&[1; 12], b"a", ct, tag).unwrap(), b"data");
        let ct = ctr(&s, key, true, &[0x61; 50]);
        assert_ne!(ct, [0x61; 50]);
        assert_eq!(ctr(&s, key, false, &ct), [0x61; 50]);
        for mech in [Mechanism::AesCbc([2; 16]), Mechanism::AesEcb] {
            let ct = s.encrypt(&mech, key, &[0x61; 48]).unwrap();
            assert_eq!(s.decrypt(&mech, key, &ct).unwrap(), [0x61; 48], "{mech:?}");
        }
        // An AES-192 wrapping key: no AES-192 key wrap in the module's API.
        let k192 = import(
            &s,
            &[7; 24],
            true,
            vec![
                Attribute::Wrap(true),
                Attribute::Unwrap(true),
                Attribute::Sensitive(false),
                Attribute::Extractable(true),
            ],
        );
        let e = s
            .wrap_key(&Mechanism::AesKeyWrapPad, k192, key)
            .unwrap_err();
        assert_eq!(rv(e), RvError::WrappingKeySizeRange);
        let wrapped = s.wrap_key(&Mechanism::AesKeyWrapPad, key, k192).unwrap();
        assert_eq!(wrapped.len(), 32);
        let e = s
            .unwrap_key(
                &Mechanism::AesKeyWrapPad,
                k192,
                &wrapped,
                &aes_template(false, vec![]),
            )
            .unwrap_err();
        assert_eq!(rv(e), RvError::UnwrappingKeySizeRange);
        let doc = ok_json(&t, &["status"]);
        assert_eq!(doc["fips"], false, "{doc:#}");
        assert_eq!(doc["fips_build"], true);
        assert_eq!(doc["aes_module_fips_mode"], true);
    }

    /// The FIPS module's API has no streaming GCM: multi-part encryption
    /// holds the message and releases ciphertext and tag at the final call,
    /// the same bytes as one call and as RustCrypto's reference, through
    /// C_EncryptUpdate/Final and C_EncryptMessageBegin/Next alike.
    #[test]
    fn the_fips_build_holds_multi_part_gcm_encryption_to_the_final_call() {
        let (_t, _p, s) = approved_session("");
        let key = import(&s, &KEY, true, vec![]);
        let data: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        let mut iv = [7u8; 12];
        let mech = Mechanism::AesGcm(GcmParams::new(&mut iv, b"ad", 128.into()).unwrap());
        let whole = s.encrypt(&mech, key, &data).unwrap();
        s.encrypt_init(&mech, key).unwrap();
        for piece in data.chunks(333) {
            assert!(s.encrypt_update(piece).unwrap().is_empty(), "held");
        }
        assert_eq!(s.encrypt_final().unwrap(), whole);
        let (ct, tag) = whole.split_at(data.len());
        assert_eq!(reference_open(&[7; 12], b"ad", ct, tag).unwrap(), data);

        let l = raw_list_3_0();
        let mut m = CK_MECHANISM {
            mechanism: CKM_AES_GCM,
            pParameter: null_mut(),
            ulParameterLen: 0,
        };
        let (mut iv, mut tag) = ([7u8; 12], [0u8; 16]);
        let mut p = CK_GCM_MESSAGE_PARAMS {
            pIv: iv.as_mut_ptr(),
            ulIvLen: 12,
            ulIvFixedBits: 0,
            ivGenerator: CKG_NO_GENERATE,
            pTag: tag.as_mut_ptr(),
            ulTagBits: 128,
        };
        let pp = &mut p as *mut _ as *mut c_void;
        let plen = size_of::<CK_GCM_MESSAGE_PARAMS>() as CK_ULONG;
        let mut out = Vec::new();
        // SAFETY: every pointer is to a live buffer of the length passed.
        unsafe {
            assert_eq!(
                l.C_MessageEncryptInit.unwrap()(s.handle(), &mut m, key.handle()),
                CKR_OK
            );
            let begin = l.C_EncryptMessageBegin.unwrap();
            assert_eq!(
                begin(s.handle(), pp, plen, b"ad".as_ptr() as *mut u8, 2),
                CKR_OK
            );
            let pieces: Vec<&[u8]> = data.chunks(333).collect();
            for (i, piece) in pieces.iter().enumerate() {
                let last = i + 1 == pieces.len();
                let mut buf = vec![0u8; data.len()];
                let mut n = buf.len() as CK_ULONG;
                let flags = if last { CKF_END_OF_MESSAGE } else { 0 };
                let rv = l.C_EncryptMessageNext.unwrap()(
                    s.handle(),
                    pp,
                    plen,
                    piece.as_ptr() as *mut u8,
                    piece.len() as CK_ULONG,
                    buf.as_mut_ptr(),
                    &mut n,
                    flags,
                );
                let want = if last { data.len() } else { 0 };
                assert_eq!((rv, n as usize), (CKR_OK, want), "part {i}");
                out.extend_from_slice(&buf[..n as usize]);
            }
            assert_eq!(l.C_MessageEncryptFinal.unwrap()(s.handle()), CKR_OK);
        }
        assert_eq!((&out[..], &tag[..]), (ct, tag_of(&whole)));
    }

    fn tag_of(sealed: &[u8]) -> &[u8] {
        &sealed[sealed.len() - 16..]
    }
}
