//! The provider's memory allocator: mimalloc instead of the system's.
//!
//! A provider allocates and frees a few small buffers per envelope on its event loop, and
//! frees others on its connection and store threads. Under relay load glibc's malloc spent
//! about a fifth of each provider's CPU on that (arena consolidation, cross-thread frees);
//! with mimalloc the relay path costs about 20 µs per message instead of 23–27 (README.md,
//! "Relay benchmarks"). mimalloc's defaults are kept: it returns freed pages to the OS a
//! second after they empty (`MIMALLOC_PURGE_DELAY`, in milliseconds, changes that).
//!
//! The library never picks an allocator: that is for the program that embeds it. This
//! file is shared, by `#[path]`, with `benches/relay.rs`, which measures the provider as
//! this binary runs it.

/// The allocator of the process.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
