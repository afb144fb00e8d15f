//! Typed, safe calls on the backend for the layers above: sessions, login,
//! objects, attributes and key management, each with the two-call
//! convention and pointer handling done here. Only the ffi pass-through
//! calls the backend's raw function list itself (with the caller's own
//! pointers).

use std::marker::PhantomData;

use cryptoki_sys::*;

use super::{bcall, check, Backend};
use crate::error::{Error, Result};

/// One attribute to send to the backend: its type and borrowed value.
#[derive(Clone, Copy)]
pub struct AttrIn<'a> {
    pub ty: CK_ATTRIBUTE_TYPE,
    pub value: &'a [u8],
}

/// A mechanism to pass to the backend. Its parameters are either none
/// (`plain`) or the application's, vouched for by the ffi layer for the
/// length of the call (`from_caller`); nothing else can make one, so safe
/// code cannot hand the backend a dangling parameter pointer.
pub struct Mechanism<'a> {
    raw: CK_MECHANISM,
    _params: PhantomData<&'a [u8]>,
}

impl Mechanism<'static> {
    /// A mechanism without parameters.
    pub fn plain(mechanism: CK_MECHANISM_TYPE) -> Self {
        Mechanism {
            raw: CK_MECHANISM {
                mechanism,
                pParameter: std::ptr::null_mut(),
                ulParameterLen: 0,
            },
            _params: PhantomData,
        }
    }
}

impl<'a> Mechanism<'a> {
    /// The application's mechanism, parameters untouched.
    ///
    /// # Safety
    /// `m.pParameter` must be null or point to `m.ulParameterLen` bytes that
    /// stay valid (and, for mechanisms that write back, writable) for `'a`.
    pub unsafe fn from_caller(m: &'a CK_MECHANISM) -> Self {
        Mechanism {
            raw: *m,
            _params: PhantomData,
        }
    }

    pub fn kind(&self) -> CK_MECHANISM_TYPE {
        self.raw.mechanism
    }

    pub fn has_params(&self) -> bool {
        !self.raw.pParameter.is_null() && self.raw.ulParameterLen > 0
    }

    /// The parameter bytes (empty for none).
    pub fn params(&self) -> &'a [u8] {
        if !self.has_params() {
            return &[];
        }
        // SAFETY: `from_caller`'s contract: `ulParameterLen` readable bytes
        // at `pParameter` for 'a (`plain` has none).
        unsafe {
            std::slice::from_raw_parts(
                self.raw.pParameter as *const u8,
                self.raw.ulParameterLen as usize,
            )
        }
    }

    /// The C structure, for parsing its parameters (reading them is unsafe).
    pub fn raw(&self) -> &CK_MECHANISM {
        &self.raw
    }

    /// For the backend's (non-const) pointer argument; backends only read it.
    fn ptr(&self) -> *mut CK_MECHANISM {
        &self.raw as *const CK_MECHANISM as *mut CK_MECHANISM
    }
}

/// The template as backend attributes, pointing into `t`.
fn raw_attrs(t: &[AttrIn<'_>]) -> Vec<CK_ATTRIBUTE> {
    t.iter()
        .map(|a| CK_ATTRIBUTE {
            type_: a.ty,
            pValue: if a.value.is_empty() {
                std::ptr::null_mut()
            } else {
                a.value.as_ptr() as *mut _
            },
            ulValueLen: a.value.len() as CK_ULONG,
        })
        .collect()
}

/// Longest attribute value read through `attribute_bytes`.
const MAX_ATTRIBUTE_LEN: CK_ULONG = 1 << 20;

/// Objects collected by one `find` at the most (a template matching more
/// is a caller asking for trouble; the backend keeps them all the same).
const MAX_FOUND: usize = 1 << 22;

impl Backend {
    pub fn open_session(&self, slot: CK_SLOT_ID, flags: CK_FLAGS) -> Result<CK_SESSION_HANDLE> {
        let mut bh: CK_SESSION_HANDLE = 0;
        // SAFETY: a function of the backend's own list; no callback, and
        // `bh` outlives the call.
        let rv = unsafe {
            bcall!(
                self,
                C_OpenSession(slot, flags, std::ptr::null_mut(), None, &mut bh)
            )
        };
        check("C_OpenSession", rv)?;
        Ok(bh)
    }

    pub fn close_session(&self, bs: CK_SESSION_HANDLE) -> Result<()> {
        // SAFETY: a function of the backend's own list, no pointers.
        check("C_CloseSession", unsafe {
            bcall!(self, C_CloseSession(bs))
        })
    }

    pub fn session_info(&self, bs: CK_SESSION_HANDLE) -> Result<CK_SESSION_INFO> {
        let mut info = CK_SESSION_INFO::default();
        // SAFETY: `info` outlives the call.
        let rv = unsafe { bcall!(self, C_GetSessionInfo(bs, &mut info)) };
        check("C_GetSessionInfo", rv)?;
        Ok(info)
    }

    /// C_Login; `pin` None passes a NULL PIN (protected authentication path).
    pub fn login(
        &self,
        bs: CK_SESSION_HANDLE,
        user: CK_USER_TYPE,
        pin: Option<&[u8]>,
    ) -> Result<()> {
        let (p, n) = match pin {
            Some(pin) => (in_ptr(pin), len(pin)),
            None => (std::ptr::null_mut(), 0),
        };
        // SAFETY: the backend only reads `n` bytes at `p` (none for NULL).
        let rv = unsafe { bcall!(self, C_Login(bs, user, p, n)) };
        check("C_Login", rv)
    }

    pub fn logout(&self, bs: CK_SESSION_HANDLE) -> Result<()> {
        // SAFETY: no pointers.
        check("C_Logout", unsafe { bcall!(self, C_Logout(bs)) })
    }

    pub fn init_pin(&self, bs: CK_SESSION_HANDLE, pin: &[u8]) -> Result<()> {
        // SAFETY: the backend only reads `pin.len()` bytes of `pin`.
        let rv = unsafe { bcall!(self, C_InitPIN(bs, in_ptr(pin), len(pin))) };
        check("C_InitPIN", rv)
    }

    pub fn set_pin(&self, bs: CK_SESSION_HANDLE, old: &[u8], new: &[u8]) -> Result<()> {
        // SAFETY: the backend only reads the two PINs, each for its length.
        let rv = unsafe {
            bcall!(
                self,
                C_SetPIN(bs, in_ptr(old), len(old), in_ptr(new), len(new))
            )
        };
        check("C_SetPIN", rv)
    }

    pub fn generate_random(&self, bs: CK_SESSION_HANDLE, out: &mut [u8]) -> Result<()> {
        // SAFETY: the backend writes at most `out.len()` bytes into `out`.
        let rv = unsafe { bcall!(self, C_GenerateRandom(bs, out.as_mut_ptr(), len(out))) };
        check("C_GenerateRandom", rv)
    }

    pub fn seed_random(&self, bs: CK_SESSION_HANDLE, seed: &[u8]) -> Result<()> {
        // SAFETY: the backend only reads `seed`, for its length.
        let rv = unsafe { bcall!(self, C_SeedRandom(bs, in_ptr(seed), len(seed))) };
        check("C_SeedRandom", rv)
    }

    pub fn create_object(
        &self,
        bs: CK_SESSION_HANDLE,
        t: &[AttrIn<'_>],
    ) -> Result<CK_OBJECT_HANDLE> {
        let mut raw = raw_attrs(t);
        let mut out = 0;
        // SAFETY: `raw` points into `t`, both outlive the call.
        let rv = unsafe {
            bcall!(
                self,
                C_CreateObject(bs, raw.as_mut_ptr(), len(&raw), &mut out)
            )
        };
        check("C_CreateObject", rv)?;
        Ok(out)
    }

    pub fn copy_object(
        &self,
        bs: CK_SESSION_HANDLE,
        h: CK_OBJECT_HANDLE,
        t: &[AttrIn<'_>],
    ) -> Result<CK_OBJECT_HANDLE> {
        let mut raw = raw_attrs(t);
        let mut out = 0;
        // SAFETY: as in `create_object`.
        let rv = unsafe {
            bcall!(
                self,
                C_CopyObject(bs, h, raw.as_mut_ptr(), len(&raw), &mut out)
            )
        };
        check("C_CopyObject", rv)?;
        Ok(out)
    }

    pub fn destroy_object(&self, bs: CK_SESSION_HANDLE, h: CK_OBJECT_HANDLE) -> Result<()> {
        // SAFETY: no pointers.
        check("C_DestroyObject", unsafe {
            bcall!(self, C_DestroyObject(bs, h))
        })
    }

    pub fn object_size(&self, bs: CK_SESSION_HANDLE, h: CK_OBJECT_HANDLE) -> Result<CK_ULONG> {
        let mut n = 0;
        // SAFETY: `n` outlives the call.
        let rv = unsafe { bcall!(self, C_GetObjectSize(bs, h, &mut n)) };
        check("C_GetObjectSize", rv)?;
        Ok(n)
    }

    pub fn set_attributes(
        &self,
        bs: CK_SESSION_HANDLE,
        h: CK_OBJECT_HANDLE,
        t: &[AttrIn<'_>],
    ) -> Result<()> {
        let mut raw = raw_attrs(t);
        // SAFETY: as in `create_object`.
        let rv = unsafe {
            bcall!(
                self,
                C_SetAttributeValue(bs, h, raw.as_mut_ptr(), len(&raw))
            )
        };
        check("C_SetAttributeValue", rv)
    }

    /// One fixed-size attribute into `out`; returns the length the backend
    /// reported.
    fn attribute_into(
        &self,
        bs: CK_SESSION_HANDLE,
        h: CK_OBJECT_HANDLE,
        ty: CK_ATTRIBUTE_TYPE,
        out: &mut [u8],
    ) -> Result<usize> {
        let mut a = CK_ATTRIBUTE {
            type_: ty,
            pValue: if out.is_empty() {
                std::ptr::null_mut()
            } else {
                out.as_mut_ptr().cast()
            },
            ulValueLen: len(out),
        };
        // SAFETY: `a` points into `out` with its true length; both outlive
        // the call.
        let rv = unsafe { bcall!(self, C_GetAttributeValue(bs, h, &mut a, 1)) };
        check("C_GetAttributeValue", rv)?;
        Ok(a.ulValueLen as usize)
    }

    pub fn attribute_bool(
        &self,
        bs: CK_SESSION_HANDLE,
        h: CK_OBJECT_HANDLE,
        ty: CK_ATTRIBUTE_TYPE,
    ) -> Result<bool> {
        let mut v = [0u8; 1];
        let n = self.attribute_into(bs, h, ty, &mut v)?;
        Ok(n == 1 && v[0] != 0)
    }

    pub fn attribute_ulong(
        &self,
        bs: CK_SESSION_HANDLE,
        h: CK_OBJECT_HANDLE,
        ty: CK_ATTRIBUTE_TYPE,
    ) -> Result<CK_ULONG> {
        let mut v = [0u8; size_of::<CK_ULONG>()];
        match self.attribute_into(bs, h, ty, &mut v)? {
            n if n == v.len() => Ok(CK_ULONG::from_ne_bytes(v)),
            _ => Err(Error::Rv(CKR_ATTRIBUTE_VALUE_INVALID)),
        }
    }

    /// A variable-length attribute, by the two-call convention (bounded).
    pub fn attribute_bytes(
        &self,
        bs: CK_SESSION_HANDLE,
        h: CK_OBJECT_HANDLE,
        ty: CK_ATTRIBUTE_TYPE,
    ) -> Result<Vec<u8>> {
        let n = self.attribute_into(bs, h, ty, &mut [])?;
        if n as CK_ULONG > MAX_ATTRIBUTE_LEN {
            return Err(Error::Rv(CKR_DEVICE_MEMORY));
        }
        let mut v = vec![0u8; n];
        let got = self.attribute_into(bs, h, ty, &mut v)?;
        v.truncate(got);
        Ok(v)
    }

    /// Several attributes at once by the two-call convention (two backend
    /// calls); an attribute the object lacks, or keeps secret, is `None`.
    pub fn attributes(
        &self,
        bs: CK_SESSION_HANDLE,
        h: CK_OBJECT_HANDLE,
        types: &[CK_ATTRIBUTE_TYPE],
    ) -> Result<Vec<Option<Vec<u8>>>> {
        let mut raw: Vec<CK_ATTRIBUTE> = types
            .iter()
            .map(|&type_| CK_ATTRIBUTE {
                type_,
                pValue: std::ptr::null_mut(),
                ulValueLen: 0,
            })
            .collect();
        // SAFETY: null pValues ask for lengths only; `raw` outlives the call.
        let rv = unsafe {
            bcall!(
                self,
                C_GetAttributeValue(bs, h, raw.as_mut_ptr(), len(&raw))
            )
        };
        if !matches!(
            rv,
            CKR_OK | CKR_ATTRIBUTE_SENSITIVE | CKR_ATTRIBUTE_TYPE_INVALID
        ) {
            check("C_GetAttributeValue", rv)?;
        }
        let mut values: Vec<Option<Vec<u8>>> = raw
            .iter()
            .map(|a| {
                (a.ulValueLen != CK_UNAVAILABLE_INFORMATION && a.ulValueLen <= MAX_ATTRIBUTE_LEN)
                    .then(|| vec![0u8; a.ulValueLen as usize])
            })
            .collect();
        let mut ask: Vec<CK_ATTRIBUTE> = raw
            .iter()
            .zip(values.iter_mut())
            .filter_map(|(a, v)| {
                v.as_mut().map(|v| CK_ATTRIBUTE {
                    type_: a.type_,
                    pValue: if v.is_empty() {
                        std::ptr::null_mut()
                    } else {
                        v.as_mut_ptr().cast()
                    },
                    ulValueLen: len(v),
                })
            })
            .collect();
        if !ask.is_empty() {
            // SAFETY: each pValue points into a buffer of `values` of the
            // length given; `ask` and `values` outlive the call.
            let rv = unsafe {
                bcall!(
                    self,
                    C_GetAttributeValue(bs, h, ask.as_mut_ptr(), len(&ask))
                )
            };
            check("C_GetAttributeValue", rv)?;
        }
        let mut got = ask.iter();
        for v in values.iter_mut().flatten() {
            match got.next() {
                Some(a) if a.ulValueLen as usize <= v.len() => v.truncate(a.ulValueLen as usize),
                _ => return Err(Error::Rv(CKR_DEVICE_ERROR)),
            }
        }
        Ok(values)
    }

    pub fn generate_key(
        &self,
        bs: CK_SESSION_HANDLE,
        mech: &Mechanism<'_>,
        t: &[AttrIn<'_>],
    ) -> Result<CK_OBJECT_HANDLE> {
        let mut raw = raw_attrs(t);
        let mut out = 0;
        // SAFETY: `mech` carries no or caller-vouched parameters (see
        // `Mechanism`); `raw` points into `t`; all outlive the call.
        let rv = unsafe {
            bcall!(
                self,
                C_GenerateKey(bs, mech.ptr(), raw.as_mut_ptr(), len(&raw), &mut out)
            )
        };
        check("C_GenerateKey", rv)?;
        Ok(out)
    }

    pub fn generate_key_pair(
        &self,
        bs: CK_SESSION_HANDLE,
        mech: &Mechanism<'_>,
        public: &[AttrIn<'_>],
        private: &[AttrIn<'_>],
    ) -> Result<(CK_OBJECT_HANDLE, CK_OBJECT_HANDLE)> {
        let (mut pu, mut pr) = (raw_attrs(public), raw_attrs(private));
        let (mut hpu, mut hpr) = (0, 0);
        // SAFETY: as in `generate_key`, for both templates.
        let rv = unsafe {
            bcall!(
                self,
                C_GenerateKeyPair(
                    bs,
                    mech.ptr(),
                    pu.as_mut_ptr(),
                    len(&pu),
                    pr.as_mut_ptr(),
                    len(&pr),
                    &mut hpu,
                    &mut hpr
                )
            )
        };
        check("C_GenerateKeyPair", rv)?;
        Ok((hpu, hpr))
    }

    pub fn unwrap_key(
        &self,
        bs: CK_SESSION_HANDLE,
        mech: &Mechanism<'_>,
        unwrapping: CK_OBJECT_HANDLE,
        wrapped: &[u8],
        t: &[AttrIn<'_>],
    ) -> Result<CK_OBJECT_HANDLE> {
        let mut raw = raw_attrs(t);
        let mut out = 0;
        // SAFETY: as in `generate_key`; the backend only reads `wrapped`.
        let rv = unsafe {
            bcall!(
                self,
                C_UnwrapKey(
                    bs,
                    mech.ptr(),
                    unwrapping,
                    in_ptr(wrapped),
                    len(wrapped),
                    raw.as_mut_ptr(),
                    len(&raw),
                    &mut out
                )
            )
        };
        check("C_UnwrapKey", rv)?;
        Ok(out)
    }

    pub fn derive_key(
        &self,
        bs: CK_SESSION_HANDLE,
        mech: &Mechanism<'_>,
        base: CK_OBJECT_HANDLE,
        t: &[AttrIn<'_>],
    ) -> Result<CK_OBJECT_HANDLE> {
        let mut raw = raw_attrs(t);
        let mut out = 0;
        // SAFETY: as in `generate_key`.
        let rv = unsafe {
            bcall!(
                self,
                C_DeriveKey(bs, mech.ptr(), base, raw.as_mut_ptr(), len(&raw), &mut out)
            )
        };
        check("C_DeriveKey", rv)?;
        Ok(out)
    }

    /// Every object matching `t` that the session can see (C_FindObjectsInit,
    /// C_FindObjects in batches, C_FindObjectsFinal).
    pub fn find(&self, bs: CK_SESSION_HANDLE, t: &[AttrIn<'_>]) -> Result<Vec<CK_OBJECT_HANDLE>> {
        let mut raw = raw_attrs(t);
        // SAFETY: `raw` points into `t`; both outlive the search, which
        // ends in this function.
        let rv = unsafe { bcall!(self, C_FindObjectsInit(bs, raw.as_mut_ptr(), len(&raw))) };
        check("C_FindObjectsInit", rv)?;
        let mut found = Vec::new();
        let mut batch = [0 as CK_OBJECT_HANDLE; 64];
        let result = loop {
            let mut n: CK_ULONG = 0;
            // SAFETY: the backend writes at most `batch.len()` handles.
            let rv = unsafe {
                bcall!(
                    self,
                    C_FindObjects(bs, batch.as_mut_ptr(), len(&batch), &mut n)
                )
            };
            if let Err(e) = check("C_FindObjects", rv) {
                break Err(e);
            }
            let Some(got) = batch.get(..n as usize) else {
                break Err(Error::Rv(CKR_DEVICE_ERROR));
            };
            if got.is_empty() {
                break Ok(());
            }
            if found.len() + got.len() > MAX_FOUND {
                break Err(Error::Rv(CKR_DEVICE_MEMORY));
            }
            found.extend_from_slice(got);
        };
        // SAFETY: no pointers.
        let rv = unsafe { bcall!(self, C_FindObjectsFinal(bs)) };
        result?;
        check("C_FindObjectsFinal", rv)?;
        Ok(found)
    }
}

/// Caller bytes as the backend's (non-const) input pointer; it only reads them.
fn in_ptr(b: &[u8]) -> *mut u8 {
    b.as_ptr() as *mut u8
}

fn len<T>(b: &[T]) -> CK_ULONG {
    b.len() as CK_ULONG
}

/// A session operation that `Backend::end_operation` can end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    Encrypt,
    Decrypt,
    Digest,
    Sign,
    Verify,
    SignRecover,
    VerifyRecover,
}

/// Largest output a cancelled operation may still owe (it is discarded).
const MAX_CANCEL_OUTPUT: CK_ULONG = 64 << 20;

impl Backend {
    /// The backend's own C_SessionCancel (PKCS#11 3.0) with `flags`, for
    /// message operations forwarded to a 3.0 backend.
    pub fn session_cancel(&self, bs: CK_SESSION_HANDLE, flags: CK_FLAGS) -> Result<()> {
        // SAFETY: a function of the backend's own 3.0 list; no pointers.
        let rv = unsafe { super::bcall3!(self, C_SessionCancel(bs, flags)) };
        super::check("C_SessionCancel", rv)
    }

    /// The one-shot call of `op` on 16 zero bytes (a signature of one byte
    /// for verification), into `out` (NULL for a length query).
    fn one_shot(
        &self,
        bs: CK_SESSION_HANDLE,
        op: Operation,
        out: *mut u8,
        n: &mut CK_ULONG,
    ) -> CK_RV {
        let mut data = [0u8; 16];
        let mut sig = [0u8; 1];
        let d = data.as_mut_ptr();
        // SAFETY: `data` and `sig` are locals that outlive the call; `out`
        // is null or holds `*n` writable bytes (see `end_operation`).
        unsafe {
            match op {
                Operation::Encrypt => bcall!(self, C_Encrypt(bs, d, 16, out, n)),
                Operation::Decrypt => bcall!(self, C_Decrypt(bs, d, 16, out, n)),
                Operation::Digest => bcall!(self, C_Digest(bs, d, 16, out, n)),
                Operation::Sign => bcall!(self, C_Sign(bs, d, 16, out, n)),
                Operation::SignRecover => bcall!(self, C_SignRecover(bs, d, 16, out, n)),
                Operation::VerifyRecover => bcall!(self, C_VerifyRecover(bs, d, 16, out, n)),
                Operation::Verify => bcall!(self, C_Verify(bs, d, 16, sig.as_mut_ptr(), 1)),
            }
        }
    }

    /// The final call of a multi-part `op` into `out` (NULL: length query).
    fn final_call(
        &self,
        bs: CK_SESSION_HANDLE,
        op: Operation,
        out: *mut u8,
        n: &mut CK_ULONG,
    ) -> CK_RV {
        let mut sig = [0u8; 1];
        // SAFETY: as in `one_shot`.
        unsafe {
            match op {
                Operation::Encrypt => bcall!(self, C_EncryptFinal(bs, out, n)),
                Operation::Decrypt => bcall!(self, C_DecryptFinal(bs, out, n)),
                Operation::Digest => bcall!(self, C_DigestFinal(bs, out, n)),
                Operation::Sign => bcall!(self, C_SignFinal(bs, out, n)),
                Operation::Verify => bcall!(self, C_VerifyFinal(bs, sig.as_mut_ptr(), 1)),
                Operation::SignRecover | Operation::VerifyRecover => CKR_OPERATION_NOT_INITIALIZED,
            }
        }
    }

    /// Run `call` (a one-shot or final call) to its end: a length query,
    /// then the call with a buffer of that length, whose output is wiped.
    /// Returns the code of the query, and whether the operation ended.
    fn run_to_end(&self, mut call: impl FnMut(*mut u8, &mut CK_ULONG) -> CK_RV) -> Result<CK_RV> {
        let mut len: CK_ULONG = 0;
        let rv = call(std::ptr::null_mut(), &mut len);
        if rv != CKR_OK {
            // Any answer but OK to a query ended the operation (or there
            // was none); verification answers here already.
            return Ok(rv);
        }
        if len > MAX_CANCEL_OUTPUT {
            return Err(Error::Rv(CKR_OPERATION_CANCEL_FAILED));
        }
        let mut out = zeroize::Zeroizing::new(vec![0u8; len.max(1) as usize]);
        let mut n = len.max(1);
        if call(out.as_mut_ptr(), &mut n) == CKR_BUFFER_TOO_SMALL {
            return Err(Error::Rv(CKR_OPERATION_CANCEL_FAILED));
        }
        Ok(rv)
    }

    /// End `op` on `bs` whatever state it is in, for C_SessionCancel on a
    /// backend that has no C_SessionCancel of its own (a 2.40 module). A
    /// single-part operation ends with its one-shot call; one that had
    /// updates answers that call CKR_OPERATION_ACTIVE (or, as SoftHSM2
    /// does, ends on it) and is finished with its final call. Output is
    /// wiped and dropped. Ok(false) when no such operation was active.
    pub fn end_operation(&self, bs: CK_SESSION_HANDLE, op: Operation) -> Result<bool> {
        let first = self.run_to_end(|out, n| self.one_shot(bs, op, out, n))?;
        if first != CKR_OPERATION_ACTIVE {
            return Ok(first != CKR_OPERATION_NOT_INITIALIZED);
        }
        let last = self.run_to_end(|out, n| self.final_call(bs, op, out, n))?;
        if last == CKR_OPERATION_ACTIVE {
            return Err(Error::Rv(CKR_OPERATION_CANCEL_FAILED));
        }
        Ok(true)
    }
}

impl Backend {
    /// CKA_VALUE of a short-lived, readable key object straight into locked,
    /// zeroized memory (1 to 1024 bytes; anything else is refused).
    pub fn secret_value(
        &self,
        bs: CK_SESSION_HANDLE,
        h: CK_OBJECT_HANDLE,
    ) -> Result<crate::secret::SecretBytes> {
        let mut a = CK_ATTRIBUTE {
            type_: CKA_VALUE,
            pValue: std::ptr::null_mut(),
            ulValueLen: 0,
        };
        // SAFETY: a length query into `a`, which outlives the call.
        let rv = unsafe { bcall!(self, C_GetAttributeValue(bs, h, &mut a, 1)) };
        check("C_GetAttributeValue", rv)?;
        let n = a.ulValueLen as usize;
        if !(1..=1024).contains(&n) {
            return Err(Error::Rv(CKR_KEY_SIZE_RANGE));
        }
        let mut out = crate::secret::SecretBytes::new(n);
        a.pValue = out.as_mut_slice().as_mut_ptr().cast();
        // SAFETY: `a` points into `out`, `n` writable bytes that outlive the call.
        let rv = unsafe { bcall!(self, C_GetAttributeValue(bs, h, &mut a, 1)) };
        check("C_GetAttributeValue", rv)?;
        out.truncate((a.ulValueLen as usize).min(n));
        Ok(out)
    }
}
