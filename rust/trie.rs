//! A path-compressed binary (Patricia) trie of network prefixes, one per address family.
//!
//! Nodes live in an arena (`Vec`) addressed by `u32`; a node holds a prefix and a [`Slot`] of
//! decisions. A node whose slot is empty always has two children (it is a branching "glue"
//! node), so the trie has at most `2n - 1` nodes for `n` stored prefixes.
//!
//! | operation | cost |
//! |---|---|
//! | insert / find / remove a prefix | O(W) node visits, W = address width |
//! | visit every prefix covering an address | O(W) |

use crate::bits::Bits;
use crate::slot::Slot;

const NIL: u32 = u32::MAX;

#[derive(Debug, Clone)]
struct Node<K> {
    key: K,
    len: u8,
    child: [u32; 2],
    slot: Slot,
}

/// The prefix trie of one address family.
#[derive(Debug, Clone)]
pub struct Trie<K> {
    nodes: Vec<Node<K>>,
    free: Vec<u32>,
    root: u32,
}

impl<K: Bits> Default for Trie<K> {
    fn default() -> Self {
        Trie {
            nodes: Vec::new(),
            free: Vec::new(),
            root: NIL,
        }
    }
}

impl<K: Bits> Trie<K> {
    fn alloc(&mut self, key: K, len: u8) -> u32 {
        let node = Node {
            key,
            len,
            child: [NIL, NIL],
            slot: Slot::default(),
        };
        if let Some(i) = self.free.pop() {
            self.nodes[i as usize] = node;
            i
        } else {
            self.nodes.push(node);
            (self.nodes.len() - 1) as u32
        }
    }

    fn link(&mut self, parent: u32, dir: usize, to: u32) {
        if parent == NIL {
            self.root = to;
        } else {
            self.nodes[parent as usize].child[dir] = to;
        }
    }

    /// The slot of prefix `key/len`, created (empty) if absent. `key` must be normalised.
    pub fn slot_mut(&mut self, key: K, len: u8) -> &mut Slot {
        let i = self.insert(key, len);
        &mut self.nodes[i as usize].slot
    }

    fn insert(&mut self, key: K, len: u8) -> u32 {
        let (mut parent, mut dir, mut cur) = (NIL, 0usize, self.root);
        loop {
            if cur == NIL {
                let n = self.alloc(key, len);
                self.link(parent, dir, n);
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
                self.link(parent, dir, n);
                return n;
            }
            let glue = self.alloc(key.and(K::mask(common)), common);
            let leaf = self.alloc(key, len);
            self.nodes[glue as usize].child[key.bit(common)] = leaf;
            self.nodes[glue as usize].child[nkey.bit(common)] = cur;
            self.link(parent, dir, glue);
            return leaf;
        }
    }

    /// The slot of prefix `key/len` if the trie holds that exact prefix.
    pub fn get(&self, key: K, len: u8) -> Option<&Slot> {
        let mut cur = self.root;
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
        let (mut parent, mut dir, mut cur) = (NIL, 0usize, self.root);
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
        self.prune(cur, &path[..depth]);
        Some(r)
    }

    fn prune(&mut self, cur: u32, path: &[(u32, usize)]) {
        let n = &self.nodes[cur as usize];
        if !n.slot.is_empty() || (n.child[0] != NIL && n.child[1] != NIL) {
            return;
        }
        let only = if n.child[0] != NIL {
            n.child[0]
        } else {
            n.child[1]
        };
        let (parent, dir) = path[path.len() - 1];
        self.link(parent, dir, only);
        self.release(cur);
        if only != NIL || parent == NIL {
            return;
        }
        // The parent lost a child: if it is a glue node it now has one child and must go too.
        let p = &self.nodes[parent as usize];
        if p.slot.is_empty() {
            let other = p.child[1 - dir];
            let (gp, gdir) = path[path.len() - 2];
            self.link(gp, gdir, other);
            self.release(parent);
        }
    }

    fn release(&mut self, i: u32) {
        let n = &mut self.nodes[i as usize];
        n.child = [NIL, NIL];
        n.slot = Slot::default();
        self.free.push(i);
    }

    /// Calls `f` on the slot of every stored prefix covering `addr`, shortest first.
    #[inline]
    pub fn covering(&self, addr: K, mut f: impl FnMut(Slot)) {
        let mut cur = self.root;
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
        let mut stack = Vec::new();
        if self.root != NIL {
            stack.push(self.root);
        }
        while let Some(i) = stack.pop() {
            let n = &self.nodes[i as usize];
            if !n.slot.is_empty() {
                f(n.key, n.len, n.slot);
            }
            stack.extend(n.child.iter().copied().filter(|&c| c != NIL));
        }
    }

    /// True when no prefix is stored.
    pub fn is_empty(&self) -> bool {
        self.root == NIL
    }

    /// Nodes in use (stored prefixes plus glue nodes).
    pub fn node_count(&self) -> usize {
        self.nodes.len() - self.free.len()
    }

    /// Heap bytes held.
    pub fn heap_bytes(&self) -> usize {
        self.nodes.capacity() * std::mem::size_of::<Node<K>>() + self.free.capacity() * 4
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slot::{Dec, Sets};

    fn put(t: &mut Trie<u32>, sets: &mut Sets, key: u32, len: u8) {
        t.slot_mut(key, len).upsert(sets, Dec { exp: 10, tag: 1 });
    }

    fn covering(t: &Trie<u32>, addr: u32) -> usize {
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
        assert_eq!(covering(&t, 0x0a01_0203), 3);
        assert_eq!(covering(&t, 0x0a02_0000), 1);
        assert_eq!(covering(&t, 0x0c00_0000), 0);
        assert!(t.get(0x0a01_0000, 16).is_some());
        assert!(t.get(0x0a01_0000, 17).is_none());
        for (k, l) in [
            (0x0a01_0000, 16),
            (0x0a00_0000, 8),
            (0x0b00_0000, 8),
            (0x0a01_0200, 24),
        ] {
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
        t.slot_mut(u128::MAX, 128)
            .upsert(&mut sets, Dec { exp: 10, tag: 1 });
        let mut n = 0;
        t.covering(u128::MAX, |_| n += 1);
        assert_eq!(n, 2);
        n = 0;
        t.covering(5, |_| n += 1);
        assert_eq!(n, 1);
    }
}
