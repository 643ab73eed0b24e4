//! The decisions of one address family: single addresses in a hash table, shorter prefixes in
//! a [`Trie`], and the expiry index that makes purging cost what expires.

use crate::bits::Bits;
use crate::hosts::Hosts;
use crate::slot::{Dec, Key, Sets, Slot, NEVER, NO_KEY};
use crate::trie::Trie;
use hashbrown::HashMap;
use std::collections::BTreeSet;

/// Expiry buckets are 2^16 ms (about 65 s) wide.
pub const SHIFT: u32 = 16;

/// Hints of which keys hold decisions expiring in each time bucket. A hint may be stale (the
/// decision was refreshed or removed since); purging re-checks the key, so stale hints cost a
/// lookup and nothing else. Buckets sit in a hash map (one probe per note, the hot path of bulk
/// loads) with their keys also in an ordered set (touched only when a bucket appears or goes).
#[derive(Debug, Clone)]
struct Expiry<T> {
    buckets: HashMap<u64, Vec<T>>,
    order: BTreeSet<u64>,
}

impl<T> Default for Expiry<T> {
    fn default() -> Self {
        Expiry { buckets: HashMap::new(), order: BTreeSet::new() }
    }
}

impl<T: Copy> Expiry<T> {
    fn note(&mut self, old: Option<u64>, exp: u64, key: T) {
        if exp >= NEVER || old.is_some_and(|o| o >> SHIFT == exp >> SHIFT) {
            return;
        }
        let b = exp >> SHIFT;
        self.buckets
            .entry(b)
            .or_insert_with(|| {
                self.order.insert(b);
                Vec::new()
            })
            .push(key);
    }

    fn pop_first(&mut self) -> Option<(u64, Vec<T>)> {
        let b = self.order.pop_first()?;
        Some((b, self.buckets.remove(&b).unwrap_or_default()))
    }

    fn insert(&mut self, b: u64, hints: Vec<T>) {
        self.order.insert(b);
        self.buckets.insert(b, hints);
    }

    fn remove(&mut self, b: u64) -> Option<Vec<T>> {
        self.order.remove(&b);
        self.buckets.remove(&b)
    }

    fn heap_bytes(&self) -> usize {
        self.buckets.values().map(|v| v.capacity() * std::mem::size_of::<T>() + 64).sum()
    }
}

/// The decisions of one address family.
#[derive(Debug, Clone)]
pub struct Table<K: Bits> {
    hosts: Hosts<K>,
    trie: Trie<K>,
    sets: Sets,
    ranges: usize,
    host_exp: Expiry<K>,
    range_exp: Expiry<(K, u8)>,
}

impl<K: Bits> Default for Table<K> {
    fn default() -> Self {
        Table {
            hosts: Hosts::default(),
            trie: Trie::default(),
            sets: Sets::default(),
            ranges: 0,
            host_exp: Expiry::default(),
            range_exp: Expiry::default(),
        }
    }
}

impl<K: Bits> Table<K> {
    /// Reserves room for `n` more single addresses.
    pub fn reserve_hosts(&mut self, n: usize) {
        self.hosts.reserve(n);
    }

    /// The answer for `addr` when its block's summary alone gives it (the most severe rank),
    /// without touching the host table: the cheap first step of batch lookups.
    #[inline]
    pub fn settled(&self, addr: K, now: u64) -> Option<Key> {
        if self.ranges == 0 {
            return None;
        }
        self.trie.short_best(addr, now).filter(|k| k >> 16 == 0)
    }

    /// Warms the cache line where a lookup of `addr` will probe.
    #[inline]
    pub fn warm(&self, addr: K) {
        self.hosts.warm(addr);
        if self.ranges != 0 {
            self.trie.warm(addr);
        }
    }

    /// Second warming step: the trie node the lookup of `addr` starts from.
    #[inline]
    pub fn warm_root(&self, addr: K) {
        if self.ranges != 0 {
            self.trie.warm_root(addr);
        }
    }

    /// Rebuilds derived lookup tables after a batch of changes; `keys` maps tags to lookup keys.
    pub fn finish(&mut self, keys: &[Key]) {
        if self.trie.finish() {
            self.summarize(keys);
        }
    }

    /// Rebuilds every block's summary of its covering short prefixes (after the short prefixes
    /// or the tag keys changed): the best key and until when a decision with it stays active.
    pub fn summarize(&mut self, keys: &[Key]) {
        for b in 0..self.trie.block_count() {
            let (mut best, mut until) = (NO_KEY, 0u64);
            for s in self.trie.short_run(b) {
                s.for_each(&self.sets, |d| {
                    let k = keys[d.tag as usize];
                    if k < best {
                        (best, until) = (k, d.exp);
                    } else if k == best {
                        until = until.max(d.exp);
                    }
                });
            }
            let until = if best == NO_KEY { u32::MAX } else { (until / 1000).min(u64::from(u32::MAX)) as u32 };
            self.trie.set_summary(b, best, until);
        }
        self.trie.set_common();
    }

    /// Adds decision `d` on `key/len`, or refreshes its expiry. Returns true if it is new.
    pub fn upsert(&mut self, key: K, len: u8, d: Dec) -> bool {
        if len == K::BITS {
            let old = self.hosts.entry(key).upsert(&mut self.sets, d);
            self.host_exp.note(old, d.exp, key);
            return old.is_none();
        }
        let slot = self.trie.slot_mut(key, len);
        let was_empty = slot.is_empty();
        let old = slot.upsert(&mut self.sets, d);
        self.ranges += usize::from(was_empty);
        self.range_exp.note(old, d.exp, (key, len));
        old.is_none()
    }

    /// Removes the decisions on exactly `key/len` for which `drop` is true.
    pub fn remove(&mut self, key: K, len: u8, drop: impl FnMut(Dec) -> bool) -> usize {
        if len == K::BITS {
            let sets = &mut self.sets;
            return self.hosts.update(key, |s| s.remove(sets, drop)).unwrap_or(0);
        }
        let sets = &mut self.sets;
        let Some((n, emptied)) = self.trie.update(key, len, |s| {
            let n = s.remove(sets, drop);
            (n, n > 0 && s.is_empty())
        }) else {
            return 0;
        };
        self.ranges -= usize::from(emptied);
        n
    }

    /// The best key (rank, then tag) among active decisions covering `addr`.
    #[inline]
    pub fn best(&self, addr: K, now: u64, ranks: &[Key]) -> Key {
        let host = |best: &mut Key| {
            if let Some(s) = self.hosts.get(addr) {
                *best = (*best).min(s.best(&self.sets, now, ranks));
            }
        };
        let mut best = NO_KEY;
        if self.ranges == 0 {
            host(&mut best);
            return best;
        }
        // The block entry first: when the short prefixes covering the whole /16 already give
        // the most severe remediation (rank 0), neither the host table nor the block's trie can
        // outrank it, and their cache misses are saved.
        let short = self.trie.short_best(addr, now);
        match short {
            Some(k) if k >> 16 == 0 => return k,
            Some(k) => best = k,
            None => self.trie.covering_short(addr, |s| best = best.min(s.best(&self.sets, now, ranks))),
        }
        host(&mut best);
        if best >> 16 != 0 {
            self.trie.covering_long(addr, |s| best = best.min(s.best(&self.sets, now, ranks)));
        }
        best
    }

    /// Removes decisions expired at `now`, visiting only keys hinted to expire by then, and
    /// stopping after about `budget` removals. Returns (removed, finished).
    pub fn purge(&mut self, now: u64, budget: usize) -> (usize, bool) {
        let mut removed = 0;
        let expired = |d: Dec| d.exp <= now;
        let current = now >> SHIFT;
        // Whole buckets: everything in them has expired.
        while let Some((b, mut hints)) = self.host_exp.pop_first() {
            if b >= current {
                self.host_exp.insert(b, hints);
                break;
            }
            while let Some(k) = hints.pop() {
                removed += self.remove(k, K::BITS, expired);
                if removed >= budget {
                    if !hints.is_empty() {
                        self.host_exp.insert(b, hints);
                    }
                    return (removed, false);
                }
            }
        }
        while let Some((b, mut hints)) = self.range_exp.pop_first() {
            if b >= current {
                self.range_exp.insert(b, hints);
                break;
            }
            while let Some((k, l)) = hints.pop() {
                removed += self.remove(k, l, expired);
                if removed >= budget {
                    if !hints.is_empty() {
                        self.range_exp.insert(b, hints);
                    }
                    return (removed, false);
                }
            }
        }
        // The bucket `now` falls in: keep the hints of keys that still expire within it.
        if let Some(mut hints) = self.host_exp.remove(current) {
            hints.retain(|&k| {
                removed += self.remove(k, K::BITS, expired);
                self.hosts.get(k).is_some_and(|s| s.expires_in(&self.sets, current, SHIFT))
            });
            if !hints.is_empty() {
                self.host_exp.insert(current, hints);
            }
        }
        if let Some(mut hints) = self.range_exp.remove(current) {
            hints.retain(|&(k, l)| {
                removed += self.remove(k, l, expired);
                self.trie.get(k, l).is_some_and(|s| s.expires_in(&self.sets, current, SHIFT))
            });
            if !hints.is_empty() {
                self.range_exp.insert(current, hints);
            }
        }
        (removed, true)
    }

    /// Calls `f(key, len, slot)` on every prefix holding decisions, hosts first.
    pub fn for_each(&self, mut f: impl FnMut(K, u8, Slot)) {
        for (k, s) in self.hosts.iter() {
            f(k, K::BITS, s);
        }
        self.trie.for_each(f);
    }

    /// The multi-decision sets, needed to read a [`Slot`] handed out by `for_each`.
    pub fn sets(&self) -> &Sets {
        &self.sets
    }

    /// Number of single addresses holding decisions.
    pub fn host_count(&self) -> usize {
        self.hosts.len()
    }

    /// Number of shorter prefixes holding decisions.
    pub fn range_count(&self) -> usize {
        self.ranges
    }

    /// Heap bytes held by this family's structures (an estimate within a few percent).
    pub fn heap_bytes(&self) -> usize {
        self.hosts.heap_bytes()
            + self.trie.heap_bytes()
            + self.sets.heap_bytes()
            + self.host_exp.heap_bytes()
            + self.range_exp.heap_bytes()
    }
}
