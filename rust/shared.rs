//! Sharing one index between many reader threads and serialised writers.
//!
//! Readers hold a read lock for one lookup, or clone the `Arc` for a long batch and drop the
//! lock. A small write batch is applied in place under the write lock, so it blocks readers
//! for at most [`SMALL_BATCH`] operations. A larger one is applied to a copy while readers go
//! on with the current version, then the copy is swapped in: readers see the whole batch or
//! none of it, and wait only for a pointer swap. Purging is split into bounded steps, which is
//! safe because expired decisions are invisible to lookups already. When churn has left enough
//! behind to be worth compacting (see [`Index::compact`]), the next batch takes the copy path
//! and compacts the copy: the work is never done under the lock readers need.

use crate::index::Index;
use parking_lot::{Mutex, RwLock, RwLockReadGuard};
use std::sync::Arc;

/// Largest batch applied in place under the write lock.
pub const SMALL_BATCH: usize = 1024;
/// Removals per purge step.
const PURGE_STEP: usize = 4096;

/// An [`Index`] shared between threads.
#[derive(Debug)]
pub struct Shared {
    current: RwLock<Arc<Index>>,
    writer: Mutex<()>,
}

impl Shared {
    /// Shares `ix`.
    pub fn new(ix: Index) -> Shared {
        Shared { current: RwLock::new(Arc::new(ix)), writer: Mutex::new(()) }
    }

    /// A read guard for short reads.
    #[inline]
    pub fn read(&self) -> RwLockReadGuard<'_, Arc<Index>> {
        self.current.read()
    }

    /// The current version, for long reads that must not hold the lock.
    pub fn snapshot(&self) -> Arc<Index> {
        self.current.read().clone()
    }

    /// Applies `f` as one atomic batch of about `size` operations.
    pub fn write<R>(&self, size: usize, f: impl FnOnce(&mut Index) -> R) -> R {
        let _serial = self.writer.lock();
        if size <= SMALL_BATCH {
            let mut guard = self.current.write();
            if !guard.wants_compaction() {
                if let Some(ix) = Arc::get_mut(&mut guard) {
                    return f(ix);
                }
            }
            // A long reader holds this version, or it is due a compaction: copy.
        }
        let mut copy = Index::clone(&self.current.read());
        let r = f(&mut copy);
        if copy.wants_compaction() {
            copy.compact();
        }
        let old = std::mem::replace(&mut *self.current.write(), Arc::new(copy));
        drop(old); // freed outside the lock
        r
    }

    /// Removes every decision expired at `now`, in bounded steps; returns how many.
    pub fn purge(&self, now: u64) -> usize {
        let mut total = 0;
        loop {
            let (n, done) = self.write(0, |ix| ix.purge(now, PURGE_STEP));
            total += n;
            if done {
                return total;
            }
        }
    }
}
