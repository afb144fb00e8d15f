//! The re-wrap job itself (src/envelope/rewrap.rs), driven in-process as
//! `hsm-envelope rewrap` drives it: it works on session copies of the KEK
//! versions, which must not outlive it, and revoking a version on the HSM
//! must stop it at its next batch although its copy would still work, as
//! must a rotation (nothing may be written under a former primary).
//!
//! Runs in its own process (cargo nextest) with its own token.

mod common;

use common::cli::*;
use common::p11::*;
use common::*;
use cryptoki::object::{Attribute, ObjectClass};
use hsm_envelope::admin::Admin;
use hsm_envelope::config::Config;
use hsm_envelope::envelope::rewrap::RewrapJob;

const CKR_HSME_KEK_REVOKED: u64 = 0xC845_0004;

/// Backend objects labelled like the KEK that are session objects.
fn session_copies(admin: &Admin) -> usize {
    admin
        .env
        .with_session(|s| {
            Ok(s.find_objects(&[
                Attribute::Label(KEK_LABEL.as_bytes().to_vec()),
                Attribute::Token(false),
            ])
            .unwrap()
            .len())
        })
        .unwrap()
}

/// Turn CKA_DECRYPT of KEK v1 (the token key) off or on: revocation.
fn set_v1_decrypt(admin: &Admin, on: bool) {
    admin
        .env
        .with_session(|s| {
            let v1 = s
                .find_objects(&[
                    Attribute::Label(KEK_LABEL.as_bytes().to_vec()),
                    Attribute::Id(KEK_ID.to_vec()),
                    Attribute::Token(true),
                    Attribute::Class(ObjectClass::SECRET_KEY),
                ])
                .unwrap();
            s.update_attributes(v1[0], &[Attribute::Decrypt(on)])
                .unwrap();
            Ok(())
        })
        .unwrap();
}

#[test]
fn rewrap_job_uses_session_copies_and_stops_on_revocation_or_rotation() {
    let t = TestToken::new();
    let p = ours();
    let s = user_session(&p, token_slot(&p));
    for i in 0..30 {
        generate(
            &s,
            true,
            vec![Attribute::Label(format!("d{i}").into_bytes())],
        );
    }
    drop(s);
    p.finalize().unwrap();
    ok(&t, &["kek", "rotate"]);

    let config = Config::from_file(&t.conf).unwrap();
    let admin = Admin::connect(config, USER_PIN).unwrap();
    let (env, b) = (&admin.env, admin.backend());
    assert_eq!(env.pending_rewrap().unwrap(), 30);
    let job = RewrapJob::new(env, b, 2).unwrap();
    assert_eq!(job.primary(), 2);
    let first = job.batch(0, 10).unwrap();
    assert_eq!((first.scanned, first.rewrapped, first.skipped), (10, 10, 0));
    // Copies of v1 and v2, as session objects, while the job runs.
    assert_eq!(session_copies(&admin), 2);

    // Revoke v1 on the HSM: the next batch refuses, although the job's copy
    // of v1 could still decrypt.
    set_v1_decrypt(&admin, false);
    let e = job.batch(first.next.unwrap(), 10).unwrap_err();
    assert_eq!(e.rv(), CKR_HSME_KEK_REVOKED, "{e}");
    assert_eq!(
        env.pending_rewrap().unwrap(),
        20,
        "nothing more was re-wrapped"
    );

    // The copies end with the job.
    drop(job);
    assert_eq!(session_copies(&admin), 0);

    // v1 back on. A rotation during a run ends it at the next batch: no
    // record goes under the version that stopped being primary.
    set_v1_decrypt(&admin, true);
    env.forget_keks();
    let job = RewrapJob::new(env, b, 1).unwrap();
    let first = job.batch(0, 5).unwrap();
    assert_eq!(first.rewrapped, 5);
    assert_eq!(env.rotate().unwrap(), 3);
    let e = job.batch(first.next.unwrap(), 5).unwrap_err();
    assert!(e.to_string().contains("primary KEK version changed"), "{e}");
    drop(job);
    let job = RewrapJob::new(env, b, 1).unwrap();
    assert_eq!(job.primary(), 3);
    let mut after = 0;
    loop {
        let batch = job.batch(after, 50).unwrap();
        match batch.next {
            Some(next) if batch.scanned == 50 => after = next,
            _ => break,
        }
    }
    assert_eq!(env.pending_rewrap().unwrap(), 0);
    drop(job);
    admin.close();
}
