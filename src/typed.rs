//! Typed caches: [`Cache<T>`] hands out [`SlabBox<T>`]s, boxes whose memory comes from a slab.

use crate::cache::KmemCache;
use crate::config::CacheConfig;
use crate::error::KmemError;
use crate::instance::Kmem;
use core::fmt;
use core::marker::PhantomData;
use core::mem::{align_of, size_of, ManuallyDrop};
use core::ops::{Deref, DerefMut};
use core::ptr::{self, NonNull};

/// A cache of `T` values: `alloc(value)` moves the value into a slab object and returns a
/// [`SlabBox`] that drops it and returns the memory when it goes out of scope.
///
/// `Send + Sync` when `T: Send` (boxes may be dropped on any thread).
///
/// ```
/// let cache: kmem::Cache<[u64; 8]> = kmem::Cache::new("block")?;
/// let mut b = cache.alloc([0; 8]).unwrap();
/// b[3] = 7;
/// assert_eq!(b.iter().sum::<u64>(), 7);
/// let inner = kmem::SlabBox::into_inner(b);
/// assert_eq!(inner[3], 7);
/// # Ok::<(), kmem::KmemError>(())
/// ```
pub struct Cache<T> {
    raw: KmemCache,
    _t: PhantomData<fn(T) -> T>,
}

// SAFETY: the cache only moves `T` values in and out; with `T: Send` they may cross threads.
unsafe impl<T: Send> Send for Cache<T> {}
// SAFETY: `&Cache<T>` allows allocating and (through boxes) dropping `T`s from any thread,
// which `T: Send` permits; no `&T` is shared by the cache itself.
unsafe impl<T: Send> Sync for Cache<T> {}

// Unwind safety: a `Cache<T>` holds no `T` (values live in the objects it hands out, owned by
// `SlabBox`es), and its `KmemCache` is unwind safe (see `Kmem`'s impls).
impl<T> core::panic::UnwindSafe for Cache<T> {}
impl<T> core::panic::RefUnwindSafe for Cache<T> {}

impl<T> Cache<T> {
    /// A cache of `T` on [`Kmem::global()`], sized and aligned for `T`, with sheaves of the
    /// kernel's capacity for its size ([`default_sheaf_capacity`](crate::default_sheaf_capacity)):
    /// per-CPU arrays of free objects in front of the slabs, as kmalloc's caches have, so that
    /// objects freed in any order come back without a trip to their slabs (kmem-bench's
    /// `objects`, 1000 typed objects allocated then dropped: 17.5 → 10.3 ns per object of 64
    /// bytes, 27.3 → 19.9 of 256, against the cpu-slab design; docs/performance.md).
    /// [`Cache::with_config`] with `CacheConfig::new()` keeps the cpu-slab design alone.
    ///
    /// ```
    /// struct Conn {
    ///     fd: i32,
    ///     peer: [u8; 16],
    /// }
    /// let conns: kmem::Cache<Conn> = kmem::Cache::new("typed-conn")?;
    /// let c = conns.alloc(Conn { fd: 3, peer: [0; 16] }).ok().unwrap();
    /// assert_eq!((c.fd, c.peer.len()), (3, 16));
    /// assert_eq!(conns.raw().object_size(), core::mem::size_of::<Conn>());
    /// # Ok::<(), kmem::KmemError>(())
    /// ```
    pub fn new(name: &str) -> Result<Cache<T>, KmemError> {
        let cap = crate::config::default_sheaf_capacity(size_of::<T>().max(1));
        Self::with_config(Kmem::global(), name, CacheConfig::new().sheaf_capacity(cap))
    }

    /// A cache of `T` on `kmem` with `config` (its alignment is raised to `T`'s if lower).
    ///
    /// ```
    /// use kmem::{Cache, CacheConfig, Kmem};
    /// #[repr(align(128))]
    /// struct Padded(u8);
    /// let k = Kmem::builder().cpus(1).nodes(1).build()?;
    /// let c: Cache<Padded> = Cache::with_config(&k, "padded", CacheConfig::new())?;
    /// let b = c.alloc(Padded(1)).ok().unwrap();
    /// assert_eq!(&*b as *const Padded as usize % 128, 0);
    /// # Ok::<(), kmem::KmemError>(())
    /// ```
    pub fn with_config(
        kmem: &Kmem,
        name: &str,
        config: CacheConfig,
    ) -> Result<Cache<T>, KmemError> {
        let config = config
            .clone()
            .align(align_of::<T>().max(config_align(&config)));
        let raw = kmem.create_cache(name, size_of::<T>().max(1), config)?;
        Ok(Cache {
            raw,
            _t: PhantomData,
        })
    }

    /// Moves `value` into a new object. On out-of-memory the value is given back.
    ///
    /// ```
    /// use kmem::{Cache, CacheConfig, FaultInjection, Kmem};
    /// let k = Kmem::builder().cpus(1).nodes(1).build()?;
    /// let names: Cache<String> = Cache::with_config(&k, "names", CacheConfig::new())?;
    /// let b = names.alloc(String::from("slab")).unwrap();
    /// assert_eq!(b.len(), 4);
    ///
    /// // On out-of-memory the value comes back.
    /// let starved = Kmem::builder()
    ///     .cpus(1)
    ///     .nodes(1)
    ///     .fault_injection(FaultInjection::EveryNth(1))
    ///     .build()?;
    /// let none: Cache<String> = Cache::with_config(&starved, "none", CacheConfig::new())?;
    /// assert_eq!(none.alloc(String::from("kept")).unwrap_err(), "kept");
    /// # Ok::<(), kmem::KmemError>(())
    /// ```
    #[inline]
    pub fn alloc(&self, value: T) -> Result<SlabBox<'_, T>, T> {
        match self.raw.alloc() {
            Some(p) => {
                let p = p.cast::<T>();
                // SAFETY: a fresh object of at least size_of::<T>() bytes aligned for T.
                unsafe { p.as_ptr().write(value) };
                Ok(SlabBox {
                    ptr: p,
                    cache: self,
                })
            }
            None => Err(value),
        }
    }

    /// The untyped cache underneath.
    ///
    /// ```
    /// let k = kmem::Kmem::builder().cpus(1).nodes(1).build()?;
    /// let c: kmem::Cache<u64> = kmem::Cache::with_config(&k, "words", kmem::CacheConfig::new())?;
    /// let b = c.alloc(7).unwrap();
    /// assert_eq!(c.raw().name(), "words");
    /// assert_eq!(c.raw().info().active_objs, 1);
    /// drop(b);
    /// assert_eq!(c.raw().info().active_objs, 0);
    /// # Ok::<(), kmem::KmemError>(())
    /// ```
    pub fn raw(&self) -> &KmemCache {
        &self.raw
    }
}

impl<T> fmt::Debug for Cache<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cache").field("raw", &self.raw).finish()
    }
}

fn config_align(c: &CacheConfig) -> usize {
    // CacheConfig keeps its fields private; read the alignment back through Debug-free means:
    // an explicit accessor keeps this honest.
    c.align_value()
}

/// A `T` living in a slab object of a [`Cache<T>`]. Derefs to `T`; dropping it drops the `T`
/// and returns the object to the cache.
///
/// ```
/// let k = kmem::Kmem::builder().cpus(1).nodes(1).build()?;
/// let c: kmem::Cache<Vec<u32>> = kmem::Cache::with_config(&k, "vecs", kmem::CacheConfig::new())?;
/// let mut b: kmem::SlabBox<'_, Vec<u32>> = c.alloc(vec![1, 2]).unwrap();
/// b.push(3); // DerefMut to the `Vec`
/// assert_eq!(*b, [1, 2, 3]);
/// assert_eq!(c.raw().info().active_objs, 1);
/// drop(b); // drops the `Vec` and frees the object
/// assert_eq!(c.raw().info().active_objs, 0);
/// # Ok::<(), kmem::KmemError>(())
/// ```
pub struct SlabBox<'a, T> {
    ptr: NonNull<T>,
    cache: &'a Cache<T>,
}

// SAFETY: owns a `T` like `Box<T>`.
unsafe impl<T: Send> Send for SlabBox<'_, T> {}
// SAFETY: shares `&T` like `Box<T>`.
unsafe impl<T: Sync> Sync for SlabBox<'_, T> {}

impl<T> SlabBox<'_, T> {
    /// Moves the value out and returns the object to the cache.
    ///
    /// ```
    /// let k = kmem::Kmem::builder().cpus(1).nodes(1).build()?;
    /// let c: kmem::Cache<String> = kmem::Cache::with_config(&k, "strs", kmem::CacheConfig::new())?;
    /// let b = c.alloc(String::from("moved out")).unwrap();
    /// let s: String = kmem::SlabBox::into_inner(b);
    /// assert_eq!(s, "moved out");
    /// assert_eq!(c.raw().info().active_objs, 0); // the object went back; the `String` lives on
    /// # Ok::<(), kmem::KmemError>(())
    /// ```
    pub fn into_inner(b: Self) -> T {
        let b = ManuallyDrop::new(b);
        // After reading the value out, only the memory is returned (ManuallyDrop stops the drop of
        // the value).
        // SAFETY: the box owns an initialised `T` and the object of its cache that holds it.
        unsafe {
            let v = ptr::read(b.ptr.as_ptr());
            b.cache.raw.free(b.ptr.cast());
            v
        }
    }

    /// The value's address.
    ///
    /// ```
    /// let k = kmem::Kmem::builder().cpus(1).nodes(1).build()?;
    /// let c: kmem::Cache<u128> = kmem::Cache::with_config(&k, "wide", kmem::CacheConfig::new())?;
    /// let b = c.alloc(42).unwrap();
    /// let p = kmem::SlabBox::as_ptr(&b);
    /// assert_eq!(p, &*b as *const u128);
    /// assert_eq!(p as usize % core::mem::align_of::<u128>(), 0);
    /// # Ok::<(), kmem::KmemError>(())
    /// ```
    pub fn as_ptr(b: &Self) -> *const T {
        b.ptr.as_ptr()
    }
}

impl<T: Send + 'static> SlabBox<'_, T> {
    /// Drops the value and frees its object after a grace period (`kfree_rcu` for a typed
    /// box): both happen only after every thread pinned in `guard`'s collector at the time of
    /// the call has unpinned, so a reader holding `*const T` found while pinned may keep using
    /// it until it unpins. Batched per CPU slot like [`KmemCache::free_deferred`].
    ///
    /// ```
    /// use kmem::epoch;
    /// let k = kmem::Kmem::builder().cpus(1).nodes(1).build().unwrap();
    /// let cache: kmem::Cache<String> =
    ///     kmem::Cache::with_config(&k, "names", kmem::CacheConfig::new()).unwrap();
    /// let collector = epoch::Collector::new();
    /// let h = collector.register();
    /// let b = cache.alloc(String::from("node")).unwrap();
    /// kmem::SlabBox::drop_deferred(b, &h.pin());
    /// assert_eq!(cache.raw().deferred_pending(), 1);
    /// while cache.raw().deferred_pending() > 0 {
    ///     cache.raw().flush_deferred(&h.pin());
    /// }
    /// assert_eq!(cache.raw().info().active_objs, 0);
    /// ```
    pub fn drop_deferred(b: Self, guard: &crate::epoch::Guard) {
        /// Drops the `T` at `p`.
        ///
        /// # Safety
        /// `p` holds an initialised `T` that no one uses again.
        unsafe fn drop_t<T>(p: *mut u8) {
            // SAFETY: per the contract.
            unsafe { ptr::drop_in_place(p as *mut T) }
        }
        let b = ManuallyDrop::new(b);
        let raw = &b.cache.raw;
        // SAFETY: the box owns an initialised `T` (`Send + 'static`, so it may be dropped later on any thread) in an object of `raw`, which it gives up here, once.
        unsafe {
            crate::deferred::Deferred::defer(
                raw.deferred(),
                b.ptr.as_ptr() as usize,
                Some(drop_t::<T>),
                guard,
            )
        }
    }
}

impl<T> Deref for SlabBox<'_, T> {
    type Target = T;
    #[inline]
    fn deref(&self) -> &T {
        // SAFETY: the box owns an initialised `T`.
        unsafe { self.ptr.as_ref() }
    }
}

impl<T> DerefMut for SlabBox<'_, T> {
    #[inline]
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: the box owns an initialised `T`, uniquely.
        unsafe { self.ptr.as_mut() }
    }
}

impl<T> Drop for SlabBox<'_, T> {
    #[inline]
    fn drop(&mut self) {
        // Drop the value, then return the object it lived in (an object of this cache, freed once).
        // SAFETY: the box owns an initialised `T` and the object of its cache that holds it.
        unsafe {
            ptr::drop_in_place(self.ptr.as_ptr());
            self.cache.raw.free(self.ptr.cast());
        }
    }
}

impl<T: fmt::Debug> fmt::Debug for SlabBox<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        (**self).fmt(f)
    }
}
