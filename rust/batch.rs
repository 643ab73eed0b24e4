//! A batch as callers give it (values already parsed), and the rules that turn it into index
//! operations: removals first; an add already expired removes the decision, except a stream's,
//! which changes nothing; a stream never shortens a decision it holds; a stream type the caller
//! does not keep becomes the fallback; a pair the index cannot hold is skipped (or, strict, an
//! error). The Python binding only converts arguments into a [`Batch`] and its [`Outcome`] back.

use crate::error::Result;
use crate::index::{AddRule, Index, Op};
use crate::parse::Net;
use crate::slot::NEVER;
use crate::stream::{stored_type, StreamOps};
use hashbrown::HashMap;
use std::hash::Hash;

/// Distinct values, each given the next id on first sight: items of a million-item batch hold
/// a `u32` instead of strings (which would also leave the heap fragmented).
#[derive(Debug, Clone)]
pub struct Interner<K> {
    items: Vec<K>,
    ids: HashMap<K, u32>,
    last: Option<u32>,
}

impl<K> Default for Interner<K> {
    fn default() -> Self {
        Interner { items: Vec::new(), ids: HashMap::new(), last: None }
    }
}

impl<K: Hash + Eq + Clone> Interner<K> {
    /// The id of the value `is` recognises, made by `make` on first sight (consecutive items
    /// usually repeat the last value, which is then found without building it).
    pub fn id(&mut self, is: impl Fn(&K) -> bool, make: impl FnOnce() -> K) -> u32 {
        if let Some(i) = self.last {
            if is(&self.items[i as usize]) {
                return i;
            }
        }
        let key = make();
        let i = match self.ids.get(&key) {
            Some(&i) => i,
            None => {
                let i = self.items.len() as u32;
                self.items.push(key.clone());
                self.ids.insert(key, i);
                i
            }
        };
        self.last = Some(i);
        i
    }

    /// The values by id.
    pub fn items(&self) -> &[K] {
        &self.items
    }
}

/// Milliseconds since the epoch for `t` seconds, floored; negative and NaN give 0, and the
/// result stays below [`NEVER`].
pub fn ms(t: f64) -> u64 {
    // `as` truncates toward zero (the floor, for t >= 0) and saturates: negatives and NaN give 0.
    ((t * 1000.0) as u64).min(NEVER - 1)
}

/// The expiry in ms of a decision made at `now` (seconds) lasting `ttl` seconds (None or
/// infinity: never); None for a NaN ttl.
pub fn expiry(now: f64, ttl: Option<f64>) -> Option<u64> {
    match ttl {
        None => Some(NEVER),
        Some(t) if t.is_nan() => None,
        Some(t) if t == f64::INFINITY => Some(NEVER),
        Some(t) => Some(ms(now + t)),
    }
}

/// One add: its network, whether host bits were cleared, its (origin, remediation) pair, its
/// expiry and how it meets the same decision already held.
#[derive(Debug, Clone, Copy)]
pub struct AddItem {
    /// The network (an address is a full-length one).
    pub net: Net,
    /// Whether host bits were cleared when it was read.
    pub normalized: bool,
    /// Id in the batch's pairs.
    pub pair: u32,
    /// Expiry, ms since the epoch.
    pub exp: u64,
    /// How it meets the same decision already held.
    pub rule: AddRule,
}

/// One removal: the decisions on exactly `net`, of this origin and remediation (None: any).
#[derive(Debug, Clone)]
pub struct RemoveItem {
    /// Exactly this network.
    pub net: Net,
    /// Only this origin, or any.
    pub origin: Option<String>,
    /// Only this remediation, or any.
    pub remediation: Option<String>,
}

/// What a batch did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Decisions that were not held before.
    pub added: usize,
    /// Decisions already held whose expiry was replaced (or, from a stream, kept or extended).
    pub refreshed: usize,
    /// Decisions removed (including ones re-added already expired).
    pub removed: usize,
    /// Items skipped: malformed ones counted by the caller, and adds whose pair the index cannot hold.
    pub skipped: usize,
    /// Adds applied whose network had host bits cleared.
    pub normalized: usize,
}

/// Removals and additions to apply as one atomic batch.
#[derive(Debug, Default)]
pub struct Batch {
    /// Additions, applied after the removals.
    pub adds: Vec<AddItem>,
    /// Removals.
    pub removes: Vec<RemoveItem>,
    pairs: Interner<(String, String)>,
    /// Malformed items the caller skipped, reported in the outcome.
    pub skipped: usize,
}

impl Batch {
    /// The id of (origin, remediation) in this batch.
    pub fn pair(&mut self, origin: &str, remediation: &str) -> u32 {
        self.pairs.id(|(o, r)| o == origin && r == remediation, || (origin.to_owned(), remediation.to_owned()))
    }

    /// Adds a stream answer's operations, read at `now` (seconds): its removals, then its adds
    /// under [`AddRule::Extend`]. A type not in `kept` becomes `fallback` (without a fallback
    /// every type is kept as it is); its skipped items are counted.
    pub fn extend_from_stream(&mut self, ops: &StreamOps, kept: &[String], fallback: Option<&str>, now: f64) {
        let names: Vec<(&str, Option<&str>)> = ops
            .pairs
            .items()
            .iter()
            .map(|(o, k)| (o.as_str(), k.as_deref().map(|k| stored_type(k, kept, fallback))))
            .collect();
        for &(net, pair) in &ops.removes {
            let (o, k) = names[pair as usize];
            self.removes.push(RemoveItem { net, origin: Some(o.to_owned()), remediation: k.map(str::to_owned) });
        }
        // Interned on first use: a removal's pair may have no type, which no add carries.
        let mut ids: Vec<Option<u32>> = vec![None; names.len()];
        self.adds.reserve(ops.adds.len());
        for &(net, normalized, pair, ttl) in &ops.adds {
            let id = match ids[pair as usize] {
                Some(id) => id,
                None => {
                    let (o, k) = names[pair as usize];
                    let id = self.pair(o, k.unwrap_or_default());
                    ids[pair as usize] = Some(id);
                    id
                }
            };
            // A stream's ttl comes from a Go duration: never NaN.
            let exp = expiry(now, Some(ttl)).unwrap_or(NEVER);
            self.adds.push(AddItem { net, normalized, pair: id, exp, rule: AddRule::Extend });
        }
        self.skipped += ops.skipped;
    }

    /// Operations in the batch, about.
    pub fn size(&self) -> usize {
        self.adds.len() + self.removes.len()
    }

    /// Applies the batch to `ix` at `now` (ms) as one batch, removals first.
    ///
    /// # Errors
    /// With `strict`, a pair the index cannot hold (a name too long, too many distinct pairs);
    /// nothing is applied then.
    pub fn apply(self, ix: &mut Index, now: u64, strict: bool) -> Result<Outcome> {
        let mut ops = Vec::with_capacity(self.size());
        for r in &self.removes {
            if let Some(f) = ix.filter(r.origin.as_deref(), r.remediation.as_deref()) {
                ops.push(Op::Remove(r.net, f));
            }
        }
        let tags = ix.tags(self.pairs.items().iter().map(|(o, r)| (o.as_str(), r.as_str())), strict)?;
        let mut out = Outcome { skipped: self.skipped, ..Outcome::default() };
        let mut v4_hosts = 0;
        for a in &self.adds {
            let Some(tag) = tags[a.pair as usize] else {
                out.skipped += 1; // an origin or remediation the index cannot hold
                continue;
            };
            // None: an expired stream add, which changes nothing and counts as nothing.
            if let Some(op) = ix.add_op(a.net, tag, a.exp, now, a.rule) {
                out.normalized += usize::from(a.normalized);
                v4_hosts += usize::from(matches!(op, Op::Add(Net::V4(_, 32), ..) | Op::Extend(Net::V4(_, 32), ..)));
                ops.push(op);
            }
        }
        if v4_hosts > 4096 {
            ix.reserve_v4_hosts(v4_hosts);
        }
        let before = ix.len();
        let (added, removed) = ix.apply(&ops);
        ix.note_normalized(out.normalized as u64);
        let adds_applied = ops.iter().filter(|o| matches!(o, Op::Add(..) | Op::Extend(..))).count();
        debug_assert_eq!(ix.len(), before + added - removed);
        out.added = added;
        out.refreshed = adds_applied - added;
        out.removed = removed;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::{parse_addr, parse_net};
    use crate::stream::parse_stream;

    const NOW: f64 = 1_000_000.0;

    fn index() -> Index {
        Index::new(&["ban".to_owned(), "captcha".to_owned()]).expect("index")
    }

    fn add(b: &mut Batch, value: &str, remediation: &str, ttl: f64, rule: AddRule) {
        let (net, normalized) = parse_net(value).expect("net");
        let pair = b.pair("CAPI", remediation);
        let exp = expiry(NOW, Some(ttl)).expect("ttl");
        b.adds.push(AddItem { net, normalized, pair, exp, rule });
    }

    fn answer(ix: &Index, ip: &str) -> Option<String> {
        ix.lookup(parse_addr(ip).expect("addr"), ms(NOW)).map(|r| ix.remediations()[r as usize].clone())
    }

    #[test]
    fn an_expired_re_add_removes_and_a_held_one_refreshes() {
        let mut ix = index();
        let mut b = Batch::default();
        add(&mut b, "192.0.2.1", "ban", 60.0, AddRule::Replace);
        add(&mut b, "192.0.2.2", "ban", 60.0, AddRule::Replace);
        assert_eq!(b.apply(&mut ix, ms(NOW), true).expect("apply").added, 2);
        let mut b = Batch::default();
        add(&mut b, "192.0.2.1", "ban", -1.0, AddRule::Replace); // the caller says it is over
        add(&mut b, "192.0.2.2", "ban", 120.0, AddRule::Replace);
        let out = b.apply(&mut ix, ms(NOW), true).expect("apply");
        assert_eq!((out.added, out.refreshed, out.removed), (0, 1, 1));
        assert_eq!(answer(&ix, "192.0.2.1"), None);
        assert_eq!(answer(&ix, "192.0.2.2").as_deref(), Some("ban"));
    }

    #[test]
    fn an_expired_stream_add_changes_nothing_and_counts_nowhere() {
        let mut ix = index();
        let mut b = Batch::default();
        add(&mut b, "192.0.2.9/24", "ban", 60.0, AddRule::Replace);
        b.apply(&mut ix, ms(NOW), true).expect("apply");
        let mut b = Batch::default();
        add(&mut b, "192.0.2.9/24", "ban", -1.0, AddRule::Extend); // normalized, and expired
        let out = b.apply(&mut ix, ms(NOW), true).expect("apply");
        assert_eq!(out, Outcome::default(), "not removed, not refreshed, not normalized");
        assert_eq!(answer(&ix, "192.0.2.200").as_deref(), Some("ban"));
    }

    #[test]
    fn stream_types_not_kept_become_the_fallback_adds_and_removals_alike() {
        let body = br#"{"new": [{"value": "192.0.2.1", "scope": "Ip", "type": "mfa", "duration": "1h", "origin": "cscli"},
                                {"value": "192.0.2.2", "scope": "Ip", "type": "ban", "duration": "1h", "origin": "cscli"}],
                        "deleted": [{"value": "192.0.2.3", "scope": "Ip", "type": "mfa", "duration": "1h", "origin": "cscli"}]}"#;
        let ops = parse_stream(body, "CAPI").expect("stream");
        let kept = ["ban".to_owned(), "captcha".to_owned()];
        let mut b = Batch::default();
        b.extend_from_stream(&ops, &kept, Some("captcha"), NOW);
        assert_eq!(b.removes[0].remediation.as_deref(), Some("captcha"), "a removal's type is mapped too");
        let mut ix = index();
        let out = b.apply(&mut ix, ms(NOW), true).expect("apply");
        assert_eq!(out.added, 2);
        assert_eq!(answer(&ix, "192.0.2.1").as_deref(), Some("captcha"));
        assert_eq!(answer(&ix, "192.0.2.2").as_deref(), Some("ban"));
        let mut b = Batch::default();
        b.extend_from_stream(&ops, &kept, None, NOW); // no fallback: every type is kept
        let mut ix = Index::new(&["ban".to_owned(), "captcha".to_owned(), "mfa".to_owned()]).expect("index");
        b.apply(&mut ix, ms(NOW), true).expect("apply");
        assert_eq!(answer(&ix, "192.0.2.1").as_deref(), Some("mfa"));
    }

    #[test]
    fn a_stream_keeps_the_later_expiry_of_a_decision_given_twice() {
        let body = br#"{"new": [{"value": "192.0.2.1", "scope": "Ip", "type": "ban", "duration": "2h"},
                                {"value": "192.0.2.1", "scope": "Ip", "type": "ban", "duration": "1h"}]}"#;
        let ops = parse_stream(body, "CAPI").expect("stream");
        let mut b = Batch::default();
        b.extend_from_stream(&ops, &[], None, NOW);
        let mut ix = index();
        let out = b.apply(&mut ix, ms(NOW), true).expect("apply");
        assert_eq!((out.added, out.refreshed), (1, 1));
        let held = ix.lookup(parse_addr("192.0.2.1").expect("addr"), ms(NOW + 5400.0));
        assert!(held.is_some(), "the 2 h copy holds past the 1 h one");
    }

    #[test]
    fn a_pair_the_index_cannot_hold_is_skipped_unless_strict() {
        let long = "o".repeat(300);
        let build = || {
            let mut b = Batch::default();
            let (net, _) = parse_net("192.0.2.1").expect("net");
            let pair = b.pair(&long, "ban");
            b.adds.push(AddItem { net, normalized: false, pair, exp: NEVER, rule: AddRule::Replace });
            add(&mut b, "192.0.2.2", "ban", 60.0, AddRule::Replace);
            b.skipped = 3; // malformed items the caller skipped
            b
        };
        let mut ix = index();
        let out = build().apply(&mut ix, ms(NOW), false).expect("lenient");
        assert_eq!((out.added, out.skipped), (1, 4));
        assert!(build().apply(&mut index(), ms(NOW), true).is_err());
    }

    #[test]
    fn the_interner_gives_one_id_per_value() {
        let mut b = Batch::default();
        let a = b.pair("CAPI", "ban");
        let c = b.pair("CAPI", "captcha");
        assert_eq!((b.pair("CAPI", "ban"), b.pair("CAPI", "captcha")), (a, c));
        assert_ne!(a, c);
        assert_eq!(expiry(NOW, None), Some(NEVER));
        assert_eq!(expiry(NOW, Some(f64::NAN)), None);
        assert_eq!(expiry(NOW, Some(1.5)), Some(1_000_001_500));
    }
}
