//! Memory given back to the system while connections sit idle.
//!
//! mimalloc (the binary's allocator) keeps the pages a burst of connections freed, and
//! returns them only when later allocations on the same thread get round to it. A proxy
//! whose clients have all gone idle allocates nothing more, so memory freed by idle
//! connections (parked HTTP connections, pooled PostgreSQL clients between transactions)
//! would stay resident. Each worker therefore collects its thread's free pages every
//! [`TRIM_INTERVAL`].
//!
//! Transparent huge pages are turned off for the process ([`keep_pages_small`]): with
//! them, the kernel's background scan (`khugepaged`) fills the sparse 2 MiB stretches of
//! mimalloc's arena that idle connections leave after a burst, and the proxy's resident
//! memory grows back by megabytes while nothing happens.
//!
//! What a connection keeps for its whole life (its task, its socket's registration, its
//! future, what its requests share) is allocated apart from everything else ([`lasting`],
//! [`Allocator`]). Mixed in one heap, those allocations land in the same pages as the
//! buffers and heads a connection holds only while it is served, and when a burst of
//! connections goes idle those pages stay resident, half empty: measured with 4,000 idle
//! HTTP clients, a size class shared with hyper's response-head buffer kept 2,947 KB of
//! pages for 1,524 KB of connection state. HAProxy's per-type pools avoid this the same way.
//!
//! The same holds for what lasts longer than any connection but is first made while one is
//! served (a pool's server connections and their buffers, a worker's idle lot, caches):
//! one such block left among a burst's freed blocks keeps its whole page. Measured with
//! 2,000 pooled PostgreSQL clients gone idle, about 25 such blocks kept 540 KB of mostly
//! empty pages; made in the lasting heap, they keep none. A block that grows stays in
//! the heap it came from.

use std::alloc::{GlobalAlloc, Layout};
use std::cell::Cell;
use std::pin::Pin;
use std::ptr::null_mut;
use std::sync::atomic::{AtomicPtr, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use libmimalloc_sys::mi_heap_t;

// mimalloc v3's ownership test (a look-up of the block's page), which the bindings name
// only for v2.
unsafe extern "C" {
    fn mi_heap_contains(heap: *const mi_heap_t, block: *const std::ffi::c_void) -> bool;
}

/// Time between two collections on one worker: often enough that memory freed by
/// connections going idle is soon returned, rarely enough to cost nothing measurable
/// (a collection visits the worker's pages once).
const TRIM_INTERVAL: Duration = Duration::from_secs(1);

/// Runs on a worker for its life: collects the thread's free pages every
/// [`TRIM_INTERVAL`].
pub async fn trim_periodically() {
    let mut ticks = tokio::time::interval(TRIM_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        // Forced: a normal collection frees empty pages but leaves their return to the
        // system for a later allocation, which an idle worker never makes.
        // SAFETY: mi_collect takes no pointers and may be called from any thread at any
        // time; without mimalloc as the allocator (tests) the thread's heap is empty.
        unsafe { libmimalloc_sys::mi_collect(true) };
        let heap = LASTING_HEAP.load(Ordering::Acquire);
        if !heap.is_null() {
            // SAFETY: a heap made by `lasting_heap` is never deleted once published.
            unsafe { libmimalloc_sys::mi_heap_collect(heap, true) };
        }
    }
}

/// The binary's allocator: mimalloc, with what connections keep for their life in a heap
/// of its own (see the module documentation).
#[derive(Debug, Clone, Copy, Default)]
pub struct Allocator;

thread_local! {
    /// Set while this thread makes allocations that last as long as a connection.
    static LASTING: Cell<bool> = const { Cell::new(false) };
}

/// The heap of allocations that last as long as a connection, made on first use; null
/// until then (or if mimalloc could not make it: those allocations then share the main
/// heap).
static LASTING_HEAP: AtomicPtr<mi_heap_t> = AtomicPtr::new(null_mut());

/// The heap this allocation should come from: the lasting heap inside [`lasting`], `None`
/// (the thread's default) elsewhere.
fn lasting_now() -> Option<*mut mi_heap_t> {
    let lasting = LASTING.try_with(Cell::get).unwrap_or(false);
    lasting.then(lasting_heap).filter(|heap| !heap.is_null())
}

fn lasting_heap() -> *mut mi_heap_t {
    let heap = LASTING_HEAP.load(Ordering::Acquire);
    if !heap.is_null() {
        return heap;
    }
    // SAFETY: mi_heap_new takes nothing and returns a heap usable from any thread (v3), or
    // null.
    let made = unsafe { libmimalloc_sys::mi_heap_new() };
    match LASTING_HEAP.compare_exchange(null_mut(), made, Ordering::AcqRel, Ordering::Acquire) {
        Ok(_) => made,
        Err(first) => {
            if !made.is_null() {
                // SAFETY: `made` is ours alone and has no blocks yet.
                unsafe { libmimalloc_sys::mi_heap_delete(made) };
            }
            first
        }
    }
}

/// The alignment every mimalloc block has whatever it was asked for: a machine word (its
/// size classes are whole words, laid out from aligned page starts).
const WORD: usize = std::mem::size_of::<usize>();

/// Whether `layout` needs no more alignment than every block has. Such blocks are asked
/// for through mimalloc's plain entry points: its aligned ones (what `mimalloc::MiMalloc`
/// uses for everything) send any request their quick path misses (a block over 1 KiB, a
/// size class whose free list is empty) through an over-allocating slow path. Counted with
/// callgrind on the HTTP path, five of a request's six allocations took it, at about 280
/// instructions each.
fn word_aligned(layout: Layout) -> bool {
    layout.align() <= WORD
}

// SAFETY: every block comes from mimalloc (the lasting heap or the default one), with the
// layout's size and at least its alignment (plain entry points only for word alignment,
// which every mimalloc block has); mimalloc frees and reallocates a block of any of its
// heaps.
unsafe impl GlobalAlloc for Allocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let (size, align) = (layout.size(), layout.align());
        // SAFETY (all four): a lasting heap is live (never deleted once published); the
        // rest is the caller's contract.
        unsafe {
            match (lasting_now(), word_aligned(layout)) {
                (Some(heap), true) => libmimalloc_sys::mi_heap_malloc(heap, size).cast(),
                (Some(heap), false) => {
                    libmimalloc_sys::mi_heap_malloc_aligned(heap, size, align).cast()
                }
                (None, true) => libmimalloc_sys::mi_malloc(size).cast(),
                (None, false) => mimalloc::MiMalloc.alloc(layout),
            }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let (size, align) = (layout.size(), layout.align());
        // SAFETY: as in `alloc`.
        unsafe {
            match (lasting_now(), word_aligned(layout)) {
                (Some(heap), true) => libmimalloc_sys::mi_heap_zalloc(heap, size).cast(),
                (Some(heap), false) => {
                    libmimalloc_sys::mi_heap_zalloc_aligned(heap, size, align).cast()
                }
                (None, true) => libmimalloc_sys::mi_zalloc(size).cast(),
                (None, false) => mimalloc::MiMalloc.alloc_zeroed(layout),
            }
        }
    }

    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        // SAFETY: the block is mimalloc's, whichever heap it came from.
        unsafe { mimalloc::MiMalloc.dealloc(block, layout) }
    }

    unsafe fn realloc(&self, block: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // A block that grows stays in the lasting heap if it was there (a connection's
        // lasting state that grows later, outside any `lasting` scope) or comes to it
        // inside one.
        let lasting = lasting_now().or_else(|| {
            let heap = LASTING_HEAP.load(Ordering::Acquire);
            // SAFETY: mi_heap_contains only looks the block's page up.
            (!heap.is_null() && unsafe { mi_heap_contains(heap, block.cast()) }).then_some(heap)
        });
        let (block_ptr, align) = (block.cast(), layout.align());
        // SAFETY: a lasting heap is live (never deleted once published) and the block is
        // mimalloc's.
        unsafe {
            match (lasting, word_aligned(layout)) {
                (Some(heap), true) => {
                    libmimalloc_sys::mi_heap_realloc(heap, block_ptr, new_size).cast()
                }
                (Some(heap), false) => {
                    libmimalloc_sys::mi_heap_realloc_aligned(heap, block_ptr, new_size, align)
                        .cast()
                }
                (None, true) => libmimalloc_sys::mi_realloc(block_ptr, new_size).cast(),
                (None, false) => mimalloc::MiMalloc.realloc(block, layout, new_size),
            }
        }
    }
}

/// Runs `make`, whose allocations last as long as a connection (its task, its future,
/// what its requests share), so that they come from the lasting heap. Only for code that
/// does not await: another task would allocate under the flag.
pub fn lasting<T>(make: impl FnOnce() -> T) -> T {
    lasting_if(true, make)
}

/// [`lasting`] when `lasting` holds; else `make` allocates from the main heap (even inside
/// a [`lasting`] scope).
pub fn lasting_if<T>(lasting: bool, make: impl FnOnce() -> T) -> T {
    let before = LASTING
        .try_with(|flag| flag.replace(lasting))
        .unwrap_or(false);
    let made = make();
    let _ = LASTING.try_with(|flag| flag.set(before));
    made
}

pin_project_lite::pin_project! {
    /// A future each of whose polls runs under [`lasting`]: for a wait that makes a
    /// connection's lasting state when it completes (accepting a socket registers it).
    pub struct Lasting<F> {
        #[pin]
        inner: F,
    }
}

impl<F> Lasting<F> {
    /// Polls `inner` under [`lasting`].
    pub fn new(inner: F) -> Self {
        Self { inner }
    }
}

impl<F: Future> Future for Lasting<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let inner = self.project().inner;
        lasting(|| inner.poll(cx))
    }
}

/// Turns transparent huge pages off for this process (and the processes it starts, such as
/// a binary upgrade's successor). Measured with 2,000 idle HTTP clients after a burst of
/// them: 2.7 KB of resident memory each, steady, against 10 KB twenty seconds later with
/// huge pages on, as the kernel turned the burst's freed stretches into huge pages. A
/// proxy's working set is small, so huge pages buy it nothing. Failure (an old kernel)
/// only leaves them on.
pub fn keep_pages_small() {
    if let Err(error) = nix::sys::prctl::set_thp_disable(true) {
        tracing::debug!(%error, "transparent huge pages left on");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lasting_allocations_come_from_their_own_heap() {
        let layout = Layout::from_size_align(208, 8).unwrap_or_else(|e| panic!("{e}"));
        // SAFETY: blocks of `layout`, each freed once with it.
        unsafe {
            let lasting_block = lasting(|| Allocator.alloc(layout));
            let other = Allocator.alloc(layout);
            let heap = lasting_heap();
            assert!(!heap.is_null());
            assert!(mi_heap_contains(heap, lasting_block.cast()));
            assert!(!mi_heap_contains(heap, other.cast()));
            let zeroed = lasting(|| Allocator.alloc_zeroed(layout));
            assert!(
                std::slice::from_raw_parts(zeroed, 208)
                    .iter()
                    .all(|b| *b == 0)
            );
            let grown = Allocator.realloc(lasting_block, layout, 4096);
            assert!(!grown.is_null());
            assert!(
                mi_heap_contains(heap, grown.cast()),
                "a lasting block stays in its heap as it grows"
            );
            let other = lasting(|| Allocator.realloc(other, layout, 4096));
            assert!(
                mi_heap_contains(heap, other.cast()),
                "a block grown inside `lasting` moves to its heap"
            );
            for block in [(grown, 4096), (other, 4096), (zeroed, 208)] {
                let layout = Layout::from_size_align(block.1, 8).unwrap_or_else(|e| panic!("{e}"));
                Allocator.dealloc(block.0, layout);
            }
        }
        assert!(!LASTING.with(Cell::get), "the flag is put back");
    }

    /// Plain and aligned entry points alike give every block the alignment it asked for,
    /// in both heaps, through alloc, alloc_zeroed and realloc.
    #[test]
    fn every_block_has_the_alignment_it_asked_for() {
        let sizes = (1..=80).chain([100, 1000, 1024, 1025, 4000, 8192, 70_000]);
        for size in sizes {
            for align in [1, 2, 4, 8, 16, 32, 64, 4096] {
                let layout = Layout::from_size_align(size, align).unwrap_or_else(|e| panic!("{e}"));
                for in_lasting in [false, true] {
                    // SAFETY: blocks of `layout` (then of the grown one), each freed once.
                    unsafe {
                        let block = lasting_if(in_lasting, || Allocator.alloc(layout));
                        let zeroed = lasting_if(in_lasting, || Allocator.alloc_zeroed(layout));
                        assert!(!block.is_null() && !zeroed.is_null());
                        assert_eq!(block as usize % align, 0, "{size} B aligned {align}");
                        assert_eq!(zeroed as usize % align, 0, "{size} B aligned {align}");
                        assert!(
                            std::slice::from_raw_parts(zeroed, size)
                                .iter()
                                .all(|b| *b == 0)
                        );
                        let grown =
                            lasting_if(in_lasting, || Allocator.realloc(block, layout, size * 3));
                        assert_eq!(grown as usize % align, 0, "{size} B grown, aligned {align}");
                        let grown_layout = Layout::from_size_align(size * 3, align)
                            .unwrap_or_else(|e| panic!("{e}"));
                        Allocator.dealloc(grown, grown_layout);
                        Allocator.dealloc(zeroed, layout);
                    }
                }
            }
        }
    }

    #[test]
    fn nested_lasting_scopes_put_the_flag_back() {
        lasting(|| {
            lasting(|| assert!(LASTING.with(Cell::get)));
            assert!(LASTING.with(Cell::get));
        });
        assert!(!LASTING.with(Cell::get));
    }
}
