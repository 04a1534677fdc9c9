//! CPU and NUMA topology: possible CPUs and nodes and the CPU → node map, read from sysfs with
//! raw `open`/`read` into stack buffers (no allocation: this runs inside the global allocator)
//! and cached in static atomics.

#![cfg_attr(any(miri, loom), allow(dead_code, unused_imports))]

use crate::sync::global::{AtomicUsize, Ordering};

/// Number of possible CPUs: one more than the highest id in
/// `/sys/devices/system/cpu/possible` (the size of an array indexed by CPU id), else
/// `sysconf(_SC_NPROCESSORS_CONF)`, else 1. Cached after the first call; under Miri, 4.
///
/// # Example
/// ```
/// let n = kmem::cpu::possible_cpus();
/// assert!(n >= 1);
/// ```
pub fn possible_cpus() -> usize {
    #[cfg(miri)]
    {
        4
    }
    #[cfg(not(miri))]
    {
        static CPUS: AtomicUsize = AtomicUsize::new(0);
        let n = CPUS.load(Ordering::Relaxed);
        if n != 0 {
            return n;
        }
        let n = read_id_list(c"/sys/devices/system/cpu/possible")
            .map(|l| l.end)
            .unwrap_or_else(|| {
                // SAFETY: sysconf has no preconditions and does not allocate.
                let c = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_CONF) };
                if c > 0 {
                    c as usize
                } else {
                    1
                }
            });
        CPUS.store(n, Ordering::Relaxed);
        n
    }
}

/// NUMA node count: one more than the highest id in `/sys/devices/system/node/possible` (or
/// `.../online`), else 1. Cached after the first call; under Miri, 1.
///
/// # Example
/// ```
/// assert!(kmem::cpu::possible_nodes() >= 1);
/// ```
pub fn possible_nodes() -> usize {
    #[cfg(miri)]
    {
        1
    }
    #[cfg(not(miri))]
    {
        static NODES: AtomicUsize = AtomicUsize::new(0);
        let n = NODES.load(Ordering::Relaxed);
        if n != 0 {
            return n;
        }
        let n = read_id_list(c"/sys/devices/system/node/possible")
            .or_else(|| read_id_list(c"/sys/devices/system/node/online"))
            .map_or(1, |l| l.end);
        NODES.store(n, Ordering::Relaxed);
        n
    }
}

/// The NUMA node of `cpu`: the `M` of the `/sys/devices/system/cpu/cpuN/nodeM` link, else 0.
///
/// Always below [`possible_nodes`]. Cached per CPU for the first 1024 CPUs; under Miri, 0.
///
/// # Example
/// ```
/// use kmem::cpu::{cpu_to_node, current_cpu, possible_nodes};
/// assert!(cpu_to_node(current_cpu()) < possible_nodes());
/// ```
pub fn cpu_to_node(cpu: usize) -> usize {
    #[cfg(miri)]
    {
        let _ = cpu;
        0
    }
    #[cfg(not(miri))]
    {
        const CACHED: usize = 1024;
        // node + 1; 0 = not looked up yet.
        static NODE_OF: [AtomicUsize; CACHED] = [const { AtomicUsize::new(0) }; CACHED];
        let nodes = possible_nodes();
        if nodes <= 1 {
            return 0;
        }
        if let Some(c) = NODE_OF.get(cpu) {
            let v = c.load(Ordering::Relaxed);
            if v != 0 {
                return v - 1;
            }
        }
        let node = (0..nodes)
            .find(|&m| cpu_node_link_exists(cpu, m))
            .unwrap_or(0);
        if let Some(c) = NODE_OF.get(cpu) {
            c.store(node + 1, Ordering::Relaxed);
        }
        node
    }
}

// ---------------------------------------------------------------------------------------------
// sysfs, without allocating
// ---------------------------------------------------------------------------------------------

/// A parsed id list such as `0-3,8-11`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct IdList {
    /// How many ids the list names.
    pub(super) count: usize,
    /// One more than the highest id (the length of an array indexed by id).
    pub(super) end: usize,
}

/// Parses a kernel id list (`cpulist` format: `0`, `0-3`, `0-3,8-11`, optional trailing
/// newline). `None` for anything else, including an empty list.
pub(super) fn parse_id_list(s: &[u8]) -> Option<IdList> {
    let s = match s {
        [rest @ .., b'\n'] => rest,
        _ => s,
    };
    if s.is_empty() {
        return None;
    }
    let mut count = 0usize;
    let mut end = 0usize;
    for item in s.split(|&b| b == b',') {
        let mut bounds = item.splitn(2, |&b| b == b'-');
        let lo = parse_decimal(bounds.next()?)?;
        let hi = match bounds.next() {
            Some(h) => parse_decimal(h)?,
            None => lo,
        };
        if hi < lo {
            return None;
        }
        count = count.checked_add(hi - lo + 1)?;
        end = end.max(hi.checked_add(1)?);
    }
    Some(IdList { count, end })
}

pub(super) fn parse_decimal(s: &[u8]) -> Option<usize> {
    if s.is_empty() || s.len() > 9 {
        return None;
    }
    let mut v = 0usize;
    for &b in s {
        if !b.is_ascii_digit() {
            return None;
        }
        v = v * 10 + usize::from(b - b'0');
    }
    Some(v)
}

/// Reads a small file into `buf` with raw `open`/`read`; the number of bytes read.
#[cfg(not(miri))]
pub(super) fn read_small_file(path: &core::ffi::CStr, buf: &mut [u8]) -> Option<usize> {
    // SAFETY: `path` is NUL-terminated; open does not allocate.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return None;
    }
    let mut len = 0;
    let ok = loop {
        let rest = &mut buf[len..];
        if rest.is_empty() {
            break false; // too long for us: treat as unreadable
        }
        // SAFETY: `rest` is a valid writable buffer of `rest.len()` bytes; `fd` is open.
        let n = unsafe { libc::read(fd, rest.as_mut_ptr().cast(), rest.len()) };
        if n > 0 {
            len += n as usize;
        } else if n == 0 {
            break true;
        } else if std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            break false;
        }
    };
    // SAFETY: `fd` is a descriptor we opened and have not closed.
    unsafe {
        libc::close(fd);
    }
    ok.then_some(len)
}

/// Reads and parses a sysfs id list file.
#[cfg(not(miri))]
pub(super) fn read_id_list(path: &core::ffi::CStr) -> Option<IdList> {
    let mut buf = [0u8; 1024];
    let n = read_small_file(path, &mut buf)?;
    parse_id_list(&buf[..n])
}

/// Whether `/sys/devices/system/cpu/cpu{cpu}/node{node}` exists.
#[cfg(not(miri))]
pub(super) fn cpu_node_link_exists(cpu: usize, node: usize) -> bool {
    let mut path = [0u8; 96];
    let mut w = ByteWriter {
        buf: &mut path,
        len: 0,
    };
    w.push(b"/sys/devices/system/cpu/cpu");
    w.push_decimal(cpu);
    w.push(b"/node");
    w.push_decimal(node);
    w.push(b"\0");
    let Some(path) = w.as_cstr() else {
        return false;
    };
    // SAFETY: `path` is NUL-terminated; access does not allocate.
    unsafe { libc::access(path.as_ptr(), libc::F_OK) == 0 }
}

/// Builds a string in a fixed stack buffer (no allocation); overflow marks it invalid.
#[cfg(not(miri))]
pub(super) struct ByteWriter<'a> {
    pub(super) buf: &'a mut [u8],
    pub(super) len: usize,
}

#[cfg(not(miri))]
impl ByteWriter<'_> {
    pub(super) fn push(&mut self, s: &[u8]) {
        if let Some(dst) = self.buf.get_mut(self.len..self.len + s.len()) {
            dst.copy_from_slice(s);
            self.len += s.len();
        } else {
            self.len = usize::MAX / 2; // poison: as_cstr will fail
        }
    }

    pub(super) fn push_decimal(&mut self, mut v: usize) {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        self.push(&digits[i..]);
    }

    pub(super) fn as_cstr(&self) -> Option<&core::ffi::CStr> {
        core::ffi::CStr::from_bytes_with_nul(self.buf.get(..self.len)?).ok()
    }
}
