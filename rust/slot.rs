//! The decisions held at one prefix, packed into 8 bytes for the common single-decision case.
//!
//! A [`Slot`] holds either nothing, one decision inline (48-bit expiry in milliseconds and a
//! 16-bit tag naming its origin and remediation), or the index of a `Vec<Dec>` in [`Sets`]
//! when several origins or remediations target the same prefix.

/// Expiry value that means "never expires" (the largest 48-bit millisecond count).
pub const NEVER: u64 = (1 << 48) - 1;
/// Tag of an empty slot; real tags start at 1.
pub const EMPTY: u16 = 0;
/// Tag marking a slot whose decisions live in [`Sets`].
const MANY: u16 = u16::MAX;
/// Largest tag a decision may carry.
pub const MAX_TAG: u16 = u16::MAX - 1;
/// Rank of "no decision"; real ranks are smaller.
pub const NO_RANK: u16 = u16::MAX;
/// What a lookup minimises over the covering decisions: `rank << 16 | tag`, so the most severe
/// remediation wins and, among decisions of that rank, the lowest tag (which names the origin).
pub type Key = u32;
/// Key of "no decision".
pub const NO_KEY: Key = u32::MAX;

/// One decision: its expiry (Unix milliseconds) and its tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dec {
    /// Expiry in milliseconds since the Unix epoch; active while `exp > now`.
    pub exp: u64,
    /// Interned (origin, remediation) pair.
    pub tag: u16,
}

/// The decision sets of slots holding more than one decision.
#[derive(Debug, Clone, Default)]
pub struct Sets {
    sets: Vec<Vec<Dec>>,
    free: Vec<u32>,
}

impl Sets {
    fn alloc(&mut self, v: Vec<Dec>) -> u32 {
        if let Some(i) = self.free.pop() {
            self.sets[i as usize] = v;
            i
        } else {
            self.sets.push(v);
            (self.sets.len() - 1) as u32
        }
    }

    fn release(&mut self, i: u32) -> Vec<Dec> {
        self.free.push(i);
        std::mem::take(&mut self.sets[i as usize])
    }

    /// Heap bytes held (for `stats()`).
    pub fn heap_bytes(&self) -> usize {
        self.sets.capacity() * std::mem::size_of::<Vec<Dec>>()
            + self.sets.iter().map(|v| v.capacity() * std::mem::size_of::<Dec>()).sum::<usize>()
            + self.free.capacity() * 4
    }
}

/// The decisions at one prefix.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Slot {
    lo: u32,
    hi: u16,
    tag: u16,
}

impl Slot {
    #[inline]
    fn one(d: Dec) -> Slot {
        Slot { lo: d.exp as u32, hi: (d.exp >> 32) as u16, tag: d.tag }
    }

    #[inline]
    fn exp(self) -> u64 {
        (u64::from(self.hi) << 32) | u64::from(self.lo)
    }

    /// True when no decision is held.
    #[inline]
    pub fn is_empty(self) -> bool {
        self.tag == EMPTY
    }

    /// The best (smallest) key among decisions active at `now`, or [`NO_KEY`]; `tag_keys` maps tags to lookup keys.
    #[inline]
    pub fn best(self, sets: &Sets, now: u64, tag_keys: &[Key]) -> Key {
        if self.tag != MANY {
            // EMPTY has expiry 0, never active.
            return if self.exp() > now { tag_keys[self.tag as usize] } else { NO_KEY };
        }
        let mut best = NO_KEY;
        for d in &sets.sets[self.lo as usize] {
            if d.exp > now {
                best = best.min(tag_keys[d.tag as usize]);
            }
        }
        best
    }

    /// The best key active at `now` (as [`Slot::best`]) and the latest expiry among the active
    /// decisions of that key's rank: until then the rank's remediation applies here.
    pub fn best_until(self, sets: &Sets, now: u64, tag_keys: &[Key]) -> (Key, u64) {
        if self.tag != MANY {
            return if self.exp() > now { (tag_keys[self.tag as usize], self.exp()) } else { (NO_KEY, 0) };
        }
        let (mut best, mut until) = (NO_KEY, 0);
        for d in &sets.sets[self.lo as usize] {
            if d.exp <= now {
                continue;
            }
            let key = tag_keys[d.tag as usize];
            if key >> 16 < best >> 16 {
                until = d.exp;
            } else if key >> 16 == best >> 16 {
                until = until.max(d.exp);
            }
            best = best.min(key);
        }
        (best, until)
    }

    /// Calls `f` on every decision held (active or not).
    pub fn for_each(self, sets: &Sets, mut f: impl FnMut(Dec)) {
        match self.tag {
            EMPTY => {}
            MANY => sets.sets[self.lo as usize].iter().for_each(|d| f(*d)),
            _ => f(Dec { exp: self.exp(), tag: self.tag }),
        }
    }

    /// Number of decisions held.
    #[cfg(test)]
    pub fn len(self, sets: &Sets) -> usize {
        match self.tag {
            EMPTY => 0,
            MANY => sets.sets[self.lo as usize].len(),
            _ => 1,
        }
    }

    /// Inserts a decision or replaces the expiry of the one with the same tag.
    /// Returns the previous expiry when the tag was already present.
    pub fn upsert(&mut self, sets: &mut Sets, d: Dec) -> Option<u64> {
        self.put(sets, d, false)
    }

    /// Inserts a decision or, when the tag is already present, keeps the later of the two
    /// expiries (stream answers may carry the same decision twice with different durations,
    /// and it must stay active while either is). Returns the previous expiry if present.
    pub fn extend(&mut self, sets: &mut Sets, d: Dec) -> Option<u64> {
        self.put(sets, d, true)
    }

    fn put(&mut self, sets: &mut Sets, d: Dec, keep_later: bool) -> Option<u64> {
        let exp = |prev: u64| if keep_later { prev.max(d.exp) } else { d.exp };
        match self.tag {
            EMPTY => {
                *self = Slot::one(d);
                None
            }
            MANY => {
                let v = &mut sets.sets[self.lo as usize];
                if let Some(old) = v.iter_mut().find(|o| o.tag == d.tag) {
                    let prev = old.exp;
                    old.exp = exp(prev);
                    Some(prev)
                } else {
                    v.push(d);
                    None
                }
            }
            t if t == d.tag => {
                let prev = self.exp();
                *self = Slot::one(Dec { exp: exp(prev), tag: t });
                Some(prev)
            }
            _ => {
                let cur = Dec { exp: self.exp(), tag: self.tag };
                let i = sets.alloc(vec![cur, d]);
                *self = Slot { lo: i, hi: 0, tag: MANY };
                None
            }
        }
    }

    /// Removes every decision for which `drop` is true; returns how many went.
    pub fn remove(&mut self, sets: &mut Sets, mut drop: impl FnMut(Dec) -> bool) -> usize {
        match self.tag {
            EMPTY => 0,
            MANY => {
                let v = &mut sets.sets[self.lo as usize];
                let before = v.len();
                v.retain(|d| !drop(*d));
                let removed = before - v.len();
                match v.len() {
                    0 => {
                        sets.release(self.lo);
                        *self = Slot::default();
                    }
                    1 => {
                        let last = v[0];
                        sets.release(self.lo);
                        *self = Slot::one(last);
                    }
                    _ => {}
                }
                removed
            }
            _ => {
                if drop(Dec { exp: self.exp(), tag: self.tag }) {
                    *self = Slot::default();
                    1
                } else {
                    0
                }
            }
        }
    }

    /// True when some decision held expires within expiry bucket `bucket` (see `table`).
    pub fn expires_in(self, sets: &Sets, bucket: u64, shift: u32) -> bool {
        let mut hit = false;
        self.for_each(sets, |d| hit |= d.exp >> shift == bucket && d.exp < NEVER);
        hit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_then_many_then_single() {
        let mut sets = Sets::default();
        let mut s = Slot::default();
        let tag_keys = [NO_KEY, 0, 1, 2];
        assert!(s.is_empty());
        assert_eq!(s.upsert(&mut sets, Dec { exp: 100, tag: 2 }), None);
        assert_eq!(s.best(&sets, 50, &tag_keys), 1);
        assert_eq!(s.upsert(&mut sets, Dec { exp: 200, tag: 2 }), Some(100));
        assert_eq!(s.upsert(&mut sets, Dec { exp: 80, tag: 1 }), None);
        assert_eq!(s.len(&sets), 2);
        assert_eq!(s.best(&sets, 50, &tag_keys), 0);
        assert_eq!(s.best(&sets, 90, &tag_keys), 1, "tag 1 expired at 80");
        assert_eq!(s.remove(&mut sets, |d| d.exp <= 90), 1);
        assert_eq!(s.len(&sets), 1);
        assert_eq!(s.best(&sets, 199, &tag_keys), 1);
        assert_eq!(s.best(&sets, 200, &tag_keys), NO_KEY);
        assert_eq!(s.remove(&mut sets, |_| true), 1);
        assert!(s.is_empty());
        assert_eq!(s.upsert(&mut sets, Dec { exp: NEVER, tag: 3 }), None);
        assert_eq!(s.best(&sets, NEVER - 1, &tag_keys), 2);
    }

    #[test]
    fn extend_keeps_the_later_expiry() {
        let mut sets = Sets::default();
        let mut s = Slot::default();
        let tag_keys = [NO_KEY, 0, 1];
        assert_eq!(s.extend(&mut sets, Dec { exp: 100, tag: 1 }), None);
        assert_eq!(s.extend(&mut sets, Dec { exp: 50, tag: 1 }), Some(100));
        assert_eq!(s.best(&sets, 99, &tag_keys), 0, "the shorter add did not shorten it");
        assert_eq!(s.extend(&mut sets, Dec { exp: 150, tag: 1 }), Some(100));
        assert_eq!(s.best(&sets, 149, &tag_keys), 0, "the longer one lengthened it");
        // The same in a multi-decision set.
        assert_eq!(s.extend(&mut sets, Dec { exp: 70, tag: 2 }), None);
        assert_eq!(s.extend(&mut sets, Dec { exp: 10, tag: 2 }), Some(70));
        assert_eq!(s.extend(&mut sets, Dec { exp: 20, tag: 1 }), Some(150));
        assert_eq!(s.best(&sets, 60, &tag_keys), 0);
        assert_eq!(s.best(&sets, 149, &tag_keys), 0);
        assert_eq!(s.best(&sets, 150, &tag_keys), NO_KEY);
        // upsert still replaces.
        assert_eq!(s.upsert(&mut sets, Dec { exp: 20, tag: 1 }), Some(150));
        assert_eq!(s.best(&sets, 60, &tag_keys), 1, "tag 1 now ends at 20, tag 2 at 70");
    }

    #[test]
    fn slot_is_eight_bytes() {
        assert_eq!(std::mem::size_of::<Slot>(), 8);
        assert_eq!(std::mem::size_of::<(u32, Slot)>(), 12);
    }
}
