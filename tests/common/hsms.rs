//! Several HSMs for the tests of issue 13: further SoftHSM2 tokens stand in
//! for further HSMs, and the fault-injecting backend
//! (examples/faulty_backend.rs) takes one down on demand.

use std::path::PathBuf;

use cryptoki::context::Pkcs11;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, ObjectHandle};
use cryptoki::session::Session;
use cryptoki::slot::Slot;

use super::*;

/// The fault-injecting backend, built by `cargo build --examples`.
pub fn faulty_backend_path() -> PathBuf {
    let dir = module_path().parent().unwrap().to_path_buf();
    let dir = if dir.ends_with("deps") {
        dir.parent().unwrap().to_path_buf()
    } else {
        dir
    };
    let p = dir.join("examples/libfaulty_backend.so");
    assert!(
        p.is_file(),
        "{} missing: run `cargo build --examples` first",
        p.display()
    );
    p
}

/// Points the fault backend at SoftHSM2, taken down while `flag` exists.
pub fn faulty_backend_flag(t: &TestToken, name: &str) -> PathBuf {
    let flag = t.path().join(name);
    std::env::set_var("FAULTY_BACKEND_TARGET", softhsm_module_path());
    std::env::set_var("FAULTY_BACKEND_FLAG", &flag);
    flag
}

pub fn slot_labelled(p: &Pkcs11, label: &str) -> Slot {
    p.get_slots_with_initialized_token()
        .unwrap()
        .into_iter()
        .find(|s| p.get_token_info(*s).unwrap().label() == label)
        .unwrap_or_else(|| panic!("no token labelled {label}"))
}

/// A further token of the test's SoftHSM2, with the test PINs.
pub fn add_token(t: &TestToken, label: &str) {
    let out = std::process::Command::new("softhsm2-util")
        .args(["--init-token", "--free", "--label", label])
        .args(["--pin", USER_PIN, "--so-pin", SO_PIN])
        .env("SOFTHSM2_CONF", &t.softhsm_conf)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Run `f` on a user session of the token labelled `label`, straight on
/// SoftHSM2 (the HSM's own view, not through the module).
pub fn on_token<T>(label: &str, f: impl FnOnce(&Session) -> T) -> T {
    let hsm = init_pkcs11(&softhsm_module_path());
    let s = user_session(&hsm, slot_labelled(&hsm, label));
    let out = f(&s);
    drop(s);
    hsm.finalize().unwrap();
    out
}

/// The objects of KEK version 1 (the test KEK label, CKA_ID 01).
pub fn kek_objects(s: &Session) -> Vec<ObjectHandle> {
    s.find_objects(&[
        Attribute::Label(KEK_LABEL.as_bytes().to_vec()),
        Attribute::Id(KEK_ID.to_vec()),
    ])
    .unwrap()
}

/// An AES-256 KEK version 1 of the token's own, made on the HSM:
/// sensitive, never extractable, as `kek_guard` and `backend::kek` require.
pub fn generate_kek(s: &Session) {
    let mut template = kek_template();
    template.push(Attribute::ValueLen(32.into()));
    s.generate_key(&Mechanism::AesKeyGen, &template).unwrap();
}

/// An AES KEK version 1 (the test KEK label, CKA_ID 01): sensitive, never
/// extractable, for wrapping and unwrapping.
fn kek_template() -> Vec<Attribute> {
    // The module's own template for a generated KEK version.
    hsm_envelope::backend::kek::aes_template(KEK_LABEL, 1)
}

/// Delete the token's KEK version 1 for good (a lost HSM, or a revocation).
pub fn delete_kek(label: &str) {
    on_token(label, |s| {
        let objects = kek_objects(s);
        assert!(!objects.is_empty(), "no KEK on {label}");
        for h in objects {
            s.destroy_object(h).unwrap();
        }
    });
}

/// Disable the token's KEK version 1 (CKA_DECRYPT and CKA_UNWRAP off):
/// the customer revokes it but keeps it.
pub fn disable_kek(label: &str) {
    on_token(label, |s| {
        for h in kek_objects(s) {
            s.update_attributes(h, &[Attribute::Decrypt(false), Attribute::Unwrap(false)])
                .unwrap();
            let left = s.get_attributes(h, &[AttributeType::Decrypt]).unwrap();
            assert_eq!(left, vec![Attribute::Decrypt(false)]);
        }
    });
}

/// `(name, state)` of each member in `status --json`.
pub fn member_states(doc: &serde_json::Value) -> Vec<(String, String)> {
    doc["hsm_members"]
        .as_array()
        .unwrap_or_else(|| panic!("no hsm_members in {doc:#}"))
        .iter()
        .map(|m| {
            (
                m["name"].as_str().unwrap().to_string(),
                m["state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Replace whatever KEK `s`'s token holds under the KEK's label and id with
/// an AES-256 key of value `value`.
pub fn put_kek(s: &Session, value: &[u8; 32]) {
    for h in kek_objects(s) {
        s.destroy_object(h).unwrap();
    }
    let mut template = kek_template();
    template.push(Attribute::Value(value.to_vec()));
    s.create_object(&template).unwrap();
}
