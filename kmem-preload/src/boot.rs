//! Start-up: the gate every entry point passes until kmem is ready, the bootstrap arena that
//! serves allocations made while kmem is being built, and the environment read once.
//!
//! The first `malloc` may come from the dynamic loader or libc's start-up, before `main`. The
//! first caller builds kmem (`kmem::cabi::init`: the global instance, every kmalloc cache, the
//! CPU-id probe) and resolves the next allocator's functions (`dlsym(RTLD_NEXT, ..)`). Those
//! steps may themselves call `malloc` (glibc's `dlsym` and `pthread_atfork` can), which would
//! re-enter kmem's one-time initialisation (it aborts on re-entry by design). So while the
//! initialising thread is inside, its allocations are served from a static bootstrap arena: a
//! bump allocator over a static array, recognised on `free`/`realloc`/`malloc_usable_size` by
//! its address range. Other threads that arrive meanwhile wait (spin, then `sched_yield`).
//! Arena memory is never reused (frees are counted); the arena is 256 KiB, and an allocation
//! that does not fit returns null with `ENOMEM`.

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};

/// Not started.
const UNINIT: u8 = 0;
/// A thread (`INIT_OWNER`) is building kmem.
const BUSY: u8 = 1;
/// kmem is ready.
const READY: u8 = 2;

static STATE: AtomicU8 = AtomicU8::new(UNINIT);
static INIT_OWNER: AtomicUsize = AtomicUsize::new(0);

/// The environment knobs, read once by the initialising thread.
pub(crate) static SHOW_STATS: AtomicBool = AtomicBool::new(false);
/// The OS page size (`valloc`, `pvalloc`), read once at initialisation.
pub(crate) static PAGE_SIZE: AtomicUsize = AtomicUsize::new(4096);

/// How an entry point must serve the call.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Gate {
    /// kmem is ready.
    Kmem,
    /// The calling thread is initialising kmem: use the bootstrap arena.
    Bootstrap,
}

/// Whether kmem is ready (one relaxed load; the kmem paths do their own Acquire loads).
#[inline(always)]
pub(crate) fn ready() -> bool {
    STATE.load(Ordering::Relaxed) == READY
}

/// The calling thread's identity (`pthread_self`: a load from the thread pointer, no call into
/// the allocator, valid from the moment the dynamic loader set up the main thread's TLS).
#[inline]
fn me() -> usize {
    // SAFETY: pthread_self has no preconditions.
    unsafe { libc::pthread_self() as usize }
}

/// The slow side of the gate: initialise kmem, or wait for the thread that does, or tell the
/// initialising thread itself to use the arena.
#[cold]
#[inline(never)]
pub(crate) fn gate() -> Gate {
    let me = me();
    loop {
        match STATE.load(Ordering::Acquire) {
            READY => return Gate::Kmem,
            BUSY if INIT_OWNER.load(Ordering::Relaxed) == me => return Gate::Bootstrap,
            BUSY => {
                // SAFETY: sched_yield has no preconditions.
                unsafe { libc::sched_yield() };
            }
            _ => {
                if STATE
                    .compare_exchange(UNINIT, BUSY, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
                {
                    INIT_OWNER.store(me, Ordering::Relaxed);
                    initialise();
                    INIT_OWNER.store(0, Ordering::Relaxed);
                    STATE.store(READY, Ordering::Release);
                    return Gate::Kmem;
                }
            }
        }
    }
}

/// Whether environment variable `name` (NUL-terminated) is set to something other than
/// empty or `0`.
fn env_flag(name: &core::ffi::CStr) -> bool {
    // getenv only reads the environment block (no allocation).
    // SAFETY: `name` is NUL-terminated.
    let v = unsafe { libc::getenv(name.as_ptr()) };
    if v.is_null() {
        return false;
    }
    // SAFETY: getenv returned a NUL-terminated string.
    let v = unsafe { core::ffi::CStr::from_ptr(v) }.to_bytes();
    !v.is_empty() && v != b"0"
}

/// Runs once, on the first thread that passes the gate; its own allocations meanwhile go to
/// the arena.
fn initialise() {
    SHOW_STATS.store(env_flag(c"KMEM_SHOW_STATS"), Ordering::Relaxed);
    // KMEM_RSEQ and KMEM_SHEAVES are read by kmem itself when the global instance and its
    // kmalloc caches are built.
    // SAFETY: sysconf has no preconditions.
    let ps = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if ps > 0 {
        PAGE_SIZE.store(ps as usize, Ordering::Relaxed);
    }
    crate::next::resolve();
    if !kmem_core::cabi::init() {
        crate::stats::write_err(&[
            "kmem: the allocator could not be built (no lock-free 16-byte CAS, or the OS \
             refused its first mappings): aborting\n",
        ]);
        // SAFETY: abort has no preconditions.
        unsafe { libc::abort() };
    }
    if env_flag(c"KMEM_BOOTSTRAP_SELFTEST") {
        crate::selftest_bootstrap();
    }
}

// ---------------------------------------------------------------------------------------------
// The bootstrap arena
// ---------------------------------------------------------------------------------------------

/// Bytes in the arena.
const ARENA_BYTES: usize = 256 << 10;
/// Bytes of the size header in front of each arena allocation (keeps 16-byte alignment).
const HEADER: usize = 16;

#[repr(C, align(4096))]
struct Arena(UnsafeCell<[u8; ARENA_BYTES]>);

// SAFETY: bytes are handed out by the atomic bump pointer, each range to one caller only.
unsafe impl Sync for Arena {}

static ARENA: Arena = Arena(UnsafeCell::new([0; ARENA_BYTES]));
/// Offset of the first free byte.
static BUMP: AtomicUsize = AtomicUsize::new(0);

/// Allocations and frees served by the arena (reported with `KMEM_SHOW_STATS`).
pub(crate) static ARENA_ALLOCS: AtomicUsize = AtomicUsize::new(0);
/// Frees of arena memory (ignored: the arena is never reused).
pub(crate) static ARENA_FREES: AtomicUsize = AtomicUsize::new(0);

fn arena_base() -> usize {
    ARENA.0.get() as usize
}

/// Whether `p` lies in the bootstrap arena.
#[inline(always)]
pub(crate) fn in_arena(p: *const u8) -> bool {
    (p as usize).wrapping_sub(arena_base()) < ARENA_BYTES
}

/// `size` bytes aligned to `align` (a power of two, at most a page) from the arena, zeroed
/// (the arena is never reused, and starts zeroed); null when it is full.
pub(crate) fn arena_alloc(size: usize, align: usize) -> *mut u8 {
    let align = align.clamp(HEADER, 4096);
    let size = size.max(1);
    let base = arena_base();
    let mut cur = BUMP.load(Ordering::Relaxed);
    loop {
        // The object starts at the first `align` multiple leaving room for the header.
        let start = (base + cur + HEADER).next_multiple_of(align) - base;
        let Some(end) = start.checked_add(size).filter(|&e| e <= ARENA_BYTES) else {
            return core::ptr::null_mut();
        };
        match BUMP.compare_exchange_weak(cur, end, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => {
                ARENA_ALLOCS.fetch_add(1, Ordering::Relaxed);
                let p = ARENA.0.get().cast::<u8>();
                // [start - HEADER, end) is ours alone (the CAS above reserved it).
                // SAFETY: `start >= HEADER` and `end <= ARENA_BYTES`.
                unsafe {
                    p.add(start - HEADER).cast::<usize>().write(size);
                    return p.add(start);
                }
            }
            Err(now) => cur = now,
        }
    }
}

/// The size an arena allocation was made with.
///
/// # Safety
/// `p` was returned by [`arena_alloc`].
pub(crate) unsafe fn arena_size(p: *const u8) -> usize {
    // SAFETY: the header in front of every arena allocation holds its size (our own memory).
    unsafe { p.sub(HEADER).cast::<usize>().read() }
}
