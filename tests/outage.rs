//! Revocation and outage, told apart: a KEK version deleted or disabled on
//! the HSM stops its DEKs within cache_soft_ttl_secs (CKR_HSME_KEK_REVOKED);
//! an HSM that cannot be reached does not stop cached DEKs until
//! cache_hard_ttl_secs (new unwraps fail with CKR_HSME_HSM_UNAVAILABLE), and
//! service resumes by itself when the HSM is back.
//!
//! The TTLs pass on the module clock, moved by `advance_clock`: they are long
//! enough that real time never reaches them during a test, so each "before"
//! is certain and each "after" comes from the moved clock alone.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::hsms::faulty_backend_path;
use common::p11::*;
use common::*;
use cryptoki::error::RvError;
use cryptoki::object::Attribute;

const CKR_HSME_KEK_REVOKED: u64 = 0xC845_0004;
const CKR_HSME_HSM_UNAVAILABLE: u64 = 0xC845_0005;

/// cache_soft_ttl_secs of these tests.
const SOFT_TTL: Duration = Duration::from_secs(60);
/// cache_hard_ttl_secs of the outage test.
const HARD_TTL: Duration = Duration::from_secs(180);

fn ttl_config(hard: Option<Duration>) -> String {
    let mut c = format!("cache_soft_ttl_secs = {}\n", SOFT_TTL.as_secs());
    if let Some(hard) = hard {
        c += &format!("cache_hard_ttl_secs = {}\n", hard.as_secs());
    }
    c
}

fn kek_on_softhsm(hsm: &cryptoki::session::Session) -> cryptoki::object::ObjectHandle {
    hsm.find_objects(&[
        Attribute::Label(KEK_LABEL.as_bytes().to_vec()),
        Attribute::Id(KEK_ID.to_vec()),
    ])
    .unwrap()[0]
}

#[test]
fn disabling_the_kek_on_the_hsm_revokes_its_deks_within_the_soft_ttl() {
    let _t = TestToken::with_extra_config(&ttl_config(None));
    let p = ours();
    let s = user_session(&p, token_slot(&p));
    let dek = generate(&s, true, vec![]);
    gcm_encrypt(&s, dek, &[1; 12], b"", b"x").unwrap();
    // The customer turns the KEK off on their HSM.
    let hsm = init_pkcs11(&softhsm_module_path());
    let hs = user_session_raw(&hsm);
    hs.update_attributes(kek_on_softhsm(&hs), &[Attribute::Decrypt(false)])
        .unwrap();
    // The HSM is asked again only once the soft TTL has passed.
    gcm_encrypt(&s, dek, &[1; 12], b"", b"x").expect("cached DEK, within the soft TTL");
    advance_clock(SOFT_TTL);
    let e = gcm_encrypt(&s, dek, &[1; 12], b"", b"x").unwrap_err();
    assert_eq!(rv(e), RvError::VendorDefined(CKR_HSME_KEK_REVOKED));
    let e = s.generate_key(
        &cryptoki::mechanism::Mechanism::AesKeyGen,
        &aes_template(true, vec![Attribute::ValueLen(32.into())]),
    );
    assert_eq!(
        rv(e.unwrap_err()),
        RvError::VendorDefined(CKR_HSME_KEK_REVOKED),
        "no new DEK under a revoked KEK"
    );
}

/// pkcs11-tool deletes the KEK from another process while this one keeps
/// encrypting: the DEK stops within the soft TTL.
#[test]
fn deleting_the_kek_from_another_process_stops_a_running_one() {
    let _t = TestToken::with_extra_config(&ttl_config(None));
    let p = ours();
    let s = user_session(&p, token_slot(&p));
    let dek = generate(&s, true, vec![]);
    gcm_encrypt(&s, dek, &[1; 12], b"", b"x").unwrap();
    let out = std::process::Command::new("pkcs11-tool")
        .args(["--module"])
        .arg(softhsm_module_path())
        .args([
            "--token-label",
            TOKEN_LABEL,
            "--login",
            "--pin",
            USER_PIN,
            "--delete-object",
            "--type",
            "secrkey",
            "--id",
            "01",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    gcm_encrypt(&s, dek, &[1; 12], b"", b"x").expect("cached DEK, within the soft TTL");
    advance_clock(SOFT_TTL);
    let e = gcm_encrypt(&s, dek, &[1; 12], b"", b"x")
        .expect_err("still serving once the soft TTL passed after the KEK was deleted");
    assert_eq!(rv(e), RvError::VendorDefined(CKR_HSME_KEK_REVOKED));
}

/// Point the token's configuration at the fault-injecting backend; returns
/// the flag file whose existence takes the HSM down.
fn through_faulty_backend(t: &TestToken) -> PathBuf {
    let flag = t.path().join("hsm-down");
    std::env::set_var("FAULTY_BACKEND_TARGET", softhsm_module_path());
    std::env::set_var("FAULTY_BACKEND_FLAG", &flag);
    let conf = t.config_text().replace(
        &format!("backend_module = \"{}\"", softhsm_module_path().display()),
        &format!("backend_module = \"{}\"", faulty_backend_path().display()),
    );
    assert!(conf.contains("libfaulty_backend.so"), "{conf}");
    std::fs::write(&t.conf, conf).unwrap();
    flag
}

#[test]
fn an_outage_is_not_a_revocation_and_service_resumes() {
    let t = TestToken::with_extra_config(&ttl_config(Some(HARD_TTL)));
    let flag = through_faulty_backend(&t);

    // A DEK made earlier (not in this instance's cache), and one made now.
    let p = ours();
    let s = user_session(&p, token_slot(&p));
    let old = generate(&s, true, vec![Attribute::Label(b"old".to_vec())]);
    let old_ct = gcm_encrypt(&s, old, &[2; 12], b"", b"old").unwrap();
    drop(s);
    p.finalize().unwrap();
    let p = ours();
    let s = user_session(&p, token_slot(&p));
    let old = s
        .find_objects(&[Attribute::Label(b"old".to_vec())])
        .unwrap()[0];
    let cached = generate(&s, true, vec![]);
    gcm_encrypt(&s, cached, &[1; 12], b"", b"x").unwrap();
    let digest = s
        .digest(&cryptoki::mechanism::Mechanism::Sha256, b"msg")
        .unwrap();

    std::fs::write(&flag, b"down").unwrap();
    gcm_encrypt(&s, cached, &[1; 12], b"", b"x")
        .expect("cached DEK, HSM down, within the soft TTL");
    advance_clock(SOFT_TTL);
    gcm_encrypt(&s, cached, &[1; 12], b"", b"x")
        .expect("cached DEK, HSM down, within the hard TTL");
    let e = gcm_decrypt(&s, old, &[2; 12], b"", &old_ct).unwrap_err();
    assert_eq!(
        rv(e),
        RvError::VendorDefined(CKR_HSME_HSM_UNAVAILABLE),
        "a new unwrap needs the HSM"
    );
    // The hard TTL counts from the last time the HSM answered, before `down`.
    advance_clock(HARD_TTL - SOFT_TTL);
    let e = gcm_encrypt(&s, cached, &[1; 12], b"", b"x").unwrap_err();
    assert_eq!(
        rv(e),
        RvError::VendorDefined(CKR_HSME_HSM_UNAVAILABLE),
        "past the hard TTL"
    );

    // Back: the module reconnects (new backend sessions, login again with
    // the PIN given to C_Login) without the application doing anything.
    std::fs::remove_file(&flag).unwrap();
    gcm_encrypt(&s, cached, &[1; 12], b"", b"x").expect("after the outage");
    assert_eq!(
        gcm_decrypt(&s, old, &[2; 12], b"", &old_ct).unwrap(),
        b"old"
    );
    // Forwarded calls on the same application session work again too: the
    // module re-opened its backend session behind it.
    assert_eq!(
        s.digest(&cryptoki::mechanism::Mechanism::Sha256, b"msg")
            .unwrap(),
        digest
    );
}

/// A network HSM that restarts gives its objects new handles. Handles the
/// application found before keep working (the module finds each object
/// again by class, label and id), and the KEK found before the restart is
/// still refused as an encryption key: the guard runs on the object found
/// again, not on a stale handle that would pass for "not the KEK".
#[test]
fn backend_handles_found_before_an_hsm_restart_keep_working_and_the_kek_stays_guarded() {
    let t = TestToken::with_extra_config(&ttl_config(Some(HARD_TTL)));
    std::env::set_var("FAULTY_BACKEND_RENUMBER", "1");
    let flag = through_faulty_backend(&t);
    let p = ours();
    let s = user_session(&p, token_slot(&p));
    let on_backend = Attribute::VendorDefined((
        cryptoki::object::AttributeType::VendorDefined(0xC845_0002),
        vec![1],
    ));
    let app = s
        .generate_key(
            &cryptoki::mechanism::Mechanism::AesKeyGen,
            &aes_template(
                true,
                vec![
                    on_backend,
                    Attribute::Label(b"app".to_vec()),
                    Attribute::Id(vec![7]),
                    Attribute::ValueLen(32.into()),
                ],
            ),
        )
        .unwrap();
    let kek = s
        .find_objects(&[Attribute::Label(KEK_LABEL.as_bytes().to_vec())])
        .unwrap()[0];
    let dek = generate(&s, true, vec![]);
    let ecb = |key| s.encrypt(&cryptoki::mechanism::Mechanism::AesEcb, key, &[5; 16]);
    let before = ecb(app).unwrap();
    let dek_ct = gcm_encrypt(&s, dek, &[1; 12], b"", b"x").unwrap();
    assert_eq!(rv(ecb(kek).unwrap_err()), RvError::KeyFunctionNotPermitted);

    // The HSM goes away and comes back with new handles for everything.
    std::fs::write(&flag, b"down").unwrap();
    assert!(ecb(app).is_err(), "the HSM is down");
    std::fs::remove_file(&flag).unwrap();

    assert_eq!(
        ecb(app).expect("a backend key found before the restart"),
        before
    );
    assert_eq!(
        s.find_objects(&[Attribute::Label(b"app".to_vec())])
            .unwrap(),
        vec![app],
        "a search after the restart gives the same handle"
    );
    assert_eq!(
        rv(ecb(kek).unwrap_err()),
        RvError::KeyFunctionNotPermitted,
        "the KEK is still no encryption key"
    );
    // Again, with the KEK as the first call after the restart: its stale
    // handle must not slip past the guard.
    std::fs::write(&flag, b"down").unwrap();
    assert!(ecb(app).is_err(), "the HSM is down");
    std::fs::remove_file(&flag).unwrap();
    assert_eq!(
        rv(ecb(kek).unwrap_err()),
        RvError::KeyFunctionNotPermitted,
        "the KEK, first call after a restart"
    );
    assert_eq!(ecb(app).unwrap(), before);
    assert_eq!(gcm_encrypt(&s, dek, &[1; 12], b"", b"x").unwrap(), dek_ct);
    let label = s
        .get_attributes(app, &[cryptoki::object::AttributeType::Label])
        .unwrap();
    assert_eq!(label, vec![Attribute::Label(b"app".to_vec())]);
    s.destroy_object(app)
        .expect("destroyed through its old handle");
    assert!(s
        .find_objects(&[Attribute::Label(b"app".to_vec())])
        .unwrap()
        .is_empty());
}

/// `cache_max_keys` bounds the unwrapped DEKs a process holds: past it the
/// least recently used go, and one of those needs the HSM again at its next
/// use (here the HSM is down, so that shows as CKR_HSME_HSM_UNAVAILABLE),
/// while a session that still holds an evicted key keeps using it.
#[test]
fn a_full_key_cache_lets_the_least_recently_used_dek_go() {
    let t = TestToken::with_extra_config(&format!(
        "{}cache_max_keys = 4\n",
        ttl_config(Some(HARD_TTL))
    ));
    let flag = through_faulty_backend(&t);
    let p = ours();
    // `s` uses the first DEK and keeps holding it; `s1` makes and uses five
    // more, and the first two fall out of the cache of four.
    let s = user_session(&p, token_slot(&p));
    let first = generate(&s, true, vec![]);
    gcm_encrypt(&s, first, &[1; 12], b"", b"x").unwrap();
    let s1 = p.open_rw_session(token_slot(&p)).unwrap();
    let mut deks = vec![first];
    for _ in 0..5 {
        let d = generate(&s1, true, vec![]);
        gcm_encrypt(&s1, d, &[1; 12], b"", b"x").unwrap();
        deks.push(d);
    }
    // The last four were used last; a new session holds none of them.
    let s2 = p.open_rw_session(token_slot(&p)).unwrap();
    std::fs::write(&flag, b"down").unwrap();
    let served: Vec<bool> = deks
        .iter()
        .map(|d| match gcm_encrypt(&s2, *d, &[1; 12], b"", b"x") {
            Ok(_) => true,
            Err(e) => {
                assert_eq!(rv(e), RvError::VendorDefined(CKR_HSME_HSM_UNAVAILABLE));
                false
            }
        })
        .collect();
    assert_eq!(served, [false, false, true, true, true, true]);
    gcm_encrypt(&s, first, &[1; 12], b"", b"x").expect("still held by its session");
    std::fs::remove_file(&flag).unwrap();
    for d in &deks {
        gcm_encrypt(&s2, *d, &[1; 12], b"", b"x").expect("unwrapped again");
    }
}
