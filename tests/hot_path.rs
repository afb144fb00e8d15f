//! The shortcuts of the encrypt/decrypt hot path never outlive the facts
//! they stand for. A session remembers the DEK it last used (see
//! `token::remembered`) and a thread remembers the sessions it last used
//! (see `token::session_cache`); these tests change the facts behind their
//! backs, from other sessions and threads, and check that the next call
//! sees the change: a destroyed, changed, re-read or logged-out DEK is not
//! served from memory, and a closed session is closed on every thread.
//!
//! Each test runs in its own process (cargo nextest) with its own token.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Barrier;

use common::p11::*;
use common::*;
use cryptoki::error::RvError;
use cryptoki::mechanism::MechanismType;
use cryptoki::object::{Attribute, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use cryptoki_sys::*;

const CKR_HSME_RECORD_INVALID: u64 = 0xC845_0002;

/// Encrypt and decrypt twice each: the second of each runs on what the
/// session remembered from the first.
fn warm_up(s: &Session, key: ObjectHandle) -> Vec<u8> {
    let mut ct = Vec::new();
    for _ in 0..2 {
        ct = gcm_encrypt(s, key, &[5; 12], b"aad", b"warm").unwrap();
        assert_eq!(gcm_decrypt(s, key, &[5; 12], b"aad", &ct).unwrap(), b"warm");
    }
    ct
}

#[test]
fn a_dek_destroyed_through_another_session_is_not_used_from_memory() {
    let _t = TestToken::new();
    let p = ours();
    let slot = token_slot(&p);
    let a = user_session(&p, slot);
    let b = p.open_rw_session(slot).unwrap();
    for token in [true, false] {
        let key = generate(&a, token, vec![]);
        let ct = warm_up(&a, key);
        b.destroy_object(key).unwrap();
        let e = gcm_encrypt(&a, key, &[5; 12], b"aad", b"warm").unwrap_err();
        assert_eq!(rv(e), RvError::KeyHandleInvalid, "token DEK: {token}");
        let e = gcm_decrypt(&a, key, &[5; 12], b"aad", &ct).unwrap_err();
        assert_eq!(rv(e), RvError::KeyHandleInvalid, "token DEK: {token}");
    }
}

#[test]
fn changed_attributes_apply_at_the_next_init() {
    let _t = TestToken::new();
    let p = ours();
    let slot = token_slot(&p);
    let a = user_session(&p, slot);
    let b = p.open_rw_session(slot).unwrap();
    let key = generate(&a, true, vec![]);
    let ct = warm_up(&a, key);
    b.update_attributes(key, &[Attribute::Encrypt(false)])
        .unwrap();
    let e = gcm_encrypt(&a, key, &[5; 12], b"aad", b"warm").unwrap_err();
    assert_eq!(rv(e), RvError::KeyFunctionNotPermitted);
    assert_eq!(
        gcm_decrypt(&a, key, &[5; 12], b"aad", &ct).unwrap(),
        b"warm"
    );
    b.update_attributes(
        key,
        &[Attribute::AllowedMechanisms(vec![
            MechanismType::AES_CBC_PAD,
        ])],
    )
    .unwrap();
    let e = gcm_decrypt(&a, key, &[5; 12], b"aad", &ct).unwrap_err();
    assert_eq!(rv(e), RvError::MechanismInvalid);
}

/// Another process re-wrote the DEK's row (here: swapped in another DEK's
/// record). Once this process has read the new row, the key it remembered
/// for the old one must not be used: the new record goes to the HSM, whose
/// tag check refuses it.
#[test]
fn a_row_changed_in_the_store_is_not_served_from_memory() {
    let t = TestToken::new();
    let p = ours();
    let slot = token_slot(&p);
    let a = user_session(&p, slot);
    let x = generate(&a, true, vec![Attribute::Label(b"x".to_vec())]);
    generate(&a, true, vec![Attribute::Label(b"y".to_vec())]);
    warm_up(&a, x);

    let conn = rusqlite::Connection::open(&t.store_path).unwrap();
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .unwrap();
    let y_record: Vec<u8> = conn
        .query_row("SELECT record FROM dek WHERE label = ?1", [b"y"], |r| {
            r.get(0)
        })
        .unwrap();
    let changed = conn
        .execute(
            "UPDATE dek SET record = ?1, generation = generation + 1 WHERE label = ?2",
            rusqlite::params![y_record, b"x".to_vec()],
        )
        .unwrap();
    assert_eq!(changed, 1);
    drop(conn);

    // C_FindObjectsInit reads the store's changes; x keeps its handle.
    let found = a.find_objects(&[Attribute::Label(b"x".to_vec())]).unwrap();
    assert_eq!(found, vec![x]);
    let e = gcm_encrypt(&a, x, &[5; 12], b"aad", b"warm").unwrap_err();
    assert_eq!(rv(e), RvError::VendorDefined(CKR_HSME_RECORD_INVALID));
}

/// C_Logout through one session ends what every session remembers: a
/// private DEK's handle is gone for good, and a public DEK needs the HSM
/// (so a login) again before it is served.
#[test]
fn logout_ends_what_every_session_remembers() {
    let _t = TestToken::new();
    let p = ours();
    let slot = token_slot(&p);
    let a = user_session(&p, slot);
    let b = p.open_rw_session(slot).unwrap();
    let private = generate(&a, true, vec![]);
    let public = generate(&a, false, vec![Attribute::Private(false)]);
    warm_up(&a, private);
    warm_up(&a, public);
    b.logout().unwrap();
    let e = gcm_encrypt(&a, private, &[5; 12], b"aad", b"warm").unwrap_err();
    assert_eq!(rv(e), RvError::KeyHandleInvalid);
    gcm_encrypt(&a, public, &[5; 12], b"aad", b"warm")
        .expect_err("a public DEK's value is not served without a login");
    b.login(UserType::User, Some(&AuthPin::new(USER_PIN.into())))
        .unwrap();
    let e = gcm_encrypt(&a, private, &[5; 12], b"aad", b"warm").unwrap_err();
    assert_eq!(rv(e), RvError::KeyHandleInvalid);
    warm_up(&a, public);
}

/// Threads encrypt in a loop, each on its own session, with one DEK, while
/// the main thread destroys it: every init that starts after the destroy
/// returned fails, on every thread.
#[test]
fn a_destroy_reaches_every_thread_at_once() {
    let _t = TestToken::new();
    let p = ours();
    let slot = token_slot(&p);
    let main = user_session(&p, slot);
    let key = generate(&main, false, vec![]);
    let destroyed = AtomicBool::new(false);
    let start = Barrier::new(3);
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..2)
            .map(|_| {
                let (p, destroyed, start) = (p.clone(), &destroyed, &start);
                scope.spawn(move || {
                    let s = p.open_rw_session(slot).unwrap();
                    start.wait();
                    let mut before = 0u32;
                    loop {
                        let after = destroyed.load(Ordering::SeqCst);
                        let r = gcm_encrypt(&s, key, &[6; 12], b"", b"data");
                        if after {
                            assert_eq!(rv(r.unwrap_err()), RvError::KeyHandleInvalid);
                            return before;
                        }
                        match r {
                            Ok(_) => before += 1,
                            Err(e) => assert_eq!(rv(e), RvError::KeyHandleInvalid),
                        }
                    }
                })
            })
            .collect();
        start.wait();
        std::thread::sleep(std::time::Duration::from_millis(50));
        main.destroy_object(key).unwrap();
        destroyed.store(true, Ordering::SeqCst);
        for w in workers {
            assert!(w.join().unwrap() > 0, "each worker encrypted first");
        }
    });
}

/// A thread that used a session remembers it; closing the session on
/// another thread closes it for that thread too, even for calls that the
/// module answers without the backend.
#[test]
fn a_closed_session_is_closed_on_every_thread() {
    let _t = TestToken::new();
    let p = ours();
    let slot = token_slot(&p);
    let keep = user_session(&p, slot);
    let key = generate(&keep, false, vec![]);
    let s = p.open_rw_session(slot).unwrap();
    let h = s.handle();
    let step = Barrier::new(2);
    std::thread::scope(|scope| {
        let t = scope.spawn(|| {
            let ct = warm_up(&s, key);
            step.wait(); // the main thread closes h
            step.wait();
            let e = gcm_encrypt(&s, key, &[5; 12], b"aad", b"warm").unwrap_err();
            assert_eq!(rv(e), RvError::SessionHandleInvalid);
            let e = gcm_decrypt(&s, key, &[5; 12], b"aad", &ct).unwrap_err();
            assert_eq!(rv(e), RvError::SessionHandleInvalid);
            // Already closed: its C_CloseSession would only fail.
            std::mem::forget(s);
        });
        step.wait();
        let f = raw_list();
        assert_eq!(unsafe { f.C_CloseSession.unwrap()(h) }, CKR_OK);
        step.wait();
        t.join().unwrap();
    });
    warm_up(&keep, key);
}

/// After C_Finalize + C_Initialize, handle numbers start again: a thread
/// that used the old session with a number reaches the new one.
#[test]
fn a_handle_number_reused_by_a_new_module_instance_names_the_new_session() {
    let _t = TestToken::new();
    let p = ours();
    let slot = token_slot(&p);
    let f = raw_list();
    let slot_id: CK_SLOT_ID = slot.id();
    let open = |flags: CK_FLAGS| {
        let mut h: CK_SESSION_HANDLE = 0;
        let rv = unsafe {
            f.C_OpenSession.unwrap()(
                slot_id,
                flags | CKF_SERIAL_SESSION,
                std::ptr::null_mut(),
                None,
                &mut h,
            )
        };
        assert_eq!(rv, CKR_OK);
        h
    };
    let info = |h: CK_SESSION_HANDLE| {
        let mut i = CK_SESSION_INFO::default();
        let rv = unsafe { f.C_GetSessionInfo.unwrap()(h, &mut i) };
        (rv, i.flags)
    };
    let h = open(CKF_RW_SESSION);
    let step = Barrier::new(2);
    std::thread::scope(|scope| {
        let t = scope.spawn(|| {
            let (rv, flags) = info(h);
            assert_eq!(rv, CKR_OK);
            assert_ne!(flags & CKF_RW_SESSION, 0);
            step.wait(); // the main thread restarts the module
            step.wait();
            let (rv, flags) = info(h);
            assert_eq!(rv, CKR_OK);
            assert_eq!(flags & CKF_RW_SESSION, 0, "the new, read-only session");
        });
        step.wait();
        assert_eq!(
            unsafe { f.C_Finalize.unwrap()(std::ptr::null_mut()) },
            CKR_OK
        );
        let args = CK_C_INITIALIZE_ARGS {
            flags: CKF_OS_LOCKING_OK,
            ..Default::default()
        };
        let rv = unsafe { f.C_Initialize.unwrap()(&args as *const _ as *mut _) };
        assert_eq!(rv, CKR_OK);
        let mut again = open(0);
        while again < h {
            again = open(0);
        }
        assert_eq!(again, h, "handles start again in a new module instance");
        step.wait();
        t.join().unwrap();
    });
}

/// A session that encrypts message after message under one key re-uses
/// its ended operation in place (`PreparedOp::rearm`). Each init's IV,
/// AAD and key must still be the ones used: checked against RustCrypto's
/// AES-GCM across AADs that grow and shrink, another key and back, the
/// decrypt direction, a multi-part encryption and a refused init.
#[test]
fn a_re_used_operation_takes_each_init_s_iv_aad_and_key() {
    use aes_gcm::aead::{Aead, KeyInit, Payload};
    use cryptoki::mechanism::aead::GcmParams;
    use cryptoki::mechanism::Mechanism;

    let _t = TestToken::new();
    let p = ours();
    let s = user_session(&p, token_slot(&p));
    let (va, vb) = ([0x11u8; 32], [0x22u8; 32]);
    let usage = || vec![Attribute::Encrypt(true), Attribute::Decrypt(true)];
    let (a, b) = (
        import(&s, &va, false, usage()),
        import(&s, &vb, false, usage()),
    );
    let reference = |v: &[u8; 32], iv: &[u8], aad: &[u8], msg: &[u8]| {
        aes_gcm::Aes256Gcm::new_from_slice(v)
            .unwrap()
            .encrypt(iv.try_into().unwrap(), Payload { msg, aad })
            .unwrap()
    };
    let mut n = 0u8;
    let mut check = |key: ObjectHandle, v: &[u8; 32], aad_len: usize| {
        n += 1;
        let (iv, aad, pt) = (
            [n; 12],
            vec![n; aad_len],
            vec![n ^ 0x5a; 16 * n as usize + 1],
        );
        let ct = gcm_encrypt(&s, key, &iv, &aad, &pt).unwrap();
        assert_eq!(ct, reference(v, &iv, &aad, &pt), "message {n}");
        assert_eq!(
            gcm_decrypt(&s, key, &iv, &aad, &ct).unwrap(),
            pt,
            "message {n}"
        );
    };
    for aad_len in [0, 7, 40, 3, 0] {
        check(a, &va, aad_len);
    }
    check(b, &vb, 5);
    check(a, &va, 0);

    // Two multi-part encryptions on the same key (the second must not go
    // on from the first's stream), then single-part again.
    for (iv, aad) in [([0xa0; 12], b"multi".to_vec()), ([0xa1; 12], vec![])] {
        let pt = random_bytes(100);
        let mut iv_buf = iv.to_vec();
        let gcm = Mechanism::AesGcm(GcmParams::new(&mut iv_buf, &aad, 128.into()).unwrap());
        s.encrypt_init(&gcm, a).unwrap();
        let mut ct = s.encrypt_update(&pt[..37]).unwrap();
        ct.extend(s.encrypt_update(&pt[37..]).unwrap());
        ct.extend(s.encrypt_final().unwrap());
        assert_eq!(ct, reference(&va, &iv, &aad, &pt), "multi-part");
    }
    check(a, &va, 9);

    // Another tag length on the same key: a truncated tag, never the
    // kept operation's 128 bits. The FIPS build takes 128-bit tags only.
    let (iv, pt) = ([0xc0; 12], random_bytes(30));
    let mut iv_buf = iv.to_vec();
    let gcm96 = Mechanism::AesGcm(GcmParams::new(&mut iv_buf, b"", 96.into()).unwrap());
    let got = s.encrypt(&gcm96, a, &pt);
    if cfg!(feature = "fips") {
        assert_eq!(rv(got.unwrap_err()), RvError::MechanismParamInvalid);
    } else {
        let want = reference(&va, &iv, b"", &pt);
        assert_eq!(got.unwrap()[..], want[..pt.len() + 12]);
    }
    check(a, &va, 4);

    // A refused init (a tag of 129 bits) leaves no operation behind.
    let mut iv_buf = [0xb0; 12].to_vec();
    let bad = Mechanism::AesGcm(GcmParams::new(&mut iv_buf, b"aad", 129.into()).unwrap());
    let e = s.encrypt(&bad, a, b"x").unwrap_err();
    assert_eq!(rv(e), RvError::MechanismParamInvalid);
    let e = s.encrypt_update(b"x").unwrap_err();
    assert_eq!(rv(e), RvError::OperationNotInitialized);
    check(a, &va, 2);
}
