//! A PKCS#11 module loaded with `libloading` and called through its
//! `CK_FUNCTION_LIST`, exactly as a C client calls it: no `cryptoki`, no
//! length queries on the hot path, caller-sized output buffers.

use std::ffi::c_void;
use std::path::Path;
use std::ptr::null_mut;

use cryptoki_sys::*;

pub use hsm_envelope::rv_name::rv_name;

use crate::Res;

/// Calls a function of the module's 2.40 function list (checked non-NULL at load).
macro_rules! p11 {
    ($m:expr, $f:ident ( $($arg:expr),* $(,)? )) => {{
        match $m.list().$f {
            // SAFETY: the module follows the PKCS#11 ABI; callers pass pointers to
            // live buffers of the stated sizes.
            #[allow(unused_unsafe, clippy::macro_metavars_in_unsafe)]
            Some(f) => unsafe { f($($arg),*) },
            None => CKR_FUNCTION_NOT_SUPPORTED,
        }
    }};
}

/// The `CK_GCM_MESSAGE_PARAMS` of one 64-byte message in the benches: a
/// 96-bit IV (the caller's, or written by `generator`), no fixed bits, a
/// 128-bit tag.
pub fn gcm_message_params(
    iv: &mut [u8; 12],
    generator: CK_ULONG,
    tag: &mut [u8; 16],
) -> CK_GCM_MESSAGE_PARAMS {
    CK_GCM_MESSAGE_PARAMS {
        pIv: iv.as_mut_ptr(),
        ulIvLen: 12,
        ulIvFixedBits: 0,
        ivGenerator: generator,
        pTag: tag.as_mut_ptr(),
        ulTagBits: 128,
    }
}

/// Encrypt or decrypt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    Enc,
    Dec,
}

/// A failed PKCS#11 call: the function and its CK_RV.
#[derive(Clone, Copy, Debug)]
pub struct CallError {
    pub func: &'static str,
    pub rv: CK_RV,
}

impl CallError {
    pub fn describe(&self, module: &str) -> String {
        format!(
            "{module}: {} returned {} ({:#x})",
            self.func,
            rv_name(self.rv),
            self.rv
        )
    }
}

fn ck(func: &'static str, rv: CK_RV) -> Result<(), CallError> {
    if rv == CKR_OK {
        Ok(())
    } else {
        Err(CallError { func, rv })
    }
}

/// A loaded PKCS#11 module. Leaked for the life of the process: unloading a
/// Rust cdylib (or SoftHSM2) with dlclose at exit gains nothing and risks
/// running its thread-local destructors after the code is gone.
pub struct Module {
    /// Label used in messages and the table ("ours", "SoftHSM").
    pub name: &'static str,
    list: *const CK_FUNCTION_LIST,
    /// The PKCS#11 3.0 function list, if the module has one (the message
    /// functions: `message.rs`).
    list3: *const CK_FUNCTION_LIST_3_0,
    _lib: libloading::Library,
}

// SAFETY: the function list is an immutable table of function pointers owned by
// the loaded library; both modules are initialised with CKF_OS_LOCKING_OK and
// are thread-safe per the PKCS#11 rules (one session per thread here).
unsafe impl Send for Module {}
unsafe impl Sync for Module {}

type GetFunctionList = unsafe extern "C" fn(*mut *mut CK_FUNCTION_LIST) -> CK_RV;

impl Module {
    /// dlopen `path` and fetch its function list. Every function the bench
    /// calls must be present.
    pub fn load(name: &'static str, path: &Path) -> Res<&'static Module> {
        if !path.is_file() {
            return Err(format!(
                "{name}: PKCS#11 module {} not found",
                path.display()
            ));
        }
        // SAFETY: loading a PKCS#11 module; its initialisers are the module's own.
        let lib = unsafe { libloading::Library::new(path) }
            .map_err(|e| format!("{name}: cannot load {}: {e}", path.display()))?;
        let mut list = null_mut();
        // SAFETY: C_GetFunctionList has this signature in every PKCS#11 module.
        let rv = unsafe {
            let get = lib
                .get::<GetFunctionList>(b"C_GetFunctionList\0")
                .map_err(|e| format!("{name}: {} has no C_GetFunctionList: {e}", path.display()))?;
            get(&mut list)
        };
        if rv != CKR_OK || list.is_null() {
            return Err(format!(
                "{name}: C_GetFunctionList returned {} ({rv:#x})",
                rv_name(rv)
            ));
        }
        type GetInterface = unsafe extern "C" fn(
            *mut CK_UTF8CHAR,
            *mut CK_VERSION,
            *mut *mut CK_INTERFACE,
            CK_FLAGS,
        ) -> CK_RV;
        // SAFETY: C_GetInterface has this signature in every 3.0 module; it
        // writes one pointer, to an interface the module owns.
        let list3 = unsafe {
            let mut v = CK_VERSION { major: 3, minor: 0 };
            let mut iface: *mut CK_INTERFACE = null_mut();
            match lib.get::<GetInterface>(b"C_GetInterface\0") {
                Ok(get)
                    if get(c"PKCS 11".as_ptr() as *mut _, &mut v, &mut iface, 0) == CKR_OK
                        && !iface.is_null() =>
                {
                    (*iface).pFunctionList as *const CK_FUNCTION_LIST_3_0
                }
                _ => std::ptr::null(),
            }
        };
        let m = Module {
            name,
            list,
            list3,
            _lib: lib,
        };
        let l = m.list();
        let required = [
            ("C_Initialize", l.C_Initialize.is_some()),
            ("C_Finalize", l.C_Finalize.is_some()),
            ("C_GetSlotList", l.C_GetSlotList.is_some()),
            ("C_GetTokenInfo", l.C_GetTokenInfo.is_some()),
            ("C_OpenSession", l.C_OpenSession.is_some()),
            ("C_CloseSession", l.C_CloseSession.is_some()),
            ("C_Login", l.C_Login.is_some()),
            ("C_GenerateKey", l.C_GenerateKey.is_some()),
            ("C_CreateObject", l.C_CreateObject.is_some()),
            ("C_FindObjectsInit", l.C_FindObjectsInit.is_some()),
            ("C_FindObjects", l.C_FindObjects.is_some()),
            ("C_FindObjectsFinal", l.C_FindObjectsFinal.is_some()),
            ("C_EncryptInit", l.C_EncryptInit.is_some()),
            ("C_Encrypt", l.C_Encrypt.is_some()),
            ("C_EncryptUpdate", l.C_EncryptUpdate.is_some()),
            ("C_EncryptFinal", l.C_EncryptFinal.is_some()),
            ("C_DecryptInit", l.C_DecryptInit.is_some()),
            ("C_Decrypt", l.C_Decrypt.is_some()),
            ("C_DecryptUpdate", l.C_DecryptUpdate.is_some()),
            ("C_DecryptFinal", l.C_DecryptFinal.is_some()),
        ];
        if let Some((f, _)) = required.iter().find(|(_, ok)| !ok) {
            return Err(format!("{name}: {f} is NULL in the function list"));
        }
        Ok(Box::leak(Box::new(m)))
    }

    fn list(&self) -> &CK_FUNCTION_LIST {
        // SAFETY: non-null (checked in load), valid while the library is loaded,
        // and the library is never unloaded (the Module is leaked).
        unsafe { &*self.list }
    }

    /// The 3.0 function list, if the module has one.
    pub fn list3(&self) -> Option<&CK_FUNCTION_LIST_3_0> {
        // SAFETY: as `list`, when non-null.
        unsafe { self.list3.as_ref() }
    }

    fn err(&self, e: CallError) -> String {
        e.describe(self.name)
    }

    /// C_Initialize with CKF_OS_LOCKING_OK. Ok(true) if this call initialised
    /// the module, Ok(false) if it was already initialised (carry on).
    pub fn initialize(&self) -> Res<bool> {
        let mut args = CK_C_INITIALIZE_ARGS {
            CreateMutex: None,
            DestroyMutex: None,
            LockMutex: None,
            UnlockMutex: None,
            flags: CKF_OS_LOCKING_OK,
            pReserved: null_mut(),
        };
        let rv = p11!(
            self,
            C_Initialize((&mut args as *mut CK_C_INITIALIZE_ARGS).cast::<c_void>())
        );
        match rv {
            CKR_OK => Ok(true),
            CKR_CRYPTOKI_ALREADY_INITIALIZED => Ok(false),
            _ => Err(format!(
                "{}: C_Initialize returned {} ({rv:#x}); check SOFTHSM2_CONF / HSM_ENVELOPE_CONF{}",
                self.name,
                rv_name(rv),
                if self.name == "ours" {
                    " and the module's log (stderr or log_file)"
                } else {
                    ""
                }
            )),
        }
    }

    /// C_Finalize; "not initialised" counts as done.
    pub fn finalize(&self) -> Res<()> {
        let rv = p11!(self, C_Finalize(null_mut()));
        match rv {
            CKR_OK | CKR_CRYPTOKI_NOT_INITIALIZED => Ok(()),
            _ => Err(self.err(CallError {
                func: "C_Finalize",
                rv,
            })),
        }
    }

    /// The slot whose token is labelled `label` (exactly one).
    pub fn slot_by_label(&self, label: &str) -> Res<CK_SLOT_ID> {
        let mut n: CK_ULONG = 0;
        ck(
            "C_GetSlotList",
            p11!(self, C_GetSlotList(CK_TRUE, null_mut(), &mut n)),
        )
        .map_err(|e| self.err(e))?;
        let mut slots = vec![0 as CK_SLOT_ID; n as usize];
        ck(
            "C_GetSlotList",
            p11!(self, C_GetSlotList(CK_TRUE, slots.as_mut_ptr(), &mut n)),
        )
        .map_err(|e| self.err(e))?;
        slots.truncate(n as usize);
        let mut found = Vec::new();
        let mut labels = Vec::new();
        for slot in slots {
            let mut info = CK_TOKEN_INFO::default();
            ck(
                "C_GetTokenInfo",
                p11!(self, C_GetTokenInfo(slot, &mut info)),
            )
            .map_err(|e| self.err(e))?;
            let l = String::from_utf8_lossy(&info.label).trim_end().to_string();
            if l == label {
                found.push(slot);
            }
            labels.push(l);
        }
        match found.as_slice() {
            [one] => Ok(*one),
            [] => Err(format!(
                "{}: no token labelled {label:?} (tokens: {labels:?})",
                self.name
            )),
            _ => Err(format!(
                "{}: {} tokens labelled {label:?}",
                self.name,
                found.len()
            )),
        }
    }

    /// A read-write session; closed when the guard drops.
    pub fn open_session(&self, slot: CK_SLOT_ID) -> Res<Session<'_>> {
        let mut h = CK_INVALID_HANDLE;
        let flags = CKF_SERIAL_SESSION | CKF_RW_SESSION;
        ck(
            "C_OpenSession",
            p11!(self, C_OpenSession(slot, flags, null_mut(), None, &mut h)),
        )
        .map_err(|e| self.err(e))?;
        Ok(Session { m: self, h })
    }

    /// C_Login as the user; CKR_USER_ALREADY_LOGGED_IN is fine (the other
    /// module in this process already logged the token in).
    pub fn login(&self, s: CK_SESSION_HANDLE, pin: &str) -> Res<CK_RV> {
        let mut pin = pin.as_bytes().to_vec();
        let rv = p11!(
            self,
            C_Login(s, CKU_USER, pin.as_mut_ptr(), pin.len() as CK_ULONG)
        );
        match rv {
            CKR_OK | CKR_USER_ALREADY_LOGGED_IN => Ok(rv),
            _ => Err(self.err(CallError {
                func: "C_Login",
                rv,
            })),
        }
    }

    /// C_GenerateKey(CKM_AES_KEY_GEN) of an AES-256 key: private, sensitive,
    /// not extractable, encrypt/decrypt. Through our module this makes a DEK
    /// (token DEKs go to the SQLite store); on SoftHSM a plain secret key.
    pub fn generate_aes256(
        &self,
        s: CK_SESSION_HANDLE,
        label: &str,
        token: bool,
    ) -> Result<CK_OBJECT_HANDLE, CallError> {
        let mut t = KeyTemplate::new(label, token, None);
        let mut attrs = t.attrs();
        let mut m = CK_MECHANISM {
            mechanism: CKM_AES_KEY_GEN,
            pParameter: null_mut(),
            ulParameterLen: 0,
        };
        let mut h = CK_INVALID_HANDLE;
        ck(
            "C_GenerateKey",
            p11!(
                self,
                C_GenerateKey(
                    s,
                    &mut m,
                    attrs.as_mut_ptr(),
                    attrs.len() as CK_ULONG,
                    &mut h
                )
            ),
        )?;
        Ok(h)
    }

    /// C_CreateObject of a session AES key with a known value (for the
    /// cross-check against the raw libraries only).
    pub fn import_aes(
        &self,
        s: CK_SESSION_HANDLE,
        label: &str,
        value: &[u8],
    ) -> Result<CK_OBJECT_HANDLE, CallError> {
        let mut t = KeyTemplate::new(label, false, Some(value));
        let mut attrs = t.attrs();
        let mut h = CK_INVALID_HANDLE;
        ck(
            "C_CreateObject",
            p11!(
                self,
                C_CreateObject(s, attrs.as_mut_ptr(), attrs.len() as CK_ULONG, &mut h)
            ),
        )?;
        Ok(h)
    }

    /// C_DigestInit(SHA-256) + C_DigestKey(key) + C_DigestFinal: one call
    /// that needs the key on the HSM (a DEK is made real there for it).
    pub fn digest_key(&self, s: CK_SESSION_HANDLE, key: CK_OBJECT_HANDLE) -> Result<(), CallError> {
        let mut m = CK_MECHANISM {
            mechanism: CKM_SHA256,
            pParameter: null_mut(),
            ulParameterLen: 0,
        };
        ck("C_DigestInit", p11!(self, C_DigestInit(s, &mut m)))?;
        ck("C_DigestKey", p11!(self, C_DigestKey(s, key)))?;
        let mut out = [0u8; 32];
        let mut n = out.len() as CK_ULONG;
        ck(
            "C_DigestFinal",
            p11!(self, C_DigestFinal(s, out.as_mut_ptr(), &mut n)),
        )
    }

    /// C_FindObjectsInit(template) + C_FindObjects(up to `batch` at a time,
    /// until none are left) + C_FindObjectsFinal. `label` None is the empty
    /// template, which matches every object.
    pub fn find(
        &self,
        s: CK_SESSION_HANDLE,
        label: Option<&str>,
        out: &mut Vec<CK_OBJECT_HANDLE>,
        batch: usize,
    ) -> Result<usize, CallError> {
        let mut lbl = label.map(|l| l.as_bytes().to_vec()).unwrap_or_default();
        let mut t = [CK_ATTRIBUTE {
            type_: CKA_LABEL,
            pValue: lbl.as_mut_ptr().cast(),
            ulValueLen: lbl.len() as CK_ULONG,
        }];
        let n_attrs = if label.is_some() { 1 } else { 0 };
        ck(
            "C_FindObjectsInit",
            p11!(self, C_FindObjectsInit(s, t.as_mut_ptr(), n_attrs)),
        )?;
        out.clear();
        let mut total = 0usize;
        loop {
            if out.len() < total + batch {
                out.resize(total + batch, 0);
            }
            let mut n: CK_ULONG = 0;
            let rv = p11!(
                self,
                C_FindObjects(s, out[total..].as_mut_ptr(), batch as CK_ULONG, &mut n)
            );
            if rv != CKR_OK {
                let _ = p11!(self, C_FindObjectsFinal(s));
                return Err(CallError {
                    func: "C_FindObjects",
                    rv,
                });
            }
            if n == 0 {
                break;
            }
            total += n as usize;
        }
        out.truncate(total);
        ck("C_FindObjectsFinal", p11!(self, C_FindObjectsFinal(s)))?;
        Ok(total)
    }

    /// C_EncryptInit / C_DecryptInit with CKM_AES_GCM, a 12-byte IV, no AAD and
    /// a 128-bit tag (the CK_GCM_PARAMS layout with ulIvBits, as in the 2.40
    /// and 3.0 headers; both modules accept it).
    #[inline]
    pub fn gcm_init(
        &self,
        s: CK_SESSION_HANDLE,
        dir: Dir,
        key: CK_OBJECT_HANDLE,
        iv: &mut [u8; 12],
    ) -> Result<(), CallError> {
        let mut params = CK_GCM_PARAMS {
            pIv: iv.as_mut_ptr(),
            ulIvLen: 12,
            ulIvBits: 96,
            pAAD: null_mut(),
            ulAADLen: 0,
            ulTagBits: 128,
        };
        let mut mech = CK_MECHANISM {
            mechanism: CKM_AES_GCM,
            pParameter: (&mut params as *mut CK_GCM_PARAMS).cast(),
            ulParameterLen: size_of::<CK_GCM_PARAMS>() as CK_ULONG,
        };
        match dir {
            Dir::Enc => ck(
                "C_EncryptInit",
                p11!(self, C_EncryptInit(s, &mut mech, key)),
            ),
            Dir::Dec => ck(
                "C_DecryptInit",
                p11!(self, C_DecryptInit(s, &mut mech, key)),
            ),
        }
    }

    /// Init + C_Encrypt / C_Decrypt into the caller's buffer (no length query).
    /// Returns the output length.
    #[inline]
    pub fn gcm_single(
        &self,
        s: CK_SESSION_HANDLE,
        dir: Dir,
        key: CK_OBJECT_HANDLE,
        iv: &mut [u8; 12],
        input: &[u8],
        out: &mut [u8],
    ) -> Result<usize, CallError> {
        self.gcm_init(s, dir, key, iv)?;
        let p_in = input.as_ptr().cast_mut();
        let n_in = input.len() as CK_ULONG;
        let mut n = out.len() as CK_ULONG;
        match dir {
            Dir::Enc => ck(
                "C_Encrypt",
                p11!(self, C_Encrypt(s, p_in, n_in, out.as_mut_ptr(), &mut n)),
            )?,
            Dir::Dec => ck(
                "C_Decrypt",
                p11!(self, C_Decrypt(s, p_in, n_in, out.as_mut_ptr(), &mut n)),
            )?,
        }
        Ok(n as usize)
    }

    /// Init + C_EncryptUpdate / C_DecryptUpdate per `chunk` bytes of input +
    /// Final, each into what is left of the caller's buffer. Returns the total
    /// output length.
    #[inline]
    #[allow(clippy::too_many_arguments)]
    pub fn gcm_multi(
        &self,
        s: CK_SESSION_HANDLE,
        dir: Dir,
        key: CK_OBJECT_HANDLE,
        iv: &mut [u8; 12],
        input: &[u8],
        out: &mut [u8],
        chunk: usize,
    ) -> Result<usize, CallError> {
        self.gcm_init(s, dir, key, iv)?;
        let mut pos = 0usize;
        for piece in input.chunks(chunk) {
            let rest = out.get_mut(pos..).unwrap_or_default();
            let mut n = rest.len() as CK_ULONG;
            let (p_in, n_in) = (piece.as_ptr().cast_mut(), piece.len() as CK_ULONG);
            match dir {
                Dir::Enc => ck(
                    "C_EncryptUpdate",
                    p11!(
                        self,
                        C_EncryptUpdate(s, p_in, n_in, rest.as_mut_ptr(), &mut n)
                    ),
                )?,
                Dir::Dec => ck(
                    "C_DecryptUpdate",
                    p11!(
                        self,
                        C_DecryptUpdate(s, p_in, n_in, rest.as_mut_ptr(), &mut n)
                    ),
                )?,
            }
            pos += n as usize;
        }
        let rest = out.get_mut(pos..).unwrap_or_default();
        let mut n = rest.len() as CK_ULONG;
        match dir {
            Dir::Enc => ck(
                "C_EncryptFinal",
                p11!(self, C_EncryptFinal(s, rest.as_mut_ptr(), &mut n)),
            )?,
            Dir::Dec => ck(
                "C_DecryptFinal",
                p11!(self, C_DecryptFinal(s, rest.as_mut_ptr(), &mut n)),
            )?,
        }
        Ok(pos + n as usize)
    }
}

/// An open session; C_CloseSession on drop.
pub struct Session<'m> {
    pub m: &'m Module,
    pub h: CK_SESSION_HANDLE,
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        let _ = p11!(self.m, C_CloseSession(self.h));
    }
}

/// The attribute values an AES-256 key template points at.
struct KeyTemplate {
    class: CK_OBJECT_CLASS,
    key_type: CK_KEY_TYPE,
    len: CK_ULONG,
    token: CK_BBOOL,
    yes: CK_BBOOL,
    no: CK_BBOOL,
    label: Vec<u8>,
    value: Option<Vec<u8>>,
}

impl KeyTemplate {
    fn new(label: &str, token: bool, value: Option<&[u8]>) -> Self {
        KeyTemplate {
            class: CKO_SECRET_KEY,
            key_type: CKK_AES,
            len: 32,
            token: if token { CK_TRUE } else { CK_FALSE },
            yes: CK_TRUE,
            no: CK_FALSE,
            label: label.as_bytes().to_vec(),
            value: value.map(<[u8]>::to_vec),
        }
    }

    /// The template (pointing into `self`, which must not move while it is used).
    fn attrs(&mut self) -> Vec<CK_ATTRIBUTE> {
        fn a<T>(ty: CK_ATTRIBUTE_TYPE, v: &mut T) -> CK_ATTRIBUTE {
            CK_ATTRIBUTE {
                type_: ty,
                pValue: (v as *mut T).cast(),
                ulValueLen: size_of::<T>() as CK_ULONG,
            }
        }
        let mut t = vec![
            a(CKA_TOKEN, &mut self.token),
            a(CKA_PRIVATE, &mut self.yes),
            a(CKA_SENSITIVE, &mut self.yes),
            a(CKA_EXTRACTABLE, &mut self.no),
            a(CKA_ENCRYPT, &mut self.yes),
            a(CKA_DECRYPT, &mut self.yes),
            CK_ATTRIBUTE {
                type_: CKA_LABEL,
                pValue: self.label.as_mut_ptr().cast(),
                ulValueLen: self.label.len() as CK_ULONG,
            },
        ];
        match &mut self.value {
            None => t.push(a(CKA_VALUE_LEN, &mut self.len)),
            Some(v) => {
                t.push(a(CKA_CLASS, &mut self.class));
                t.push(a(CKA_KEY_TYPE, &mut self.key_type));
                t.push(CK_ATTRIBUTE {
                    type_: CKA_VALUE,
                    pValue: v.as_mut_ptr().cast(),
                    ulValueLen: v.len() as CK_ULONG,
                });
            }
        }
        t
    }
}
