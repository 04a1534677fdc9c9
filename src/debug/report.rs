//! Reports in the kernel's words (`slab_bug`, `slab_err`, `object_err`, `print_trailer`,
//! `print_section`, `print_tracking`), written to stderr line by line from a stack buffer:
//! nothing here allocates, takes a kmem lock or calls back into kmem.

use super::track::{Track, TrackItem};
use super::CacheInner;
use crate::config::CacheFlags;
use crate::page::Page;

/// One line of output, formatted on the stack.
pub(crate) struct Line {
    buf: [u8; 200],
    len: usize,
}

impl Line {
    /// An empty line.
    pub(crate) fn new() -> Self {
        Line {
            buf: [0; 200],
            len: 0,
        }
    }

    fn push(&mut self, b: &[u8]) -> &mut Self {
        for &c in b {
            if self.len == self.buf.len() {
                self.write_out();
            }
            self.buf[self.len] = c;
            self.len += 1;
        }
        self
    }

    /// Appends text.
    pub(crate) fn s(&mut self, t: &str) -> &mut Self {
        self.push(t.as_bytes())
    }

    /// Appends `0x…`.
    pub(crate) fn hex(&mut self, v: u64) -> &mut Self {
        let n = crate::os::Num::hex(v);
        self.push(n.as_str().as_bytes())
    }

    /// Appends a decimal number.
    pub(crate) fn dec(&mut self, v: u64) -> &mut Self {
        let n = crate::os::Num::dec(v);
        self.push(n.as_str().as_bytes())
    }

    /// Appends one byte as two hex digits.
    fn byte(&mut self, b: u8) -> &mut Self {
        const H: &[u8; 16] = b"0123456789abcdef";
        self.push(&[H[(b >> 4) as usize], H[(b & 15) as usize]])
    }

    fn write_out(&mut self) {
        let mut done = 0;
        while done < self.len {
            // SAFETY: writing initialised bytes of our buffer to fd 2; no allocation.
            let n = unsafe {
                libc::write(2, self.buf[done..self.len].as_ptr().cast(), self.len - done)
            };
            if n <= 0 {
                break;
            }
            done += n as usize;
        }
        self.len = 0;
    }

    /// Writes the line and a newline.
    pub(crate) fn end(&mut self) {
        self.push(b"\n");
        self.write_out();
    }
}

/// Writes one line made of `parts`.
pub(crate) fn line(parts: &[&str]) {
    let mut l = Line::new();
    for p in parts {
        l.s(p);
    }
    l.end();
}

impl CacheInner {
    /// `slab_bug`: the report's header.
    pub(crate) fn slab_bug(&self, reason: &str, addr: Option<usize>) {
        line(&["============================================================================="]);
        let mut l = Line::new();
        l.s("BUG ").s(self.name()).s(" (kmem): ").s(reason);
        if let Some(a) = addr {
            l.s(" ").hex(a as u64);
        }
        l.end();
        line(&["-----------------------------------------------------------------------------"]);
        line(&[""]);
    }

    /// `print_slab_info`.
    pub(crate) fn print_slab_info(&self, slab: &Page) {
        let (fl, c) = slab.slab_state();
        let mut l = Line::new();
        l.s("Slab ")
            .hex(Self::slab_base(slab) as u64)
            .s(" objects=")
            .dec(c.objects() as u64)
            .s(" used=")
            .dec(c.inuse() as u64)
            .s(" fp=")
            .hex(fl as u64)
            .s(" order=")
            .dec(slab.info().order() as u64)
            .s(" node=")
            .dec(slab.node() as u64)
            .s(if c.frozen() { " frozen" } else { "" });
        l.end();
    }

    /// `slab_err`: a defect of the slab as a whole (no object to show).
    pub(crate) fn slab_err(&self, slab: &Page, reason: &str, addr: Option<usize>) {
        self.slab_bug(reason, addr);
        self.print_slab_info(slab);
        line(&[""]);
    }

    /// `object_err`: a defect of one object, with its trailer.
    pub(crate) fn object_err(&self, slab: &Page, obj: usize, reason: &str) {
        self.slab_bug(reason, None);
        self.print_trailer(slab, obj);
    }

    /// `print_track`.
    fn print_track(&self, what: &str, t: Track, now: u64) {
        if t.addr == 0 && t.when == 0 {
            return;
        }
        let mut l = Line::new();
        l.s(what).s(" in ");
        print_addr(&mut l, t.addr as usize);
        l.s(" age=")
            .dec(now.saturating_sub(t.when) / 1_000_000)
            .s("ms cpu=")
            .dec(t.cpu as u64)
            .s(" tid=")
            .dec(t.tid as u64);
        l.end();
    }

    /// `print_tracking`: the last allocation and free of `obj` (`STORE_USER` only).
    pub(crate) fn print_tracking(&self, obj: usize) {
        if !self.has(CacheFlags::STORE_USER) {
            return;
        }
        let now = crate::os::now_ns();
        // SAFETY: `obj` is an object of this cache: its records are inside its slot.
        let (a, f) = unsafe {
            (
                self.get_track(obj, TrackItem::Alloc),
                self.get_track(obj, TrackItem::Free),
            )
        };
        self.print_track("Allocated", a, now);
        self.print_track("Freed", f, now);
    }

    /// `print_trailer`: owners, slab, and hex dumps of the object and its surroundings.
    pub(crate) fn print_trailer(&self, slab: &Page, obj: usize) {
        let base = Self::slab_base(slab);
        self.print_tracking(obj);
        self.print_slab_info(slab);
        // SAFETY: `obj + offset` is a word inside the object's slot (mapped slab memory).
        let fp = unsafe { crate::slub::slab::get_freepointer(obj, self.geo.offset) };
        let mut l = Line::new();
        l.s("Object ")
            .hex(obj as u64)
            .s(" @offset=")
            .dec((obj - base) as u64)
            .s(" fp=")
            .hex(fp as u64);
        l.end();
        line(&[""]);
        let pad = self.geo.red_left_pad;
        if self.has(CacheFlags::RED_ZONE) {
            print_section("Redzone  ", obj - pad, pad);
        } else if obj >= base + 16 {
            print_section("Bytes b4 ", obj - 16, 16);
        }
        print_section(
            "Object   ",
            obj,
            self.geo.object_size.min(crate::page::PAGE_SIZE),
        );
        if self.has(CacheFlags::RED_ZONE) {
            print_section(
                "Redzone  ",
                obj + self.geo.object_size,
                self.geo.inuse - self.geo.object_size,
            );
        }
        let mut off = self.get_info_end();
        if self.has(CacheFlags::STORE_USER) {
            off += 2 * super::track::TRACK_SIZE;
        }
        if off != self.size_from_object() {
            print_section("Padding  ", obj + off, self.size_from_object() - off);
        }
    }

    /// The last line of a report that stops the process.
    pub(crate) fn abort_corrupt(&self, d: super::Defect) -> ! {
        let a = crate::os::Num::hex(d.addr as u64);
        crate::os::abort_msg(&[
            "kmem: slub_debug: cache \"",
            self.name(),
            "\" is corrupt (",
            d.kind,
            " at ",
            a.as_str(),
            "); aborting",
        ])
    }
}

/// `print_section`: a hex dump, 16 bytes a line, with the address and the printable bytes.
pub(crate) fn print_section(text: &str, addr: usize, len: usize) {
    let mut off = 0;
    while off < len {
        let n = (len - off).min(16);
        let mut l = Line::new();
        l.s(text).hex((addr + off) as u64).s(": ");
        for i in 0..16 {
            if i < n {
                // SAFETY: the caller names bytes of mapped slab memory.
                let b = unsafe { *((addr + off + i) as *const u8) };
                l.byte(b).s(" ");
            } else {
                l.s("   ");
            }
        }
        l.s(" ");
        for i in 0..n {
            // SAFETY: as above.
            let b = unsafe { *((addr + off + i) as *const u8) };
            let c = if b.is_ascii_graphic() || b == b' ' {
                b
            } else {
                b'.'
            };
            l.push(&[c]);
        }
        l.end();
        off += n;
    }
}

/// An address as `0x… (file+0x…)`: the object file mapped there and the address's offset from
/// that file's load base (what `addr2line -e file` takes), found in `/proc/self/maps` with
/// `open`/`read` into a stack buffer. Not `dladdr`: it takes the dynamic loader's lock, which a
/// thread inside `dlopen` may hold while it waits in kmem for the list lock this report is
/// written under.
fn print_addr(l: &mut Line, addr: usize) {
    l.hex(addr as u64);
    #[cfg(not(any(miri, loom)))]
    if addr != 0 {
        let mut path = [0u8; 256];
        if let Some((base, len)) = mapping_of(addr, &mut path) {
            l.s(" (")
                .s(core::str::from_utf8(&path[..len]).unwrap_or("?"))
                .s("+")
                .hex((addr - base) as u64)
                .s(")");
        }
    }
}

/// The load base (the start of the file's mapping at offset 0) and the path (copied into
/// `path`, its length returned) of the file mapping that contains `addr`.
#[cfg(not(any(miri, loom)))]
fn mapping_of(addr: usize, path: &mut [u8; 256]) -> Option<(usize, usize)> {
    // SAFETY: a NUL-terminated path; the descriptor is closed below.
    let fd = unsafe {
        libc::open(
            c"/proc/self/maps".as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return None;
    }
    let mut buf = [0u8; 4096];
    let (mut have, mut result) = (0usize, None);
    // The start of the last mapping at file offset 0, and its path.
    let (mut base, mut base_path, mut base_len) = (0usize, [0u8; 256], 0usize);
    'read: loop {
        // SAFETY: reading into the free tail of our stack buffer.
        let n = unsafe { libc::read(fd, buf[have..].as_mut_ptr().cast(), buf.len() - have) };
        if n <= 0 {
            break;
        }
        have += n as usize;
        let mut start = 0;
        while let Some(nl) = buf[start..have].iter().position(|&b| b == b'\n') {
            let line = &buf[start..start + nl];
            start += nl + 1;
            // "lo-hi perms offset dev inode   path"
            let mut f = line.split(|&b| b == b' ').filter(|f| !f.is_empty());
            let (Some(range), Some(_perms), Some(off), Some(_dev), Some(_inode)) =
                (f.next(), f.next(), f.next(), f.next(), f.next())
            else {
                continue;
            };
            let file = f.next().unwrap_or(&[]);
            let mut r = range.split(|&b| b == b'-');
            let (Some(lo), Some(hi), Some(off)) =
                (r.next().and_then(hex), r.next().and_then(hex), hex(off))
            else {
                continue;
            };
            let plen = file.len().min(256);
            if off == 0 && plen > 0 {
                base = lo;
                base_path[..plen].copy_from_slice(&file[..plen]);
                base_len = plen;
            }
            if (lo..hi).contains(&addr) {
                if plen > 0 && base_path[..base_len] == file[..plen] {
                    path[..plen].copy_from_slice(&file[..plen]);
                    result = Some((base, plen));
                }
                break 'read;
            }
        }
        // Keep the unfinished line; a line longer than the buffer is skipped.
        buf.copy_within(start..have, 0);
        have -= start;
        if have == buf.len() {
            have = 0;
        }
    }
    // SAFETY: our descriptor.
    unsafe { libc::close(fd) };
    result
}

/// A hexadecimal number without prefix.
#[cfg(not(any(miri, loom)))]
fn hex(t: &[u8]) -> Option<usize> {
    if t.is_empty() || t.len() > 16 {
        return None;
    }
    t.iter().try_fold(0usize, |v, &c| {
        Some(v << 4 | (c as char).to_digit(16)? as usize)
    })
}
