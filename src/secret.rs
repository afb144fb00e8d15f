//! `SecretBytes`: a heap buffer for key material (unwrapped DEK values).
//!
//! Guarantees:
//! - the bytes live in exactly one allocation for the buffer's whole life
//!   (there is no API that grows it, so no stale copies are left behind by a
//!   reallocation);
//! - they are zeroized (with `zeroize`, which the optimiser cannot elide)
//!   before the memory is returned to the allocator;
//! - best-effort, the pages are `mlock`ed (kept out of swap) and marked
//!   `MADV_DONTDUMP` (kept out of core dumps). Either can fail — containers
//!   commonly have an 8 MiB `RLIMIT_MEMLOCK` — and then the buffer simply
//!   stays unlocked: a key that cannot be locked is still better served than
//!   a failed `C_Decrypt` in the host database.
//!
//! Why whole pages: `mlock` works on pages and does not nest. If two buffers
//! shared a page, dropping one would `munlock` the page under the other, and
//! `MADV_DONTDUMP` would leak onto unrelated heap data. So every non-empty
//! buffer owns its own page-aligned run of pages. The cost is at least one
//! page per key, which is fine for a DEK cache (8 MiB of lock budget is
//! ~2000 keys; beyond that, keys are kept unlocked).

use std::alloc::{self, Layout};
use std::fmt;
use std::ptr::NonNull;
use std::sync::OnceLock;

use zeroize::Zeroize;

/// A fixed-size, zeroize-on-drop, best-effort locked buffer for secrets.
///
/// Not `Clone` on purpose (copies of keys should be visible in the code):
/// use [`SecretBytes::try_clone`]. `Debug` never prints the bytes.
pub struct SecretBytes {
    ptr: NonNull<u8>,
    /// Bytes visible through the API.
    len: usize,
    /// Layout of the allocation (whole pages); `None` for `len == 0`, which
    /// allocates nothing.
    layout: Option<Layout>,
    /// Whether `mlock` succeeded, so drop knows to `munlock`.
    locked: bool,
    /// Whether `MADV_DONTDUMP` succeeded, so drop knows to undo it before the
    /// allocator reuses the pages.
    dontdump: bool,
    /// A slot in a shared locked arena (`packed`), instead of pages of its own.
    slot: Option<slab::Slot>,
}

// SAFETY: `SecretBytes` uniquely owns its allocation (like `Box<[u8]>`); the
// raw pointer is never shared, so moving it to or sharing `&` across threads
// is as safe as for `Box<[u8]>`.
unsafe impl Send for SecretBytes {}
// SAFETY: see `Send`; `&SecretBytes` only gives out `&[u8]`.
unsafe impl Sync for SecretBytes {}

impl zeroize::ZeroizeOnDrop for SecretBytes {}

fn page_size() -> usize {
    static PAGE: OnceLock<usize> = OnceLock::new();
    *PAGE.get_or_init(|| {
        // SAFETY: sysconf has no preconditions.
        let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        match usize::try_from(p) {
            Ok(p) if p.is_power_of_two() => p,
            _ => 4096,
        }
    })
}

impl SecretBytes {
    /// A zero-filled buffer of `len` bytes.
    ///
    /// # Panics
    /// Like `Vec`, if `len` rounded up to whole pages overflows `isize`;
    /// aborts (via `handle_alloc_error`) if the allocator is out of memory.
    pub fn new(len: usize) -> Self {
        if len == 0 {
            return SecretBytes {
                ptr: NonNull::dangling(),
                len: 0,
                layout: None,
                locked: false,
                dontdump: false,
                slot: None,
            };
        }
        let page = page_size();
        if len <= page {
            if let Some(p) = page_pool::take() {
                return SecretBytes {
                    ptr: p.ptr,
                    len,
                    layout: Some(p.layout),
                    locked: p.locked,
                    dontdump: p.dontdump,
                    slot: None,
                };
            }
        }
        let size = len
            .checked_add(page - 1)
            .map(|n| n & !(page - 1))
            .and_then(|n| Layout::from_size_align(n, page).ok());
        let Some(layout) = size else {
            panic!("SecretBytes: capacity overflow");
        };
        // SAFETY: layout has non-zero size.
        let raw = unsafe { alloc::alloc_zeroed(layout) };
        let Some(ptr) = NonNull::new(raw) else {
            alloc::handle_alloc_error(layout);
        };
        // Lock before any secret is written into the pages. Failure is
        // expected under a small RLIMIT_MEMLOCK: carry on unlocked.
        // SAFETY: [ptr, ptr+size) is our allocation; mlock does not touch it.
        let locked = unsafe { libc::mlock(ptr.as_ptr().cast(), layout.size()) } == 0;
        let dontdump = Self::advise_dontdump(ptr, layout.size());
        SecretBytes {
            ptr,
            len,
            layout: Some(layout),
            locked,
            dontdump,
            slot: None,
        }
    }

    /// A copy of `bytes` for keeping long (a cached key's value): secrets of
    /// up to 64 bytes share locked arenas of 64 KiB, 1024 to a mapping,
    /// instead of each taking locked pages of its own, so a process holding
    /// many keys neither exhausts its memory-lock budget page by page nor
    /// the kernel's limit on mappings (locking a page splits its mapping).
    /// Arenas stay locked for the life of the process, so freeing one slot
    /// never unlocks another's. Longer secrets, or no arena: `from_slice`.
    pub fn packed(bytes: &[u8]) -> Self {
        if bytes.is_empty() || bytes.len() > slab::SLOT {
            return Self::from_slice(bytes);
        }
        let Some((ptr, slot, locked)) = slab::take() else {
            return Self::from_slice(bytes);
        };
        let mut s = SecretBytes {
            ptr,
            len: bytes.len(),
            layout: None,
            locked,
            dontdump: false,
            slot: Some(slot),
        };
        s.as_mut_slice().copy_from_slice(bytes);
        s
    }

    #[cfg(any(target_os = "linux", target_os = "android"))]
    fn advise_dontdump(ptr: NonNull<u8>, size: usize) -> bool {
        // SAFETY: page-aligned range that we own; the advice does not change
        // the contents.
        unsafe { libc::madvise(ptr.as_ptr().cast(), size, libc::MADV_DONTDUMP) == 0 }
    }

    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    fn advise_dontdump(_ptr: NonNull<u8>, _size: usize) -> bool {
        false
    }

    /// A buffer holding a copy of `bytes`. The copy is made into the
    /// already-locked pages.
    pub fn from_slice(bytes: &[u8]) -> Self {
        let mut s = Self::new(bytes.len());
        s.as_mut_slice().copy_from_slice(bytes);
        s
    }

    /// An explicit copy (there is deliberately no `Clone`).
    pub fn try_clone(&self) -> Self {
        Self::from_slice(self.as_slice())
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr is valid for len bytes (dangling is fine for len 0),
        // initialised (alloc_zeroed), and borrowed immutably via &self.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in as_slice, with exclusive access through &mut self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }

    /// Shorten to `len` bytes (no-op if not shorter), wiping the cut-off
    /// tail: a backend writes into a buffer sized by an upper bound, and the
    /// result is kept in place rather than copied into a second buffer.
    pub fn truncate(&mut self, len: usize) {
        if len < self.len {
            self.as_mut_slice()[len..].zeroize();
            self.len = len;
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the pages were successfully `mlock`ed (diagnostics/tests).
    pub fn is_locked(&self) -> bool {
        self.locked
    }
}

impl Drop for SecretBytes {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            // SAFETY: the slot's SLOT bytes are ours until given back.
            let all = unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), slab::SLOT) };
            all.zeroize();
            slab::give(slot);
            return;
        }
        let Some(layout) = self.layout else {
            return;
        };
        // SAFETY: the whole allocation is ours and initialised.
        let all = unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), layout.size()) };
        all.zeroize();
        let page = Page {
            ptr: self.ptr,
            layout,
            locked: self.locked,
            dontdump: self.dontdump,
        };
        // Zeroed, still locked: kept for the next one-page buffer.
        let left = if layout.size() == page_size() {
            page_pool::put(page)
        } else {
            Some(page)
        };
        if let Some(page) = left {
            release(page);
        }
    }
}

/// A zeroed allocation of whole pages, with its page flags.
struct Page {
    ptr: NonNull<u8>,
    layout: Layout,
    locked: bool,
    dontdump: bool,
}

/// Give a zeroed allocation back: page flags off, then freed.
fn release(page: Page) {
    // Undo page flags only after zeroizing (done by the caller), so the
    // secret is never in an unlocked or dumpable page.
    if page.locked {
        // SAFETY: the range that was mlocked.
        unsafe { libc::munlock(page.ptr.as_ptr().cast(), page.layout.size()) };
    }
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if page.dontdump {
        // The allocator will reuse these pages for unrelated data, which
        // should appear in core dumps again.
        // SAFETY: the range that was advised.
        unsafe {
            libc::madvise(
                page.ptr.as_ptr().cast(),
                page.layout.size(),
                libc::MADV_DODUMP,
            )
        };
    }
    // SAFETY: allocated in `SecretBytes::new` with exactly this layout.
    unsafe { alloc::dealloc(page.ptr.as_ptr(), page.layout) };
}

/// Locked arenas shared by short secrets kept long (see `SecretBytes::packed`).
mod slab {
    use std::alloc::{self, Layout};
    use std::ptr::NonNull;
    use std::sync::Mutex;

    use crate::runtime::lock::unpoisoned;

    /// Bytes in a slot: an AES key is at most 32.
    pub(super) const SLOT: usize = 64;
    /// Bytes in an arena (one mapping, locked once).
    const ARENA: usize = 64 << 10;
    const SLOTS: usize = ARENA / SLOT;

    /// Which arena and slot a packed secret occupies.
    pub(super) struct Slot {
        arena: usize,
        index: usize,
    }

    struct Arena {
        base: NonNull<u8>,
        free: Vec<u16>,
        locked: bool,
    }

    // SAFETY: an arena is memory this module owns; slots are handed out
    // under the mutex to one owner each.
    unsafe impl Send for Arena {}

    static ARENAS: Mutex<Vec<Arena>> = Mutex::new(Vec::new());

    fn new_arena() -> Option<Arena> {
        let layout = Layout::from_size_align(ARENA, super::page_size()).ok()?;
        // SAFETY: non-zero size.
        let base = NonNull::new(unsafe { alloc::alloc_zeroed(layout) })?;
        // SAFETY: the arena's own range; never freed, so never unlocked.
        let locked = unsafe { libc::mlock(base.as_ptr().cast(), ARENA) } == 0;
        // Best effort, as for pages: out of core dumps.
        #[cfg(any(target_os = "linux", target_os = "android"))]
        // SAFETY: as above; the advice does not change the contents.
        unsafe {
            libc::madvise(base.as_ptr().cast(), ARENA, libc::MADV_DONTDUMP);
        }
        Some(Arena {
            base,
            free: (0..SLOTS as u16).rev().collect(),
            locked,
        })
    }

    /// A zeroed slot, its pointer and whether its arena is locked.
    pub(super) fn take() -> Option<(NonNull<u8>, Slot, bool)> {
        let mut arenas = unpoisoned(ARENAS.lock());
        let i = match arenas.iter().position(|a| !a.free.is_empty()) {
            Some(i) => i,
            None => {
                arenas.push(new_arena()?);
                arenas.len() - 1
            }
        };
        let a = arenas.get_mut(i)?;
        let index = usize::from(a.free.pop()?);
        // SAFETY: index < SLOTS, so the slot lies inside the arena.
        let ptr = unsafe { NonNull::new_unchecked(a.base.as_ptr().add(index * SLOT)) };
        Some((ptr, Slot { arena: i, index }, a.locked))
    }

    /// Give a zeroized slot back.
    pub(super) fn give(slot: Slot) {
        let mut arenas = unpoisoned(ARENAS.lock());
        if let (Some(a), Ok(index)) = (arenas.get_mut(slot.arena), u16::try_from(slot.index)) {
            a.free.push(index);
        }
    }
}

/// A few zeroed, locked one-page buffers per thread. Every unwrap of a DEK
/// value needs one for a moment; reusing them saves the four system calls
/// (mlock, madvise, munlock, madvise) that each new page costs, a tenth of
/// a re-wrap's time on SoftHSM2.
mod page_pool {
    use std::cell::RefCell;

    use super::{release, Page};
    use crate::runtime::fork::generation as fork_generation;

    const KEEP: usize = 4;

    /// The pages, and the fork generation they were locked in: a child of
    /// `fork` does not inherit memory locks, so its pages are released, not
    /// reused as if locked.
    struct Pool {
        pages: Vec<Page>,
        forks: u64,
    }

    impl Pool {
        fn current(&mut self) -> &mut Vec<Page> {
            let now = fork_generation();
            if self.forks != now {
                for page in self.pages.drain(..) {
                    release(page);
                }
                self.forks = now;
            }
            &mut self.pages
        }
    }

    impl Drop for Pool {
        fn drop(&mut self) {
            for page in self.pages.drain(..) {
                release(page);
            }
        }
    }

    thread_local! {
        static POOL: RefCell<Pool> = const { RefCell::new(Pool { pages: Vec::new(), forks: 0 }) };
    }

    /// A kept page, if this thread has one.
    pub(super) fn take() -> Option<Page> {
        POOL.try_with(|p| p.try_borrow_mut().ok()?.current().pop())
            .ok()
            .flatten()
    }

    /// Keep a zeroed, locked page; gives it back when the pool is full, the
    /// page is not locked (the lock budget is better spent on keys in use),
    /// or the thread is ending.
    pub(super) fn put(page: Page) -> Option<Page> {
        if !page.locked {
            return Some(page);
        }
        let mut page = Some(page);
        let _ = POOL.try_with(|p| {
            if let Ok(mut p) = p.try_borrow_mut() {
                let pages = p.current();
                if pages.len() < KEEP {
                    pages.extend(page.take());
                }
            }
        });
        page
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretBytes([REDACTED; {}])", self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let data: Vec<u8> = (0..32u8).collect();
        let s = SecretBytes::from_slice(&data);
        assert_eq!(s.as_slice(), &data[..]);
        assert_eq!(s.len(), 32);
        assert!(!s.is_empty());

        let mut z = SecretBytes::new(24);
        assert_eq!(z.as_slice(), &[0u8; 24]);
        z.as_mut_slice()[3] = 7;
        assert_eq!(z.as_slice()[3], 7);

        let c = s.try_clone();
        assert_eq!(c.as_slice(), s.as_slice());
        assert_ne!(c.as_slice().as_ptr(), s.as_slice().as_ptr());
    }

    #[test]
    fn truncate_wipes_the_tail() {
        let mut s = SecretBytes::from_slice(&[7u8; 40]);
        s.truncate(32);
        assert_eq!(s.as_slice(), &[7u8; 32]);
        // SAFETY: the allocation is at least 40 bytes long and still ours.
        let tail = unsafe { std::slice::from_raw_parts(s.ptr.as_ptr().add(32), 8) };
        assert_eq!(tail, &[0u8; 8]);
        s.truncate(100);
        assert_eq!(s.len(), 32);
    }

    #[test]
    fn debug_is_redacted() {
        let s = SecretBytes::from_slice(&[0xAB; 16]);
        let d = format!("{s:?}");
        assert_eq!(d, "SecretBytes([REDACTED; 16])");
        assert!(!d.contains("171") && !d.to_lowercase().contains("ab,"));
    }

    #[test]
    fn zero_length() {
        let mut s = SecretBytes::new(0);
        assert!(s.is_empty());
        assert_eq!(s.len(), 0);
        assert_eq!(s.as_slice(), &[] as &[u8]);
        assert_eq!(s.as_mut_slice().len(), 0);
        let e = SecretBytes::from_slice(&[]);
        assert!(e.try_clone().is_empty());
        assert_eq!(format!("{e:?}"), "SecretBytes([REDACTED; 0])");
    }

    #[test]
    fn page_aligned_and_exclusive() {
        // Each buffer owns whole pages, so munlock on one cannot unlock
        // another's page.
        let page = page_size();
        let a = SecretBytes::new(32);
        let b = SecretBytes::new(32);
        let pa = a.as_slice().as_ptr() as usize;
        let pb = b.as_slice().as_ptr() as usize;
        assert_eq!(pa % page, 0);
        assert_eq!(pb % page, 0);
        assert_ne!(pa / page, pb / page);
    }

    #[test]
    fn packed_secrets_share_arenas_and_are_wiped_for_the_next() {
        let v: Vec<SecretBytes> = (0..3000u32)
            .map(|i| SecretBytes::packed(&i.to_le_bytes().repeat(8)))
            .collect();
        for (i, s) in v.iter().enumerate() {
            assert_eq!(s.as_slice(), &(i as u32).to_le_bytes().repeat(8)[..]);
        }
        let page = page_size();
        let pages: std::collections::HashSet<usize> = v
            .iter()
            .map(|s| s.as_slice().as_ptr() as usize / page)
            .collect();
        assert!(
            pages.len() * 8 < v.len(),
            "several to a page: {}",
            pages.len()
        );
        drop(v);
        let again = SecretBytes::packed(&[1; 16]);
        // SAFETY: a packed secret of 16 bytes sits at the start of a 64-byte
        // slot inside a mapped, never-freed arena, so all 64 bytes are
        // readable while `again` lives.
        let all = unsafe { std::slice::from_raw_parts(again.as_slice().as_ptr(), 64) };
        assert_eq!(&all[16..], &[0u8; 48][..], "a slot comes back zeroed");
        assert_eq!(SecretBytes::packed(&[2; 100]).len(), 100, "longer: pages");
    }

    /// The process that made 100 000 DEKs in a row died at 57 345 when each
    /// cached value was a locked mapping of its own (the kernel's limit is
    /// 65 530 per process): packed, they take a few hundred.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_hundred_thousand_packed_secrets_take_few_mappings() {
        let maps = || {
            std::fs::read_to_string("/proc/self/maps")
                .map(|m| m.lines().count())
                .unwrap_or(0)
        };
        let before = maps();
        let v: Vec<SecretBytes> = (0..100_000u32)
            .map(|i| SecretBytes::packed(&i.to_le_bytes().repeat(8)))
            .collect();
        let after = maps();
        assert!(before > 0, "/proc/self/maps is readable");
        assert!(after < before + 1000, "{before} mappings, then {after}");
        assert_eq!(v[99_999].as_slice(), &99_999u32.to_le_bytes().repeat(8)[..]);
    }

    #[test]
    fn many_buffers_past_mlock_limit_do_not_fail() {
        // 4096 pages is 16 MiB with 4 KiB pages: past a typical 8 MiB
        // RLIMIT_MEMLOCK, so some of these stay unlocked, and that must be
        // fine.
        let v: Vec<SecretBytes> = (0..4096)
            .map(|i| SecretBytes::from_slice(&[i as u8; 32]))
            .collect();
        for (i, s) in v.iter().enumerate() {
            assert_eq!(s.as_slice(), &[i as u8; 32]);
        }
    }

    #[test]
    fn send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<SecretBytes>();
    }
}
