//! Path-compressed binary (Patricia) tries of network prefixes, one forest per address family.
//!
//! The forest is level-compressed at the root: prefixes shorter than /16 share one small trie,
//! and every longer prefix lives in the trie of its /16 block, found by direct indexing. A
//! lookup walks the short trie (a few nodes, hot in cache) and the few nodes of one block,
//! instead of a deep path from a single root.
//!
//! Each /16 block also has a summary of the short prefixes covering it (their best key and
//! until when it holds), and the blocks whose summary holds the commonest answer long enough
//! are flagged in one bit set: the per-/16 accelerator a lookup tries first, answering without
//! touching the host table or any trie when no inner decision can outrank the summary (see
//! `Table::settled`).
//!
//! Nodes live in one arena (`Vec`) addressed by `u32`; a node holds a prefix and a [`Slot`] of
//! decisions. A node whose slot is empty always has two children (it is a branching "glue"
//! node), so each trie has at most `2n - 1` nodes for `n` stored prefixes.
//!
//! | operation | cost |
//! |---|---|
//! | insert / find / remove a prefix | O(W) node visits, W = address width |
//! | visit every prefix covering an address | O(short-trie depth + block-trie depth) |

use crate::bits::Bits;
use crate::slot::{Key, Slot, NO_KEY};

const NIL: u32 = u32::MAX;

#[derive(Debug, Clone)]
struct Node<K> {
    key: K,
    len: u8,
    child: [u32; 2],
    slot: Slot,
}

/// Prefixes shorter than this share the short trie; longer ones go to their block's trie.
pub(crate) const SPLIT: u8 = 16;

/// The prefix forest of one address family.
#[derive(Debug, Clone)]
pub struct Trie<K> {
    nodes: Vec<Node<K>>,
    free: Vec<u32>,
    /// Root of the short trie.
    short: u32,
    /// One entry per /16 block (plus an end marker); empty until the first range arrives.
    blocks: Vec<Block>,
    /// For block `b`, `short_slots[blocks[b].short..blocks[b + 1].short]` are copies of the
    /// slots of the short prefixes covering the whole block, so a lookup reads one contiguous
    /// run instead of walking the short trie. Rebuilt by [`Trie::finish`] after any change to
    /// the short trie (a refreshed expiry included, since the copies hold it).
    short_slots: Vec<Slot>,
    short_dirty: bool,
    /// One per block (see [`Summary`]); empty until the first range arrives.
    summaries: Vec<Summary>,
    /// The commonest summary key among those that settle lookups (see [`Trie::set_common`]),
    /// the blocks whose summary it is (one bit each, 8 KiB: cache-resident where the 512 KiB
    /// of summaries are not), and until when (seconds) all of them hold. Lets most lookups in
    /// heavily covered space answer from one bit.
    common: Common,
}

/// See [`Trie::common`].
#[derive(Debug, Clone)]
struct Common {
    /// A summary key that settled lookups when chosen (NO_KEY when none did).
    key: Key,
    /// In seconds: every flagged block's summary holds while `now` is below `until * 1000`.
    until: u32,
    /// One bit per block: its summary is `key` until `until` at least.
    bits: Vec<u64>,
}

impl Default for Common {
    fn default() -> Self {
        Common { key: NO_KEY, until: 0, bits: Vec::new() }
    }
}

/// What a lookup needs of one /16 block, in one cache line access.
#[derive(Debug, Clone, Copy)]
struct Block {
    /// Root of the block's trie of prefixes /16 and longer.
    root: u32,
    /// Start of the block's run in `short_slots`.
    short: u32,
}

const NO_BLOCK: Block = Block { root: NIL, short: 0 };

/// A block's summary of the short prefixes covering it, kept apart from [`Block`] so that the
/// array lookups read first stays small (8 bytes a block, 512 KiB in all).
#[derive(Debug, Clone, Copy)]
struct Summary {
    /// The best lookup key among their decisions...
    best: Key,
    /// ...which holds while `now` (ms) is below `until * 1000`: a decision with that key is
    /// active until then, and decisions only expire between two summaries.
    until: u32,
}

const NO_SUMMARY: Summary = Summary { best: NO_KEY, until: u32::MAX };

impl<K: Bits> Default for Trie<K> {
    fn default() -> Self {
        Trie {
            nodes: Vec::new(),
            free: Vec::new(),
            short: NIL,
            blocks: Vec::new(),
            short_slots: Vec::new(),
            short_dirty: false,
            summaries: Vec::new(),
            common: Common::default(),
        }
    }
}

impl<K: Bits> Trie<K> {
    fn alloc(&mut self, key: K, len: u8) -> u32 {
        let node = Node { key, len, child: [NIL, NIL], slot: Slot::default() };
        if let Some(i) = self.free.pop() {
            self.nodes[i as usize] = node;
            i
        } else {
            self.nodes.push(node);
            (self.nodes.len() - 1) as u32
        }
    }

    /// Which root holds `key/len`: `None` for the short trie, else the block.
    #[inline]
    fn tree(key: K, len: u8) -> Option<usize> {
        (len >= SPLIT).then(|| key.top16())
    }

    #[inline]
    fn root(&self, tree: Option<usize>) -> u32 {
        match tree {
            None => self.short,
            Some(b) => self.blocks.get(b).map_or(NIL, |blk| blk.root),
        }
    }

    fn link(&mut self, tree: Option<usize>, parent: u32, dir: usize, to: u32) {
        if parent == NIL {
            match tree {
                None => self.short = to,
                Some(b) => {
                    self.ensure_blocks();
                    self.blocks[b].root = to;
                }
            }
        } else {
            self.nodes[parent as usize].child[dir] = to;
        }
    }

    /// The slot of prefix `key/len`, created (empty) if absent. `key` must be normalised.
    pub fn slot_mut(&mut self, key: K, len: u8) -> &mut Slot {
        let i = self.insert(key, len);
        // The per-block copies of short slots must be rebuilt.
        self.short_dirty |= len < SPLIT;
        &mut self.nodes[i as usize].slot
    }

    fn ensure_blocks(&mut self) {
        if self.blocks.is_empty() {
            self.summaries = vec![NO_SUMMARY; 1 << 16];
            self.blocks = vec![NO_BLOCK; (1 << 16) + 1];
        }
    }

    fn insert(&mut self, key: K, len: u8) -> u32 {
        let tree = Self::tree(key, len);
        let (mut parent, mut dir, mut cur) = (NIL, 0usize, self.root(tree));
        loop {
            if cur == NIL {
                let n = self.alloc(key, len);
                self.link(tree, parent, dir, n);
                return n;
            }
            let (nkey, nlen) = {
                let n = &self.nodes[cur as usize];
                (n.key, n.len)
            };
            let common = key.common(nkey).min(len).min(nlen);
            if common == nlen {
                if nlen == len {
                    return cur;
                }
                parent = cur;
                dir = key.bit(nlen);
                cur = self.nodes[cur as usize].child[dir];
                continue;
            }
            if common == len {
                let n = self.alloc(key, len);
                self.nodes[n as usize].child[nkey.bit(len)] = cur;
                self.link(tree, parent, dir, n);
                return n;
            }
            let glue = self.alloc(key.and(K::mask(common)), common);
            let leaf = self.alloc(key, len);
            self.nodes[glue as usize].child[key.bit(common)] = leaf;
            self.nodes[glue as usize].child[nkey.bit(common)] = cur;
            self.link(tree, parent, dir, glue);
            return leaf;
        }
    }

    /// The slot of prefix `key/len` if the trie holds that exact prefix.
    pub fn get(&self, key: K, len: u8) -> Option<&Slot> {
        let mut cur = self.root(Self::tree(key, len));
        while cur != NIL {
            let n = &self.nodes[cur as usize];
            if n.len > len || key.common(n.key) < n.len {
                return None;
            }
            if n.len == len {
                return Some(&n.slot);
            }
            cur = n.child[key.bit(n.len)];
        }
        None
    }

    /// Runs `f` on the slot of the exact prefix `key/len` (if present), then prunes the node
    /// if `f` left its slot empty. Returns `None` when the prefix is not stored.
    pub fn update<R>(&mut self, key: K, len: u8, f: impl FnOnce(&mut Slot) -> R) -> Option<R> {
        // Links (parent, dir) to each node on the path, the found node last.
        let mut path: [(u32, usize); 130] = [(NIL, 0); 130];
        let mut depth = 0usize;
        let tree = Self::tree(key, len);
        let (mut parent, mut dir, mut cur) = (NIL, 0usize, self.root(tree));
        while cur != NIL {
            let n = &self.nodes[cur as usize];
            if n.len > len || key.common(n.key) < n.len {
                return None;
            }
            path[depth] = (parent, dir);
            depth += 1;
            if n.len == len {
                break;
            }
            parent = cur;
            dir = key.bit(n.len);
            cur = n.child[dir];
        }
        if cur == NIL {
            return None;
        }
        let r = f(&mut self.nodes[cur as usize].slot);
        self.short_dirty |= tree.is_none();
        self.prune(tree, cur, &path[..depth]);
        Some(r)
    }

    fn prune(&mut self, tree: Option<usize>, cur: u32, path: &[(u32, usize)]) {
        let n = &self.nodes[cur as usize];
        if !n.slot.is_empty() || (n.child[0] != NIL && n.child[1] != NIL) {
            return;
        }
        let only = if n.child[0] != NIL { n.child[0] } else { n.child[1] };
        let (parent, dir) = path[path.len() - 1];
        self.link(tree, parent, dir, only);
        self.release(cur);
        if only != NIL || parent == NIL {
            return;
        }
        // The parent lost a child: if it is a glue node it now has one child and must go too.
        let p = &self.nodes[parent as usize];
        if p.slot.is_empty() {
            let other = p.child[1 - dir];
            let (gp, gdir) = path[path.len() - 2];
            self.link(tree, gp, gdir, other);
            self.release(parent);
        }
    }

    fn release(&mut self, i: u32) {
        let n = &mut self.nodes[i as usize];
        n.child = [NIL, NIL];
        n.slot = Slot::default();
        self.free.push(i);
    }

    /// Calls `f` on the slot of every prefix shorter than /16 covering `addr`.
    #[inline]
    pub fn covering_short(&self, addr: K, mut f: impl FnMut(Slot)) {
        self.short_run(addr.top16()).iter().for_each(|s| f(*s));
    }

    /// Calls `f` on the slot of every prefix of /16 or longer covering `addr`.
    #[inline]
    pub fn covering_long(&self, addr: K, mut f: impl FnMut(Slot)) {
        if let Some(blk) = self.blocks.get(addr.top16()) {
            self.walk(blk.root, addr, &mut f);
        }
    }

    /// The copies of the short slots covering block `b`.
    #[inline]
    pub fn short_run(&self, b: usize) -> &[Slot] {
        debug_assert!(!self.short_dirty, "Trie::finish not called after a change");
        match (self.blocks.get(b), self.blocks.get(b + 1)) {
            (Some(blk), Some(next)) => &self.short_slots[blk.short as usize..next.short as usize],
            _ => &[],
        }
    }

    /// The best key of the short prefixes covering `addr` at `now` (ms) if the block's summary
    /// (or the common key) gives it (`NO_KEY` when none covers it); None when the short slots
    /// must be read. Whether that key is the answer is the caller's business (its settle rank).
    #[inline]
    pub fn short_best(&self, addr: K, now: u64) -> Option<Key> {
        let b = addr.top16();
        let c = &self.common;
        if now < u64::from(c.until) * 1000 && c.bits.get(b / 64).is_some_and(|w| w >> (b % 64) & 1 == 1) {
            return Some(c.key);
        }
        match self.summaries.get(b) {
            Some(s) if now < u64::from(s.until) * 1000 => Some(s.best),
            Some(_) => None,
            None => Some(NO_KEY),
        }
    }

    /// Number of /16 blocks with an entry (0 before the first range).
    pub fn block_count(&self) -> usize {
        self.blocks.len().saturating_sub(1)
    }

    /// Stores block `b`'s summary (see [`Block`]).
    pub fn set_summary(&mut self, b: usize, best: Key, until: u32) {
        self.summaries[b] = Summary { best, until };
    }

    /// Rebuilds [`Trie::common`] from the summaries (after `set_summary` of every block, or
    /// when the family's settle rank changed).
    ///
    /// A summary key settles a lookup when its rank is at most `settle` (no decision of a
    /// host or of a long prefix can outrank it), so the key is the commonest among those that
    /// settle: a short allowlisted range ranked above ban must not take the one-bit path away
    /// from the many blocks under ban /8s. When none settles there is no common key: the bit
    /// would save one summary read but cost a mispredicted branch on every lookup (measured
    /// about 7% slower). The choice only matters for speed: callers check the key against the
    /// settle rank of the moment.
    ///
    /// The bit set covers the blocks holding the key, except the tenth whose summaries expire
    /// first: one short-lived prefix would otherwise end the fast path for every block at its
    /// expiry.
    pub fn set_common(&mut self, settle: u16) {
        let limit = Key::from(settle);
        let mut counts = std::collections::HashMap::new();
        for s in self.summaries.iter().filter(|s| s.best != NO_KEY && s.best >> 16 <= limit) {
            *counts.entry(s.best).or_insert(0usize) += 1;
        }
        let Some(key) = counts.into_iter().max_by_key(|&(k, n)| (n, std::cmp::Reverse(k))).map(|(k, _)| k) else {
            self.common = Common::default();
            return;
        };
        let mut untils: Vec<u32> = self.summaries.iter().filter(|s| s.best == key).map(|s| s.until).collect();
        let cut = untils.len() / 10;
        let until = *untils.select_nth_unstable(cut).1;
        let mut bits = vec![0u64; self.summaries.len().div_ceil(64)];
        for (b, s) in self.summaries.iter().enumerate() {
            if s.best == key && s.until >= until {
                bits[b / 64] |= 1 << (b % 64);
            }
        }
        self.common = Common { key, until, bits };
    }

    /// The key of the one-bit fast path (NO_KEY when there is none).
    #[cfg(test)]
    pub(crate) fn common_key(&self) -> Key {
        self.common.key
    }

    /// Loads what a lookup of `addr` will read first (its block entry).
    #[inline]
    pub fn warm(&self, addr: K) {
        if let Some(blk) = self.blocks.get(addr.top16()) {
            std::hint::black_box(*blk);
        }
    }

    /// Loads the root node of the block of `addr` (call after `warm` has brought the block in).
    #[inline]
    pub fn warm_root(&self, addr: K) {
        if let Some(blk) = self.blocks.get(addr.top16()) {
            if blk.root != NIL {
                std::hint::black_box(self.nodes[blk.root as usize].key);
            }
        }
    }

    /// Rebuilds the per-block copies of covering short slots if the short trie changed, and
    /// says whether it did (the block summaries must then be rebuilt too). Costs one short-trie
    /// walk per /16 block (65,536 walks), so only batches that touch a prefix shorter than /16
    /// pay it.
    pub fn finish(&mut self) -> bool {
        if !self.short_dirty {
            return false;
        }
        self.short_dirty = false;
        self.short_slots.clear();
        if self.short == NIL && self.blocks.is_empty() {
            return false;
        }
        self.ensure_blocks();
        for b in 0..1usize << 16 {
            self.blocks[b].short = self.short_slots.len() as u32;
            let addr = K::block_start(b);
            let mut cur = self.short;
            while cur != NIL {
                let n = &self.nodes[cur as usize];
                if addr.common(n.key) < n.len {
                    break;
                }
                if !n.slot.is_empty() {
                    self.short_slots.push(n.slot);
                }
                cur = n.child[addr.bit(n.len)];
            }
        }
        self.blocks[1 << 16].short = self.short_slots.len() as u32;
        true
    }

    #[inline]
    fn walk(&self, mut cur: u32, addr: K, f: &mut impl FnMut(Slot)) {
        while cur != NIL {
            let n = &self.nodes[cur as usize];
            if addr.common(n.key) < n.len {
                return;
            }
            if !n.slot.is_empty() {
                f(n.slot);
            }
            if n.len == K::BITS {
                return;
            }
            cur = n.child[addr.bit(n.len)];
        }
    }

    /// Calls `f` on every stored prefix and its slot.
    pub fn for_each(&self, mut f: impl FnMut(K, u8, Slot)) {
        let mut stack: Vec<u32> = self.blocks.iter().map(|blk| blk.root).filter(|&r| r != NIL).collect();
        if self.short != NIL {
            stack.push(self.short);
        }
        while let Some(i) = stack.pop() {
            let n = &self.nodes[i as usize];
            if !n.slot.is_empty() {
                f(n.key, n.len, n.slot);
            }
            stack.extend(n.child.iter().copied().filter(|&c| c != NIL));
        }
    }

    /// Calls `f` on the slot of every stored prefix covering `addr`, shortest first.
    #[cfg(test)]
    pub fn covering(&self, addr: K, mut f: impl FnMut(Slot)) {
        self.covering_short(addr, &mut f);
        self.covering_long(addr, f);
    }

    /// True when no prefix is stored.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.node_count() == 0
    }

    /// Nodes in use (stored prefixes plus glue nodes).
    #[cfg(test)]
    pub fn node_count(&self) -> usize {
        self.nodes.len() - self.free.len()
    }

    /// Heap bytes held.
    pub fn heap_bytes(&self) -> usize {
        self.nodes.capacity() * std::mem::size_of::<Node<K>>()
            + self.free.capacity() * 4
            + self.blocks.capacity() * std::mem::size_of::<Block>()
            + self.short_slots.capacity() * std::mem::size_of::<Slot>()
            + self.summaries.capacity() * std::mem::size_of::<Summary>()
            + self.common.bits.capacity() * 8
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slot::{Dec, Sets};

    fn put(t: &mut Trie<u32>, sets: &mut Sets, key: u32, len: u8) {
        t.slot_mut(key, len).upsert(sets, Dec { exp: 10, tag: 1 });
    }

    fn covering(t: &mut Trie<u32>, addr: u32) -> usize {
        t.finish();
        let mut n = 0;
        t.covering(addr, |_| n += 1);
        n
    }

    #[test]
    fn insert_cover_remove_prunes() {
        let mut t = Trie::<u32>::default();
        let mut sets = Sets::default();
        put(&mut t, &mut sets, 0x0a00_0000, 8);
        put(&mut t, &mut sets, 0x0a01_0000, 16);
        put(&mut t, &mut sets, 0x0b00_0000, 8);
        put(&mut t, &mut sets, 0x0a01_0200, 24);
        assert_eq!(covering(&mut t, 0x0a01_0203), 3);
        assert_eq!(covering(&mut t, 0x0a02_0000), 1);
        assert_eq!(covering(&mut t, 0x0c00_0000), 0);
        assert!(t.get(0x0a01_0000, 16).is_some());
        assert!(t.get(0x0a01_0000, 17).is_none());
        for (k, l) in [(0x0a01_0000, 16), (0x0a00_0000, 8), (0x0b00_0000, 8), (0x0a01_0200, 24)] {
            assert_eq!(t.update(k, l, |s| s.remove(&mut sets, |_| true)), Some(1));
        }
        assert!(t.is_empty(), "every node pruned");
        assert_eq!(t.node_count(), 0);
    }

    #[test]
    fn zero_length_and_full_length() {
        let mut t = Trie::<u128>::default();
        let mut sets = Sets::default();
        t.slot_mut(0, 0).upsert(&mut sets, Dec { exp: 10, tag: 1 });
        t.slot_mut(u128::MAX, 128).upsert(&mut sets, Dec { exp: 10, tag: 1 });
        t.finish();
        let mut n = 0;
        t.covering(u128::MAX, |_| n += 1);
        assert_eq!(n, 2);
        n = 0;
        t.covering(5, |_| n += 1);
        assert_eq!(n, 1);
    }
}
