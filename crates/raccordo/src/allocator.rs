//! The allocator's options, set before it starts.
//!
//! mimalloc's defaults on Linux keep what a burst freed resident for a long time: its
//! arenas are committed up front (`arena_eager_commit = 2` on systems that overcommit), so
//! freed pages stay counted until the arena purges them, a second later at the earliest. A
//! hub that rebuilds its windows from the log, or takes a burst of batches, then shows two
//! to three times the resident memory it uses (`benches/rebuild.sh`: 337 MiB peak against
//! 150–170 MiB with the options below, at the same throughput; docs/benchmarks.md).
//! Committing arena memory on demand and purging freed memory after 100 ms keeps the
//! resident set close to what is in use, which is what operators size machines and set
//! memory limits by.
//!
//! mimalloc reads its options once, while the process loads (its constructor has priority
//! 101), and reserves its first arena then: set in `main`, they would come too late. So they
//! are set as *defaults* by a constructor of priority 100, which runs just before; mimalloc's
//! own environment variables (`MIMALLOC_ARENA_EAGER_COMMIT`, `MIMALLOC_PURGE_DELAY`) still
//! override them, as its documentation says.

use std::os::raw::c_long;

use libmimalloc_sys::mi_option_t;

// Positions in mimalloc's `mi_option_e` (include/mimalloc.h of the bundled v3 sources), which
// the Rust bindings do not name; the test below checks neighbours with distinctive defaults,
// so a renumbering upstream fails it.
const ARENA_EAGER_COMMIT: mi_option_t = 4;
const PURGE_DELAY: mi_option_t = 15;

const DEFAULTS: [(mi_option_t, c_long); 2] = [(ARENA_EAGER_COMMIT, 0), (PURGE_DELAY, 100)];

extern "C" fn set_allocator_defaults() {
    for (option, value) in DEFAULTS {
        // SAFETY: stores a default for an option that is not yet read; allocates nothing.
        unsafe { libmimalloc_sys::mi_option_set_default(option, value) };
    }
}

// SAFETY: a constructor that only stores two integers in mimalloc's option table.
#[used]
#[unsafe(link_section = ".init_array.00100")]
static SET_ALLOCATOR_DEFAULTS: extern "C" fn() = set_allocator_defaults;

#[cfg(test)]
mod tests {
    use super::*;

    fn get(option: mi_option_t) -> c_long {
        unsafe { libmimalloc_sys::mi_option_get(option) }
    }

    #[test]
    fn the_defaults_are_in_place_before_the_allocator_reads_them() {
        // Neighbours with distinctive defaults: the numbering is the one assumed above.
        assert_eq!(get(8), -1, "reserve_huge_os_pages_at defaults to -1");
        assert_eq!(get(18), 100, "os_tag defaults to 100");
        if std::env::var_os("MIMALLOC_ARENA_EAGER_COMMIT").is_none() {
            assert_eq!(get(ARENA_EAGER_COMMIT), 0);
        }
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            assert_eq!(get(PURGE_DELAY), 100);
        }
    }
}
