//! Drop-in for PKCS#11 software: a DEK is a full AES key, and the calls
//! clients make work as they do against the HSM. One test per point of the
//! drop-in issue, each checked against SoftHSM2 loaded directly in the same
//! process, or against RustCrypto, where there are bytes to compare.

mod common;

use common::p11::*;
use common::*;
use cryptoki::error::RvError;
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use cryptoki_sys::*;

/// A DEK of known value in our module and the same key in SoftHSM2.
fn twin_keys(
    s: &Session,
    hs: &Session,
    value: &[u8],
    extra: Vec<Attribute>,
) -> (ObjectHandle, ObjectHandle) {
    let ours_key = import(s, value, false, extra.clone());
    let mut hsm_extra = vec![Attribute::Encrypt(true), Attribute::Decrypt(true)];
    hsm_extra.extend(extra);
    (ours_key, import(hs, value, false, hsm_extra))
}

#[test]
fn ecb_and_cbc_without_padding_on_a_dek_match_softhsm() {
    let _t = TestToken::new();
    let p = ours();
    let s = user_session(&p, token_slot(&p));
    let hsm = init_pkcs11(&softhsm_module_path());
    let hs = user_session_raw(&hsm);
    for len in [16usize, 24, 32] {
        let (k, hk) = twin_keys(&s, &hs, &random_bytes(len), vec![]);
        for size in [0usize, 16, 32, 1024] {
            let data = random_bytes(size);
            let iv: [u8; 16] = random_bytes(16).try_into().unwrap();
            for mech in [Mechanism::AesEcb, Mechanism::AesCbc(iv)] {
                let a = s.encrypt(&mech, k, &data).unwrap();
                assert_eq!(
                    a,
                    hs.encrypt(&mech, hk, &data).unwrap(),
                    "{mech:?} {len} {size}"
                );
                assert_eq!(s.decrypt(&mech, k, &a).unwrap(), data);
                // Multi-part, in pieces that are not whole blocks.
                s.encrypt_init(&mech, k).unwrap();
                let mut parts = Vec::new();
                for piece in data.chunks(7) {
                    parts.extend(s.encrypt_update(piece).unwrap());
                }
                parts.extend(s.encrypt_final().unwrap());
                assert_eq!(parts, a, "multi-part {mech:?}");
            }
        }
        // Not a whole number of blocks.
        let e = s.encrypt(&Mechanism::AesEcb, k, &[0; 17]).unwrap_err();
        assert_eq!(rv(e), RvError::DataLenRange);
        let e = s
            .decrypt(&Mechanism::AesCbc([0; 16]), k, &[0; 17])
            .unwrap_err();
        assert_eq!(rv(e), RvError::EncryptedDataLenRange);
    }
}

/// Point 7: JDK 25's SunPKCS11 resets a Cipher with C_SessionCancel.
#[test]
fn session_cancel_ends_software_and_backend_operations() {
    let _t = TestToken::new();
    let p = ours();
    let s = user_session(&p, token_slot(&p));
    let l = raw_list_3_0();
    let cancel = l.C_SessionCancel.unwrap();
    let dek = generate(&s, false, vec![]);
    let backend_key = s
        .generate_key(
            &Mechanism::AesKeyGen,
            &aes_template(
                false,
                vec![
                    Attribute::VendorDefined((
                        cryptoki::object::AttributeType::VendorDefined(0xC845_0002),
                        vec![1],
                    )),
                    Attribute::ValueLen(32.into()),
                    Attribute::Encrypt(true),
                    Attribute::Decrypt(true),
                ],
            ),
        )
        .unwrap();
    let cbc = Mechanism::AesCbcPad([3; 16]);
    for key in [dek, backend_key] {
        s.encrypt_init(&cbc, key).unwrap();
        s.encrypt_update(&[1; 40]).unwrap();
        let e = s.encrypt_init(&cbc, key).unwrap_err();
        assert_eq!(rv(e), RvError::OperationActive);
        assert_eq!(unsafe { cancel(s.handle(), CKF_ENCRYPT) }, CKR_OK);
        let e = s.encrypt_final().unwrap_err();
        assert_eq!(rv(e), RvError::OperationNotInitialized, "cancelled");
        s.encrypt_init(&cbc, key)
            .expect("a new operation after the cancel");
        assert_eq!(s.encrypt_final().unwrap().len(), 16);
        // Cancelling what is not active, and other kinds, is fine.
        assert_eq!(
            unsafe { cancel(s.handle(), CKF_DECRYPT | CKF_SIGN | CKF_DIGEST) },
            CKR_OK
        );
    }
    // A search is cancelled too.
    let raw = raw_list();
    let find_init = raw.C_FindObjectsInit.unwrap();
    assert_eq!(
        unsafe { find_init(s.handle(), std::ptr::null_mut(), 0) },
        CKR_OK
    );
    assert_eq!(
        unsafe { find_init(s.handle(), std::ptr::null_mut(), 0) },
        CKR_OPERATION_ACTIVE
    );
    assert_eq!(unsafe { cancel(s.handle(), CKF_FIND_OBJECTS) }, CKR_OK);
    assert_eq!(
        unsafe { find_init(s.handle(), std::ptr::null_mut(), 0) },
        CKR_OK
    );
    assert_eq!(
        unsafe { cancel(999_999, CKF_ENCRYPT) },
        CKR_SESSION_HANDLE_INVALID
    );
}

/// Point 8: a NULL PIN is refused before it reaches the HSM, where it would
/// count as a wrong PIN.
#[test]
fn login_with_a_null_pin_is_arguments_bad_and_costs_no_pin_try() {
    let _t = TestToken::new();
    let p = ours();
    let slot = token_slot(&p);
    let s = p.open_rw_session(slot).unwrap();
    let l = raw_list();
    for _ in 0..3 {
        let r = unsafe { l.C_Login.unwrap()(s.handle(), CKU_USER, std::ptr::null_mut(), 0) };
        assert_eq!(r, CKR_ARGUMENTS_BAD);
    }
    let info = p.get_token_info(slot).unwrap();
    assert!(!info.user_pin_count_low(), "no PIN try was counted");
    s.login(UserType::User, Some(&AuthPin::new(USER_PIN.into())))
        .expect("the right PIN still works");
}

/// Point 9: multi-part GCM encryption streams: each C_EncryptUpdate returns
/// its ciphertext, C_EncryptFinal the tag. (The FIPS build has no streaming
/// GCM in the FIPS module's API: `fips_mode::the_fips_build_holds_...`.)
#[cfg(not(feature = "fips"))]
#[test]
fn multi_part_gcm_encryption_streams_and_matches_softhsm() {
    let _t = TestToken::new();
    let p = ours();
    let s = user_session(&p, token_slot(&p));
    let hsm = init_pkcs11(&softhsm_module_path());
    let hs = user_session_raw(&hsm);
    for len in [16usize, 24, 32] {
        let (k, hk) = twin_keys(&s, &hs, &random_bytes(len), vec![]);
        for iv_len in [12usize, 16] {
            let data = random_bytes(1000);
            let mut iv = random_bytes(iv_len);
            let aad = random_bytes(20);
            let mech = Mechanism::AesGcm(GcmParams::new(&mut iv, &aad, 128.into()).unwrap());
            let whole = hs.encrypt(&mech, hk, &data).unwrap();
            s.encrypt_init(&mech, k).unwrap();
            let mut out = Vec::new();
            for piece in data.chunks(333) {
                let c = s.encrypt_update(piece).unwrap();
                assert_eq!(c.len(), piece.len(), "an update returns its ciphertext");
                out.extend(c);
            }
            let tag = s.encrypt_final().unwrap();
            assert_eq!(tag.len(), 16, "the final call returns the tag only");
            out.extend(tag);
            assert_eq!(out, whole, "key {len} B, IV {iv_len} B");
            assert_eq!(s.decrypt(&mech, k, &out).unwrap(), data);
        }
    }
}

/// Point 11: absurd counts and lengths are errors, never an allocation that
/// aborts the host process (the panic guard cannot catch an abort, so this
/// test process itself is the proof).
#[test]
fn absurd_counts_and_lengths_are_errors_not_aborts() {
    let _t = TestToken::new();
    let p = ours();
    let s = user_session(&p, token_slot(&p));
    let l = raw_list();
    let h = s.handle();
    let dek = generate(
        &s,
        false,
        vec![Attribute::Extractable(true), Attribute::Sensitive(false)],
    );
    let mut class: CK_ULONG = CKO_SECRET_KEY;
    let mut attr = CK_ATTRIBUTE {
        type_: CKA_CLASS,
        pValue: &mut class as *mut _ as *mut _,
        ulValueLen: size_of::<CK_ULONG>() as CK_ULONG,
    };
    let mut out: CK_OBJECT_HANDLE = 0;
    let mut mech = CK_MECHANISM {
        mechanism: CKM_AES_KEY_GEN,
        pParameter: std::ptr::null_mut(),
        ulParameterLen: 0,
    };
    for count in [1u64 << 33, 1 << 40] {
        unsafe {
            assert_eq!(
                l.C_CreateObject.unwrap()(h, &mut attr, count, &mut out),
                CKR_ARGUMENTS_BAD
            );
            assert_eq!(
                l.C_FindObjectsInit.unwrap()(h, &mut attr, count),
                CKR_ARGUMENTS_BAD
            );
            assert_eq!(
                l.C_GenerateKey.unwrap()(h, &mut mech, &mut attr, count, &mut out),
                CKR_ARGUMENTS_BAD
            );
            assert_eq!(
                l.C_SetAttributeValue.unwrap()(h, dek.handle(), &mut attr, count),
                CKR_ARGUMENTS_BAD
            );
            assert_eq!(
                l.C_GetAttributeValue.unwrap()(h, dek.handle(), &mut attr, count),
                CKR_ARGUMENTS_BAD
            );
        }
    }
    // An attribute value longer than any real one.
    attr.ulValueLen = 1 << 40;
    assert_eq!(
        unsafe { l.C_CreateObject.unwrap()(h, &mut attr, 1, &mut out) },
        CKR_ATTRIBUTE_VALUE_INVALID
    );
    // In-place encryption of 2^62 bytes: the input cannot be copied aside.
    let mut ecb = CK_MECHANISM {
        mechanism: CKM_AES_ECB,
        pParameter: std::ptr::null_mut(),
        ulParameterLen: 0,
    };
    let mut buf = [0u8; 32];
    unsafe {
        assert_eq!(l.C_EncryptInit.unwrap()(h, &mut ecb, dek.handle()), CKR_OK);
        let mut n: CK_ULONG = 1 << 62;
        let rv = l.C_Encrypt.unwrap()(h, buf.as_mut_ptr(), 1 << 62, buf.as_mut_ptr(), &mut n);
        assert!(
            rv == CKR_HOST_MEMORY || rv == CKR_DATA_LEN_RANGE || rv == CKR_ARGUMENTS_BAD,
            "0x{rv:x}"
        );
    }
    // The module still works.
    assert_eq!(
        s.encrypt(&Mechanism::AesEcb, dek, &[7; 16]).unwrap().len(),
        16
    );
}

/// Point 12: nothing made or renamed through the module, DEK or not, may
/// carry the KEK's label (or the audit key's): a search by it finds the KEK.
#[test]
fn no_dek_may_take_the_kek_label() {
    let _t = TestToken::new();
    let p = ours();
    let s = user_session(&p, token_slot(&p));
    let kek_label = Attribute::Label(KEK_LABEL.as_bytes().to_vec());
    let e = s
        .create_object(&aes_template(
            true,
            vec![kek_label.clone(), Attribute::Value(vec![1; 32])],
        ))
        .unwrap_err();
    assert_eq!(rv(e), RvError::AttributeValueInvalid, "C_CreateObject");
    let e = s
        .generate_key(
            &Mechanism::AesKeyGen,
            &aes_template(
                false,
                vec![kek_label.clone(), Attribute::ValueLen(32.into())],
            ),
        )
        .unwrap_err();
    assert_eq!(rv(e), RvError::AttributeValueInvalid, "C_GenerateKey");
    let dek = generate(&s, true, vec![Attribute::Label(b"mine".to_vec())]);
    let e = s
        .update_attributes(dek, std::slice::from_ref(&kek_label))
        .unwrap_err();
    assert_eq!(rv(e), RvError::AttributeValueInvalid, "C_SetAttributeValue");
    assert_eq!(
        s.find_objects(&[kek_label]).unwrap().len(),
        1,
        "the KEK alone"
    );
}

/// Point 13: the codes clients act on.
#[test]
fn failures_get_their_specific_codes() {
    let _t = TestToken::new();
    let p = ours();
    let s = user_session(&p, token_slot(&p));
    // Garbage unwrapped under the KEK.
    let kek = s
        .find_objects(&[Attribute::Label(KEK_LABEL.as_bytes().to_vec())])
        .unwrap()[0];
    for mech in [Mechanism::AesKeyWrap, Mechanism::AesKeyWrapPad] {
        let e = s
            .unwrap_key(&mech, kek, &[0x5a; 40], &aes_template(false, vec![]))
            .unwrap_err();
        assert_eq!(rv(e), RvError::WrappedKeyInvalid, "{mech:?}");
    }
    // C_Encrypt cannot finish a multi-part operation; the operation stays.
    let dek = generate(&s, false, vec![]);
    let cbc = Mechanism::AesCbcPad([1; 16]);
    s.encrypt_init(&cbc, dek).unwrap();
    let first = s.encrypt_update(&[2; 20]).unwrap();
    let e = s.encrypt(&cbc, dek, &[3; 4]).unwrap_err();
    assert!(
        matches!(
            rv(e),
            RvError::OperationActive | RvError::OperationNotInitialized
        ),
        "cryptoki's encrypt() inits first"
    );
    let raw = raw_list();
    let mut out = [0u8; 64];
    let mut n: CK_ULONG = out.len() as CK_ULONG;
    let mut data = [3u8; 4];
    let r = unsafe {
        raw.C_Encrypt.unwrap()(s.handle(), data.as_mut_ptr(), 4, out.as_mut_ptr(), &mut n)
    };
    assert_eq!(r, CKR_OPERATION_ACTIVE);
    let rest = s
        .encrypt_final()
        .expect("the multi-part operation is still there");
    let mut all = first;
    all.extend(rest);
    assert_eq!(all, s.encrypt(&cbc, dek, &[2; 20]).unwrap());
}

/// Point 13: a DEK made while another thread logs out fails as "not logged
/// in", never with a general error.
#[test]
fn making_deks_while_another_thread_logs_out_fails_as_not_logged_in() {
    let _t = TestToken::new();
    let p = ours();
    let slot = token_slot(&p);
    let _login = user_session(&p, slot);
    let other = p.open_rw_session(slot).unwrap();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let errors = std::thread::scope(|sc| {
        let worker = sc.spawn(|| {
            let ws = p.open_rw_session(slot).unwrap();
            let mut errors = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Err(e) = ws.generate_key(
                    &Mechanism::AesKeyGen,
                    &aes_template(false, vec![Attribute::ValueLen(32.into())]),
                ) {
                    errors.push(rv(e));
                }
            }
            errors
        });
        std::thread::sleep(std::time::Duration::from_millis(30));
        other.logout().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(30));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        worker.join().unwrap()
    });
    assert!(
        !errors.is_empty(),
        "the logout happened while keys were made"
    );
    assert!(
        errors.iter().all(|e| *e == RvError::UserNotLoggedIn),
        "{errors:?}"
    );
}

fn flags(wrap: bool, derive: bool) -> Vec<Attribute> {
    vec![
        Attribute::Wrap(wrap),
        Attribute::Unwrap(wrap),
        Attribute::Derive(derive),
        Attribute::Sensitive(false),
        Attribute::Extractable(true),
    ]
}

/// Point 3: a DEK wraps and unwraps with AES key wrap (KW and KWP), DEKs
/// and backend keys alike, with SoftHSM2's bytes.
#[test]
fn a_dek_wraps_and_unwraps_like_softhsm() {
    let _t = TestToken::new();
    let p = ours();
    let s = user_session(&p, token_slot(&p));
    let hsm = init_pkcs11(&softhsm_module_path());
    let hs = user_session_raw(&hsm);
    let (w, hw) = twin_keys(&s, &hs, &random_bytes(32), flags(true, false));
    let (k, hk) = twin_keys(&s, &hs, &random_bytes(24), flags(false, false));
    for mech in [Mechanism::AesKeyWrap, Mechanism::AesKeyWrapPad] {
        let wrapped = s.wrap_key(&mech, w, k).unwrap();
        assert_eq!(wrapped, hs.wrap_key(&mech, hw, hk).unwrap(), "{mech:?}");
        let back = s
            .unwrap_key(
                &mech,
                w,
                &wrapped,
                &aes_template(
                    false,
                    vec![Attribute::Extractable(true), Attribute::Sensitive(false)],
                ),
            )
            .unwrap();
        let data = [9u8; 32];
        assert_eq!(
            s.encrypt(&Mechanism::AesEcb, back, &data).unwrap(),
            s.encrypt(&Mechanism::AesEcb, k, &data).unwrap(),
            "the unwrapped DEK is the same key"
        );
        let e = s
            .unwrap_key(&mech, w, &[0u8; 40], &aes_template(false, vec![]))
            .unwrap_err();
        assert_eq!(rv(e), RvError::WrappedKeyInvalid);
    }
    // The default IV as the mechanism's parameter (SunPKCS11 sends it) is
    // the same wrap.
    let l = raw_list();
    let mut iv = [0xA6u8; 8];
    let mut mech = CK_MECHANISM {
        mechanism: CKM_AES_KEY_WRAP,
        pParameter: iv.as_mut_ptr() as *mut _,
        ulParameterLen: 8,
    };
    let mut out = [0u8; 64];
    let mut n: CK_ULONG = 64;
    let r = unsafe {
        l.C_WrapKey.unwrap()(
            s.handle(),
            &mut mech,
            w.handle(),
            k.handle(),
            out.as_mut_ptr(),
            &mut n,
        )
    };
    assert_eq!(r, CKR_OK);
    assert_eq!(
        out[..n as usize],
        s.wrap_key(&Mechanism::AesKeyWrap, w, k).unwrap()[..]
    );
    // A DEK wraps with AES key wrap only: CBC or ECB "wrapping" would make
    // it an encryption oracle for whoever may wrap with it (SoftHSM2 allows
    // it; we do not).
    for mech in [Mechanism::AesCbcPad([0; 16]), Mechanism::AesEcb] {
        let e = s.wrap_key(&mech, w, k).unwrap_err();
        assert_eq!(rv(e), RvError::MechanismInvalid, "{mech:?}");
        let e = s
            .unwrap_key(&mech, w, &[0u8; 48], &aes_template(false, vec![]))
            .unwrap_err();
        assert_eq!(rv(e), RvError::MechanismInvalid, "{mech:?}");
    }
    // A DEK wrapping itself (it used to deadlock against a writer).
    let own = import(&s, &random_bytes(32), false, flags(true, false));
    let wrapped_self = s.wrap_key(&Mechanism::AesKeyWrap, own, own).unwrap();
    assert_eq!(wrapped_self.len(), 40);
    // A DEK without CKA_WRAP does not wrap.
    let e = s.wrap_key(&Mechanism::AesKeyWrap, k, w).unwrap_err();
    assert_eq!(rv(e), RvError::KeyFunctionNotPermitted);
    // A DEK wraps a backend key: on the HSM, from a short-lived copy.
    let on_backend = Attribute::VendorDefined((
        cryptoki::object::AttributeType::VendorDefined(0xC845_0002),
        vec![1],
    ));
    let bk_value = random_bytes(32);
    let bk = import(
        &s,
        &bk_value,
        false,
        vec![
            on_backend,
            Attribute::Extractable(true),
            Attribute::Sensitive(false),
        ],
    );
    let hbk = import(&hs, &bk_value, false, vec![Attribute::Extractable(true)]);
    let secret_keys_on_the_hsm = || {
        hs.find_objects(&[Attribute::Class(cryptoki::object::ObjectClass::SECRET_KEY)])
            .unwrap()
            .len()
    };
    let before = secret_keys_on_the_hsm();
    assert_eq!(
        s.wrap_key(&Mechanism::AesKeyWrap, w, bk).unwrap(),
        hs.wrap_key(&Mechanism::AesKeyWrap, hw, hbk).unwrap()
    );
    assert_eq!(
        secret_keys_on_the_hsm(),
        before,
        "no short-lived copy is left on the HSM"
    );
}

/// Point 4: an HSM RSA public key wraps a DEK (OAEP and PKCS#1 v1.5), and
/// the private key unwraps it into a DEK: on the HSM, from short-lived copies.
#[test]
fn rsa_keys_on_the_hsm_wrap_and_unwrap_deks() {
    use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsOaepParams, PkcsOaepSource};
    use cryptoki::mechanism::MechanismType;
    let _t = TestToken::new();
    let p = ours();
    let s = user_session(&p, token_slot(&p));
    let (public, private) = s
        .generate_key_pair(
            &Mechanism::RsaPkcsKeyPairGen,
            &[
                Attribute::ModulusBits(2048.into()),
                Attribute::PublicExponent(vec![1, 0, 1]),
                Attribute::Wrap(true),
                Attribute::Encrypt(true),
            ],
            &[
                Attribute::Unwrap(true),
                Attribute::Decrypt(true),
                Attribute::Sensitive(true),
            ],
        )
        .unwrap();
    let dek = generate(&s, false, vec![Attribute::Extractable(true)]);
    let oaep = Mechanism::RsaPkcsOaep(PkcsOaepParams::new(
        MechanismType::SHA1,
        PkcsMgfType::MGF1_SHA1,
        PkcsOaepSource::empty(),
    ));
    for mech in [oaep, Mechanism::RsaPkcs] {
        let wrapped = s.wrap_key(&mech, public, dek).expect("RSA wraps a DEK");
        assert_eq!(wrapped.len(), 256);
        let back = s
            .unwrap_key(&mech, private, &wrapped, &aes_template(false, vec![]))
            .expect("RSA unwraps into a DEK");
        let data = [4u8; 16];
        assert_eq!(
            s.encrypt(&Mechanism::AesEcb, back, &data).unwrap(),
            s.encrypt(&Mechanism::AesEcb, dek, &data).unwrap()
        );
        // The unwrapped key is a DEK: it has a record (a KEK version).
        let v = s
            .get_attributes(
                back,
                &[cryptoki::object::AttributeType::VendorDefined(0xC845_0001)],
            )
            .unwrap();
        assert_eq!(v.len(), 1);
    }
    // A DEK that may not leave the module stays in.
    let fixed = generate(&s, false, vec![]);
    let e = s.wrap_key(&Mechanism::RsaPkcs, public, fixed).unwrap_err();
    assert_eq!(rv(e), RvError::KeyUnextractable);
}

/// Point 5: C_DeriveKey from a DEK with AES-ECB/CBC_ENCRYPT_DATA gives a
/// new DEK with the key SoftHSM2 derives.
#[test]
fn deks_derive_by_encryption_like_softhsm() {
    use cryptoki::mechanism::ekdf::AesCbcDeriveParams;
    let _t = TestToken::new();
    let p = ours();
    let s = user_session(&p, token_slot(&p));
    let hsm = init_pkcs11(&softhsm_module_path());
    let hs = user_session_raw(&hsm);
    let (base, hbase) = twin_keys(&s, &hs, &random_bytes(32), flags(false, true));
    let data = random_bytes(32);
    let derived_template = aes_template(
        false,
        vec![
            Attribute::ValueLen(32.into()),
            Attribute::Encrypt(true),
            Attribute::Decrypt(true),
        ],
    );
    let cbc = Mechanism::AesCbcEncryptData(AesCbcDeriveParams::new([6; 16], &data));
    let a = s.derive_key(&cbc, base, &derived_template).unwrap();
    let b = hs.derive_key(&cbc, hbase, &derived_template).unwrap();
    let probe = [1u8; 16];
    assert_eq!(
        s.encrypt(&Mechanism::AesEcb, a, &probe).unwrap(),
        hs.encrypt(&Mechanism::AesEcb, b, &probe).unwrap()
    );
    // ECB, through the raw list (cryptoki has no such mechanism).
    let l = raw_list();
    let mut sd = CK_KEY_DERIVATION_STRING_DATA {
        pData: data.as_ptr() as *mut u8,
        ulLen: data.len() as CK_ULONG,
    };
    let mut mech = CK_MECHANISM {
        mechanism: CKM_AES_ECB_ENCRYPT_DATA,
        pParameter: &mut sd as *mut _ as *mut _,
        ulParameterLen: size_of::<CK_KEY_DERIVATION_STRING_DATA>() as CK_ULONG,
    };
    let mut len: CK_ULONG = 16;
    let mut t = [CK_ATTRIBUTE {
        type_: CKA_VALUE_LEN,
        pValue: &mut len as *mut _ as *mut _,
        ulValueLen: size_of::<CK_ULONG>() as CK_ULONG,
    }];
    let mut out = 0;
    assert_eq!(
        unsafe {
            l.C_DeriveKey.unwrap()(
                s.handle(),
                &mut mech,
                base.handle(),
                t.as_mut_ptr(),
                1,
                &mut out,
            )
        },
        CKR_OK
    );
    let want = s.encrypt(&Mechanism::AesEcb, base, &data).unwrap();
    let derived = unsafe { ObjectHandle::new_from_raw(out) };
    let via_derived = s.encrypt(&Mechanism::AesEcb, derived, &probe).unwrap();
    let reference = import(&s, &want[..16], false, vec![]);
    assert_eq!(
        via_derived,
        s.encrypt(&Mechanism::AesEcb, reference, &probe).unwrap()
    );
    // CKA_DERIVE false: refused.
    let plain = generate(&s, false, vec![]);
    let e = s.derive_key(&cbc, plain, &derived_template).unwrap_err();
    assert_eq!(rv(e), RvError::KeyFunctionNotPermitted);
}

/// Point 6: C_DigestKey with a DEK digests its value as SoftHSM2 does.
#[test]
fn digest_key_with_a_dek_matches_softhsm() {
    let _t = TestToken::new();
    let p = ours();
    let s = user_session(&p, token_slot(&p));
    let hsm = init_pkcs11(&softhsm_module_path());
    let hs = user_session_raw(&hsm);
    let (k, hk) = twin_keys(&s, &hs, &random_bytes(32), flags(false, false));
    let digest = |sess: &Session, key| {
        sess.digest_init(&Mechanism::Sha256).unwrap();
        sess.digest_update(b"prefix").unwrap();
        sess.digest_key(key).unwrap();
        sess.digest_final().unwrap()
    };
    assert_eq!(digest(&s, k), digest(&hs, hk));
}

/// Point 10: C_CopyObject of a DEK makes a new DEK with the same key and the
/// attributes the template may change.
#[test]
fn copying_a_dek_makes_a_new_dek_with_the_same_key() {
    let _t = TestToken::new();
    let p = ours();
    let s = user_session(&p, token_slot(&p));
    let dek = generate(&s, true, vec![Attribute::Label(b"orig".to_vec())]);
    let copy = s
        .copy_object(
            dek,
            &[Attribute::Label(b"copy".to_vec()), Attribute::Token(false)],
        )
        .unwrap();
    assert_ne!(copy, dek);
    let probe = [3u8; 32];
    assert_eq!(
        s.encrypt(&Mechanism::AesEcb, copy, &probe).unwrap(),
        s.encrypt(&Mechanism::AesEcb, dek, &probe).unwrap()
    );
    assert_eq!(
        s.find_objects(&[Attribute::Label(b"copy".to_vec())])
            .unwrap(),
        vec![copy]
    );
    assert!(!bool_attr(&s, copy, cryptoki::object::AttributeType::Token));
    // One-way attributes stay one-way, and CKA_COPYABLE false is final.
    let e = s
        .copy_object(dek, &[Attribute::Extractable(true)])
        .unwrap_err();
    assert_eq!(rv(e), RvError::AttributeReadOnly);
    let fixed = generate(&s, false, vec![Attribute::Copyable(false)]);
    let e = s.copy_object(fixed, &[]).unwrap_err();
    assert_eq!(rv(e), RvError::ActionProhibited);
}

/// Point 2: AES-CMAC on a DEK signs and verifies, single- and multi-part,
/// with SoftHSM2's MACs.
#[test]
fn cmac_with_a_dek_matches_softhsm() {
    let _t = TestToken::new();
    let p = ours();
    let s = user_session(&p, token_slot(&p));
    let hsm = init_pkcs11(&softhsm_module_path());
    let hs = user_session_raw(&hsm);
    let sv = vec![Attribute::Sign(true), Attribute::Verify(true)];
    for len in [16usize, 24, 32] {
        let (k, hk) = twin_keys(&s, &hs, &random_bytes(len), sv.clone());
        for size in [0usize, 1, 16, 17, 100] {
            let data = random_bytes(size);
            let mac = s.sign(&Mechanism::AesCMac, k, &data).unwrap();
            assert_eq!(
                mac,
                hs.sign(&Mechanism::AesCMac, hk, &data).unwrap(),
                "{len} {size}"
            );
            s.verify(&Mechanism::AesCMac, k, &data, &mac).unwrap();
            s.sign_init(&Mechanism::AesCMac, k).unwrap();
            for piece in data.chunks(7) {
                s.sign_update(piece).unwrap();
            }
            assert_eq!(s.sign_final().unwrap(), mac, "multi-part");
            let mut bad = mac.clone();
            bad[0] ^= 1;
            let e = s.verify(&Mechanism::AesCMac, k, &data, &bad).unwrap_err();
            assert_eq!(rv(e), RvError::SignatureInvalid);
            let e = s
                .verify(&Mechanism::AesCMac, k, &data, &mac[..15])
                .unwrap_err();
            assert_eq!(rv(e), RvError::SignatureLenRange);
        }
    }
    // CKM_AES_CMAC_GENERAL: the first 8 bytes, through the raw list.
    let (k, _) = twin_keys(&s, &hs, &random_bytes(32), sv);
    let full = s.sign(&Mechanism::AesCMac, k, b"msg").unwrap();
    let l = raw_list();
    let mut n: CK_ULONG = 8;
    let mut mech = CK_MECHANISM {
        mechanism: CKM_AES_CMAC_GENERAL,
        pParameter: &mut n as *mut _ as *mut _,
        ulParameterLen: size_of::<CK_ULONG>() as CK_ULONG,
    };
    let mut out = [0u8; 16];
    let mut out_len: CK_ULONG = 16;
    let mut msg = *b"msg";
    unsafe {
        assert_eq!(
            l.C_SignInit.unwrap()(s.handle(), &mut mech, k.handle()),
            CKR_OK
        );
        assert_eq!(
            l.C_Sign.unwrap()(
                s.handle(),
                msg.as_mut_ptr(),
                3,
                out.as_mut_ptr(),
                &mut out_len
            ),
            CKR_OK
        );
    }
    assert_eq!(out[..out_len as usize], full[..8]);
    // A DEK without CKA_SIGN (the default) does not sign.
    let plain = generate(&s, false, vec![]);
    let e = s.sign(&Mechanism::AesCMac, plain, b"x").unwrap_err();
    assert_eq!(rv(e), RvError::KeyFunctionNotPermitted);
}

/// PyKCS11's multi-part AEAD test: the tag arrives in its own update, and
/// nothing is released before the final call verifies it.
#[test]
fn multi_part_gcm_decryption_takes_the_tag_in_a_later_update() {
    let _t = TestToken::new();
    let p = ours();
    let s = user_session(&p, token_slot(&p));
    let k = generate(&s, false, vec![]);
    let mut iv = random_bytes(12);
    let mech = Mechanism::AesGcm(GcmParams::new(&mut iv, b"plaintext aad", 128.into()).unwrap());
    let data = random_bytes(16);
    s.encrypt_init(&mech, k).unwrap();
    let ct = s.encrypt_update(&data).unwrap();
    let tag = s.encrypt_final().unwrap();
    s.decrypt_init(&mech, k).unwrap();
    assert!(s.decrypt_update(&ct).unwrap().is_empty());
    assert!(s.decrypt_update(&tag).unwrap().is_empty());
    assert_eq!(s.decrypt_final().unwrap(), data);
}

/// A template that gives one attribute two different values is refused: a
/// backend applies the last, a check may read the first (a second CKA_LABEL
/// "kek" once slipped past the KEK guard). Identical repeats are fine.
#[test]
fn an_attribute_given_twice_with_different_values_is_refused() {
    let _t = TestToken::new();
    let p = ours();
    let s = user_session(&p, token_slot(&p));
    let on_backend = Attribute::VendorDefined((
        cryptoki::object::AttributeType::VendorDefined(0xC845_0002),
        vec![1],
    ));
    let e = s
        .create_object(&aes_template(
            true,
            vec![
                on_backend.clone(),
                Attribute::Value(vec![1; 32]),
                Attribute::Id(vec![2]),
                Attribute::Label(b"decoy".to_vec()),
                Attribute::Label(KEK_LABEL.as_bytes().to_vec()),
            ],
        ))
        .unwrap_err();
    assert_eq!(rv(e), RvError::TemplateInconsistent);
    let dek = generate(
        &s,
        false,
        vec![Attribute::Extractable(true), Attribute::Extractable(true)],
    );
    let e = s
        .update_attributes(
            dek,
            &[
                Attribute::Label(b"x".to_vec()),
                Attribute::Label(KEK_LABEL.as_bytes().to_vec()),
            ],
        )
        .unwrap_err();
    assert_eq!(rv(e), RvError::TemplateInconsistent);
}

/// JDK 25 resets a Cipher or Signature with C_SessionCancel; a single-part
/// operation forwarded to SoftHSM2 (RSA) must end too.
#[test]
fn session_cancel_ends_single_part_backend_operations() {
    let _t = TestToken::new();
    let p = ours();
    let s = user_session(&p, token_slot(&p));
    let (public, private) = s
        .generate_key_pair(
            &Mechanism::RsaPkcsKeyPairGen,
            &[
                Attribute::ModulusBits(2048.into()),
                Attribute::PublicExponent(vec![1, 0, 1]),
                Attribute::Encrypt(true),
            ],
            &[Attribute::Sign(true)],
        )
        .unwrap();
    let cancel = raw_list_3_0().C_SessionCancel.unwrap();
    s.sign_init(&Mechanism::RsaPkcs, private).unwrap();
    assert_eq!(unsafe { cancel(s.handle(), CKF_SIGN) }, CKR_OK);
    s.sign_init(&Mechanism::RsaPkcs, private)
        .expect("signing again after the cancel");
    assert_eq!(unsafe { cancel(s.handle(), CKF_SIGN) }, CKR_OK);
    assert_eq!(
        s.sign(&Mechanism::RsaPkcs, private, b"x").unwrap().len(),
        256
    );
    assert_eq!(
        unsafe { cancel(s.handle(), CKF_ENCRYPT) },
        CKR_OK,
        "nothing active"
    );
    s.encrypt_init(&Mechanism::RsaPkcs, public).unwrap();
    assert_eq!(unsafe { cancel(s.handle(), CKF_ENCRYPT) }, CKR_OK);
    s.encrypt_init(&Mechanism::RsaPkcs, public)
        .expect("encrypting again after the cancel");
    assert_eq!(unsafe { cancel(s.handle(), CKF_ENCRYPT) }, CKR_OK);
    assert_eq!(
        s.encrypt(&Mechanism::RsaPkcs, public, b"x").unwrap().len(),
        256
    );
}

/// A key derived from a sensitive (or unextractable) DEK is no less
/// protected: a derivation that keeps the base's value would read it.
#[test]
fn a_derived_dek_is_at_least_as_protected_as_its_base() {
    use cryptoki::mechanism::ekdf::AesCbcDeriveParams;
    let _t = TestToken::new();
    let p = ours();
    let s = user_session(&p, token_slot(&p));
    let base = generate(&s, false, vec![Attribute::Derive(true)]);
    let data = [9u8; 32];
    let cbc = Mechanism::AesCbcEncryptData(AesCbcDeriveParams::new([6; 16], &data));
    for loose in [Attribute::Sensitive(false), Attribute::Extractable(true)] {
        let e = s
            .derive_key(
                &cbc,
                base,
                &aes_template(false, vec![Attribute::ValueLen(32.into()), loose.clone()]),
            )
            .unwrap_err();
        assert_eq!(rv(e), RvError::TemplateInconsistent, "{loose:?}");
    }
    let derived = s
        .derive_key(
            &cbc,
            base,
            &aes_template(false, vec![Attribute::ValueLen(32.into())]),
        )
        .unwrap();
    assert_sensitive(&s, derived);
}
