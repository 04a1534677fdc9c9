//! `KMEM_DEBUG`: the kernel's `slub_debug=` boot option as an environment variable, read once
//! per process, parsed without allocating, and applied to every cache created afterwards
//! (private instances, the global instance, its kmalloc caches, and so `libkmem.so`).
//!
//! # Syntax (as `slub_debug`, Documentation/mm/slub.rst)
//!
//! ```text
//! KMEM_DEBUG = block { ";" block }
//! block      = [ flags ] { "," cache-name }
//! flags      = "-" | one or more of F Z P U (either case)
//! ```
//!
//! - `KMEM_DEBUG=FZPU`: those flags on every cache.
//! - `KMEM_DEBUG=FZ,kmalloc-64,conn`: `F` and `Z` on the caches named `kmalloc-64` and
//!   `conn` only. A name ending in `*` matches every name with that prefix (`kmalloc-*`).
//! - `KMEM_DEBUG=,conn`: a block whose flags are empty gets all four (`FZPU`), as in the
//!   kernel.
//! - `KMEM_DEBUG=-`: no debugging (also `-,name` to exclude caches from a global block).
//! - `KMEM_DEBUG=FZ;U,conn`: blocks separated by `;`. A cache takes the flags of the first
//!   block whose list names it; a cache named by no list takes the flags of the last block
//!   without a list (none if there is none).
//! - Unset or empty: no debugging.
//!
//! The letters are the kernel's: `F` = [`CacheFlags::CONSISTENCY_CHECKS`], `Z` =
//! [`CacheFlags::RED_ZONE`], `P` = [`CacheFlags::POISON`], `U` = [`CacheFlags::STORE_USER`].
//! The kernel's other letters (`T` trace, `A` failslab, `O`) are refused by name.
//!
//! # Bad syntax
//!
//! A malformed value is never half applied. [`KmemBuilder::build`](crate::KmemBuilder::build)
//! returns [`KmemError::InvalidDebugOption`] naming the bad part; the global instance (which
//! cannot return an error to a `malloc` caller) writes the same message to stderr and aborts
//! before it maps anything, so a typo never runs a program without the checks it asked for.
//!
//! # Limits
//!
//! The value is copied into a static buffer of [`MAX_VALUE`] bytes with at most [`MAX_BLOCKS`]
//! blocks and [`MAX_NAMES`] names in all (a longer value is refused by name): no allocation,
//! so it is safe inside the global allocator.

use crate::config::{CacheFlags, MAX_CACHE_NAME};
use crate::error::KmemError;
use crate::sync::OnceSlot;

/// The longest `KMEM_DEBUG` value accepted.
pub(crate) const MAX_VALUE: usize = 1024;
/// The most `;`-separated blocks.
pub(crate) const MAX_BLOCKS: usize = 16;
/// The most cache names, over all blocks.
pub(crate) const MAX_NAMES: usize = 64;

/// The four debug flags: what an empty flags field means.
const ALL_DEBUG: u32 = CacheFlags::DEBUG;

/// One block: its flags and its names (index ranges into `DebugOptions::names`).
#[derive(Clone, Copy)]
struct Block {
    flags: u32,
    first_name: u8,
    nr_names: u8,
}

/// A parsed `KMEM_DEBUG`, held in static memory.
#[derive(Clone, Copy)]
pub(crate) struct DebugOptions {
    value: [u8; MAX_VALUE],
    value_len: usize,
    blocks: [Block; MAX_BLOCKS],
    nr_blocks: usize,
    /// `(start, len)` of each name in `value`.
    names: [(u16, u8); MAX_NAMES],
    nr_names: usize,
}

/// Why a value was refused: the byte range of the bad part and the reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ParseError {
    pub(crate) start: usize,
    pub(crate) len: usize,
    pub(crate) reason: &'static str,
}

impl DebugOptions {
    const EMPTY: DebugOptions = DebugOptions {
        value: [0; MAX_VALUE],
        value_len: 0,
        blocks: [Block {
            flags: 0,
            first_name: 0,
            nr_names: 0,
        }; MAX_BLOCKS],
        nr_blocks: 0,
        names: [(0, 0); MAX_NAMES],
        nr_names: 0,
    };

    /// Parses `value` (the variable's bytes).
    pub(crate) fn parse(value: &[u8]) -> Result<DebugOptions, ParseError> {
        let err = |start: usize, len: usize, reason| Err(ParseError { start, len, reason });
        if value.len() > MAX_VALUE {
            return err(MAX_VALUE, value.len() - MAX_VALUE, "longer than 1024 bytes");
        }
        let mut o = DebugOptions::EMPTY;
        o.value[..value.len()].copy_from_slice(value);
        o.value_len = value.len();
        if value.is_empty() {
            return Ok(o);
        }
        let mut pos = 0;
        for block in value.split(|&b| b == b';') {
            let block_start = pos;
            pos += block.len() + 1;
            if o.nr_blocks == MAX_BLOCKS {
                return err(
                    block_start,
                    block.len(),
                    "more than 16 ';'-separated blocks",
                );
            }
            let mut parts = block.split(|&b| b == b',');
            let flag_text = parts.next().unwrap_or(&[]);
            let mut flags = 0u32;
            if flag_text.is_empty() {
                flags = ALL_DEBUG;
            } else if flag_text == b"-" {
                flags = 0;
            } else {
                for (i, &c) in flag_text.iter().enumerate() {
                    flags |= match c.to_ascii_uppercase() {
                        b'F' => CacheFlags::CONSISTENCY_CHECKS.0,
                        b'Z' => CacheFlags::RED_ZONE.0,
                        b'P' => CacheFlags::POISON.0,
                        b'U' => CacheFlags::STORE_USER.0,
                        b'-' => {
                            return err(block_start + i, 1, "'-' must stand alone");
                        }
                        _ => {
                            return err(
                                block_start + i,
                                1,
                                "unknown flag (kmem knows F, Z, P, U, and - for none)",
                            );
                        }
                    };
                }
            }
            let first_name = o.nr_names;
            let mut name_pos = block_start + flag_text.len() + 1;
            for name in parts {
                let start = name_pos;
                name_pos += name.len() + 1;
                if name.is_empty() {
                    return err(start, 0, "empty cache name (two commas, or a trailing one)");
                }
                if name.len() > MAX_CACHE_NAME {
                    return err(start, name.len(), "cache name longer than 64 bytes");
                }
                if let Some(star) = name.iter().position(|&b| b == b'*') {
                    if star + 1 != name.len() {
                        return err(start + star, 1, "'*' may only end a cache name");
                    }
                }
                if o.nr_names == MAX_NAMES {
                    return err(start, name.len(), "more than 64 cache names");
                }
                o.names[o.nr_names] = (start as u16, name.len() as u8);
                o.nr_names += 1;
            }
            o.blocks[o.nr_blocks] = Block {
                flags,
                first_name: first_name as u8,
                nr_names: (o.nr_names - first_name) as u8,
            };
            o.nr_blocks += 1;
        }
        Ok(o)
    }

    /// The debug flags for a cache called `name`.
    pub(crate) fn flags_for(&self, name: &str) -> CacheFlags {
        let mut global = 0;
        for b in &self.blocks[..self.nr_blocks] {
            if b.nr_names == 0 {
                global = b.flags;
                continue;
            }
            let names = &self.names[b.first_name as usize..(b.first_name + b.nr_names) as usize];
            if names.iter().any(|&(s, l)| {
                let pat = &self.value[s as usize..s as usize + l as usize];
                match pat.split_last() {
                    Some((b'*', prefix)) => name.as_bytes().starts_with(prefix),
                    _ => name.as_bytes() == pat,
                }
            }) {
                return CacheFlags(b.flags);
            }
        }
        CacheFlags(global)
    }

    /// The value as given.
    #[cfg(test)]
    pub(crate) fn value(&self) -> &[u8] {
        &self.value[..self.value_len]
    }
}

/// A refused value: the error, and (a prefix of) the value and its length, for the message.
type Refused = (ParseError, [u8; MAX_VALUE + 1], usize);

/// `KMEM_DEBUG` of this process, read and parsed on first use.
static OPTIONS: OnceSlot<Result<DebugOptions, Refused>> = OnceSlot::new();

/// Reads `KMEM_DEBUG` once (`getenv`: no allocation).
fn read_env() -> &'static Result<DebugOptions, Refused> {
    if let Some(o) = OPTIONS.get() {
        return o;
    }
    let parsed = OPTIONS.get_or_try_init(|| {
        // SAFETY: a NUL-terminated name; getenv returns null or a NUL-terminated string.
        let v = unsafe { libc::getenv(c"KMEM_DEBUG".as_ptr()) };
        let bytes: &[u8] = if v.is_null() {
            &[]
        } else {
            // SAFETY: as above.
            unsafe { core::ffi::CStr::from_ptr(v) }.to_bytes()
        };
        Some(DebugOptions::parse(bytes).map_err(|e| {
            // Keep (a prefix of) the value for the message.
            let mut copy = [0u8; MAX_VALUE + 1];
            let n = bytes.len().min(MAX_VALUE + 1);
            copy[..n].copy_from_slice(&bytes[..n]);
            (e, copy, n)
        }))
    });
    match parsed {
        Some(p) => p,
        // The initialiser never fails.
        None => crate::os::abort_msg(&["kmem: KMEM_DEBUG could not be read"]),
    }
}

/// The debug flags `KMEM_DEBUG` gives a cache called `name` (none if it is unset or invalid:
/// an invalid value stops every instance from being built first, see [`check_env`]).
pub(crate) fn env_flags_for(name: &str) -> CacheFlags {
    match read_env() {
        Ok(o) => o.flags_for(name),
        Err(_) => CacheFlags(0),
    }
}

/// `Ok` if `KMEM_DEBUG` is unset or valid; else the error for a `Kmem` builder.
pub(crate) fn check_env() -> Result<(), KmemError> {
    match read_env() {
        Ok(_) => Ok(()),
        Err((e, value, n)) => Err(KmemError::InvalidDebugOption {
            value: String::from_utf8_lossy(&value[..*n]).into_owned(),
            part: String::from_utf8_lossy(
                &value[e.start.min(*n)..(e.start + e.len.max(1)).min(*n)],
            )
            .into_owned(),
            position: e.start,
            reason: e.reason,
        }),
    }
}

/// For the global instance: aborts with the message (no allocation) if `KMEM_DEBUG` is
/// invalid.
pub(crate) fn check_env_or_abort() {
    if let Err((e, value, n)) = read_env() {
        let v = core::str::from_utf8(&value[..*n]).unwrap_or("(not UTF-8)");
        let part = value
            .get(e.start..(e.start + e.len.max(1)).min(*n))
            .and_then(|p| core::str::from_utf8(p).ok())
            .unwrap_or("");
        let at = crate::os::Num::dec(e.start as u64);
        crate::os::abort_msg(&[
            "kmem: KMEM_DEBUG=\"",
            v,
            "\": \"",
            part,
            "\" at byte ",
            at.as_str(),
            ": ",
            e.reason,
            " (the syntax is slub_debug's: FZPU, FZ,cache-a,cache-b, or -)",
        ]);
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    const F: u32 = 1 << 3;
    const Z: u32 = 1 << 4;
    const P: u32 = 1 << 5;
    const U: u32 = 1 << 6;

    fn flags(v: &str, name: &str) -> u32 {
        DebugOptions::parse(v.as_bytes()).unwrap().flags_for(name).0
    }

    fn error(v: &str) -> (String, &'static str) {
        let e = DebugOptions::parse(v.as_bytes()).err().unwrap();
        (
            v.get(e.start..e.start + e.len).unwrap_or("").to_owned(),
            e.reason,
        )
    }

    #[test]
    fn the_slub_debug_forms() {
        assert_eq!(flags("", "x"), 0);
        assert_eq!(flags("FZPU", "anything"), F | Z | P | U);
        assert_eq!(flags("fzpu", "anything"), F | Z | P | U);
        assert_eq!(flags("-", "x"), 0);
        assert_eq!(flags("FZ,kmalloc-64,conn", "kmalloc-64"), F | Z);
        assert_eq!(flags("FZ,kmalloc-64,conn", "conn"), F | Z);
        assert_eq!(flags("FZ,kmalloc-64,conn", "kmalloc-96"), 0);
        assert_eq!(flags(",conn", "conn"), F | Z | P | U);
        assert_eq!(flags("P,kmalloc-*", "kmalloc-1k"), P);
        assert_eq!(flags("P,kmalloc-*", "conn"), 0);
        assert_eq!(flags("FZ;U,conn", "conn"), U);
        assert_eq!(flags("FZ;U,conn", "other"), F | Z);
        assert_eq!(flags("FZPU;-,quiet", "quiet"), 0);
        assert_eq!(flags("FZPU;-,quiet", "loud"), F | Z | P | U);
    }

    #[test]
    fn bad_values_name_the_bad_part() {
        assert_eq!(
            error("FZX"),
            (
                "X".into(),
                "unknown flag (kmem knows F, Z, P, U, and - for none)"
            )
        );
        assert_eq!(error("FZ;PT,c").0, "T");
        assert_eq!(error("F-").1, "'-' must stand alone");
        assert_eq!(
            error("F,a,,b").1,
            "empty cache name (two commas, or a trailing one)"
        );
        assert_eq!(
            error("F,a,").1,
            "empty cache name (two commas, or a trailing one)"
        );
        assert_eq!(error("F,a*b").0, "*");
        let long = format!("F,{}", "n".repeat(65));
        assert_eq!(error(&long).1, "cache name longer than 64 bytes");
        assert_eq!(
            error(&"F;".repeat(17)).1,
            "more than 16 ';'-separated blocks"
        );
        let names: String = (0..65).map(|i| format!(",c{i}")).collect();
        assert_eq!(error(&format!("F{names}")).1, "more than 64 cache names");
        assert_eq!(error(&"F".repeat(1025)).1, "longer than 1024 bytes");
    }

    #[test]
    fn the_value_is_kept() {
        let o = DebugOptions::parse(b"FZ,a").unwrap();
        assert_eq!(o.value(), b"FZ,a");
    }
}
