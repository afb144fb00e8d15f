//! Attacks on the module's promises, each from a review finding: decoy
//! KEKs, rows changed behind a running module, login left behind by closed
//! sessions, wrap/unwrap round trips.

mod common;

use common::p11::*;
use common::*;
use cryptoki::error::RvError;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass};
use cryptoki::session::{SessionState, UserType};
use cryptoki::types::AuthPin;

const CKA_HSME_ON_BACKEND: u64 = 0xC845_0002;
const CKR_HSME_RECORD_INVALID: u64 = 0xC845_0002;

fn on_backend() -> Attribute {
    Attribute::VendorDefined((AttributeType::VendorDefined(CKA_HSME_ON_BACKEND), vec![1]))
}

/// A second key labelled like the KEK would make the KEK ambiguous (denial
/// of service) or pass for it and dodge the KEK's restrictions.
#[test]
fn no_decoy_kek_can_be_made_through_the_module() {
    let _t = TestToken::new();
    let p = ours();
    let s = user_session(&p, token_slot(&p));
    let kek_label = Attribute::Label(KEK_LABEL.as_bytes().to_vec());
    let decoy = aes_template(
        false,
        vec![
            on_backend(),
            kek_label.clone(),
            Attribute::ValueLen(32.into()),
        ],
    );
    let e = s.generate_key(&Mechanism::AesKeyGen, &decoy).unwrap_err();
    assert_eq!(rv(e), RvError::AttributeValueInvalid);
    let e = s.create_object(&aes_template(
        false,
        vec![
            on_backend(),
            kek_label.clone(),
            Attribute::Value(vec![1; 32]),
        ],
    ));
    assert_eq!(rv(e.unwrap_err()), RvError::AttributeValueInvalid);
    // A backend key of its own may not be renamed to the KEK's label.
    let other = s
        .generate_key(
            &Mechanism::AesKeyGen,
            &aes_template(false, vec![on_backend(), Attribute::ValueLen(32.into())]),
        )
        .unwrap();
    let e = s.update_attributes(other, &[kek_label]).unwrap_err();
    assert_eq!(rv(e), RvError::AttributeValueInvalid);
    // The audit log's HMAC key is protected the same way: no decoys, no MACs
    // for applications.
    let audit = s
        .find_objects(&[Attribute::Label(b"audit-hmac".to_vec())])
        .unwrap();
    assert_eq!(audit.len(), 1);
    let e = s
        .sign(&Mechanism::Sha256Hmac, audit[0], b"checkpoint")
        .unwrap_err();
    assert_eq!(rv(e), RvError::KeyFunctionNotPermitted);
    let e = s
        .generate_key(
            &Mechanism::AesKeyGen,
            &aes_template(
                false,
                vec![
                    on_backend(),
                    Attribute::Label(b"audit-hmac".to_vec()),
                    Attribute::ValueLen(32.into()),
                ],
            ),
        )
        .unwrap_err();
    assert_eq!(rv(e), RvError::AttributeValueInvalid);
    assert_eq!(
        rv(s.destroy_object(audit[0]).unwrap_err()),
        RvError::ActionProhibited
    );
    // DEKs still work: there is one KEK.
    let dek = generate(&s, true, vec![]);
    gcm_encrypt(&s, dek, &[1; 12], b"", b"x").unwrap();
}

/// A row whose attributes are loosened while the module runs (and the DEK
/// is cached) must not be served from the cache: the HSM check applies.
#[test]
fn a_row_changed_under_a_running_module_is_not_served_from_cache() {
    let t = TestToken::new();
    let p = ours();
    let s = user_session(&p, token_slot(&p));
    let dek = generate(&s, true, vec![Attribute::Label(b"victim".to_vec())]);
    gcm_encrypt(&s, dek, &[1; 12], b"", b"x").unwrap();
    let conn = rusqlite::Connection::open(&t.store_path).unwrap();
    let attrs: Vec<u8> = conn
        .query_row("SELECT attrs FROM dek", [], |r| r.get(0))
        .unwrap();
    let loosened = set_bool_attr(
        &set_bool_attr(&attrs, cryptoki_sys::CKA_SENSITIVE, 0),
        cryptoki_sys::CKA_EXTRACTABLE,
        1,
    );
    conn.execute(
        "UPDATE dek SET attrs = ?1, generation = generation + 1",
        [loosened],
    )
    .unwrap();
    drop(conn);
    // The next search picks up the changed row.
    let found = s
        .find_objects(&[Attribute::Label(b"victim".to_vec())])
        .unwrap();
    assert_eq!(found, vec![dek]);
    let e = s.get_attributes(dek, &[AttributeType::Value]).unwrap_err();
    assert_eq!(rv(e), RvError::VendorDefined(CKR_HSME_RECORD_INVALID));
    let e = gcm_encrypt(&s, dek, &[1; 12], b"", b"x").unwrap_err();
    assert_eq!(rv(e), RvError::VendorDefined(CKR_HSME_RECORD_INVALID));
}

/// Closing the application's last session logs it out, backend included:
/// a new session must not find private objects or be logged in.
#[test]
fn closing_the_last_session_logs_out() {
    let _t = TestToken::new();
    let p = ours();
    let slot = token_slot(&p);
    let s = user_session(&p, slot);
    let dek = generate(&s, true, vec![]);
    gcm_encrypt(&s, dek, &[1; 12], b"", b"x").unwrap();
    drop(s);
    let s = p.open_rw_session(slot).unwrap();
    assert!(matches!(
        s.get_session_info().unwrap().session_state(),
        SessionState::RwPublic
    ));
    assert!(
        s.find_objects(&[Attribute::Class(ObjectClass::SECRET_KEY)])
            .unwrap()
            .is_empty(),
        "private objects hidden"
    );
    s.login(UserType::User, Some(&AuthPin::new(USER_PIN.into())))
        .expect("a fresh login, not 'already logged in'");
    let found = s.find_objects(&[Attribute::KeyType(KeyType::AES)]).unwrap();
    assert_eq!(found.len(), 2, "KEK and DEK after login");
}

/// A wrapping key that is not trusted cannot wrap a DEK marked
/// CKA_WRAP_WITH_TRUSTED.
#[test]
fn wrap_with_trusted_is_enforced() {
    let _t = TestToken::new();
    let p = ours();
    let s = user_session(&p, token_slot(&p));
    let kek = s
        .find_objects(&[Attribute::Label(KEK_LABEL.as_bytes().to_vec())])
        .unwrap()[0];
    let dek = generate(
        &s,
        false,
        vec![
            Attribute::Extractable(true),
            Attribute::WrapWithTrusted(true),
        ],
    );
    let e = s.wrap_key(&Mechanism::AesKeyWrapPad, kek, dek).unwrap_err();
    assert_eq!(rv(e), RvError::KeyNotWrappable);
    let plain = generate(&s, false, vec![Attribute::Extractable(true)]);
    s.wrap_key(&Mechanism::AesKeyWrapPad, kek, plain).unwrap();
}
