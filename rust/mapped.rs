//! A snapshot layout answered in place: followers map the file and look addresses up in its
//! bytes, building nothing.
//!
//! Layout (little-endian): a header (`b"CAPIFMAP"`, `u32` version, `u32` section count, `u64`
//! time written, `u64` decisions held), a table of `(offset, length)` per section, the sections (8-byte aligned), and
//! a CRC-32 of everything before it. Per family the sections hold:
//!
//! - single addresses: a directory of 65,537 `u32` offsets by the address's top 16 bits, the
//!   addresses sorted, and one slot word per address (a lookup: one directory read and a binary
//!   search of a few entries);
//! - ranges, sorted by (start, length), with their prefix length, the innermost range holding
//!   each (`parent`) and a slot word; and the address space cut into intervals, each naming the
//!   innermost range covering it (a lookup: a binary search, then a walk up the parents).
//!
//! A slot word holds one decision (`expiry << 16 | tag`) or, with tag `0xFFFF`, a count and the
//! position of a run of such words in the `sets` section. Tags name (origin, remediation) pairs
//! listed in the `names` section; remediations rank as the in-memory index ranks them.
//!
//! Opening checks the header, that every section lies inside the file and has a whole number
//! of items, and the names: O(1) in the number of decisions. Every later read is bounds-checked
//! (`Mem` gives zeros past the end) and every walk bounded, so a damaged or hostile file can
//! give wrong answers (the CRC, checked by [`verify`], tells) but never read out of bounds,
//! panic or loop.

use crate::bits::Bits;
use crate::error::{Error, Result};
use crate::index::{rank_order, Index, Op};
use crate::parse::{Addr, Net};
use crate::slot::{Key, NEVER, NO_KEY};
use std::collections::HashMap;

/// The first bytes of a mapped snapshot.
pub const MAGIC: &[u8; 8] = b"CAPIFMAP";
/// Format version written by this build.
pub const VERSION: u32 = 1;
const HEADER: usize = 32;
/// Sections: names, metadata, sets, then per family (v4, v6): directory, host keys, host slots,
/// range keys, range lengths, range parents, range slots, interval starts, interval ranges.
const SECTIONS: usize = 3 + 2 * 9;
const MANY: u64 = 0xFFFF;
/// "No range": an interval no range covers, or a range at the top.
const NONE: u32 = u32::MAX;
const DIR: usize = 65_537;

/// Whether `bytes` start as a mapped snapshot does.
pub fn is_mapped(bytes: &[u8]) -> bool {
    bytes.starts_with(MAGIC)
}

/// Bounds-checked reads of a mapped file's bytes (zeros past its end).
trait Mem {
    /// The `N` bytes at `off` (zeros when they are not all inside the file).
    fn bytes<const N: usize>(&self, off: usize) -> [u8; N];
    /// The byte at `off`.
    fn u8(&self, off: usize) -> u8 {
        self.bytes::<1>(off)[0]
    }
    /// The `u32` at `off`.
    fn u32(&self, off: usize) -> u32 {
        u32::from_le_bytes(self.bytes(off))
    }
    /// The `u64` at `off`.
    fn u64(&self, off: usize) -> u64 {
        u64::from_le_bytes(self.bytes(off))
    }
    /// The `u128` at `off`.
    fn u128(&self, off: usize) -> u128 {
        u128::from_le_bytes(self.bytes(off))
    }
}

impl Mem for [u8] {
    #[inline]
    fn bytes<const N: usize>(&self, off: usize) -> [u8; N] {
        let mut a = [0u8; N];
        if let Some(s) = off.checked_add(N).and_then(|end| self.get(off..end)) {
            a.copy_from_slice(s);
        }
        a
    }
}

/// The `len` bytes at `off`, or None when they are not all inside `m`.
fn span(m: &[u8], off: usize, len: usize) -> Option<&[u8]> {
    off.checked_add(len).and_then(|end| m.get(off..end))
}

/// An address key as stored: its width in bytes and how it reads.
trait Stored: Bits {
    const WIDTH: usize;
    fn read(m: &[u8], off: usize) -> Self;
    fn put(self, out: &mut Vec<u8>);
}

impl Stored for u32 {
    const WIDTH: usize = 4;
    #[inline]
    fn read(m: &[u8], off: usize) -> u32 {
        m.u32(off)
    }
    fn put(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
}

impl Stored for u128 {
    const WIDTH: usize = 16;
    #[inline]
    fn read(m: &[u8], off: usize) -> u128 {
        m.u128(off)
    }
    fn put(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
}

fn corrupt(why: &str) -> Error {
    Error::Snapshot(format!("corrupt mapped snapshot: {why}"))
}

// -- writing ------------------------------------------------------------------------------------

struct FamilyOut {
    dir: Vec<u8>,
    host_keys: Vec<u8>,
    host_slots: Vec<u8>,
    range_keys: Vec<u8>,
    range_lens: Vec<u8>,
    range_parents: Vec<u8>,
    range_slots: Vec<u8>,
    starts: Vec<u8>,
    innermost: Vec<u8>,
}

/// The slot word of one network's decisions, appending a run to `sets` when there are several.
fn slot_word(decs: &[Raw], sets: &mut Vec<u8>) -> u64 {
    match decs {
        [(_, _, tag, exp)] => (exp.min(&NEVER) << 16) | u64::from(*tag),
        _ => {
            let at = (sets.len() / 8) as u64;
            for &(_, _, tag, exp) in decs {
                sets.extend_from_slice(&((exp.min(NEVER) << 16) | u64::from(tag)).to_le_bytes());
            }
            (at << 32) | ((decs.len() as u64) << 16) | MANY
        }
    }
}

/// One decision: `(network key, prefix length, tag, expiry)`.
type Raw = (u128, u8, u16, u64);

fn family<K: Stored>(mut decisions: Vec<Raw>, sets: &mut Vec<u8>) -> FamilyOut {
    decisions.sort_unstable_by_key(|d| (d.1 != K::BITS, d.0, d.1));
    // Runs of one network: hosts first (by address), then ranges (by start, length).
    let mut hosts: Vec<(K, u8, &[Raw])> = Vec::new();
    let mut ranges: Vec<(K, u8, &[Raw])> = Vec::new();
    let mut i = 0;
    while i < decisions.len() {
        let (k, l) = (decisions[i].0, decisions[i].1);
        let mut j = i + 1;
        while j < decisions.len() && (decisions[j].0, decisions[j].1) == (k, l) {
            j += 1;
        }
        let run = (K::from_u128(k), l, &decisions[i..j]);
        if l == K::BITS {
            hosts.push(run);
        } else {
            ranges.push(run);
        }
        i = j;
    }
    let mut out = FamilyOut {
        dir: Vec::with_capacity(DIR * 4),
        host_keys: Vec::with_capacity(hosts.len() * K::WIDTH),
        host_slots: Vec::with_capacity(hosts.len() * 8),
        range_keys: Vec::new(),
        range_lens: Vec::new(),
        range_parents: Vec::new(),
        range_slots: Vec::new(),
        starts: Vec::new(),
        innermost: Vec::new(),
    };
    let mut next = 0usize;
    for b in 0..DIR {
        while next < hosts.len() && hosts[next].0.top16() < b {
            next += 1;
        }
        out.dir.extend_from_slice(&(next as u32).to_le_bytes());
    }
    for (k, _, decs) in &hosts {
        k.put(&mut out.host_keys);
        out.host_slots.extend_from_slice(&slot_word(decs, sets).to_le_bytes());
    }
    // Ranges nest or are disjoint: one sweep in (start, length) order finds each one's parent
    // and cuts the space into intervals named by their innermost range.
    fn interval<K: Stored>(start: u128, id: u32, out: &mut FamilyOut) {
        K::from_u128(start).put(&mut out.starts);
        out.innermost.extend_from_slice(&id.to_le_bytes());
    }
    let max: u128 = if K::BITS == 128 { u128::MAX } else { (1u128 << K::BITS) - 1 };
    let last_of =
        |s: u128, len: u8| if K::BITS - len >= 128 { u128::MAX } else { s | ((1u128 << (K::BITS - len)) - 1) };
    let mut stack: Vec<(u128, u32)> = Vec::new(); // open ranges: (last address, id)
    for (id, (k, len, decs)) in ranges.iter().enumerate() {
        let s = k.to_u128();
        while let Some(&(end, _)) = stack.last() {
            if end >= s {
                break;
            }
            stack.pop();
            if end < max {
                interval::<K>(end + 1, stack.last().map_or(NONE, |&(_, p)| p), &mut out);
            }
        }
        let parent = stack.last().map_or(NONE, |&(_, p)| p);
        interval::<K>(s, id as u32, &mut out);
        stack.push((last_of(s, *len), id as u32));
        k.put(&mut out.range_keys);
        out.range_lens.push(*len);
        out.range_parents.extend_from_slice(&parent.to_le_bytes());
        out.range_slots.extend_from_slice(&slot_word(decs, sets).to_le_bytes());
    }
    while let Some((end, _)) = stack.pop() {
        if end < max {
            interval::<K>(end + 1, stack.last().map_or(NONE, |&(_, p)| p), &mut out);
        }
    }
    dedupe_intervals::<K>(&mut out);
    out
}

/// Keeps the last of intervals starting at the same address (a range starting where its parent
/// does, or where the previous interval ended).
fn dedupe_intervals<K: Stored>(out: &mut FamilyOut) {
    let n = out.innermost.len() / 4;
    let (mut starts, mut ids) = (Vec::with_capacity(out.starts.len()), Vec::with_capacity(out.innermost.len()));
    for i in 0..n {
        let s = K::read(out.starts.as_slice(), i * K::WIDTH);
        let next = (i + 1 < n).then(|| K::read(out.starts.as_slice(), (i + 1) * K::WIDTH));
        if next == Some(s) {
            continue;
        }
        s.put(&mut starts);
        ids.extend_from_slice(&out.innermost[i * 4..i * 4 + 4]);
    }
    out.starts = starts;
    out.innermost = ids;
}

fn put_names(out: &mut Vec<u8>, names: &[String]) {
    out.extend_from_slice(&(names.len() as u32).to_le_bytes());
    for n in names {
        out.extend_from_slice(&(n.len() as u32).to_le_bytes());
        out.extend_from_slice(n.as_bytes());
    }
}

/// The mapped form of the decisions of `ix` active at `now`, with caller metadata.
pub fn encode(ix: &Index, now: u64, metadata: &[u8]) -> Vec<u8> {
    let mut names = Vec::new();
    for list in [ix.priorities(), ix.remediations(), ix.origins()] {
        put_names(&mut names, list);
    }
    // The index's own tags: every decision keeps its tag number.
    let tags = ix.tag_table();
    names.extend_from_slice(&(tags.len() as u32).to_le_bytes());
    for &(o, r) in tags {
        names.extend_from_slice(&o.to_le_bytes());
        names.push(r);
    }
    let mut sets = Vec::new();
    let (v4, v6) = (ix.active_raw(4, now), ix.active_raw(6, now));
    let decisions = (v4.len() + v6.len()) as u64;
    let f4 = family::<u32>(v4, &mut sets);
    let f6 = family::<u128>(v6, &mut sets);
    let mut sections: Vec<&[u8]> = vec![&names, metadata, &sets];
    for f in [&f4, &f6] {
        sections.extend([
            f.dir.as_slice(),
            &f.host_keys,
            &f.host_slots,
            &f.range_keys,
            &f.range_lens,
            &f.range_parents,
            &f.range_slots,
            &f.starts,
            &f.innermost,
        ]);
    }
    let align = |n: usize| n.div_ceil(8) * 8;
    let mut out =
        Vec::with_capacity(HEADER + SECTIONS * 16 + sections.iter().map(|s| align(s.len())).sum::<usize>() + 4);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&(SECTIONS as u32).to_le_bytes());
    out.extend_from_slice(&now.to_le_bytes());
    out.extend_from_slice(&decisions.to_le_bytes());
    let mut at = HEADER + SECTIONS * 16;
    for s in &sections {
        out.extend_from_slice(&(at as u64).to_le_bytes());
        out.extend_from_slice(&(s.len() as u64).to_le_bytes());
        at += align(s.len());
    }
    for s in &sections {
        out.extend_from_slice(s);
        out.resize(align(out.len()), 0);
    }
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

// -- reading ------------------------------------------------------------------------------------

/// Where one family's arrays lie in the file.
#[derive(Debug, Clone, Copy, Default)]
struct FamilyAt {
    dir: usize,
    hosts: usize,
    host_keys: usize,
    host_slots: usize,
    ranges: usize,
    range_keys: usize,
    range_lens: usize,
    range_parents: usize,
    range_slots: usize,
    intervals: usize,
    starts: usize,
    innermost: usize,
}

/// What opening a mapped file learnt: where everything is, and the names and ranks.
#[derive(Debug, Clone)]
pub struct Layout {
    v4: FamilyAt,
    v6: FamilyAt,
    sets: (usize, usize),
    metadata: (usize, usize),
    priorities: Vec<String>,
    remediations: Vec<String>,
    origins: Vec<String>,
    /// Tag -> (origin, remediation).
    tags: Vec<(u32, u8)>,
    /// Tag -> lookup key (`rank << 16 | tag`, as the in-memory index).
    tag_keys: Vec<Key>,
    /// Rank -> remediation id.
    rank_rem: Vec<u8>,
    written: u64,
    decisions: u64,
    size: usize,
}

struct NameReader<'a> {
    m: &'a [u8],
    pos: usize,
    end: usize,
}

impl NameReader<'_> {
    fn u32(&mut self) -> Result<u32> {
        if self.pos + 4 > self.end {
            return Err(corrupt("names section truncated"));
        }
        self.pos += 4;
        Ok(self.m.u32(self.pos - 4))
    }
    fn names(&mut self) -> Result<Vec<String>> {
        let n = self.u32()? as usize;
        if n > (self.end - self.pos) / 4 {
            return Err(corrupt("name count larger than the section"));
        }
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let len = self.u32()? as usize;
            if len > self.end - self.pos {
                return Err(corrupt("name longer than the section"));
            }
            let b = span(self.m, self.pos, len).ok_or_else(|| corrupt("name past the file's end"))?;
            self.pos += len;
            out.push(String::from_utf8(b.to_vec()).map_err(|_| corrupt("name is not UTF-8"))?);
        }
        Ok(out)
    }
}

impl Layout {
    /// Checks the header, the section table and the names of a mapped file (not its CRC).
    pub fn open(m: &[u8]) -> Result<Layout> {
        let size = m.len();
        if size < HEADER + SECTIONS * 16 + 4 || m.bytes::<8>(0) != *MAGIC {
            return Err(Error::Snapshot("not a capi_fast mapped snapshot (bad magic or too short)".into()));
        }
        let version = m.u32(8);
        if version != VERSION {
            return Err(Error::Snapshot(format!(
                "mapped snapshot format version {version}; this build reads {VERSION}"
            )));
        }
        if m.u32(12) as usize != SECTIONS {
            return Err(corrupt("section count"));
        }
        let mut at = [(0usize, 0usize); SECTIONS];
        for (i, s) in at.iter_mut().enumerate() {
            let (off, len) = (m.u64(HEADER + i * 16), m.u64(HEADER + i * 16 + 8));
            let end = off.checked_add(len).filter(|&e| e <= (size - 4) as u64);
            if end.is_none() || off % 8 != 0 {
                return Err(corrupt("a section lies outside the file"));
            }
            *s = (off as usize, len as usize);
        }
        let v4 = Self::family::<u32>(&at[3..12])?;
        let v6 = Self::family::<u128>(&at[12..21])?;
        if at[2].1 % 8 != 0 {
            return Err(corrupt("sets section size"));
        }
        let mut r = NameReader { m, pos: at[0].0, end: at[0].0 + at[0].1 };
        let priorities = r.names()?;
        let remediations = r.names()?;
        let origins = r.names()?;
        if remediations.len() > 255 {
            return Err(corrupt("more than 255 remediations"));
        }
        let n = r.u32()? as usize;
        if n == 0 || n > 0xFFFF || n > (r.end - r.pos) / 5 {
            return Err(corrupt("tag count"));
        }
        let mut tags = Vec::with_capacity(n);
        for _ in 0..n {
            let o = r.u32()?;
            let rem = m.u8(r.pos);
            r.pos += 1;
            if (o as usize >= origins.len() || rem as usize >= remediations.len()) && !tags.is_empty() {
                return Err(corrupt("a tag names an unknown origin or remediation"));
            }
            tags.push((o, rem));
        }
        let rank_rem = rank_order(&priorities, &remediations);
        let mut rem_rank = vec![0u16; rank_rem.len()];
        for (rank, &r) in rank_rem.iter().enumerate() {
            rem_rank[r as usize] = rank as u16;
        }
        let tag_keys = tags
            .iter()
            .enumerate()
            .map(|(t, &(_, r))| if t == 0 { NO_KEY } else { (Key::from(rem_rank[r as usize]) << 16) | t as Key })
            .collect();
        Ok(Layout {
            v4,
            v6,
            sets: at[2],
            metadata: at[1],
            priorities,
            remediations,
            origins,
            tags,
            tag_keys,
            rank_rem,
            written: m.u64(16),
            decisions: m.u64(24),
            size,
        })
    }

    fn family<K: Stored>(at: &[(usize, usize)]) -> Result<FamilyAt> {
        let w = K::WIDTH;
        let count = |(_, len): (usize, usize), item: usize| (len % item == 0).then_some(len / item);
        let hosts = count(at[1], w).filter(|&n| count(at[2], 8) == Some(n));
        let ranges = count(at[3], w)
            .filter(|&n| count(at[4], 1) == Some(n) && count(at[5], 4) == Some(n) && count(at[6], 8) == Some(n));
        let intervals = count(at[7], w).filter(|&n| count(at[8], 4) == Some(n));
        match (count(at[0], 4), hosts, ranges, intervals) {
            (Some(DIR), Some(hosts), Some(ranges), Some(intervals)) => Ok(FamilyAt {
                dir: at[0].0,
                hosts,
                host_keys: at[1].0,
                host_slots: at[2].0,
                ranges,
                range_keys: at[3].0,
                range_lens: at[4].0,
                range_parents: at[5].0,
                range_slots: at[6].0,
                intervals,
                starts: at[7].0,
                innermost: at[8].0,
            }),
            _ => Err(corrupt("a section's size does not match its item count")),
        }
    }

    /// The best key of a slot word at `now`.
    #[inline]
    fn slot_best(&self, m: &[u8], word: u64, now: u64) -> Key {
        let key = |w: u64| {
            let tag = (w & 0xFFFF) as usize;
            if w >> 16 > now {
                self.tag_keys.get(tag).copied().unwrap_or(NO_KEY)
            } else {
                NO_KEY
            }
        };
        if word & 0xFFFF != MANY {
            return key(word);
        }
        let (at, n) = ((word >> 32) as usize, ((word >> 16) & 0xFFFF) as usize);
        let base = self.sets.0;
        let words = self.sets.1 / 8;
        (at..at.saturating_add(n).min(words)).map(|i| key(m.u64(base + i * 8))).min().unwrap_or(NO_KEY)
    }

    fn best_in<K: Stored>(&self, m: &[u8], f: &FamilyAt, addr: K, now: u64) -> Key {
        let mut best = NO_KEY;
        // Single addresses: the directory narrows the search to the address's /16 (for IPv4).
        let b = addr.top16();
        let lo = (m.u32(f.dir + b * 4) as usize).min(f.hosts);
        let hi = (m.u32(f.dir + (b + 1) * 4) as usize).clamp(lo, f.hosts);
        let (mut a, mut z) = (lo, hi);
        while a < z {
            let mid = a + (z - a) / 2;
            let k = K::read(m, f.host_keys + mid * K::WIDTH);
            match k.cmp(&addr) {
                std::cmp::Ordering::Less => a = mid + 1,
                std::cmp::Ordering::Greater => z = mid,
                std::cmp::Ordering::Equal => {
                    best = self.slot_best(m, m.u64(f.host_slots + mid * 8), now);
                    break;
                }
            }
        }
        // Ranges: the last interval starting at or before the address, then up its parents.
        let (mut a, mut z) = (0usize, f.intervals);
        while a < z {
            let mid = a + (z - a) / 2;
            if K::read(m, f.starts + mid * K::WIDTH) <= addr {
                a = mid + 1;
            } else {
                z = mid;
            }
        }
        if a == 0 {
            return best;
        }
        let mut id = m.u32(f.innermost + (a - 1) * 4);
        for _ in 0..=K::BITS {
            if id == NONE || id as usize >= f.ranges {
                break;
            }
            let i = id as usize;
            best = best.min(self.slot_best(m, m.u64(f.range_slots + i * 8), now));
            id = m.u32(f.range_parents + i * 4);
        }
        best
    }

    /// The best key covering `addr` at `now` (as [`Index`]'s lookups minimise).
    pub fn best(&self, m: &[u8], addr: Addr, now: u64) -> Key {
        match addr {
            Addr::V4(a) => self.best_in(m, &self.v4, a, now),
            Addr::V6(a) => self.best_in(m, &self.v6, a, now),
        }
    }

    /// The remediation id answering `addr` at `now`, if any.
    pub fn lookup(&self, m: &[u8], addr: Addr, now: u64) -> Option<u8> {
        let key = self.best(m, addr, now);
        (key != NO_KEY).then(|| self.rank_rem.get((key >> 16) as usize).copied()).flatten()
    }

    /// (origin, remediation) of a tag.
    pub fn tag_parts(&self, tag: u16) -> (u32, u8) {
        self.tags.get(tag as usize).copied().unwrap_or((0, 0))
    }

    /// Remediation names by id.
    pub fn remediations(&self) -> &[String] {
        &self.remediations
    }

    /// Origin names by id.
    pub fn origins(&self) -> &[String] {
        &self.origins
    }

    /// The priority list the index was built with.
    pub fn priorities(&self) -> &[String] {
        &self.priorities
    }

    /// Decisions held: single addresses plus ranges, each counted once per prefix.
    pub fn prefixes(&self) -> usize {
        self.v4.hosts + self.v4.ranges + self.v6.hosts + self.v6.ranges
    }

    /// Decisions held (as the header says).
    pub fn decisions(&self) -> u64 {
        self.decisions
    }

    /// When the file was written (Unix ms).
    pub fn written(&self) -> u64 {
        self.written
    }

    /// The caller metadata.
    pub fn metadata(&self, m: &[u8]) -> Vec<u8> {
        span(m, self.metadata.0, self.metadata.1).map_or_else(Vec::new, <[u8]>::to_vec)
    }

    fn each_family<K: Stored>(&self, m: &[u8], f: &FamilyAt, mut push: impl FnMut(Net, u16, u64))
    where
        Net: From<(K, u8)>,
    {
        let mut words = |word: u64, net: Net| {
            if word & 0xFFFF != MANY {
                push(net, (word & 0xFFFF) as u16, word >> 16);
                return;
            }
            let (at, n) = ((word >> 32) as usize, ((word >> 16) & 0xFFFF) as usize);
            for i in at..at.saturating_add(n).min(self.sets.1 / 8) {
                let w = m.u64(self.sets.0 + i * 8);
                push(net, (w & 0xFFFF) as u16, w >> 16);
            }
        };
        for i in 0..f.hosts {
            let k = K::read(m, f.host_keys + i * K::WIDTH);
            words(m.u64(f.host_slots + i * 8), Net::from((k, K::BITS)));
        }
        for i in 0..f.ranges {
            let k = K::read(m, f.range_keys + i * K::WIDTH);
            words(m.u64(f.range_slots + i * 8), Net::from((k, m.u8(f.range_lens + i))));
        }
    }

    /// Rebuilds the in-memory index (a writer starting from its snapshot), with the metadata.
    /// Every decision is checked as the index checks its input.
    pub fn to_index(&self, m: &[u8]) -> Result<(Index, Vec<u8>)> {
        let mut ix = Index::new(&self.priorities).map_err(|e| corrupt(&e.to_string()))?;
        let mut tags: HashMap<u16, u16> = HashMap::new();
        let mut ops = Vec::with_capacity(self.prefixes().min(self.decisions as usize));
        let mut bad = None;
        let limit = self.decisions;
        let mut push = |net: Net, tag: u16, exp: u64| {
            if ops.len() as u64 >= limit {
                bad = Some("more decisions than the header's count");
                return;
            }
            let valid = match net {
                Net::V4(k, l) => l <= 32 && k & u32::mask(l) == k,
                Net::V6(k, l) => l <= 128 && k & u128::mask(l) == k,
            };
            let Some(&(o, r)) = self.tags.get(tag as usize).filter(|_| tag != 0 && valid) else {
                bad = Some("a decision with a bad network or tag");
                return;
            };
            let t = match tags.get(&tag) {
                Some(&t) => t,
                None => match ix.tag(&self.origins[o as usize], &self.remediations[r as usize]) {
                    Ok(t) => {
                        tags.insert(tag, t);
                        t
                    }
                    Err(_) => {
                        bad = Some("a bad origin or remediation name");
                        return;
                    }
                },
            };
            ops.push(Op::Add(net, t, exp.min(NEVER)));
        };
        self.each_family::<u32>(m, &self.v4, &mut push);
        self.each_family::<u128>(m, &self.v6, &mut push);
        if let Some(why) = bad {
            return Err(corrupt(why));
        }
        if ops.len() as u64 != self.decisions {
            return Err(corrupt("the decisions do not add up to the header's count"));
        }
        ix.reserve_v4_hosts(self.v4.hosts);
        ix.apply(&ops);
        Ok((ix, self.metadata(m)))
    }
}

impl From<(u32, u8)> for Net {
    fn from((k, l): (u32, u8)) -> Net {
        Net::V4(k, l)
    }
}

impl From<(u128, u8)> for Net {
    fn from((k, l): (u128, u8)) -> Net {
        Net::V6(k, l)
    }
}

/// Whether the file's CRC matches its content (reads every byte: O(size)).
pub fn verify(m: &[u8], layout: &Layout) -> bool {
    let body = layout.size - 4;
    span(m, 0, body).is_some_and(|b| crc32fast::hash(b) == m.u32(body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::{parse_addr, parse_net};

    fn index(items: &[(&str, &str, &str, u64)]) -> Index {
        let mut ix = Index::new(&["ban".to_string(), "captcha".to_string()]).expect("index");
        let ops: Vec<Op> = items
            .iter()
            .map(|&(net, origin, rem, exp)| {
                let tag = ix.tag(origin, rem).expect("tag");
                Op::Add(parse_net(net).expect("net").0, tag, exp)
            })
            .collect();
        ix.apply(&ops);
        ix
    }

    #[test]
    fn answers_as_the_index_does_and_rebuilds_it() {
        let ix = index(&[
            ("10.0.0.0/8", "CAPI", "captcha", 500),
            ("10.1.0.0/16", "cscli", "ban", 300),
            ("10.1.2.3", "CAPI", "captcha", 900),
            ("10.1.2.3", "lists:tor", "ban", 200),
            ("192.0.2.7", "CAPI", "ban", 900),
            ("0.0.0.0/0", "cscli", "allow", 900),
            ("2001:db8::/32", "CAPI", "ban", 900),
            ("2001:db8::1", "CAPI", "captcha", 900),
            ("::ffff:0:0/96", "CAPI", "captcha", 900),
        ]);
        let bytes = encode(&ix, 100, b"meta");
        let m = bytes.as_slice();
        let layout = Layout::open(m).expect("open");
        assert!(verify(m, &layout));
        for now in [100, 250, 400, 600, 950] {
            for a in [
                "10.1.2.3",
                "10.1.2.4",
                "10.2.0.1",
                "11.0.0.1",
                "192.0.2.7",
                "192.0.2.8",
                "0.0.0.0",
                "255.255.255.255",
                "2001:db8::1",
                "2001:db8::2",
                "2001:db9::1",
                "::ffff:10.0.0.1",
                "::",
            ] {
                let addr = parse_addr(a).expect("addr");
                assert_eq!(layout.lookup(m, addr, now), ix.lookup(addr, now), "{a} at {now}");
            }
        }
        let (back, meta) = layout.to_index(m).expect("rebuild");
        assert_eq!((back.len(), meta.as_slice()), (ix.len(), &b"meta"[..]));
    }

    #[test]
    fn damage_is_refused_or_harmless() {
        let ix = index(&[("10.1.2.3", "CAPI", "ban", 900), ("10.0.0.0/8", "CAPI", "captcha", 900)]);
        let bytes = encode(&ix, 100, b"");
        assert!(Layout::open(&bytes[..bytes.len() / 2]).is_err(), "truncated");
        assert!(Layout::open(&bytes[..10]).is_err());
        let mut v = bytes.clone();
        v[8] = 9;
        assert!(Layout::open(v.as_slice()).is_err(), "version");
        // Any byte flipped: refused at open, or answers without panicking, and the CRC tells.
        let addr = parse_addr("10.1.2.3").expect("addr");
        // Every byte of the header, names and small sections; a sample of the directories.
        let edge = HEADER + SECTIONS * 16 + 256;
        for i in (0..bytes.len()).filter(|&i| i < edge || i % 61 == 0 || i + 512 > bytes.len()) {
            let mut v = bytes.clone();
            v[i] ^= 0xA5;
            let m = v.as_slice();
            if let Ok(layout) = Layout::open(m) {
                let _ = layout.lookup(m, addr, 200);
                let _ = layout.to_index(m);
                assert!(!verify(m, &layout), "byte {i} changed, CRC still matches");
            }
        }
    }
}
