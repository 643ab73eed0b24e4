//! The table of single addresses: open addressing with linear probing over 12-byte slots
//! (IPv4), no separate control bytes, so a probe touches one cache line and batch lookups can
//! warm the lines of the next addresses before probing them.
//!
//! A slot is free when its [`Slot`] is empty; deletion shifts the following run back (no
//! tombstones), so probe lengths never degrade. The load factor stays at most 3/4; bulk loads
//! reserve at 0.7 so that a million addresses cost about 17 bytes each here.

use crate::bits::Bits;
use crate::slot::Slot;

const MAX_LOAD_NUM: usize = 3;
const MAX_LOAD_DEN: usize = 4;

/// A hash table from address to [`Slot`].
#[derive(Debug, Clone)]
pub struct Hosts<K> {
    slots: Vec<(K, Slot)>,
    len: usize,
    seed: u64,
}

impl<K: Bits> Default for Hosts<K> {
    fn default() -> Self {
        Hosts { slots: Vec::new(), len: 0, seed: random_seed() }
    }
}

/// A per-table seed so that the layout cannot be predicted from the addresses alone.
fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0x5eed);
    h.finish() | 1
}

impl<K: Bits> Hosts<K> {
    #[inline]
    fn home(&self, k: K) -> usize {
        let h = k.hash64(self.seed);
        // Lemire's multiply-shift maps the hash onto any table size without a modulo.
        ((u128::from(h) * self.slots.len() as u128) >> 64) as usize
    }

    /// Number of addresses held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// The slot of `k`, if held.
    #[inline]
    pub fn get(&self, k: K) -> Option<&Slot> {
        if self.len == 0 {
            return None;
        }
        let n = self.slots.len();
        let mut i = self.home(k);
        loop {
            let (key, slot) = &self.slots[i];
            if slot.is_empty() {
                return None;
            }
            if *key == k {
                return Some(slot);
            }
            i += 1;
            if i == n {
                i = 0;
            }
        }
    }

    /// Loads the cache line where the probe for `k` starts, so a later `get` finds it warm.
    #[inline]
    pub fn warm(&self, k: K) {
        if self.len != 0 {
            // A real load (of a copy): the reference alone would not touch memory.
            std::hint::black_box(self.slots[self.home(k)].1);
        }
    }

    /// Makes room for `extra` more addresses at a load factor of 0.7.
    pub fn reserve(&mut self, extra: usize) {
        let want = (self.len + extra) * 10 / 7 + 1;
        if want > self.slots.len() {
            self.rehash(want);
        }
    }

    fn rehash(&mut self, size: usize) {
        let old = std::mem::replace(&mut self.slots, vec![(K::default(), Slot::default()); size.max(8)]);
        for (k, s) in old {
            if !s.is_empty() {
                let i = self.free_index(k);
                self.slots[i] = (k, s);
            }
        }
    }

    fn free_index(&self, k: K) -> usize {
        let n = self.slots.len();
        let mut i = self.home(k);
        while !self.slots[i].1.is_empty() {
            i += 1;
            if i == n {
                i = 0;
            }
        }
        i
    }

    /// The slot of `k`, inserted empty if absent; the caller must fill it (or call `remove`).
    pub fn entry(&mut self, k: K) -> &mut Slot {
        if (self.len + 1) * MAX_LOAD_DEN > self.slots.len() * MAX_LOAD_NUM {
            self.rehash((self.slots.len() * 2).max(16));
        }
        let n = self.slots.len();
        let mut i = self.home(k);
        loop {
            if self.slots[i].1.is_empty() {
                self.slots[i].0 = k;
                self.len += 1;
                return &mut self.slots[i].1;
            }
            if self.slots[i].0 == k {
                return &mut self.slots[i].1;
            }
            i += 1;
            if i == n {
                i = 0;
            }
        }
    }

    fn find(&self, k: K) -> Option<usize> {
        if self.len == 0 {
            return None;
        }
        let n = self.slots.len();
        let mut i = self.home(k);
        loop {
            if self.slots[i].1.is_empty() {
                return None;
            }
            if self.slots[i].0 == k {
                return Some(i);
            }
            i = if i + 1 == n { 0 } else { i + 1 };
        }
    }

    /// Runs `f` on the slot of `k` if held, and drops `k` when `f` leaves its slot empty.
    pub fn update<R>(&mut self, k: K, f: impl FnOnce(&mut Slot) -> R) -> Option<R> {
        let i = self.find(k)?;
        let r = f(&mut self.slots[i].1);
        if self.slots[i].1.is_empty() {
            self.delete_at(i);
        }
        Some(r)
    }

    /// Backward-shift deletion: later members of the run move into the hole when their home
    /// position allows it, so no tombstone is needed.
    fn delete_at(&mut self, i: usize) {
        let n = self.slots.len();
        let mut hole = i;
        let mut j = i;
        loop {
            j = if j + 1 == n { 0 } else { j + 1 };
            if self.slots[j].1.is_empty() {
                break;
            }
            let home = self.home(self.slots[j].0);
            // Is `home` cyclically outside (hole, j]? Then the member may move to the hole.
            let movable = if hole <= j { home <= hole || home > j } else { home <= hole && home > j };
            if movable {
                self.slots[hole] = self.slots[j];
                hole = j;
            }
        }
        self.slots[hole] = (K::default(), Slot::default());
        self.len -= 1;
    }

    /// Every held address and its slot.
    pub fn iter(&self) -> impl Iterator<Item = (K, Slot)> + '_ {
        self.slots.iter().filter(|(_, s)| !s.is_empty()).copied()
    }

    /// Heap bytes held.
    pub fn heap_bytes(&self) -> usize {
        self.slots.capacity() * std::mem::size_of::<(K, Slot)>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slot::{Dec, Sets};

    #[test]
    fn matches_a_hashmap_under_random_churn() {
        let mut sets = Sets::default();
        let mut t = Hosts::<u32>::default();
        let mut m = std::collections::HashMap::new();
        let mut x: u64 = 7;
        for step in 0..200_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let k = (x % 5000) as u32;
            if x % 3 == 0 {
                t.update(k, |s| s.remove(&mut sets, |_| true));
                m.remove(&k);
            } else {
                t.entry(k).upsert(&mut sets, Dec { exp: step + 1, tag: 1 });
                m.insert(k, step + 1);
            }
            if step % 1000 == 0 {
                assert_eq!(t.len(), m.len());
                for probe in 0..5000u32 {
                    assert_eq!(t.get(probe).is_some(), m.contains_key(&probe), "step {step} key {probe}");
                }
            }
        }
        assert_eq!(t.iter().count(), m.len());
    }
}
