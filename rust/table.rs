//! The decisions of one address family: single addresses in a hash table, shorter prefixes in
//! a [`Trie`], and the expiry index that makes purging cost what expires.

use crate::bits::Bits;
use crate::hosts::Hosts;
use crate::slot::{Dec, Key, Sets, Slot, NEVER, NO_KEY, NO_RANK};
use crate::trie::{Trie, SPLIT};
use hashbrown::HashMap;
use std::collections::BTreeSet;

/// Expiry buckets are 2^16 ms (about 65 s) wide.
pub const SHIFT: u32 = 16;
/// Stale hints tolerated beyond one per held decision before the hints are rebuilt.
const STALE_SLACK: usize = 4096;

/// Hints of which keys hold decisions expiring in each time bucket. A hint may be stale (the
/// decision was refreshed or removed since); purging re-checks the key, so stale hints cost a
/// lookup and nothing else. Buckets sit in a hash map (one probe per note, the hot path of bulk
/// loads) with their keys also in an ordered set (touched only when a bucket appears or goes).
/// A removed decision leaves its hint behind until its bucket comes due; under steady churn
/// those would pile up for a whole decision lifetime, so the table rebuilds its hints from the
/// decisions it holds once they outnumber them twice over (see [`Table::wants_compaction`]).
#[derive(Debug, Clone)]
struct Expiry<T> {
    buckets: HashMap<u64, Vec<T>>,
    order: BTreeSet<u64>,
    /// Hints held, stale ones included.
    hints: usize,
}

impl<T> Default for Expiry<T> {
    fn default() -> Self {
        Expiry { buckets: HashMap::new(), order: BTreeSet::new(), hints: 0 }
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
        self.hints += 1;
    }

    fn pop_first(&mut self) -> Option<(u64, Vec<T>)> {
        let b = self.order.pop_first()?;
        let hints = self.buckets.remove(&b).unwrap_or_default();
        self.hints -= hints.len();
        Some((b, hints))
    }

    fn insert(&mut self, b: u64, hints: Vec<T>) {
        self.order.insert(b);
        self.hints += hints.len();
        if let Some(old) = self.buckets.insert(b, hints) {
            self.hints -= old.len();
        }
    }

    fn remove(&mut self, b: u64) -> Option<Vec<T>> {
        self.order.remove(&b);
        let hints = self.buckets.remove(&b)?;
        self.hints -= hints.len();
        Some(hints)
    }

    /// True when the hints outnumber `held` decisions twice over (with some slack).
    fn bloated(&self, held: usize) -> bool {
        self.hints > 2 * held + STALE_SLACK
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
    /// Tag -> number of "inner" decisions held (single addresses and prefixes of /16 or
    /// longer: what a block summary does not see). Counted by tag, not rank, because tags are
    /// stable while ranks change when a remediation is interned.
    inner: Vec<u32>,
    /// The settle rank: the most severe rank among inner decisions (NO_RANK when none). A block
    /// summary whose rank is at most this answers a lookup alone, since nothing inner can
    /// outrank it. Recomputed by [`Table::finish`] and [`Table::summarize`].
    settle: u16,
    /// The largest key of the settle rank, `settle << 16 | 0xffff`: lookups compare a summary
    /// key with it in one instruction (NO_KEY when the settle rank is NO_RANK).
    settle_key: Key,
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
            inner: Vec::new(),
            settle: NO_RANK,
            settle_key: NO_KEY,
        }
    }
}

impl<K: Bits> Table<K> {
    /// Reserves room for `n` more single addresses.
    pub fn reserve_hosts(&mut self, n: usize) {
        self.hosts.reserve(n);
    }

    /// The answer for `addr` when its block's summary alone gives it (a rank no inner decision
    /// can beat; possibly NO_KEY), without touching the host table: the cheap first step of
    /// batch lookups.
    #[inline]
    pub fn settled(&self, addr: K, now: u64) -> Option<Key> {
        if self.ranges == 0 {
            return None;
        }
        self.trie.short_best(addr, now).filter(|&k| self.settles(k))
    }

    /// True when summary key `k` is the answer: no inner decision has a more severe rank. On
    /// equal rank an inner decision with a lower tag may be passed over; that is the tie rule
    /// of the fast path (same remediation, the first decision met names the origin).
    #[inline]
    fn settles(&self, k: Key) -> bool {
        k <= self.settle_key
    }

    fn set_settle(&mut self, settle: u16) {
        self.settle = settle;
        self.settle_key = (Key::from(settle) << 16) | 0xffff;
    }

    /// The most severe rank among inner decisions, NO_RANK when none; `tag_keys` maps tags to lookup keys.
    fn settle_rank(&self, tag_keys: &[Key]) -> u16 {
        self.inner
            .iter()
            .enumerate()
            .filter(|&(_, &n)| n > 0)
            // A tag without a key cannot happen; rank 0 then only costs the fast path.
            .map(|(t, _)| tag_keys.get(t).map_or(0, |k| (k >> 16) as u16))
            .min()
            .unwrap_or(NO_RANK)
    }

    /// The current settle rank (see [`Table::settled`]).
    #[cfg(test)]
    pub(crate) fn settle(&self) -> u16 {
        self.settle
    }

    /// The key of the one-bit fast path (NO_KEY when none).
    #[cfg(test)]
    pub(crate) fn common_key(&self) -> Key {
        self.trie.common_key()
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

    /// Rebuilds derived lookup tables after a batch of changes; `tag_keys` maps tags to lookup keys.
    pub fn finish(&mut self, tag_keys: &[Key]) {
        if self.trie.finish() {
            self.summarize(tag_keys);
            return;
        }
        // The short prefixes are unchanged, but inner decisions may have come or gone (an
        // allowed address inside a banned /8): the settle rank must follow, or a summary would
        // answer over a decision that outranks it.
        let settle = self.settle_rank(tag_keys);
        if settle != self.settle {
            self.set_settle(settle);
            self.trie.set_common(settle);
        }
    }

    /// Rebuilds every block's summary of its covering short prefixes (after the short prefixes
    /// or the tag keys changed): the best key and until when a decision with it stays active.
    /// Also recomputes the settle rank, which follows the tag keys.
    pub fn summarize(&mut self, tag_keys: &[Key]) {
        self.set_settle(self.settle_rank(tag_keys));
        for b in 0..self.trie.block_count() {
            let (mut best, mut until) = (NO_KEY, 0u64);
            for s in self.trie.short_run(b) {
                s.for_each(&self.sets, |d| {
                    let k = tag_keys[d.tag as usize];
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
        self.trie.set_common(self.settle);
    }

    /// Adds decision `d` on `key/len`, or, when it is held, replaces its expiry (or with
    /// `keep_later`, keeps the later of the two). Returns true if it is new.
    pub fn upsert(&mut self, key: K, len: u8, d: Dec, keep_later: bool) -> bool {
        let put = |s: &mut Slot, sets: &mut Sets| if keep_later { s.extend(sets, d) } else { s.upsert(sets, d) };
        let old = if len == K::BITS {
            let old = put(self.hosts.entry(key), &mut self.sets);
            self.host_exp.note(old, Self::kept(old, d.exp, keep_later), key);
            old
        } else {
            let slot = self.trie.slot_mut(key, len);
            let was_empty = slot.is_empty();
            let old = put(slot, &mut self.sets);
            self.ranges += usize::from(was_empty);
            self.range_exp.note(old, Self::kept(old, d.exp, keep_later), (key, len));
            old
        };
        if old.is_none() && len >= SPLIT {
            let t = d.tag as usize;
            if self.inner.len() <= t {
                self.inner.resize(t + 1, 0);
            }
            self.inner[t] += 1;
        }
        old.is_none()
    }

    /// The expiry held after an upsert of `exp` over `old`.
    fn kept(old: Option<u64>, exp: u64, keep_later: bool) -> u64 {
        match old {
            Some(o) if keep_later => o.max(exp),
            _ => exp,
        }
    }

    /// Removes the decisions on exactly `key/len` for which `drop` is true.
    pub fn remove(&mut self, key: K, len: u8, mut drop: impl FnMut(Dec) -> bool) -> usize {
        // Each removed inner decision leaves the per-tag counts behind the settle rank.
        let inner = &mut self.inner;
        let counted = len >= SPLIT;
        let drop = |d: Dec| {
            let gone = drop(d);
            if gone && counted {
                if let Some(n) = inner.get_mut(d.tag as usize) {
                    debug_assert!(*n > 0, "inner count of tag {} underflows", d.tag);
                    *n = n.saturating_sub(1);
                }
            }
            gone
        };
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
    pub fn best(&self, addr: K, now: u64, tag_keys: &[Key]) -> Key {
        let host = |best: &mut Key| {
            if let Some(s) = self.hosts.get(addr) {
                *best = (*best).min(s.best(&self.sets, now, tag_keys));
            }
        };
        let mut best = NO_KEY;
        if self.ranges == 0 {
            host(&mut best);
            return best;
        }
        // The block entry first: when the short prefixes covering the whole /16 give a rank no
        // inner decision has beaten (the settle rank), neither the host table nor the block's
        // trie can outrank it, and their cache misses are saved.
        let short = self.trie.short_best(addr, now);
        match short {
            Some(k) if self.settles(k) => return k,
            Some(k) => best = k,
            None => self.trie.covering_short(addr, |s| best = best.min(s.best(&self.sets, now, tag_keys))),
        }
        host(&mut best);
        if best >> 16 != 0 {
            self.trie.covering_long(addr, |s| best = best.min(s.best(&self.sets, now, tag_keys)));
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

    /// True when removed or re-timed decisions left so many stale expiry hints that
    /// [`Table::compact`] should rebuild them (at most once per as many changes as decisions held).
    pub fn wants_compaction(&self) -> bool {
        self.host_exp.bloated(self.hosts.len()) || self.range_exp.bloated(self.ranges)
    }

    /// Rebuilds the expiry hints from the decisions held: one per key and expiry bucket.
    pub fn compact(&mut self) {
        let (mut hosts, mut ranges) = (Expiry::default(), Expiry::default());
        self.for_each(|k, len, slot| {
            let mut last = None;
            slot.for_each(&self.sets, |d| {
                if last != Some(d.exp >> SHIFT) {
                    last = Some(d.exp >> SHIFT);
                    if len == K::BITS {
                        hosts.note(None, d.exp, k);
                    } else {
                        ranges.note(None, d.exp, (k, len));
                    }
                }
            });
        });
        self.host_exp = hosts;
        self.range_exp = ranges;
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
            + self.inner.capacity() * 4
    }
}
