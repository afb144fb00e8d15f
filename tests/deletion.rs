//! Recoverable deletion: destroying a token DEK through the module hides it
//! for the retention period; it can be recovered with its attributes (old
//! ciphertexts decrypt again) and is purged for good only when retention
//! has passed or purge protection is off.

mod common;

use common::p11::*;
use common::*;
use cryptoki::error::RvError;
use cryptoki::object::{Attribute, AttributeType};
use hsm_envelope::admin::Admin;
use hsm_envelope::config::Config;

fn admin() -> Admin {
    Admin::connect(Config::from_env().unwrap(), USER_PIN).expect("admin login")
}

fn unique_id(s: &cryptoki::session::Session, h: cryptoki::object::ObjectHandle) -> [u8; 16] {
    match s
        .get_attributes(h, &[AttributeType::UniqueId])
        .unwrap()
        .pop()
    {
        Some(Attribute::UniqueId(hex)) => {
            let hex = String::from_utf8(hex).unwrap();
            let v: Vec<u8> = (0..32)
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                .collect();
            v.try_into().unwrap()
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn destroy_recover_decrypt_then_purge_after_retention() {
    let t = TestToken::with_extra_config("purge_protection = true\nretention_days = 7\n");
    let p = ours();
    let s = user_session(&p, token_slot(&p));
    let dek = generate(&s, true, vec![Attribute::Label(b"doomed".to_vec())]);
    let id = unique_id(&s, dek);
    let ct = gcm_encrypt(&s, dek, &[8; 12], b"aad", b"keep me").unwrap();
    s.destroy_object(dek).unwrap();
    assert!(s
        .find_objects(&[Attribute::Label(b"doomed".to_vec())])
        .unwrap()
        .is_empty());
    assert_eq!(
        rv(gcm_encrypt(&s, dek, &[8; 12], b"", b"x").unwrap_err()),
        RvError::KeyHandleInvalid
    );
    drop(s);
    p.finalize().unwrap();

    let a = admin();
    let deleted = a.env.deleted().unwrap();
    assert_eq!(deleted.len(), 1);
    assert_eq!(deleted[0].id, id);
    let purge_after = deleted[0].purge_after;
    assert!(purge_after - deleted[0].deleted_at >= 7 * 86_400);
    // Under purge protection, not before the retention period ends.
    let e = a.env.purge(&id, purge_after - 1).unwrap_err().to_string();
    assert!(e.contains("purge protection"), "{e}");
    a.env.recover(&id).unwrap();
    assert!(a.env.deleted().unwrap().is_empty());
    a.close();

    let p = ours();
    let s = user_session(&p, token_slot(&p));
    let back = s
        .find_objects(&[Attribute::Label(b"doomed".to_vec())])
        .unwrap();
    assert_eq!(back.len(), 1, "recovered with its attributes");
    assert_eq!(
        gcm_decrypt(&s, back[0], &[8; 12], b"aad", &ct).unwrap(),
        b"keep me"
    );
    let record: Vec<u8> = rusqlite::Connection::open(&t.store_path)
        .unwrap()
        .query_row("SELECT record FROM dek", [], |r| r.get(0))
        .unwrap();
    s.destroy_object(back[0]).unwrap();
    drop(s);
    p.finalize().unwrap();

    // Once retention has passed (a simulated clock), the purge goes through
    // and leaves no bytes of the record in the store file or its WAL.
    let a = admin();
    let purge_after = a.env.deleted().unwrap()[0].purge_after;
    a.env.purge(&id, purge_after).unwrap();
    assert!(a.env.deleted().unwrap().is_empty());
    a.close();
    for f in [
        t.store_path.clone(),
        t.store_path.with_extension("sqlite-wal"),
    ] {
        if let Ok(bytes) = std::fs::read(&f) {
            assert!(
                !bytes.windows(record.len()).any(|w| w == record.as_slice()),
                "{} still holds the record",
                f.display()
            );
        }
    }
}

#[test]
fn without_protection_a_deleted_dek_can_be_purged_at_once() {
    let _t = TestToken::new();
    let p = ours();
    let s = user_session(&p, token_slot(&p));
    let dek = generate(&s, true, vec![]);
    let id = unique_id(&s, dek);
    s.destroy_object(dek).unwrap();
    drop(s);
    p.finalize().unwrap();
    let a = admin();
    a.env.purge(&id, hsm_envelope::clock::unix_secs()).unwrap();
    a.close();
}

/// Purge protection is recorded in the store; a configuration saying false
/// afterwards is refused at C_Initialize, naming the key.
#[test]
fn purge_protection_cannot_be_turned_off() {
    let t = TestToken::with_extra_config("purge_protection = true\n");
    let p = ours();
    drop(user_session(&p, token_slot(&p)));
    p.finalize().unwrap();
    let text = std::fs::read_to_string(&t.conf)
        .unwrap()
        .replace("purge_protection = true", "purge_protection = false");
    std::fs::write(&t.conf, text).unwrap();
    let e = Config::from_env().and_then(|c| Admin::connect(c, USER_PIN).map(|_| ()));
    let pkcs11 = cryptoki::context::Pkcs11::new(module_path()).unwrap();
    let init = pkcs11.initialize(cryptoki::context::CInitializeArgs::new(
        cryptoki::context::CInitializeFlags::OS_LOCKING_OK,
    ));
    assert!(init.is_err(), "C_Initialize must refuse the configuration");
    // The admin tool refuses too, with the reason.
    let msg = match e {
        Ok(()) => {
            let a = admin();
            a.env.deleted().map(|_| ()).unwrap_err().to_string()
        }
        Err(e) => e.to_string(),
    };
    assert!(msg.contains("purge_protection"), "{msg}");
}
