//! Helpers for tests that drive the module through cryptoki.

use cryptoki::context::Pkcs11;
use cryptoki::error::{Error, RvError};
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{
    Attribute, AttributeInfo, AttributeType, KeyType, ObjectClass, ObjectHandle,
};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;

use super::*;

pub fn rv(e: Error) -> RvError {
    match e {
        Error::Pkcs11(rv, _) => rv,
        other => panic!("expected a PKCS#11 error, got {other}"),
    }
}

pub fn ours() -> Pkcs11 {
    init_pkcs11(&module_path())
}

pub fn aes_template(token: bool, extra: Vec<Attribute>) -> Vec<Attribute> {
    let mut t = vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::Token(token),
    ];
    t.extend(extra);
    t
}

pub fn import(s: &Session, value: &[u8], token: bool, extra: Vec<Attribute>) -> ObjectHandle {
    let mut extra = extra;
    extra.push(Attribute::Value(value.to_vec()));
    s.create_object(&aes_template(token, extra))
        .expect("C_CreateObject of an AES key")
}

pub fn generate(s: &Session, token: bool, extra: Vec<Attribute>) -> ObjectHandle {
    let mut extra = extra;
    extra.push(Attribute::ValueLen(32.into()));
    s.generate_key(&Mechanism::AesKeyGen, &aes_template(token, extra))
        .expect("C_GenerateKey")
}

pub fn gcm_encrypt(
    s: &Session,
    key: ObjectHandle,
    iv: &[u8],
    aad: &[u8],
    data: &[u8],
) -> Result<Vec<u8>, Error> {
    let mut iv = iv.to_vec();
    s.encrypt(
        &Mechanism::AesGcm(GcmParams::new(&mut iv, aad, 128.into())?),
        key,
        data,
    )
}

pub fn gcm_decrypt(
    s: &Session,
    key: ObjectHandle,
    iv: &[u8],
    aad: &[u8],
    data: &[u8],
) -> Result<Vec<u8>, Error> {
    let mut iv = iv.to_vec();
    s.decrypt(
        &Mechanism::AesGcm(GcmParams::new(&mut iv, aad, 128.into())?),
        key,
        data,
    )
}

pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    getrandom::fill(&mut v).unwrap();
    v
}

/// CKA_VALUE answers CKR_ATTRIBUTE_SENSITIVE (cryptoki reports it as
/// `AttributeInfo::Sensitive`), while the other attributes still come back.
pub fn assert_sensitive(s: &Session, h: ObjectHandle) {
    let info = s
        .get_attribute_info(h, &[AttributeType::Value, AttributeType::ValueLen])
        .unwrap();
    assert!(matches!(info[0], AttributeInfo::Sensitive), "{:?}", info[0]);
    assert!(matches!(info[1], AttributeInfo::Available(_)));
}

pub fn bool_attr(s: &Session, h: ObjectHandle, ty: AttributeType) -> bool {
    match s.get_attributes(h, &[ty]).unwrap().pop() {
        Some(
            Attribute::Sensitive(b)
            | Attribute::Extractable(b)
            | Attribute::AlwaysSensitive(b)
            | Attribute::NeverExtractable(b)
            | Attribute::Local(b)
            | Attribute::Token(b),
        ) => b,
        other => panic!("unexpected {other:?}"),
    }
}

/// The module's function list, for calls cryptoki cannot express. The
/// module is already loaded by cryptoki; this maps the same one.
pub fn raw_list() -> &'static cryptoki_sys::CK_FUNCTION_LIST {
    use cryptoki_sys::{CKR_OK, CK_FUNCTION_LIST};
    let lib = Box::leak(Box::new(
        unsafe { libloading::Library::new(module_path()) }.unwrap(),
    ));
    unsafe {
        let get: libloading::Symbol<unsafe extern "C" fn(*mut *mut CK_FUNCTION_LIST) -> u64> =
            lib.get(b"C_GetFunctionList\0").unwrap();
        let mut p = std::ptr::null_mut();
        assert_eq!(get(&mut p), CKR_OK);
        &*p
    }
}

/// A logged-in session on SoftHSM2 itself (loaded directly by the test),
/// on the token our module uses.
pub fn user_session_raw(hsm: &Pkcs11) -> Session {
    let slot = hsm
        .get_slots_with_initialized_token()
        .unwrap()
        .into_iter()
        .find(|s| hsm.get_token_info(*s).unwrap().label() == TOKEN_LABEL)
        .unwrap();
    let s = hsm.open_rw_session(slot).unwrap();
    match s.login(UserType::User, Some(&AuthPin::new(USER_PIN.into()))) {
        Ok(()) | Err(Error::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
        Err(e) => panic!("{e}"),
    }
    s
}

/// The stored attribute encoding: version, count, then (type u64 LE, len u32 LE, value).
pub fn set_bool_attr(enc: &[u8], ty: u64, v: u8) -> Vec<u8> {
    let mut out = enc.to_vec();
    let mut pos = 5;
    while pos + 12 <= out.len() {
        let t = u64::from_le_bytes(out[pos..pos + 8].try_into().unwrap());
        let len = u32::from_le_bytes(out[pos + 8..pos + 12].try_into().unwrap()) as usize;
        if t == ty && len == 1 {
            out[pos + 12] = v;
            return out;
        }
        pos += 12 + len;
    }
    panic!("attribute {ty:#x} not found");
}

/// The module's PKCS#11 3.0 function list (for the 3.0 calls cryptoki lacks).
pub fn raw_list_3_0() -> &'static cryptoki_sys::CK_FUNCTION_LIST_3_0 {
    use cryptoki_sys::{CKR_OK, CK_INTERFACE, CK_VERSION};
    let lib = Box::leak(Box::new(
        unsafe { libloading::Library::new(module_path()) }.unwrap(),
    ));
    unsafe {
        type GetInterface = unsafe extern "C" fn(
            *mut u8,
            *mut CK_VERSION,
            *mut *mut CK_INTERFACE,
            cryptoki_sys::CK_FLAGS,
        ) -> cryptoki_sys::CK_RV;
        let get: libloading::Symbol<GetInterface> = lib.get(b"C_GetInterface\0").unwrap();
        let mut v = CK_VERSION { major: 3, minor: 0 };
        let mut iface = std::ptr::null_mut();
        assert_eq!(
            get(c"PKCS 11".as_ptr() as *mut u8, &mut v, &mut iface, 0),
            CKR_OK
        );
        &*((*iface).pFunctionList as *const cryptoki_sys::CK_FUNCTION_LIST_3_0)
    }
}

/// What `C_GenerateKey` of a new token DEK (AES-256) answers when it fails.
pub fn new_dek_refused(s: &Session) -> RvError {
    let e = s
        .generate_key(
            &cryptoki::mechanism::Mechanism::AesKeyGen,
            &aes_template(true, vec![Attribute::ValueLen(32.into())]),
        )
        .expect_err("a new DEK was made");
    rv(e)
}
