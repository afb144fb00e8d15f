//! Pointer and buffer rules of the C ABI, in one place: reading caller
//! memory, and the two-call length convention (a length query has no side
//! effects; nothing is written past the caller's buffer).

use std::marker::PhantomData;
use std::mem::MaybeUninit;
use std::panic::{catch_unwind, AssertUnwindSafe};

use cryptoki_sys::*;
use zeroize::Zeroizing;

use crate::backend::Mechanism;
use crate::error::{rv_name, Error, Result};
use crate::token::crypt::Out;
use crate::token::object::template::{Template, TemplateAttr};

/// Run a shim body: panics stop here, errors become `CK_RV`.
pub fn guard(name: &str, f: impl FnOnce() -> Result<CK_RV>) -> CK_RV {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(crate::token::forward::CKR_HSME_INTERNAL_RECONNECTED)) => CKR_DEVICE_ERROR,
        Ok(Ok(rv)) => rv,
        Ok(Err(e)) => {
            let rv = match e.rv() {
                // Internal; a call that still met a reconnect after its
                // re-runs reports the device (see `again_after_reconnect`).
                crate::token::forward::CKR_HSME_INTERNAL_RECONNECTED => CKR_DEVICE_ERROR,
                rv => rv,
            };
            match &e {
                Error::Rv(_) | Error::BufferTooSmall(_) => {
                    crate::log_debug!("{name}: {}", rv_name(rv))
                }
                // Already printed by C_Initialize, which has no log file yet.
                Error::Config(_) => {}
                other => crate::log_warn!("{name}: {other}"),
            }
            rv
        }
        Err(_) => {
            crate::log_error!("{name}: internal panic caught at the C boundary");
            CKR_GENERAL_ERROR
        }
    }
}

pub fn ok(r: Result<()>) -> Result<CK_RV> {
    r.map(|_| CKR_OK)
}

#[inline]
pub fn bad() -> Error {
    Error::Rv(CKR_ARGUMENTS_BAD)
}

/// Most attributes one template may carry. PKCS#11 sets no limit; real
/// templates have tens. A count beyond this is a caller's bug (or an
/// attack), and allocating for it could abort the host process.
pub const MAX_TEMPLATE: CK_ULONG = 4096;

/// Longest attribute value copied out of a template (certificates and RSA
/// keys are a few KiB; a CRL can be large).
pub const MAX_ATTRIBUTE_VALUE: CK_ULONG = 16 << 20;

/// A caller's length as a slice length: no slice may span more than
/// isize::MAX bytes, so a larger claimed length cannot be a real buffer.
#[inline]
fn slice_len<T>(len: CK_ULONG) -> Result<usize> {
    usize::try_from(len)
        .ok()
        .filter(|n| {
            n.checked_mul(size_of::<T>().max(1))
                .is_some_and(|b| b <= isize::MAX as usize)
        })
        .ok_or_else(bad)
}

/// Caller bytes; a null pointer is only fine with length 0.
///
/// # Safety
/// `p` must point to `len` readable bytes when non-null.
#[inline]
pub unsafe fn bytes<'a>(p: *const u8, len: CK_ULONG) -> Result<&'a [u8]> {
    if len == 0 {
        return Ok(&[]);
    }
    if p.is_null() {
        return Err(bad());
    }
    let n = slice_len::<u8>(len)?;
    // SAFETY: non-null, and `n` bytes readable by this function's contract.
    Ok(unsafe { std::slice::from_raw_parts(p, n) })
}

/// A copy of caller bytes that may not be borrowed (in-place calls), or an
/// error if memory for it cannot be had: never an abort of the host.
///
/// # Safety
/// As `bytes`.
pub unsafe fn bytes_copy(p: *const u8, len: CK_ULONG) -> Result<Zeroizing<Vec<u8>>> {
    // SAFETY: this function's contract is `bytes`'.
    let src = unsafe { bytes(p, len)? };
    let mut v = Zeroizing::new(Vec::new());
    v.try_reserve_exact(src.len())
        .map_err(|_| Error::Rv(CKR_HOST_MEMORY))?;
    v.extend_from_slice(src);
    Ok(v)
}

/// The caller's attribute array of C_GetAttributeValue, written in place.
///
/// # Safety
/// `p` must point to `n` attributes when non-null.
pub unsafe fn attributes_mut<'a>(
    p: *mut CK_ATTRIBUTE,
    n: CK_ULONG,
) -> Result<&'a mut [CK_ATTRIBUTE]> {
    if n == 0 {
        return Ok(&mut []);
    }
    if p.is_null() || n > MAX_TEMPLATE {
        return Err(bad());
    }
    // SAFETY: non-null, `n` attributes by this function's contract.
    Ok(unsafe { std::slice::from_raw_parts_mut(p, n as usize) })
}

/// Caller output bytes; a null pointer is only fine with length 0.
///
/// # Safety
/// `p` must point to `len` writable bytes when non-null.
#[inline]
pub unsafe fn bytes_mut<'a>(p: *mut u8, len: CK_ULONG) -> Result<&'a mut [u8]> {
    if len == 0 {
        return Ok(&mut []);
    }
    if p.is_null() {
        return Err(bad());
    }
    let n = slice_len::<u8>(len)?;
    // SAFETY: non-null, and `n` bytes writable by this function's contract.
    Ok(unsafe { std::slice::from_raw_parts_mut(p, n) })
}

/// Copy `dst.len()` caller bytes at `p` into `dst` (our memory), so that no
/// view of the caller's bytes outlives the copy.
///
/// # Safety
/// `p` must point to `dst.len()` readable bytes when non-null.
#[inline]
pub unsafe fn copy_in(p: *const u8, dst: &mut [u8]) -> Result<()> {
    if dst.is_empty() {
        return Ok(());
    }
    if p.is_null() {
        return Err(bad());
    }
    // SAFETY: non-null, readable for `dst.len()` bytes by this function's
    // contract; `dst` is ours, so the two cannot overlap.
    unsafe { copy_small(p, dst.as_mut_ptr(), dst.len()) };
    Ok(())
}

/// Copy `src` (our memory) to the caller's `src.len()` bytes at `p`.
///
/// # Safety
/// `p` must point to `src.len()` writable bytes when non-null, and no
/// slice of the caller's memory there may be alive.
#[inline]
pub unsafe fn copy_out(src: &[u8], p: *mut u8) -> Result<()> {
    if src.is_empty() {
        return Ok(());
    }
    if p.is_null() {
        return Err(bad());
    }
    // SAFETY: non-null, writable for `src.len()` bytes by this function's
    // contract; `src` is ours, so the two cannot overlap.
    unsafe { copy_small(src.as_ptr(), p, src.len()) };
    Ok(())
}

/// `copy_nonoverlapping` of `len` bytes, with the lengths of AES-GCM's
/// usual IV (12) and tag (16) copied as fixed-size values: a copy of
/// unknown length is a `memcpy` call whose overlapping 8-byte moves, read
/// back at once by the cipher or written by it just before, stall the
/// load (store-to-load forwarding fails on mismatched widths).
///
/// # Safety
/// As `copy_nonoverlapping`: `src` readable and `dst` writable for `len`
/// bytes, not overlapping.
#[inline(always)]
unsafe fn copy_small(src: *const u8, dst: *mut u8, len: usize) {
    // As integer-sized words, not arrays: LLVM turns a fixed-size array
    // copy back into the `memcpy` of the last arm and merges the arms.
    // `MaybeUninit` words, as `copy_nonoverlapping`: the bytes need not be
    // initialised.
    type W64 = MaybeUninit<u64>;
    type W32 = MaybeUninit<u32>;
    // SAFETY: this function's contract, for `len` bytes in each arm;
    // unaligned reads and writes.
    unsafe {
        match len {
            12 => {
                let head = src.cast::<W64>().read_unaligned();
                let tail = src.add(8).cast::<W32>().read_unaligned();
                dst.cast::<W64>().write_unaligned(head);
                dst.add(8).cast::<W32>().write_unaligned(tail);
            }
            16 => {
                let (a, b) = (src.cast::<W64>(), src.add(8).cast::<W64>());
                let (a, b) = (a.read_unaligned(), b.read_unaligned());
                dst.cast::<W64>().write_unaligned(a);
                dst.add(8).cast::<W64>().write_unaligned(b);
            }
            _ => std::ptr::copy_nonoverlapping(src, dst, len),
        }
    }
}

/// # Safety
/// `p` must be null or valid for a write of T.
#[inline]
pub unsafe fn put<T>(p: *mut T, v: T) -> Result<()> {
    // SAFETY: this function's own contract (its `# Safety` section).
    unsafe {
        if p.is_null() {
            return Err(bad());
        }
        p.write(v);
        Ok(())
    }
}

/// The caller's output buffer (pOut, *pulLen) for a cipher call. Reads the
/// length only; writes nothing.
///
/// # Safety
/// `pul` must be valid for reads; `p` valid for `*pul` bytes when non-null.
#[inline]
pub unsafe fn out_buf<'a>(p: *mut u8, pul: *mut CK_ULONG) -> Result<Out<'a>> {
    // SAFETY: this function's own contract (its `# Safety` section).
    unsafe {
        if pul.is_null() {
            return Err(bad());
        }
        if p.is_null() {
            return Ok(Out::Query);
        }
        let n = slice_len::<u8>(*pul)?;
        Ok(Out::Buf(std::slice::from_raw_parts_mut(p, n)))
    }
}

/// Report a cipher call's outcome through *pulLen.
///
/// # Safety
/// `pul` must be valid for writes (checked non-null by `out_buf`).
#[inline]
pub unsafe fn report_len(r: Result<usize>, pul: *mut CK_ULONG) -> Result<CK_RV> {
    // SAFETY: this function's own contract (its `# Safety` section).
    unsafe {
        match r {
            Ok(n) => {
                put(pul, n as CK_ULONG)?;
                Ok(CKR_OK)
            }
            Err(Error::BufferTooSmall(needed)) => {
                put(pul, needed as CK_ULONG)?;
                Ok(CKR_BUFFER_TOO_SMALL)
            }
            Err(e) => Err(e),
        }
    }
}

/// Copy `data` out under the two-call convention.
///
/// # Safety
/// As `out_buf`.
pub unsafe fn write_bytes(data: &[u8], p: *mut u8, pul: *mut CK_ULONG) -> Result<CK_RV> {
    // SAFETY: this function's own contract (its `# Safety` section).
    unsafe {
        match out_buf(p, pul)? {
            Out::Query => {}
            Out::Buf(buf) => {
                let Some(dst) = buf.get_mut(..data.len()) else {
                    put(pul, data.len() as CK_ULONG)?;
                    return Ok(CKR_BUFFER_TOO_SMALL);
                };
                dst.copy_from_slice(data);
            }
        }
        put(pul, data.len() as CK_ULONG)?;
        Ok(CKR_OK)
    }
}

/// Copy a list (slot ids, mechanisms) out under the two-call convention.
///
/// # Safety
/// `pul` valid for reads and writes; `p` valid for `*pul` items when non-null.
pub unsafe fn write_list<T: Copy>(items: &[T], p: *mut T, pul: *mut CK_ULONG) -> Result<CK_RV> {
    // SAFETY: this function's own contract (its `# Safety` section).
    unsafe {
        if pul.is_null() {
            return Err(bad());
        }
        if !p.is_null() {
            if (*pul as usize) < items.len() {
                *pul = items.len() as CK_ULONG;
                return Ok(CKR_BUFFER_TOO_SMALL);
            }
            std::ptr::copy_nonoverlapping(items.as_ptr(), p, items.len());
        }
        *pul = items.len() as CK_ULONG;
        Ok(CKR_OK)
    }
}

/// Copy a caller's template. Values may be key material: zeroized on drop.
///
/// # Safety
/// `p` must point to `n` attributes whose values are readable.
pub unsafe fn template(p: *const CK_ATTRIBUTE, n: CK_ULONG) -> Result<Template> {
    // SAFETY: this function's own contract (its `# Safety` section).
    unsafe {
        if n == 0 {
            return Ok(Vec::new());
        }
        if p.is_null() || n > MAX_TEMPLATE {
            return Err(bad());
        }
        let attrs = std::slice::from_raw_parts(p, n as usize);
        let mut out = Vec::with_capacity(attrs.len());
        for a in attrs {
            if a.ulValueLen == CK_UNAVAILABLE_INFORMATION || a.ulValueLen > MAX_ATTRIBUTE_VALUE {
                return Err(Error::Rv(CKR_ATTRIBUTE_VALUE_INVALID));
            }
            let value =
                bytes_copy(a.pValue as *const u8, a.ulValueLen).map_err(|e| match e.rv() {
                    CKR_HOST_MEMORY => e,
                    _ => Error::Rv(CKR_ATTRIBUTE_VALUE_INVALID),
                })?;
            // One attribute given twice with different values is
            // ambiguous: a backend would apply the last, our checks would
            // read the first. Identical repeats are harmless.
            if out
                .iter()
                .any(|o: &TemplateAttr| o.ty == a.type_ && *o.value != *value)
            {
                return Err(Error::Rv(CKR_TEMPLATE_INCONSISTENT));
            }
            out.push(TemplateAttr { ty: a.type_, value });
        }
        Ok(out)
    }
}

/// The caller's mechanism, checked for null.
///
/// # Safety
/// `p` must be null or point to a valid CK_MECHANISM.
pub unsafe fn mechanism<'a>(p: *const CK_MECHANISM) -> Result<&'a CK_MECHANISM> {
    // SAFETY: null is checked by `as_ref`; otherwise valid by the contract.
    unsafe { p.as_ref() }.ok_or_else(bad)
}

/// Longest mechanism parameter copied at the boundary (the parameter
/// structures of PKCS#11 mechanisms are tens of bytes).
pub const MAX_MECHANISM_PARAM: CK_ULONG = 64 << 10;

/// The caller's mechanism, copied once at the C boundary: its type and its
/// parameter bytes. Every check and the forwarded call see this copy, so
/// another thread of the caller cannot change the mechanism between the
/// KEK guard's decision and the backend's call. (Pointers inside a
/// parameter structure still point at the caller's memory; no decision
/// depends on what they point at.)
pub struct MechanismCopy<'b> {
    raw: CK_MECHANISM,
    /// `raw.pParameter` points into it.
    _params: PhantomData<&'b mut ParamBuf>,
}

/// Bytes a shim copies from the caller: in its stack frame when they fit
/// (`N` bytes), else on the heap, with an error rather than an abort when
/// memory cannot be had. Both are zeroed, and aligned for the structures
/// read from them.
pub struct Room<const N: usize> {
    inline: Inline<N>,
    heap: Vec<u64>,
}

#[repr(C, align(16))]
struct Inline<const N: usize>([u8; N]);

/// Where a [`MechanismCopy`] keeps the parameter bytes: larger than any
/// parameter structure of the mechanisms run here (CK_GCM_PARAMS is 48
/// bytes on LP64), so there is no allocation on the hot path.
pub type ParamBuf = Room<128>;

impl<const N: usize> Room<N> {
    pub fn new() -> Room<N> {
        Room {
            inline: Inline([0; N]),
            heap: Vec::new(),
        }
    }

    /// Room for `len` bytes.
    pub fn room(&mut self, len: usize) -> Result<&mut [u8]> {
        if len <= N {
            return self.inline.0.get_mut(..len).ok_or_else(bad);
        }
        let words = len.div_ceil(8);
        self.heap
            .try_reserve_exact(words)
            .map_err(|_| Error::Rv(CKR_HOST_MEMORY))?;
        self.heap.resize(words, 0);
        let all: &mut [u8] = words_as_bytes(&mut self.heap);
        all.get_mut(..len).ok_or_else(bad)
    }

    /// The `len` bytes `room(len)` gave.
    pub fn filled(&mut self, len: usize) -> Option<&[u8]> {
        if len <= N {
            return self.inline.0.get(..len);
        }
        let all: &[u8] = words_as_bytes(&mut self.heap);
        all.get(..len)
    }
}

impl<const N: usize> Default for Room<N> {
    fn default() -> Self {
        Self::new()
    }
}

/// The bytes of `words`.
fn words_as_bytes(words: &mut [u64]) -> &mut [u8] {
    let len = std::mem::size_of_val(words);
    // SAFETY: u64 has no padding and every byte pattern is a valid u8; the
    // slice covers exactly the words' memory, borrowed mutably for as long.
    unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr().cast::<u8>(), len) }
}

impl MechanismCopy<'_> {
    pub fn raw(&self) -> &CK_MECHANISM {
        &self.raw
    }

    /// For the backend's (non-const) pointer argument; backends only read it.
    pub fn ptr(&self) -> *mut CK_MECHANISM {
        &self.raw as *const CK_MECHANISM as *mut CK_MECHANISM
    }

    /// The copy as the backend API takes it.
    pub fn typed(&self) -> Mechanism<'_> {
        // SAFETY: the parameters are this copy's own bytes, alive as long
        // as the borrow.
        unsafe { Mechanism::from_caller(&self.raw) }
    }
}

/// Copy the caller's mechanism (see `MechanismCopy`) into `buf`.
///
/// # Safety
/// `p` must be null or point to a valid CK_MECHANISM whose parameter bytes
/// are readable.
// The C_EncryptInit path: see "Inlining" in `ffi::message`.
#[inline(always)]
pub unsafe fn mechanism_copy<'b>(
    p: *const CK_MECHANISM,
    buf: &'b mut ParamBuf,
) -> Result<MechanismCopy<'b>> {
    // SAFETY: this function's contract.
    let m = unsafe { mechanism(p)? };
    if m.ulParameterLen > MAX_MECHANISM_PARAM {
        return Err(Error::Rv(CKR_MECHANISM_PARAM_INVALID));
    }
    // SAFETY: as above: `ulParameterLen` readable bytes when non-null.
    let bytes = unsafe { bytes(m.pParameter as *const u8, m.ulParameterLen) }
        .map_err(|_| Error::Rv(CKR_MECHANISM_PARAM_INVALID))?;
    let params = buf.room(bytes.len())?;
    params.copy_from_slice(bytes);
    let raw = CK_MECHANISM {
        mechanism: m.mechanism,
        pParameter: if params.is_empty() {
            std::ptr::null_mut()
        } else {
            params.as_mut_ptr().cast()
        },
        ulParameterLen: params.len() as CK_ULONG,
    };
    Ok(MechanismCopy {
        raw,
        _params: PhantomData,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Copies of every size keep the bytes, and are aligned for the
    /// parameter structures read from them.
    #[test]
    fn mechanism_copies_small_and_large_parameters() {
        for len in [0usize, 1, 48, 128, 129, 4096] {
            let mut param: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let m = CK_MECHANISM {
                mechanism: CKM_AES_GCM,
                pParameter: if len == 0 {
                    std::ptr::null_mut()
                } else {
                    param.as_mut_ptr().cast()
                },
                ulParameterLen: len as CK_ULONG,
            };
            let mut buf = ParamBuf::new();
            // SAFETY: `m` and its parameter bytes are alive for the call.
            let copy = unsafe { mechanism_copy(&m, &mut buf) }.unwrap();
            let raw = copy.raw();
            assert_eq!(raw.mechanism, CKM_AES_GCM);
            assert_eq!(raw.ulParameterLen as usize, len);
            if len == 0 {
                assert!(raw.pParameter.is_null());
                continue;
            }
            assert_ne!(
                raw.pParameter, m.pParameter,
                "a copy, not the caller's memory"
            );
            assert_eq!(
                raw.pParameter as usize % 8,
                0,
                "aligned for CK_ULONG fields"
            );
            // SAFETY: the copy's own `len` bytes.
            let got = unsafe { std::slice::from_raw_parts(raw.pParameter as *const u8, len) };
            assert_eq!(got, &param[..]);
        }
    }

    #[test]
    fn a_mechanism_parameter_over_the_limit_is_refused() {
        let mut byte = 0u8;
        let m = CK_MECHANISM {
            mechanism: CKM_AES_GCM,
            pParameter: (&mut byte as *mut u8).cast(),
            ulParameterLen: MAX_MECHANISM_PARAM + 1,
        };
        let mut buf = ParamBuf::new();
        // SAFETY: refused on its length before the pointer is read.
        let r = unsafe { mechanism_copy(&m, &mut buf) };
        assert!(matches!(r, Err(Error::Rv(CKR_MECHANISM_PARAM_INVALID))));
    }
}
