//! `key_export`, the security team's policy in the configuration: `wrapped`
//! refuses DEKs that are not sensitive, `none` also extractable ones, on
//! every call that makes or changes a DEK (C_GenerateKey, C_CreateObject,
//! C_UnwrapKey, C_SetAttributeValue), with CKR_TEMPLATE_INCONSISTENT and a
//! log line. No template can override it.

mod common;

use common::p11::*;
use common::*;
use cryptoki::context::Pkcs11;
use cryptoki::error::RvError;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, ObjectHandle};
use cryptoki::session::Session;

fn kek(s: &Session) -> ObjectHandle {
    let found = s
        .find_objects(&[
            Attribute::Label(KEK_LABEL.as_bytes().to_vec()),
            Attribute::Id(KEK_ID.to_vec()),
        ])
        .unwrap();
    assert_eq!(found.len(), 1);
    found[0]
}

fn try_generate(s: &Session, extra: Vec<Attribute>) -> Result<ObjectHandle, RvError> {
    let mut extra = extra;
    extra.push(Attribute::ValueLen(32.into()));
    s.generate_key(&Mechanism::AesKeyGen, &aes_template(true, extra))
        .map_err(rv)
}

fn try_import(s: &Session, extra: Vec<Attribute>) -> Result<ObjectHandle, RvError> {
    let mut extra = extra;
    extra.push(Attribute::Value(random_bytes(32)));
    s.create_object(&aes_template(true, extra)).map_err(rv)
}

/// A sensitive, extractable DEK wrapped by the KEK (allowed under `wrapped`).
fn wrapped_blob(s: &Session) -> Vec<u8> {
    let k = try_generate(
        s,
        vec![Attribute::Sensitive(true), Attribute::Extractable(true)],
    )
    .unwrap();
    s.wrap_key(&Mechanism::AesKeyWrapPad, kek(s), k).unwrap()
}

fn try_unwrap(s: &Session, blob: &[u8], extra: Vec<Attribute>) -> Result<ObjectHandle, RvError> {
    s.unwrap_key(
        &Mechanism::AesKeyWrapPad,
        kek(s),
        blob,
        &aes_template(true, extra),
    )
    .map_err(rv)
}

fn log_text(t: &TestToken) -> String {
    std::fs::read_to_string(t.log_file()).unwrap_or_default()
}

/// Restart the module with `key_export = POLICY` appended to the token's
/// configuration.
fn restart_with(t: &TestToken, p: Pkcs11, policy: &str) -> Pkcs11 {
    p.finalize().unwrap();
    let text: String = t
        .config_text()
        .lines()
        .filter(|l| !l.starts_with("key_export"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&t.conf, format!("{text}key_export = \"{policy}\"\n")).unwrap();
    ours()
}

const INCONSISTENT: RvError = RvError::TemplateInconsistent;

#[test]
fn wrapped_refuses_deks_that_are_not_sensitive_on_every_call() {
    let t = TestToken::with_extra_config("key_export = \"wrapped\"\n");
    let p = ours();
    let s = user_session(&p, token_slot(&p));
    let readable = || vec![Attribute::Sensitive(false)];
    assert_eq!(try_generate(&s, readable()).unwrap_err(), INCONSISTENT);
    assert_eq!(try_import(&s, readable()).unwrap_err(), INCONSISTENT);
    let blob = wrapped_blob(&s);
    assert_eq!(
        try_unwrap(&s, &blob, vec![Attribute::Sensitive(false)]).unwrap_err(),
        INCONSISTENT
    );
    // Sensitive DEKs, extractable or not, and the defaults are made.
    try_generate(&s, vec![]).unwrap();
    try_generate(
        &s,
        vec![Attribute::Sensitive(true), Attribute::Extractable(true)],
    )
    .unwrap();
    try_import(&s, vec![]).unwrap();
    try_unwrap(&s, &blob, vec![Attribute::Sensitive(true)]).unwrap();
    let log = log_text(&t);
    for call in ["C_GenerateKey", "C_CreateObject", "C_UnwrapKey"] {
        assert!(
            log.contains(&format!(
                "{call}: refused a DEK with CKA_SENSITIVE false: the configuration says key_export = \"wrapped\""
            )),
            "no refusal of {call} in the log:\n{log}"
        );
    }
    assert!(log.contains("key_export = \"wrapped\")"), "{log}");
}

#[test]
fn none_also_refuses_extractable_deks() {
    let _t = TestToken::with_extra_config("key_export = \"none\"\n");
    let p = ours();
    let s = user_session(&p, token_slot(&p));
    let extractable = || vec![Attribute::Sensitive(true), Attribute::Extractable(true)];
    assert_eq!(try_generate(&s, extractable()).unwrap_err(), INCONSISTENT);
    assert_eq!(try_import(&s, extractable()).unwrap_err(), INCONSISTENT);
    assert_eq!(
        try_generate(&s, vec![Attribute::Sensitive(false)]).unwrap_err(),
        INCONSISTENT
    );
    // Nothing can be wrapped out, so there is no blob of ours to unwrap;
    // one made under `any` is refused as extractable, taken as fixed.
    let k = try_generate(&s, vec![]).unwrap();
    assert!(!bool_attr(&s, k, AttributeType::Extractable));
    let e = s
        .wrap_key(&Mechanism::AesKeyWrapPad, kek(&s), k)
        .unwrap_err();
    assert_eq!(rv(e), RvError::KeyUnextractable);
}

#[test]
fn none_refuses_an_extractable_unwrapped_dek() {
    let t = TestToken::new();
    let p = ours();
    let s = user_session(&p, token_slot(&p));
    let blob = wrapped_blob(&s);
    drop(s);
    let p = restart_with(&t, p, "none");
    let s = user_session(&p, token_slot(&p));
    assert_eq!(
        try_unwrap(
            &s,
            &blob,
            vec![Attribute::Sensitive(true), Attribute::Extractable(true)]
        )
        .unwrap_err(),
        INCONSISTENT
    );
    let k = try_unwrap(&s, &blob, vec![Attribute::Sensitive(true)]).unwrap();
    assert!(!bool_attr(&s, k, AttributeType::Extractable));
}

#[test]
fn a_dek_made_before_the_policy_changes_only_to_comply() {
    let t = TestToken::new();
    let p = ours();
    let s = user_session(&p, token_slot(&p));
    try_generate(
        &s,
        vec![
            Attribute::Label(b"old".to_vec()),
            Attribute::Sensitive(false),
            Attribute::Extractable(true),
        ],
    )
    .unwrap();
    drop(s);
    let p = restart_with(&t, p, "wrapped");
    let s = user_session(&p, token_slot(&p));
    let k = s
        .find_objects(&[Attribute::Label(b"old".to_vec())])
        .unwrap()[0];
    // Any change that leaves it readable is refused...
    let e = s
        .update_attributes(k, &[Attribute::Label(b"renamed".to_vec())])
        .unwrap_err();
    assert_eq!(rv(e), INCONSISTENT);
    assert!(
        log_text(&t).contains("C_SetAttributeValue: refused a DEK with CKA_SENSITIVE false"),
        "{}",
        log_text(&t)
    );
    // ... one that makes it comply is taken.
    s.update_attributes(
        k,
        &[
            Attribute::Sensitive(true),
            Attribute::Label(b"renamed".to_vec()),
        ],
    )
    .unwrap();
    assert!(bool_attr(&s, k, AttributeType::Sensitive));
    // Under `none` an extractable one must also be made unextractable.
    drop(s);
    let p = restart_with(&t, p, "none");
    let s = user_session(&p, token_slot(&p));
    let k = s
        .find_objects(&[Attribute::Label(b"renamed".to_vec())])
        .unwrap()[0];
    let e = s
        .update_attributes(k, &[Attribute::Label(b"again".to_vec())])
        .unwrap_err();
    assert_eq!(rv(e), INCONSISTENT);
    s.update_attributes(k, &[Attribute::Extractable(false)])
        .unwrap();
}

#[test]
fn any_is_the_default_and_keeps_todays_rules() {
    let t = TestToken::new();
    let p = ours();
    let s = user_session(&p, token_slot(&p));
    try_generate(
        &s,
        vec![Attribute::Sensitive(false), Attribute::Extractable(true)],
    )
    .unwrap();
    try_import(&s, vec![Attribute::Sensitive(false)]).unwrap();
    assert!(log_text(&t).contains("key_export = \"any\")"));
}

#[test]
fn wrapped_applies_to_derived_and_copied_deks_too() {
    let t = TestToken::new();
    let p = ours();
    let s = user_session(&p, token_slot(&p));
    try_generate(
        &s,
        vec![
            Attribute::Label(b"legacy".to_vec()),
            Attribute::Sensitive(false),
            Attribute::Derive(true),
        ],
    )
    .unwrap();
    drop(s);
    let p = restart_with(&t, p, "wrapped");
    let s = user_session(&p, token_slot(&p));
    // C_DeriveKey from a DEK into a readable DEK: refused. (The base is the
    // readable DEK made before the policy: from a sensitive one, a readable
    // derived key is refused whatever the policy.)
    let base = s
        .find_objects(&[Attribute::Label(b"legacy".to_vec())])
        .unwrap()[0];
    let derive = |extra: Vec<Attribute>| {
        let mut t = aes_template(false, extra);
        t.push(Attribute::ValueLen(32.into()));
        s.derive_key(
            &Mechanism::AesCbcEncryptData(cryptoki::mechanism::ekdf::AesCbcDeriveParams::new(
                [0u8; 16], &[9u8; 32],
            )),
            base,
            &t,
        )
        .map_err(rv)
    };
    assert_eq!(
        derive(vec![Attribute::Sensitive(false)]).unwrap_err(),
        INCONSISTENT
    );
    derive(vec![]).unwrap();
    // C_CopyObject of a DEK made before the policy: only into one that
    // complies.
    let legacy = s
        .find_objects(&[Attribute::Label(b"legacy".to_vec())])
        .unwrap()[0];
    let e = s
        .copy_object(legacy, &[Attribute::Token(false)])
        .unwrap_err();
    assert_eq!(rv(e), INCONSISTENT);
    let copy = s
        .copy_object(
            legacy,
            &[Attribute::Token(false), Attribute::Sensitive(true)],
        )
        .unwrap();
    assert!(bool_attr(&s, copy, AttributeType::Sensitive));
    let log = log_text(&t);
    for call in ["C_DeriveKey", "C_CopyObject"] {
        assert!(
            log.contains(&format!("{call}: refused a DEK with CKA_SENSITIVE false")),
            "{log}"
        );
    }
}

/// An HSM RSA key unwrapping into a DEK (the HSM unwraps, the value becomes
/// a DEK): a DEK the policy refuses is refused, not made on the backend
/// instead.
#[test]
fn a_refused_rsa_unwrap_makes_no_backend_key_either() {
    use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsOaepParams, PkcsOaepSource};
    use cryptoki::mechanism::MechanismType;
    let _t = TestToken::with_extra_config("key_export = \"wrapped\"\n");
    let p = ours();
    let s = user_session(&p, token_slot(&p));
    let (public, private) = s
        .generate_key_pair(
            &Mechanism::RsaPkcsKeyPairGen,
            &[
                Attribute::Token(false),
                Attribute::ModulusBits(2048.into()),
                Attribute::PublicExponent(vec![1, 0, 1]),
                Attribute::Encrypt(true),
            ],
            &[
                Attribute::Token(false),
                Attribute::Decrypt(true),
                Attribute::Unwrap(true),
            ],
        )
        .unwrap();
    let oaep = Mechanism::RsaPkcsOaep(PkcsOaepParams::new(
        MechanismType::SHA1,
        PkcsMgfType::MGF1_SHA1,
        PkcsOaepSource::empty(),
    ));
    let blob = s.encrypt(&oaep, public, &random_bytes(32)).unwrap();
    let unwrap = |extra: Vec<Attribute>| {
        let mut extra = extra;
        extra.push(Attribute::Label(b"from-rsa".to_vec()));
        s.unwrap_key(&oaep, private, &blob, &aes_template(false, extra))
            .map_err(rv)
    };
    assert_eq!(
        unwrap(vec![Attribute::Sensitive(false)]).unwrap_err(),
        INCONSISTENT
    );
    assert!(
        s.find_objects(&[Attribute::Label(b"from-rsa".to_vec())])
            .unwrap()
            .is_empty(),
        "a key was made anyway"
    );
    let k = unwrap(vec![]).unwrap();
    assert!(bool_attr(&s, k, AttributeType::Sensitive));
}
