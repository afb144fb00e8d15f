//! The envelope core through the built module, driven by `cryptoki` the way
//! any Rust application would, with SoftHSM2 loaded directly in the same
//! process as the independent implementation to compare against.
//!
//! Each test runs in its own process (cargo nextest) with its own token.

mod common;

use common::p11::*;
use common::*;
use cryptoki::error::RvError;
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::vendor_defined::VendorDefinedMechanism;
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use cryptoki_sys::{CK_AES_CTR_PARAMS, CK_ULONG};

const CKR_HSME_RECORD_INVALID: u64 = 0xC845_0002;
const CKA_HSME_KEK_VERSION: u64 = 0xC845_0001;

fn ctr_params(iv: [u8; 16]) -> CK_AES_CTR_PARAMS {
    CK_AES_CTR_PARAMS {
        ulCounterBits: 32 as CK_ULONG,
        cb: iv,
    }
}

#[test]
fn slot_mirrors_the_backend_token_with_our_identity() {
    let _t = TestToken::new();
    let p = ours();
    let slots = p.get_slots_with_token().unwrap();
    assert_eq!(
        slots.len(),
        1,
        "SoftHSM's spare uninitialised slot must not appear"
    );
    let info = p.get_token_info(slots[0]).unwrap();
    assert_eq!(info.label(), TOKEN_LABEL);
    assert_eq!(info.manufacturer_id(), "hsm-envelope");
    let mechs = p.get_mechanism_list(slots[0]).unwrap();
    for m in [
        MechanismType::AES_GCM,
        MechanismType::AES_CBC_PAD,
        MechanismType::AES_CTR,
        MechanismType::AES_KEY_GEN,
    ] {
        assert!(mechs.contains(&m), "{m} missing");
    }
    let gcm = p
        .get_mechanism_info(slots[0], MechanismType::AES_GCM)
        .unwrap();
    assert!(gcm.encrypt() && gcm.decrypt());
    let e = p
        .init_token(slots[0], &AuthPin::new(SO_PIN.into()), "wipe")
        .unwrap_err();
    assert_eq!(
        rv(e),
        RvError::FunctionNotSupported,
        "C_InitToken would destroy the KEKs"
    );
}

#[test]
fn deks_need_a_login_and_private_ones_hide_after_logout() {
    let _t = TestToken::new();
    let p = ours();
    let slot = token_slot(&p);
    let s = p.open_rw_session(slot).unwrap();
    let e = s.generate_key(
        &Mechanism::AesKeyGen,
        &aes_template(true, vec![Attribute::ValueLen(32.into())]),
    );
    assert_eq!(rv(e.unwrap_err()), RvError::UserNotLoggedIn);
    s.login(UserType::User, Some(&AuthPin::new(USER_PIN.into())))
        .unwrap();
    let ro = p.open_ro_session(slot).unwrap();
    let e = ro.generate_key(
        &Mechanism::AesKeyGen,
        &aes_template(true, vec![Attribute::ValueLen(32.into())]),
    );
    assert_eq!(rv(e.unwrap_err()), RvError::SessionReadOnly);
    let dek = generate(&s, true, vec![Attribute::Label(b"d".to_vec())]);
    let ct = gcm_encrypt(&s, dek, &[1; 12], b"", b"hello").unwrap();
    s.logout().unwrap();
    assert!(s
        .find_objects(&[Attribute::Label(b"d".to_vec())])
        .unwrap()
        .is_empty());
    let e = gcm_encrypt(&s, dek, &[1; 12], b"", b"hello").unwrap_err();
    assert_eq!(rv(e), RvError::KeyHandleInvalid);
    s.login(UserType::User, Some(&AuthPin::new(USER_PIN.into())))
        .unwrap();
    // Handles to private objects stay invalid after C_Logout, even once the
    // user logs in again; the DEK itself is found again under a new handle.
    let e = gcm_decrypt(&s, dek, &[1; 12], b"", &ct).unwrap_err();
    assert_eq!(rv(e), RvError::KeyHandleInvalid);
    let again = s.find_objects(&[Attribute::Label(b"d".to_vec())]).unwrap();
    assert_eq!(again.len(), 1);
    assert_ne!(again[0], dek);
    assert_eq!(
        gcm_decrypt(&s, again[0], &[1; 12], b"", &ct).unwrap(),
        b"hello"
    );
    // The Security Officer is not the user: no private DEKs for the SO.
    drop(ro);
    s.logout().unwrap();
    s.login(UserType::So, Some(&AuthPin::new(SO_PIN.into())))
        .unwrap();
    assert!(s
        .find_objects(&[Attribute::Label(b"d".to_vec())])
        .unwrap()
        .is_empty());
    let e = s.generate_key(
        &Mechanism::AesKeyGen,
        &aes_template(false, vec![Attribute::ValueLen(32.into())]),
    );
    assert_eq!(rv(e.unwrap_err()), RvError::UserNotLoggedIn);
}

#[test]
fn generated_dek_attributes_follow_the_spec() {
    let _t = TestToken::new();
    let p = ours();
    let s = user_session(&p, token_slot(&p));
    let dek = generate(&s, true, vec![]);
    assert!(bool_attr(&s, dek, AttributeType::Sensitive), "safe default");
    assert!(
        !bool_attr(&s, dek, AttributeType::Extractable),
        "safe default"
    );
    assert!(bool_attr(&s, dek, AttributeType::AlwaysSensitive));
    assert!(bool_attr(&s, dek, AttributeType::NeverExtractable));
    assert!(bool_attr(&s, dek, AttributeType::Local));
    assert_sensitive(&s, dek);
    let kcv = s.get_attributes(dek, &[AttributeType::CheckValue]).unwrap();
    assert!(matches!(&kcv[..], [Attribute::CheckValue(v)] if v.len() == 3));
    let kv = s
        .get_attributes(dek, &[AttributeType::VendorDefined(CKA_HSME_KEK_VERSION)])
        .unwrap();
    assert!(
        matches!(&kv[..], [Attribute::VendorDefined((_, v))] if v == &1u64.to_ne_bytes()),
        "{kv:?}"
    );

    // An imported key was outside a token in clear: never "always sensitive".
    let imp = import(&s, &[7; 16], false, vec![]);
    assert!(!bool_attr(&s, imp, AttributeType::AlwaysSensitive));
    assert!(!bool_attr(&s, imp, AttributeType::Local));

    // Bad templates.
    let bad = |t: Vec<Attribute>| rv(s.create_object(&t).unwrap_err());
    assert_eq!(
        bad(aes_template(false, vec![Attribute::Value(vec![1; 15])])),
        RvError::AttributeValueInvalid
    );
    assert_eq!(
        bad(aes_template(false, vec![])),
        RvError::TemplateIncomplete
    );
    assert_eq!(
        bad(aes_template(
            false,
            vec![Attribute::Value(vec![1; 16]), Attribute::Local(true)]
        )),
        RvError::AttributeReadOnly
    );
    let e = s
        .generate_key(&Mechanism::AesKeyGen, &aes_template(false, vec![]))
        .unwrap_err();
    assert_eq!(rv(e), RvError::TemplateIncomplete);
}

#[test]
fn set_attribute_rules_and_rewrap_survive_a_restart() {
    let _t = TestToken::new();
    let p = ours();
    let s = user_session(&p, token_slot(&p));
    let value = random_bytes(32);
    let dek = import(
        &s,
        &value,
        true,
        vec![
            Attribute::Sensitive(false),
            Attribute::Extractable(true),
            Attribute::Label(b"a".to_vec()),
        ],
    );
    let e = s
        .update_attributes(dek, &[Attribute::Value(vec![0; 32])])
        .unwrap_err();
    assert_eq!(rv(e), RvError::AttributeReadOnly);
    // Extractable and not sensitive: the value is readable.
    let got = s.get_attributes(dek, &[AttributeType::Value]).unwrap();
    assert!(matches!(&got[..], [Attribute::Value(v)] if v == &value));
    s.update_attributes(
        dek,
        &[Attribute::Sensitive(true), Attribute::Label(b"b".to_vec())],
    )
    .unwrap();
    let e = s
        .update_attributes(dek, &[Attribute::Sensitive(false)])
        .unwrap_err();
    assert_eq!(rv(e), RvError::AttributeReadOnly);
    s.update_attributes(dek, &[Attribute::Extractable(false)])
        .unwrap();
    let e = s
        .update_attributes(dek, &[Attribute::Extractable(true)])
        .unwrap_err();
    assert_eq!(rv(e), RvError::AttributeReadOnly);
    assert!(!bool_attr(&s, dek, AttributeType::AlwaysSensitive));
    assert_sensitive(&s, dek);
    let ct = gcm_encrypt(&s, dek, &[3; 12], b"aad", b"data").unwrap();
    drop(s);
    p.finalize().unwrap();

    // A fresh module instance must unwrap the re-sealed record.
    let p = ours();
    let s = user_session(&p, token_slot(&p));
    let found = s.find_objects(&[Attribute::Label(b"b".to_vec())]).unwrap();
    assert_eq!(found.len(), 1);
    assert!(bool_attr(&s, found[0], AttributeType::Sensitive));
    assert_eq!(
        gcm_decrypt(&s, found[0], &[3; 12], b"aad", &ct).unwrap(),
        b"data"
    );
}

/// Same key, same IV and AAD: our software engines and SoftHSM2 agree.
#[test]
fn ciphertexts_match_softhsm_for_gcm_cbc_pad_and_ctr() {
    let _t = TestToken::new();
    let p = ours();
    let s = user_session(&p, token_slot(&p));
    // SoftHSM2 loaded directly by the same process: its C_Initialize answers
    // ALREADY_INITIALIZED (we loaded it first), which must not disturb us.
    let hsm = init_pkcs11(&softhsm_module_path());
    let hs = user_session_raw(&hsm);
    for len in [16usize, 24, 32] {
        let value = random_bytes(len);
        let ours_key = import(&s, &value, false, vec![Attribute::Extractable(false)]);
        let hsm_key = import(
            &hs,
            &value,
            false,
            vec![Attribute::Encrypt(true), Attribute::Decrypt(true)],
        );
        for size in [0usize, 1, 15, 16, 17, 1000] {
            let data = random_bytes(size);
            let iv = random_bytes(12);
            let aad = random_bytes(size % 40);
            let a = gcm_encrypt(&s, ours_key, &iv, &aad, &data).unwrap();
            let b = gcm_encrypt(&hs, hsm_key, &iv, &aad, &data).unwrap();
            assert_eq!(a, b, "GCM, key {len} B, data {size} B");
            assert_eq!(gcm_decrypt(&s, ours_key, &iv, &aad, &b).unwrap(), data);

            let iv16: [u8; 16] = random_bytes(16).try_into().unwrap();
            let cbc = Mechanism::AesCbcPad(iv16);
            let a = s.encrypt(&cbc, ours_key, &data).unwrap();
            assert_eq!(
                a,
                hs.encrypt(&cbc, hsm_key, &data).unwrap(),
                "CBC-PAD, key {len} B, data {size} B"
            );
            assert_eq!(s.decrypt(&cbc, ours_key, &a).unwrap(), data);

            let params = ctr_params(iv16);
            let ctr = Mechanism::VendorDefined(VendorDefinedMechanism::new(
                MechanismType::AES_CTR,
                Some(&params),
            ));
            let a = s.encrypt(&ctr, ours_key, &data).unwrap();
            assert_eq!(
                a,
                hs.encrypt(&ctr, hsm_key, &data).unwrap(),
                "CTR, key {len} B, data {size} B"
            );
            assert_eq!(s.decrypt(&ctr, ours_key, &a).unwrap(), data);
        }
    }
}

#[test]
fn multi_part_equals_single_part() {
    let _t = TestToken::new();
    let p = ours();
    let s = user_session(&p, token_slot(&p));
    let key = generate(&s, false, vec![]);
    let data = random_bytes(1000);
    let iv16 = [9u8; 16];
    let params = ctr_params(iv16);
    let mut gcm_iv = [5u8; 12];
    let mechs = [
        Mechanism::AesCbcPad(iv16),
        Mechanism::VendorDefined(VendorDefinedMechanism::new(
            MechanismType::AES_CTR,
            Some(&params),
        )),
        Mechanism::AesGcm(GcmParams::new(&mut gcm_iv, b"hdr", 128.into()).unwrap()),
    ];
    for m in &mechs {
        let whole = s.encrypt(m, key, &data).unwrap();
        s.encrypt_init(m, key).unwrap();
        let mut parts = Vec::new();
        for chunk in data.chunks(333) {
            parts.extend(s.encrypt_update(chunk).unwrap());
        }
        parts.extend(s.encrypt_final().unwrap());
        assert_eq!(parts, whole, "{m:?}");
        s.decrypt_init(m, key).unwrap();
        let mut back = Vec::new();
        for chunk in whole.chunks(100) {
            back.extend(s.decrypt_update(chunk).unwrap());
        }
        back.extend(s.decrypt_final().unwrap());
        assert_eq!(back, data, "{m:?}");
    }
}

#[test]
fn tampered_gcm_ciphertext_or_tag_is_rejected() {
    let _t = TestToken::new();
    let p = ours();
    let s = user_session(&p, token_slot(&p));
    let key = generate(&s, false, vec![]);
    let ct = gcm_encrypt(&s, key, &[1; 12], b"aad", b"attack at dawn").unwrap();
    for i in [0, ct.len() - 1] {
        let mut bad = ct.clone();
        bad[i] ^= 1;
        let e = gcm_decrypt(&s, key, &[1; 12], b"aad", &bad).unwrap_err();
        assert_eq!(rv(e), RvError::EncryptedDataInvalid, "byte {i}");
    }
    let e = gcm_decrypt(&s, key, &[1; 12], b"other", &ct).unwrap_err();
    assert_eq!(rv(e), RvError::EncryptedDataInvalid, "AAD is authenticated");
    // The failed operation ended; the next one starts cleanly.
    assert_eq!(
        gcm_decrypt(&s, key, &[1; 12], b"aad", &ct).unwrap(),
        b"attack at dawn"
    );
    // A mechanism the key does not allow.
    let limited = generate(
        &s,
        false,
        vec![Attribute::AllowedMechanisms(vec![
            MechanismType::AES_CBC_PAD,
        ])],
    );
    let e = gcm_encrypt(&s, limited, &[1; 12], b"", b"x").unwrap_err();
    assert_eq!(rv(e), RvError::MechanismInvalid);
    let enc_only = generate(&s, false, vec![Attribute::Decrypt(false)]);
    let e = gcm_decrypt(&s, enc_only, &[1; 12], b"", &ct).unwrap_err();
    assert_eq!(rv(e), RvError::KeyFunctionNotPermitted);
}

#[test]
fn store_and_log_hold_no_clear_dek_bytes() {
    let t = TestToken::new();
    let p = ours();
    let s = user_session(&p, token_slot(&p));
    let value = random_bytes(32);
    let dek = import(&s, &value, true, vec![Attribute::Label(b"known".to_vec())]);
    gcm_encrypt(&s, dek, &[1; 12], b"", b"x").unwrap();
    drop(s);
    p.finalize().unwrap();
    let mut scanned = 0;
    for f in [
        t.store_path.clone(),
        t.store_path.with_extension("sqlite-wal"),
        t.log_file(),
    ] {
        if let Ok(bytes) = std::fs::read(&f) {
            scanned += 1;
            assert!(
                !bytes.windows(8).any(|w| value.windows(8).any(|v| v == w)),
                "{} holds DEK bytes",
                f.display()
            );
        }
    }
    assert!(scanned >= 2, "the store and the log must exist");
    let conn = rusqlite::Connection::open(&t.store_path).unwrap();
    let n: i64 = conn
        .query_row("SELECT count(*) FROM dek", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 1);
}

/// Swap two rows' records, or loosen a bound attribute, behind the module's
/// back: the HSM's tag check refuses to unwrap.
#[test]
fn a_record_moved_or_altered_in_the_store_fails_to_unwrap() {
    let t = TestToken::new();
    let p = ours();
    let s = user_session(&p, token_slot(&p));
    let a = generate(&s, true, vec![Attribute::Label(b"a".to_vec())]);
    let b = generate(
        &s,
        true,
        vec![Attribute::Label(b"b".to_vec()), Attribute::Decrypt(false)],
    );
    gcm_encrypt(&s, a, &[1; 12], b"", b"x").unwrap();
    gcm_encrypt(&s, b, &[1; 12], b"", b"x").unwrap();
    drop(s);
    p.finalize().unwrap();

    let conn = rusqlite::Connection::open(&t.store_path).unwrap();
    let rec = |label: &str| -> Vec<u8> {
        conn.query_row(
            "SELECT record FROM dek WHERE label = ?1",
            [label.as_bytes()],
            |r| r.get(0),
        )
        .unwrap()
    };
    let (ra, rb) = (rec("a"), rec("b"));
    conn.execute(
        "UPDATE dek SET record = ?1 WHERE label = ?2",
        rusqlite::params![rb, b"a".to_vec()],
    )
    .unwrap();
    conn.execute(
        "UPDATE dek SET record = ?1 WHERE label = ?2",
        rusqlite::params![ra, b"b".to_vec()],
    )
    .unwrap();
    drop(conn);

    let p = ours();
    let s = user_session(&p, token_slot(&p));
    for label in [b"a", b"b"] {
        let h = s.find_objects(&[Attribute::Label(label.to_vec())]).unwrap()[0];
        let e = gcm_encrypt(&s, h, &[1; 12], b"", b"x").unwrap_err();
        assert_eq!(rv(e), RvError::VendorDefined(CKR_HSME_RECORD_INVALID));
    }
    drop(s);
    p.finalize().unwrap();

    // Put the records back, then turn CKA_DECRYPT on for "b" in its stored
    // attributes: the record no longer matches and must not open.
    let conn = rusqlite::Connection::open(&t.store_path).unwrap();
    conn.execute(
        "UPDATE dek SET record = ?1 WHERE label = ?2",
        rusqlite::params![ra, b"a".to_vec()],
    )
    .unwrap();
    conn.execute(
        "UPDATE dek SET record = ?1 WHERE label = ?2",
        rusqlite::params![rb, b"b".to_vec()],
    )
    .unwrap();
    let attrs: Vec<u8> = conn
        .query_row(
            "SELECT attrs FROM dek WHERE label = ?1",
            [b"b".to_vec()],
            |r| r.get(0),
        )
        .unwrap();
    let loosened = set_bool_attr(&attrs, cryptoki_sys::CKA_DECRYPT, 1);
    conn.execute(
        "UPDATE dek SET attrs = ?1 WHERE label = ?2",
        rusqlite::params![loosened, b"b".to_vec()],
    )
    .unwrap();
    drop(conn);

    let p = ours();
    let s = user_session(&p, token_slot(&p));
    let a = s.find_objects(&[Attribute::Label(b"a".to_vec())]).unwrap()[0];
    gcm_encrypt(&s, a, &[1; 12], b"", b"x").expect("the restored record opens again");
    let b = s.find_objects(&[Attribute::Label(b"b".to_vec())]).unwrap()[0];
    let e = gcm_decrypt(&s, b, &[1; 12], b"", &[0; 17]).unwrap_err();
    assert_eq!(rv(e), RvError::VendorDefined(CKR_HSME_RECORD_INVALID));
}

#[test]
fn the_kek_stays_on_the_hsm_and_cannot_encrypt_for_callers() {
    let _t = TestToken::new();
    let p = ours();
    let s = user_session(&p, token_slot(&p));
    let kek = s
        .find_objects(&[Attribute::Label(KEK_LABEL.as_bytes().to_vec())])
        .unwrap();
    assert_eq!(kek.len(), 1, "the KEK is visible through the module");
    let dek = generate(&s, true, vec![]);
    gcm_encrypt(&s, dek, &[1; 12], b"", b"x").unwrap();
    let e = gcm_encrypt(&s, kek[0], &[1; 12], b"", b"x").unwrap_err();
    assert_eq!(
        rv(e),
        RvError::KeyFunctionNotPermitted,
        "the KEK would open stored records"
    );
    assert_sensitive(&s, kek[0]);
    // Nor copied (a copy could decrypt records), changed, or destroyed.
    let e = s
        .copy_object(kek[0], &[Attribute::Label(b"copy".to_vec())])
        .unwrap_err();
    assert_eq!(rv(e), RvError::ActionProhibited);
    let e = s
        .update_attributes(kek[0], &[Attribute::Label(b"renamed".to_vec())])
        .unwrap_err();
    assert_eq!(rv(e), RvError::ActionProhibited);
    assert_eq!(
        rv(s.destroy_object(kek[0]).unwrap_err()),
        RvError::ActionProhibited
    );
    // Nor serve as an AES oracle: CBC/ECB key derivation or CMAC with the
    // KEK would reveal GCM keystream blocks of the stored records.
    let data = [0u8; 32];
    let derive = Mechanism::AesCbcEncryptData(cryptoki::mechanism::ekdf::AesCbcDeriveParams::new(
        [0; 16], &data,
    ));
    let e = s.derive_key(
        &derive,
        kek[0],
        &aes_template(
            false,
            vec![
                Attribute::ValueLen(32.into()),
                Attribute::Sensitive(false),
                Attribute::Extractable(true),
            ],
        ),
    );
    assert_eq!(rv(e.unwrap_err()), RvError::KeyFunctionNotPermitted);
    assert_eq!(
        rv(s.sign(&Mechanism::AesCMac, kek[0], b"block").unwrap_err()),
        RvError::KeyFunctionNotPermitted
    );
    let e = s.unwrap_key(
        &Mechanism::AesCbcPad([0; 16]),
        kek[0],
        &[0; 48],
        &aes_template(false, vec![]),
    );
    assert_eq!(rv(e.unwrap_err()), RvError::KeyFunctionNotPermitted);
    gcm_encrypt(&s, dek, &[1; 12], b"", b"x").unwrap();
    let hsm = init_pkcs11(&softhsm_module_path());
    let hs = user_session_raw(&hsm);
    let k = hs
        .find_objects(&[Attribute::Label(KEK_LABEL.as_bytes().to_vec())])
        .unwrap();
    assert_eq!(k.len(), 1);
    assert!(!bool_attr(&hs, k[0], AttributeType::Extractable));
    assert!(bool_attr(&hs, k[0], AttributeType::Sensitive));
}

#[test]
fn wrap_and_unwrap_with_the_kek_match_softhsm() {
    let _t = TestToken::new();
    let p = ours();
    let s = user_session(&p, token_slot(&p));
    let kek = s
        .find_objects(&[Attribute::Label(KEK_LABEL.as_bytes().to_vec())])
        .unwrap()[0];
    let value = random_bytes(32);
    let dek = import(&s, &value, false, vec![Attribute::Extractable(true)]);
    let hsm = init_pkcs11(&softhsm_module_path());
    let hs = user_session_raw(&hsm);
    let hkek = hs
        .find_objects(&[Attribute::Label(KEK_LABEL.as_bytes().to_vec())])
        .unwrap()[0];
    let hkey = import(&hs, &value, false, vec![Attribute::Extractable(true)]);
    for m in [Mechanism::AesKeyWrap, Mechanism::AesKeyWrapPad] {
        let wrapped = s.wrap_key(&m, kek, dek).unwrap();
        // AES key wrap is deterministic: SoftHSM2 must produce the same bytes.
        assert_eq!(wrapped, hs.wrap_key(&m, hkek, hkey).unwrap(), "{m:?}");
        if matches!(m, Mechanism::AesKeyWrapPad) {
            // PKCS#11 3.0 numbers RFC 5649 0x210B; SoftHSM2 calls it 0x210A.
            assert_eq!(
                raw_wrap(&s, cryptoki_sys::CKM_AES_KEY_WRAP_KWP, kek, dek),
                wrapped
            );
        }
        // Unwrapped with the KEK, a key may not come back readable: that
        // round trip would reveal a sensitive key.
        let readable = aes_template(
            false,
            vec![Attribute::Extractable(true), Attribute::Sensitive(false)],
        );
        assert_eq!(
            rv(s.unwrap_key(&m, kek, &wrapped, &readable).unwrap_err()),
            RvError::TemplateInconsistent
        );
        let on_backend = aes_template(
            false,
            vec![Attribute::VendorDefined((
                AttributeType::VendorDefined(0xC845_0002),
                vec![1],
            ))],
        );
        assert_eq!(
            rv(s.unwrap_key(&m, kek, &wrapped, &on_backend).unwrap_err()),
            RvError::TemplateInconsistent
        );
        let back = s
            .unwrap_key(
                &m,
                kek,
                &wrapped,
                &aes_template(false, vec![Attribute::Extractable(true)]),
            )
            .unwrap();
        assert_sensitive(&s, back);
        // Same key: same ciphertext as the original.
        let ct = gcm_encrypt(&s, dek, &[6; 12], b"", b"same key?").unwrap();
        assert_eq!(
            gcm_encrypt(&s, back, &[6; 12], b"", b"same key?").unwrap(),
            ct
        );
        // And it wraps to the same bytes again.
        assert_eq!(s.wrap_key(&m, kek, back).unwrap(), wrapped);
        assert!(!bool_attr(&s, back, AttributeType::Local));
    }
    let locked = generate(&s, false, vec![]);
    let e = s
        .wrap_key(&Mechanism::AesKeyWrapPad, kek, locked)
        .unwrap_err();
    assert_eq!(rv(e), RvError::KeyUnextractable);
}

/// C_WrapKey through the module's raw function list, for a mechanism number
/// cryptoki has no name for.
fn raw_wrap(s: &Session, mech: u64, wrapping: ObjectHandle, key: ObjectHandle) -> Vec<u8> {
    use cryptoki_sys::{CKR_OK, CK_MECHANISM};
    let list = raw_list();
    let wrap = list.C_WrapKey.unwrap();
    let mut m = CK_MECHANISM {
        mechanism: mech,
        pParameter: std::ptr::null_mut(),
        ulParameterLen: 0,
    };
    let mut len = 0;
    let rv = unsafe {
        wrap(
            s.handle(),
            &mut m,
            wrapping.handle(),
            key.handle(),
            std::ptr::null_mut(),
            &mut len,
        )
    };
    assert_eq!(rv, CKR_OK);
    let mut out = vec![0u8; len as usize];
    let rv = unsafe {
        wrap(
            s.handle(),
            &mut m,
            wrapping.handle(),
            key.handle(),
            out.as_mut_ptr(),
            &mut len,
        )
    };
    assert_eq!(rv, CKR_OK);
    out.truncate(len as usize);
    out
}

#[test]
fn session_deks_vanish_with_their_session_and_are_not_stored() {
    let t = TestToken::new();
    let p = ours();
    let slot = token_slot(&p);
    let s1 = user_session(&p, slot);
    let s2 = p.open_rw_session(slot).unwrap();
    let dek = generate(&s1, false, vec![Attribute::Label(b"eph".to_vec())]);
    // Visible from the application's other session while s1 lives.
    assert_eq!(
        s2.find_objects(&[Attribute::Label(b"eph".to_vec())])
            .unwrap(),
        vec![dek]
    );
    drop(s1);
    assert!(s2
        .find_objects(&[Attribute::Label(b"eph".to_vec())])
        .unwrap()
        .is_empty());
    assert_eq!(
        rv(gcm_encrypt(&s2, dek, &[1; 12], b"", b"x").unwrap_err()),
        RvError::KeyHandleInvalid
    );
    let conn = rusqlite::Connection::open(&t.store_path).unwrap();
    let n: i64 = conn
        .query_row("SELECT count(*) FROM dek", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 0);
}

#[test]
fn find_objects_sees_deks_and_backend_objects_with_stable_handles() {
    let _t = TestToken::new();
    let p = ours();
    let slot = token_slot(&p);
    let s1 = user_session(&p, slot);
    let a = generate(
        &s1,
        true,
        vec![Attribute::Label(b"a".to_vec()), Attribute::Id(vec![7])],
    );
    let b = generate(&s1, false, vec![Attribute::Label(b"b".to_vec())]);
    let all = s1.find_objects(&[]).unwrap();
    assert_eq!(
        all.len(),
        4,
        "empty template: KEK + audit key + 2 DEKs, got {all:?}"
    );
    assert!(all.contains(&a) && all.contains(&b));
    let s2 = p.open_ro_session(slot).unwrap();
    assert_eq!(
        s2.find_objects(&[Attribute::Id(vec![7])]).unwrap(),
        vec![a],
        "same handle in another session"
    );
    let secret = s2
        .find_objects(&[Attribute::Class(ObjectClass::SECRET_KEY)])
        .unwrap();
    assert_eq!(secret.len(), 4);
    assert!(s2
        .find_objects(&[Attribute::Class(ObjectClass::CERTIFICATE)])
        .unwrap()
        .is_empty());
    s1.destroy_object(a).unwrap();
    assert_eq!(s2.find_objects(&[]).unwrap().len(), 3);
    let e = gcm_encrypt(&s1, a, &[1; 12], b"", b"x").unwrap_err();
    assert_eq!(rv(e), RvError::KeyHandleInvalid);
    // A new object never reuses a destroyed handle.
    let c = generate(&s1, true, vec![]);
    assert!(c != a && c != b);
}

/// Two processes share the store: a DEK made here is found and used by a
/// child process, which must give the same ciphertext.
#[test]
fn a_second_process_finds_and_uses_the_dek() {
    if std::env::var_os("HSME_CHILD").is_some() {
        return child_encrypts();
    }
    let t = TestToken::new();
    let p = ours();
    let s = user_session(&p, token_slot(&p));
    let dek = generate(&s, true, vec![Attribute::Label(b"shared".to_vec())]);
    let expect = gcm_encrypt(&s, dek, &[4; 12], b"aad", b"shared secret").unwrap();
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "a_second_process_finds_and_uses_the_dek",
            "--exact",
            "--nocapture",
        ])
        .env("HSME_CHILD", "1")
        .env("SOFTHSM2_CONF", &t.softhsm_conf)
        .env("HSM_ENVELOPE_CONF", &t.conf)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "child failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let hex: String = expect.iter().map(|b| format!("{b:02x}")).collect();
    assert!(
        stdout.contains(&format!("CIPHERTEXT={hex}")),
        "child printed: {stdout}"
    );
}

fn child_encrypts() {
    let p = ours();
    let s = user_session(&p, token_slot(&p));
    let found = s
        .find_objects(&[Attribute::Label(b"shared".to_vec())])
        .unwrap();
    assert_eq!(found.len(), 1);
    let ct = gcm_encrypt(&s, found[0], &[4; 12], b"aad", b"shared secret").unwrap();
    let hex: String = ct.iter().map(|b| format!("{b:02x}")).collect();
    println!("CIPHERTEXT={hex}");
}

#[test]
fn calls_after_finalize_are_refused() {
    let _t = TestToken::new();
    let p = ours();
    let slot = token_slot(&p);
    let p2 = p.clone();
    p.finalize().unwrap();
    let e = p2.open_rw_session(slot).unwrap_err();
    assert_eq!(rv(e), RvError::CryptokiNotInitialized);
}

/// The host program drives SoftHSM2 itself too, and got there first: our
/// backend C_Initialize and C_Login answer "already", and we carry on; our
/// C_Finalize must leave the backend initialised for the host.
#[test]
fn the_host_may_use_the_backend_itself() {
    let _t = TestToken::new();
    let hsm = init_pkcs11(&softhsm_module_path());
    let hs = user_session_raw(&hsm);
    let p = ours();
    let s = p.open_rw_session(token_slot(&p)).unwrap();
    let e = s
        .login(UserType::User, Some(&AuthPin::new(USER_PIN.into())))
        .unwrap_err();
    assert_eq!(rv(e), RvError::UserAlreadyLoggedIn);
    let dek = generate(&s, true, vec![]);
    gcm_encrypt(&s, dek, &[1; 12], b"", b"x").unwrap();
    drop(s);
    p.finalize().unwrap();
    let kek = hs
        .find_objects(&[Attribute::Label(KEK_LABEL.as_bytes().to_vec())])
        .unwrap();
    assert_eq!(kek.len(), 1, "the host's backend still works");
}

/// Threads with a session each keep encrypting while another finalizes the
/// module: every call either completes or answers
/// CKR_CRYPTOKI_NOT_INITIALIZED / CKR_SESSION_HANDLE_INVALID; nothing crashes.
#[test]
fn finalize_waits_for_calls_in_progress() {
    let _t = TestToken::new();
    let p = ours();
    let slot = token_slot(&p);
    let s = user_session(&p, slot);
    let key = generate(&s, false, vec![]);
    let data = random_bytes(64 * 1024);
    let start = std::sync::Barrier::new(3);
    // How many workers have finished one encryption (C_Finalize comes after
    // both have, whatever the machine's load: no wall-clock wait).
    let busy = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..2)
            .map(|_| {
                let (p, data, start, busy) = (p.clone(), &data, &start, &busy);
                scope.spawn(move || {
                    let s = p.open_rw_session(slot).unwrap();
                    start.wait();
                    let mut done = 0u32;
                    loop {
                        match gcm_encrypt(&s, key, &[2; 12], b"", data) {
                            Ok(ct) => {
                                assert_eq!(ct.len(), data.len() + 16);
                                if done == 0 {
                                    busy.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                                }
                                done += 1;
                            }
                            Err(e) => {
                                let e = rv(e);
                                assert!(
                                    matches!(
                                        e,
                                        RvError::CryptokiNotInitialized
                                            | RvError::SessionHandleInvalid
                                    ),
                                    "unexpected {e:?}"
                                );
                                std::mem::forget(s);
                                return done;
                            }
                        }
                    }
                })
            })
            .collect();
        start.wait();
        while busy.load(std::sync::atomic::Ordering::SeqCst) < 2 {
            std::thread::yield_now();
        }
        std::mem::forget(s);
        p.clone().finalize().unwrap();
        for w in workers {
            assert!(
                w.join().unwrap() > 0,
                "each worker encrypted before C_Finalize"
            );
        }
    });
}

/// PKCS#11 lets the input and output of C_Encrypt/C_Decrypt be the same
/// buffer; in-place use must give the same bytes as separate buffers.
#[test]
fn in_place_encryption_and_decryption() {
    use cryptoki_sys::{CKM_AES_CBC_PAD, CKM_AES_GCM, CKR_OK, CK_GCM_PARAMS, CK_MECHANISM};
    let _t = TestToken::new();
    let p = ours();
    let s = user_session(&p, token_slot(&p));
    let key = generate(&s, false, vec![]);
    let f = raw_list();
    let data = random_bytes(100);
    let mut iv = [3u8; 12];
    let mut gcm = CK_GCM_PARAMS {
        pIv: iv.as_mut_ptr(),
        ulIvLen: 12,
        ulIvBits: 96,
        pAAD: std::ptr::null_mut(),
        ulAADLen: 0,
        ulTagBits: 128,
    };
    let mut cbc_iv = [4u8; 16];
    let mechs = [
        CK_MECHANISM {
            mechanism: CKM_AES_GCM,
            pParameter: &mut gcm as *mut _ as *mut _,
            ulParameterLen: size_of::<CK_GCM_PARAMS>() as u64,
        },
        CK_MECHANISM {
            mechanism: CKM_AES_CBC_PAD,
            pParameter: cbc_iv.as_mut_ptr() as *mut _,
            ulParameterLen: 16,
        },
    ];
    for mut m in mechs {
        let mut expect = vec![0u8; 200];
        let mut n = 200;
        let mut input = data.clone();
        unsafe {
            assert_eq!(
                f.C_EncryptInit.unwrap()(s.handle(), &mut m, key.handle()),
                CKR_OK
            );
            assert_eq!(
                f.C_Encrypt.unwrap()(
                    s.handle(),
                    input.as_mut_ptr(),
                    100,
                    expect.as_mut_ptr(),
                    &mut n
                ),
                CKR_OK
            );
        }
        expect.truncate(n as usize);
        let mut buf = data.clone();
        buf.resize(200, 0);
        let mut n = 200;
        unsafe {
            assert_eq!(
                f.C_EncryptInit.unwrap()(s.handle(), &mut m, key.handle()),
                CKR_OK
            );
            let ptr = buf.as_mut_ptr();
            assert_eq!(
                f.C_Encrypt.unwrap()(s.handle(), ptr, 100, ptr, &mut n),
                CKR_OK
            );
        }
        assert_eq!(&buf[..n as usize], &expect[..], "in-place encryption");
        let ct_len = n;
        let mut n = 200;
        unsafe {
            assert_eq!(
                f.C_DecryptInit.unwrap()(s.handle(), &mut m, key.handle()),
                CKR_OK
            );
            let ptr = buf.as_mut_ptr();
            assert_eq!(
                f.C_Decrypt.unwrap()(s.handle(), ptr, ct_len, ptr, &mut n),
                CKR_OK
            );
        }
        assert_eq!(&buf[..n as usize], &data[..], "in-place decryption");
    }
}
