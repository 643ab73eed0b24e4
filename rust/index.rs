//! The decision index of both address families, with interned origins and remediations.
//!
//! Semantics (CrowdSec's): an address gets the highest-priority remediation among every active
//! decision covering it; a decision is keyed by (network, origin, remediation) and adding it
//! again replaces its expiry ([`Op::Add`]) or, for stream answers, never shortens it
//! ([`Op::Extend`]); a decision is active while `expiry > now` (milliseconds).

use crate::bits::Bits;
use crate::error::{Error, Result};
use crate::parse::{Addr, Net};
use crate::slot::{Dec, Key, MAX_TAG, NO_KEY, NO_RANK};
use crate::table::Table;
use hashbrown::HashMap;

/// Longest origin or remediation name accepted.
pub const MAX_NAME: usize = 256;
/// Addresses whose hash-table lines are loaded together before they are probed.
const WARM_GROUP: usize = 32;
/// Most distinct remediations (codes are one byte, 0 meaning none).
pub const MAX_REMEDIATIONS: usize = 254;

/// Which decisions a removal targets on its network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Filter {
    /// Only this origin (interned id), or any.
    pub origin: Option<u32>,
    /// Only this remediation (interned id), or any.
    pub remediation: Option<u8>,
}

/// One change of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Add (or refresh) a decision: network, tag from [`Index::tag`], expiry in ms. A decision
    /// already held takes this expiry, shorter or not.
    Add(Net, u16, u64),
    /// Add a decision, or keep the later of its held expiry and this one. Stream answers use
    /// it: CAPI may send the same address under two scenarios (4 h and 30 s, say), and crowdsec
    /// keeps it banned while either is active, whichever comes last in the answer.
    Extend(Net, u16, u64),
    /// Remove the decisions on exactly this network matching the filter.
    Remove(Net, Filter),
}

/// How an add of a batch treats the same decision already held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddRule {
    /// The add's expiry replaces the held one; an add already expired removes the decision
    /// (the caller said when it ends, and that is over). The rule of `add`, `add_many`, `apply`.
    Replace,
    /// The later expiry is kept and an add already expired changes nothing: decisions read
    /// from a stream answer, which may hold the same decision twice (CAPI groups an address
    /// under each scenario that flagged it) and crowdsec keeps it while any copy is active.
    Extend,
}

/// A decision as stored, for snapshots and iteration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// The network.
    pub net: Net,
    /// Its origin.
    pub origin: u32,
    /// Its remediation id.
    pub remediation: u8,
    /// Expiry in Unix milliseconds.
    pub exp: u64,
}

/// Both families plus the name tables.
#[derive(Debug, Clone)]
pub struct Index {
    v4: Table<u32>,
    v6: Table<u128>,
    priorities: Vec<String>,
    remediations: Vec<String>,
    rem_ids: HashMap<String, u8>,
    origins: Vec<String>,
    origin_ids: HashMap<String, u32>,
    /// Tag -> (origin, remediation); tag 0 is the empty slot.
    tags: Vec<(u32, u8)>,
    tag_ids: HashMap<(u32, u8), u16>,
    /// Tag -> lookup key, `rank << 16 | tag` (rank 0 is the most severe).
    tag_keys: Vec<Key>,
    /// Rank -> remediation id.
    rank_rem: Vec<u8>,
    count: usize,
    normalized: u64,
}

/// Remediation ids from the most severe rank to the least: those in `priorities` in its order,
/// then the others alphabetically.
pub(crate) fn rank_order(priorities: &[String], remediations: &[String]) -> Vec<u8> {
    let prio = |name: &str| priorities.iter().position(|p| p == name).unwrap_or(usize::MAX);
    let mut order: Vec<u8> = (0..remediations.len() as u8).collect();
    order.sort_by(|&a, &b| {
        let (na, nb) = (&remediations[a as usize], &remediations[b as usize]);
        prio(na).cmp(&prio(nb)).then_with(|| na.cmp(nb))
    });
    order
}

fn check_name(what: &str, s: &str) -> Result<()> {
    if s.is_empty() || s.len() > MAX_NAME || s.chars().any(char::is_control) {
        return Err(Error::InvalidDecision(format!(
            "{what} must be 1 to {MAX_NAME} printable characters, got {:?}",
            s.chars().take(40).collect::<String>()
        )));
    }
    Ok(())
}

impl Index {
    /// An empty index ranking remediations in `priorities` order (most severe first); any other
    /// remediation ranks below them, alphabetically.
    pub fn new(priorities: &[String]) -> Result<Index> {
        let mut ix = Index {
            v4: Table::default(),
            v6: Table::default(),
            priorities: Vec::new(),
            remediations: Vec::new(),
            rem_ids: HashMap::new(),
            origins: Vec::new(),
            origin_ids: HashMap::new(),
            tags: vec![(0, 0)],
            tag_ids: HashMap::new(),
            tag_keys: vec![NO_KEY],
            rank_rem: Vec::new(),
            count: 0,
            normalized: 0,
        };
        for p in priorities {
            check_name("remediation", p)?;
            if ix.priorities.contains(p) {
                return Err(Error::InvalidDecision(format!("remediation {p:?} listed twice in priorities")));
            }
            ix.priorities.push(p.clone());
        }
        for p in priorities {
            ix.remediation_id(p)?;
        }
        Ok(ix)
    }

    fn rerank(&mut self) {
        let order = rank_order(&self.priorities, &self.remediations);
        let mut rem_rank = vec![0u16; order.len()];
        for (rank, &r) in order.iter().enumerate() {
            rem_rank[r as usize] = rank as u16;
        }
        self.rank_rem = order;
        self.tag_keys = self
            .tags
            .iter()
            .enumerate()
            .map(|(t, &(_, r))| if t == 0 { NO_KEY } else { (Key::from(rem_rank[r as usize]) << 16) | t as Key })
            .collect();
        // The block summaries hold keys: they follow the new ranks.
        self.v4.summarize(&self.tag_keys);
        self.v6.summarize(&self.tag_keys);
    }

    /// The id of remediation `name`, interned on first use.
    pub fn remediation_id(&mut self, name: &str) -> Result<u8> {
        if let Some(&id) = self.rem_ids.get(name) {
            return Ok(id);
        }
        check_name("remediation", name)?;
        if self.remediations.len() >= MAX_REMEDIATIONS {
            return Err(Error::InvalidDecision(format!("more than {MAX_REMEDIATIONS} distinct remediations")));
        }
        let id = self.remediations.len() as u8;
        self.remediations.push(name.to_owned());
        self.rem_ids.insert(name.to_owned(), id);
        self.rerank();
        Ok(id)
    }

    fn origin_id(&mut self, name: &str) -> Result<u32> {
        if let Some(&id) = self.origin_ids.get(name) {
            return Ok(id);
        }
        check_name("origin", name)?;
        let id = self.origins.len() as u32;
        self.origins.push(name.to_owned());
        self.origin_ids.insert(name.to_owned(), id);
        Ok(id)
    }

    /// The tag of (origin, remediation), interned on first use.
    pub fn tag(&mut self, origin: &str, remediation: &str) -> Result<u16> {
        let o = self.origin_id(origin)?;
        let r = self.remediation_id(remediation)?;
        self.tag_of(o, r)
    }

    /// The tags of `pairs`, interned on first use. A pair the index cannot take (a name too
    /// long or empty, one remediation or pair too many) is an error when `strict`, else `None`:
    /// its decisions are skipped and the rest of the batch applies.
    pub fn tags<'a>(
        &mut self,
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
        strict: bool,
    ) -> Result<Vec<Option<u16>>> {
        pairs
            .into_iter()
            .map(|(o, r)| match self.tag(o, r) {
                Ok(t) => Ok(Some(t)),
                Err(e) if strict => Err(e),
                Err(_) => Ok(None),
            })
            .collect()
    }

    fn tag_of(&mut self, o: u32, r: u8) -> Result<u16> {
        if let Some(&t) = self.tag_ids.get(&(o, r)) {
            return Ok(t);
        }
        if self.tags.len() > MAX_TAG as usize {
            return Err(Error::InvalidDecision(format!("more than {MAX_TAG} distinct (origin, remediation) pairs")));
        }
        let t = self.tags.len() as u16;
        self.tags.push((o, r));
        self.tag_ids.insert((o, r), t);
        self.rerank();
        Ok(t)
    }

    /// A removal filter; `None` when it names an origin or remediation never seen (it then
    /// matches nothing).
    pub fn filter(&self, origin: Option<&str>, remediation: Option<&str>) -> Option<Filter> {
        let origin = match origin {
            Some(o) => Some(*self.origin_ids.get(o)?),
            None => None,
        };
        let remediation = match remediation {
            Some(r) => Some(*self.rem_ids.get(r)?),
            None => None,
        };
        Some(Filter { origin, remediation })
    }

    /// Counts a network whose host bits were cleared on the way in.
    pub fn note_normalized(&mut self, n: u64) {
        self.normalized += n;
    }

    /// Reserves room for `n` more IPv4 single addresses (bulk loads).
    pub fn reserve_v4_hosts(&mut self, n: usize) {
        self.v4.reserve_hosts(n);
    }

    /// The operation of adding `tag` on `net` until `exp` at `now` under `rule`, or None when
    /// it changes nothing (an expired stream add).
    pub fn add_op(&self, net: Net, tag: u16, exp: u64, now: u64, rule: AddRule) -> Option<Op> {
        if exp > now {
            return Some(match rule {
                AddRule::Replace => Op::Add(net, tag, exp),
                AddRule::Extend => Op::Extend(net, tag, exp),
            });
        }
        match rule {
            AddRule::Replace => {
                let (origin, remediation) = self.tags[tag as usize];
                Some(Op::Remove(net, Filter { origin: Some(origin), remediation: Some(remediation) }))
            }
            AddRule::Extend => None,
        }
    }

    /// Applies a batch in order. Returns (decisions added, decisions removed); refreshing an
    /// existing decision (or keeping it, for [`Op::Extend`]) counts as neither.
    pub fn apply(&mut self, ops: &[Op]) -> (usize, usize) {
        let (mut added, mut removed) = (0, 0);
        for op in ops {
            match *op {
                Op::Add(net, tag, exp) | Op::Extend(net, tag, exp) => {
                    let d = Dec { exp, tag };
                    let keep_later = matches!(op, Op::Extend(..));
                    let new = match net {
                        Net::V4(k, l) => self.v4.upsert(k, l, d, keep_later),
                        Net::V6(k, l) => self.v6.upsert(k, l, d, keep_later),
                    };
                    added += usize::from(new);
                }
                Op::Remove(net, f) => {
                    let tags = &self.tags;
                    let selected = |d: Dec| {
                        let (o, r) = tags[d.tag as usize];
                        f.origin.is_none_or(|x| x == o) && f.remediation.is_none_or(|x| x == r)
                    };
                    removed += match net {
                        Net::V4(k, l) => self.v4.remove(k, l, selected),
                        Net::V6(k, l) => self.v6.remove(k, l, selected),
                    };
                }
            }
        }
        self.count = self.count + added - removed;
        self.v4.finish(&self.tag_keys);
        self.v6.finish(&self.tag_keys);
        (added, removed)
    }

    /// True when stale expiry hints should be rebuilt (see [`Index::compact`]).
    pub fn wants_compaction(&self) -> bool {
        self.v4.wants_compaction() || self.v6.wants_compaction()
    }

    /// Rebuilds what churn left behind (the expiry hints of removed decisions), so memory
    /// follows what is held, not how much has changed.
    pub fn compact(&mut self) {
        if self.v4.wants_compaction() {
            self.v4.compact();
        }
        if self.v6.wants_compaction() {
            self.v6.compact();
        }
    }

    /// The remediation id active for `addr` at `now`, if any.
    #[inline]
    pub fn lookup(&self, addr: Addr, now: u64) -> Option<u8> {
        let key = self.key(addr, now);
        (key != NO_KEY).then(|| self.rank_rem[(key >> 16) as usize])
    }

    #[inline]
    fn key(&self, addr: Addr, now: u64) -> Key {
        match addr {
            Addr::V4(a) => self.v4.best(a, now, &self.tag_keys),
            Addr::V6(a) => self.v6.best(a, now, &self.tag_keys),
        }
    }

    /// The tag of the decision answering for `addr` at `now`: one of the most severe active
    /// decisions covering it (the lowest tag among them), or None.
    #[inline]
    pub fn winner(&self, addr: Addr, now: u64) -> Option<u16> {
        let key = self.key(addr, now);
        (key != NO_KEY).then_some(key as u16)
    }

    /// (origin id, remediation id) of a tag.
    pub fn tag_parts(&self, tag: u16) -> (u32, u8) {
        self.tags[tag as usize]
    }

    /// Code of a lookup key: 0 for none, else remediation id + 1.
    #[inline]
    fn code_of(&self, key: Key) -> u8 {
        // NO_KEY's rank (u16::MAX) is past the end of `rank_rem` (at most 254 ranks): the bounds
        // check that indexing needs anyway gives 0 for it, with no branch of its own.
        self.rank_rem.get((key >> 16) as usize).map_or(0, |&r| r + 1)
    }

    /// Code of `addr` for packed lookups: 0 for none, else remediation id + 1.
    #[inline]
    pub fn code<K: Bits>(&self, addr: K, now: u64) -> u8 {
        let key = if K::BITS == 32 {
            self.v4.best(addr.to_u128() as u32, now, &self.tag_keys)
        } else {
            let a = addr.to_u128();
            if a >> 32 == 0xffff {
                self.v4.best(a as u32, now, &self.tag_keys)
            } else {
                self.v6.best(a, now, &self.tag_keys)
            }
        };
        self.code_of(key)
    }

    /// Codes of many IPv4 addresses, by groups: first the ones their block's summary settles
    /// (a small, cache-resident array), then, for the rest, the cache lines of their host-table
    /// probes and block tries are loaded together before any is probed.
    pub fn codes_v4(&self, addrs: impl ExactSizeIterator<Item = u32>, now: u64) -> Vec<u8> {
        let mut out = vec![0u8; addrs.len()];
        let mut group = [0u32; WARM_GROUP];
        let (mut n, mut base) = (0, 0);
        let run = |group: &[u32], out: &mut [u8]| {
            let mut pending = [0u8; WARM_GROUP];
            let mut np = 0;
            for (i, &a) in group.iter().enumerate() {
                match self.v4.settled(a, now) {
                    // NO_KEY too: a block no range covers, in a family without inner decisions.
                    Some(key) => out[i] = self.code_of(key),
                    None => {
                        pending[np] = i as u8;
                        np += 1;
                    }
                }
            }
            let pending = &pending[..np];
            pending.iter().for_each(|&i| self.v4.warm(group[i as usize]));
            pending.iter().for_each(|&i| self.v4.warm_root(group[i as usize]));
            for &i in pending {
                out[i as usize] = self.code(group[i as usize], now);
            }
        };
        for a in addrs {
            group[n] = a;
            n += 1;
            if n == WARM_GROUP {
                run(&group, &mut out[base..base + n]);
                base += n;
                n = 0;
            }
        }
        run(&group[..n], &mut out[base..base + n]);
        out
    }

    /// Codes of many addresses of either family (IPv4-mapped IPv6 answers as IPv4).
    pub fn codes(&self, addrs: &[Addr], now: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(addrs.len());
        for group in addrs.chunks(WARM_GROUP) {
            for a in group {
                match *a {
                    Addr::V4(x) => self.v4.warm(x),
                    Addr::V6(x) => self.v6.warm(x),
                }
            }
            out.extend(group.iter().map(|a| match *a {
                Addr::V4(x) => self.code(x, now),
                Addr::V6(x) => self.code(x, now),
            }));
        }
        out
    }

    /// Removes expired decisions, about `budget` at most; returns (removed, finished).
    pub fn purge(&mut self, now: u64, budget: usize) -> (usize, bool) {
        let (a, done4) = self.v4.purge(now, budget);
        let (b, done6) = if a < budget { self.v6.purge(now, budget - a) } else { (0, false) };
        self.count -= a + b;
        self.v4.finish(&self.tag_keys);
        self.v6.finish(&self.tag_keys);
        (a + b, done4 && done6)
    }

    /// The decisions of one family active at `now`, as `(network key, length, tag, expiry)`,
    /// in no order.
    pub(crate) fn active_raw(&self, family: u8, now: u64) -> Vec<(u128, u8, u16, u64)> {
        fn collect<K: Bits>(t: &Table<K>, now: u64, out: &mut Vec<(u128, u8, u16, u64)>) {
            let sets = t.sets();
            t.for_each(|k, l, s| {
                s.for_each(sets, |d| {
                    if d.exp > now {
                        out.push((k.to_u128(), l, d.tag, d.exp));
                    }
                })
            });
        }
        let mut out = Vec::with_capacity(self.count);
        if family == 4 {
            collect(&self.v4, now, &mut out);
        } else {
            collect(&self.v6, now, &mut out);
        }
        out
    }

    /// Tag -> (origin, remediation), tag 0 being the empty slot.
    pub(crate) fn tag_table(&self) -> &[(u32, u8)] {
        &self.tags
    }

    /// Every decision held (active or not).
    pub fn decisions(&self) -> Vec<Stored> {
        let mut out = Vec::with_capacity(self.count);
        let tags = &self.tags;
        let mut push = |net: Net, d: Dec| {
            let (origin, remediation) = tags[d.tag as usize];
            out.push(Stored { net, origin, remediation, exp: d.exp });
        };
        let sets = self.v4.sets();
        self.v4.for_each(|k, l, s| s.for_each(sets, |d| push(Net::V4(k, l), d)));
        let sets = self.v6.sets();
        self.v6.for_each(|k, l, s| s.for_each(sets, |d| push(Net::V6(k, l), d)));
        out
    }

    /// Active decisions at `now` by tag (index = tag), for usage metrics' `active_decisions`.
    pub fn active_by_tag(&self, now: u64) -> Vec<u64> {
        let mut out = vec![0u64; self.tags.len()];
        let mut count = |d: Dec| {
            if d.exp > now {
                out[d.tag as usize] += 1;
            }
        };
        let sets = self.v4.sets();
        self.v4.for_each(|_, _, s| s.for_each(sets, &mut count));
        let sets = self.v6.sets();
        self.v6.for_each(|_, _, s| s.for_each(sets, &mut count));
        out
    }

    /// Each prefix of a family holding an active decision: `(start, len, best rank, until)`,
    /// `until` being the latest expiry among the active decisions of that rank there.
    pub fn active_prefixes(&self, family: u8, now: u64) -> Vec<(u128, u8, u16, u64)> {
        fn collect<K: Bits>(t: &Table<K>, now: u64, tag_keys: &[Key]) -> Vec<(u128, u8, u16, u64)> {
            let mut out = Vec::new();
            t.for_each(|k, l, s| {
                let (key, until) = s.best_until(t.sets(), now, tag_keys);
                if key != NO_KEY {
                    out.push((k.to_u128(), l, (key >> 16) as u16, until));
                }
            });
            out
        }
        if family == 4 {
            collect(&self.v4, now, &self.tag_keys)
        } else {
            collect(&self.v6, now, &self.tag_keys)
        }
    }

    /// The settle ranks of the IPv4 and IPv6 tables (see [`Table::settled`]).
    #[cfg(test)]
    pub(crate) fn settle_ranks(&self) -> (u16, u16) {
        (self.v4.settle(), self.v6.settle())
    }

    /// True when the block summary alone answers `addr` at `now` (the fast path).
    #[cfg(test)]
    pub(crate) fn settles(&self, addr: Addr, now: u64) -> bool {
        match addr {
            Addr::V4(a) => self.v4.settled(a, now).is_some(),
            Addr::V6(a) => self.v6.settled(a, now).is_some(),
        }
    }

    /// The keys of the one-bit fast paths of IPv4 and IPv6 (NO_KEY when none).
    #[cfg(test)]
    pub(crate) fn common_keys(&self) -> (Key, Key) {
        (self.v4.common_key(), self.v6.common_key())
    }

    /// Rank of a remediation id.
    pub fn rank_of(&self, rem: u8) -> u16 {
        self.rank_rem.iter().position(|&r| r == rem).map_or(NO_RANK, |p| p as u16)
    }

    /// Decisions held, including expired ones not yet purged.
    pub fn len(&self) -> usize {
        self.count
    }

    /// True when no decision is held.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Remediation names by id (code - 1).
    pub fn remediations(&self) -> &[String] {
        &self.remediations
    }

    /// Origin names by id.
    pub fn origins(&self) -> &[String] {
        &self.origins
    }

    /// The priority list this index was built with.
    pub fn priorities(&self) -> &[String] {
        &self.priorities
    }

    /// Networks normalised on the way in.
    pub fn normalized(&self) -> u64 {
        self.normalized
    }

    /// (IPv4 hosts, IPv4 ranges, IPv6 hosts, IPv6 ranges).
    pub fn shape(&self) -> (usize, usize, usize, usize) {
        (self.v4.host_count(), self.v4.range_count(), self.v6.host_count(), self.v6.range_count())
    }

    /// Heap bytes held (estimate).
    pub fn heap_bytes(&self) -> usize {
        self.v4.heap_bytes() + self.v6.heap_bytes() + self.tags.len() * 48 + self.origins.len() * 64
    }
}
