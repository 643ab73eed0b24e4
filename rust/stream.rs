//! Reading a CAPI (v3 grouped, v2 flat) or LAPI decisions-stream answer straight from its bytes.
//!
//! The answer is read in one pass with no intermediate JSON tree: each decision becomes an
//! operation as soon as its item has been read. A bad item (wrong scope, missing or non-string
//! field, bad duration, bad IP) is skipped and counted; only a body that is not JSON, or not a
//! JSON object, is an error. The rules match `capi_fast.stream.parse_stream`, which tests
//! compare this parser with.

use crate::batch::Interner;
use crate::error::Error;
use crate::parse::{parse_net, Net};
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::fmt;

/// The operations of one stream answer.
#[derive(Debug, Default, Clone)]
pub struct StreamOps {
    /// Distinct (origin, type) pairs; a removal's type may be absent.
    pub pairs: Interner<(String, Option<String>)>,
    /// Adds: network, host bits were cleared, pair, ttl in seconds.
    pub adds: Vec<(Net, bool, u32, f64)>,
    /// Removals: network, pair.
    pub removes: Vec<(Net, u32)>,
    /// Items skipped as malformed.
    pub skipped: usize,
    /// The raw JSON of the answer's `links` member, when present.
    pub links: Option<Vec<u8>>,
}

impl StreamOps {
    fn pair(&mut self, origin: &str, kind: Option<&str>) -> u32 {
        self.pairs.id(|(o, k)| o == origin && k.as_deref() == kind, || (origin.to_owned(), kind.map(str::to_owned)))
    }
}

/// The remediation a stream decision of type `kind` is stored as: `kind` itself when it is one
/// of `kept` (or when there is no `fallback`), else `fallback`. The engine keeps "allow" among
/// its priorities for its own allowlists but not among the stream types it trusts, so a LAPI
/// "allow" decision becomes the fallback instead of lifting bans.
pub fn stored_type<'a>(kind: &'a str, kept: &[String], fallback: Option<&'a str>) -> &'a str {
    match fallback {
        Some(f) if !kept.iter().any(|k| k == kind) => f,
        _ => kind,
    }
}

/// Seconds in a Go duration (`"147h3m2.5s"`, `"-1s"`, `"500ms"`), or None when it is not one.
pub fn parse_go_duration(text: &str) -> Option<f64> {
    let (negative, mut rest) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    if rest.is_empty() {
        return None;
    }
    let mut total = 0.0f64;
    while !rest.is_empty() {
        let b = rest.as_bytes();
        let int = b.iter().take_while(|c| c.is_ascii_digit()).count();
        let mut end = int;
        let mut frac = 0;
        if b.get(end) == Some(&b'.') {
            frac = b[end + 1..].iter().take_while(|c| c.is_ascii_digit()).count();
            end += 1 + frac;
        }
        if int == 0 && frac == 0 {
            return None;
        }
        let number: f64 = rest[..end].parse().ok()?;
        rest = &rest[end..];
        let (unit, len) = if rest.starts_with("ns") {
            (1e-9, 2)
        } else if rest.starts_with("us") {
            (1e-6, 2)
        } else if rest.starts_with("µs") {
            (1e-6, "µs".len())
        } else if rest.starts_with("ms") {
            (1e-3, 2)
        } else if rest.starts_with('s') {
            (1.0, 1)
        } else if rest.starts_with('m') {
            (60.0, 1)
        } else if rest.starts_with('h') {
            (3600.0, 1)
        } else {
            return None;
        };
        total += number * unit;
        rest = &rest[len..];
    }
    Some(if negative { -total } else { total })
}

/// Reads a stream answer; `origin` is given to decisions that carry none (v3 has none).
///
/// # Errors
/// [`Error::Stream`] for a body that is not JSON, or not a JSON object.
pub fn parse_stream(body: &[u8], origin: &str) -> crate::error::Result<StreamOps> {
    let mut out = StreamOps::default();
    let mut de = serde_json::Deserializer::from_slice(body);
    de.deserialize_any(DocSeed { out: &mut out, origin })
        .and_then(|()| de.end())
        .map_err(|e| Error::Stream(format!("the decisions stream is not valid JSON: {e}")))?;
    Ok(out)
}

/// A member read leniently: a string or anything else; never a deserialisation error.
enum Leaf<'a> {
    Missing,
    Null,
    Str(Cow<'a, str>),
    Other,
}

impl<'a> Leaf<'a> {
    fn text(&self) -> Option<&str> {
        match self {
            Leaf::Str(s) => Some(s),
            _ => None,
        }
    }

    fn scope_ok(&self) -> bool {
        self.text().is_some_and(|s| s.eq_ignore_ascii_case("ip") || s.eq_ignore_ascii_case("range"))
    }
}

struct LeafVisitor;

impl<'de> Visitor<'de> for LeafVisitor {
    type Value = Leaf<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Leaf<'de>, E> {
        Ok(Leaf::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Leaf<'de>, E> {
        Ok(Leaf::Str(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E>(self, v: String) -> Result<Leaf<'de>, E> {
        Ok(Leaf::Str(Cow::Owned(v)))
    }
    fn visit_unit<E>(self) -> Result<Leaf<'de>, E> {
        Ok(Leaf::Null)
    }
    fn visit_bool<E>(self, _: bool) -> Result<Leaf<'de>, E> {
        Ok(Leaf::Other)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Leaf<'de>, E> {
        Ok(Leaf::Other)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Leaf<'de>, E> {
        Ok(Leaf::Other)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Leaf<'de>, E> {
        Ok(Leaf::Other)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Leaf<'de>, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Leaf::Other)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Leaf<'de>, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Leaf::Other)
    }
}

impl<'de> Deserialize<'de> for Leaf<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(LeafVisitor)
    }
}

/// The members this parser reads.
enum Member {
    New,
    Deleted,
    Links,
    Decisions,
    Scope,
    Value,
    Type,
    Origin,
    Duration,
    Other,
}

impl<'de> Deserialize<'de> for Member {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Member;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a member name")
            }
            fn visit_str<E>(self, v: &str) -> Result<Member, E> {
                Ok(match v {
                    "new" => Member::New,
                    "deleted" => Member::Deleted,
                    "links" => Member::Links,
                    "decisions" => Member::Decisions,
                    "scope" => Member::Scope,
                    "value" => Member::Value,
                    "type" => Member::Type,
                    "origin" => Member::Origin,
                    "duration" => Member::Duration,
                    _ => Member::Other,
                })
            }
        }
        d.deserialize_str(V)
    }
}

/// Implements the non-container visits of a visitor as `self.$method()`.
macro_rules! ignore_scalars {
    ($value:ty, $method:ident) => {
        fn visit_str<E>(self, _: &str) -> Result<$value, E> {
            Ok(self.$method())
        }
        fn visit_unit<E>(self) -> Result<$value, E> {
            Ok(self.$method())
        }
        fn visit_bool<E>(self, _: bool) -> Result<$value, E> {
            Ok(self.$method())
        }
        fn visit_i64<E>(self, _: i64) -> Result<$value, E> {
            Ok(self.$method())
        }
        fn visit_u64<E>(self, _: u64) -> Result<$value, E> {
            Ok(self.$method())
        }
        fn visit_f64<E>(self, _: f64) -> Result<$value, E> {
            Ok(self.$method())
        }
    };
}

struct DocSeed<'s> {
    out: &'s mut StreamOps,
    origin: &'s str,
}

impl<'de> DeserializeSeed<'de> for DocSeed<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for DocSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<Member>()? {
            match key {
                Member::New => map.next_value_seed(ListSeed { out: self.out, origin: self.origin, new: true })?,
                Member::Deleted => map.next_value_seed(ListSeed { out: self.out, origin: self.origin, new: false })?,
                Member::Links => {
                    let raw: &RawValue = map.next_value()?;
                    self.out.links = Some(raw.get().as_bytes().to_vec());
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}

/// The `new` or `deleted` list; anything but a list counts as empty.
struct ListSeed<'s> {
    out: &'s mut StreamOps,
    origin: &'s str,
    new: bool,
}

impl<'de> DeserializeSeed<'de> for ListSeed<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ListSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of decisions")
    }
    ignore_scalars!((), ignore);
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(ItemSeed { out: &mut *self.out, origin: self.origin, new: self.new })?.is_some() {}
        Ok(())
    }
}

impl ListSeed<'_> {
    fn ignore(self) {}
}

/// One element of `new` or `deleted`: a v3 group (it has `decisions`) or a flat decision.
struct ItemSeed<'s> {
    out: &'s mut StreamOps,
    origin: &'s str,
    new: bool,
}

impl<'de> DeserializeSeed<'de> for ItemSeed<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl ItemSeed<'_> {
    fn bad(self) {
        self.out.skipped += 1;
    }
}

/// A v3 group's decisions, read before its scope may be known.
enum Group {
    NotList,
    /// Added decisions (network, normalised, ttl) or deleted ones (ttl unused); None is a bad one.
    List(Vec<Option<(Net, bool, f64)>>),
}

impl<'de> Visitor<'de> for ItemSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a decision or a group of decisions")
    }
    ignore_scalars!((), bad);
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        self.out.skipped += 1;
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let (mut scope, mut value, mut kind, mut origin, mut duration) =
            (Leaf::Missing, Leaf::Missing, Leaf::Missing, Leaf::Missing, Leaf::Missing);
        let mut group: Option<Group> = None;
        while let Some(key) = map.next_key::<Member>()? {
            match key {
                Member::Decisions => group = Some(map.next_value_seed(GroupSeed { new: self.new })?),
                Member::Scope => scope = map.next_value()?,
                Member::Value => value = map.next_value()?,
                Member::Type => kind = map.next_value()?,
                Member::Origin => origin = map.next_value()?,
                Member::Duration => duration = map.next_value()?,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        let out = self.out;
        if let Some(group) = group {
            let Group::List(items) = group else {
                out.skipped += usize::from(!scope.scope_ok());
                return Ok(());
            };
            if !scope.scope_ok() {
                out.skipped += items.len();
                return Ok(());
            }
            let pair = out.pair(self.origin, self.new.then_some("ban"));
            for item in items {
                match item {
                    Some((net, norm, ttl)) if self.new => out.adds.push((net, norm, pair, ttl)),
                    Some((net, _, _)) => out.removes.push((net, pair)),
                    None => out.skipped += 1,
                }
            }
            return Ok(());
        }
        let origin = match &origin {
            Leaf::Missing | Leaf::Null => self.origin,
            Leaf::Str(s) if s.is_empty() => self.origin,
            Leaf::Str(s) => s,
            Leaf::Other => {
                out.skipped += 1;
                return Ok(());
            }
        };
        let net = value.text().and_then(|v| parse_net(v).ok());
        if !scope.scope_ok() {
            out.skipped += 1;
        } else if self.new {
            let ttl = duration.text().and_then(parse_go_duration);
            match (net, kind.text(), ttl) {
                (Some((net, norm)), Some(kind), Some(ttl)) => {
                    let pair = out.pair(origin, Some(kind));
                    out.adds.push((net, norm, pair, ttl));
                }
                _ => out.skipped += 1,
            }
        } else {
            let kind = match &kind {
                Leaf::Missing | Leaf::Null => Ok(None),
                Leaf::Str(s) => Ok(Some(&**s)),
                Leaf::Other => Err(()),
            };
            match (net, kind) {
                (Some((net, _)), Ok(kind)) => {
                    let pair = out.pair(origin, kind);
                    out.removes.push((net, pair));
                }
                _ => out.skipped += 1,
            }
        }
        Ok(())
    }
}

/// A v3 group's `decisions`: objects with value and duration (new) or value strings (deleted).
struct GroupSeed {
    new: bool,
}

impl<'de> DeserializeSeed<'de> for GroupSeed {
    type Value = Group;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Group, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for GroupSeed {
    type Value = Group;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of decisions")
    }
    ignore_scalars!(Group, not_list);
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Group, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Group::NotList)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Group, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        if self.new {
            while let Some(d) = seq.next_element::<GroupDecision>()? {
                items.push(d.0);
            }
        } else {
            while let Some(v) = seq.next_element::<Leaf>()? {
                items.push(v.text().and_then(|v| parse_net(v).ok()).map(|(net, norm)| (net, norm, 0.0)));
            }
        }
        Ok(Group::List(items))
    }
}

impl GroupSeed {
    fn not_list(self) -> Group {
        Group::NotList
    }
}

/// One `{"value", "duration"}` of a v3 group; None when malformed.
struct GroupDecision(Option<(Net, bool, f64)>);

impl<'de> Deserialize<'de> for GroupDecision {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl V {
            fn bad(self) -> GroupDecision {
                GroupDecision(None)
            }
        }
        impl<'de> Visitor<'de> for V {
            type Value = GroupDecision;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a decision")
            }
            ignore_scalars!(GroupDecision, bad);
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<GroupDecision, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(GroupDecision(None))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<GroupDecision, A::Error> {
                let (mut value, mut duration) = (Leaf::Missing, Leaf::Missing);
                while let Some(key) = map.next_key::<Member>()? {
                    match key {
                        Member::Value => value = map.next_value()?,
                        Member::Duration => duration = map.next_value()?,
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                let ttl = duration.text().and_then(parse_go_duration);
                let net = value.text().and_then(|v| parse_net(v).ok());
                Ok(GroupDecision(match (net, ttl) {
                    (Some((net, norm)), Some(ttl)) => Some((net, norm, ttl)),
                    _ => None,
                }))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("24h"), Some(86400.0));
        assert_eq!(parse_go_duration("1h30m"), Some(5400.0));
        assert_eq!(parse_go_duration("147h3m2.5s"), Some(147.0 * 3600.0 + 180.0 + 2.5));
        assert_eq!(parse_go_duration("-1s"), Some(-1.0));
        assert_eq!(parse_go_duration("500ms"), Some(0.5));
        assert_eq!(parse_go_duration("1.5µs"), Some(1.5e-6));
        assert_eq!(parse_go_duration(".5s"), Some(0.5));
        assert_eq!(parse_go_duration("1.s"), Some(1.0));
        for bad in ["", "-", "1", "h", "1x", "1h-1m", ".s", "1.2.3s", "1hh", " 1s", "1s "] {
            assert_eq!(parse_go_duration(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn v3_groups_and_bad_items() {
        let body = br#"{"new":[{"scenario":"a/b","scope":"ip","decisions":[
              {"value":"192.0.2.1","duration":"1h"},{"value":"nope","duration":"1h"},
              {"value":"10.1.2.3/8","duration":"2h"},{"value":"192.0.2.2","duration":"soon"}, 5]},
            {"scope":"country","decisions":[{"value":"FR","duration":"1h"}]}, 7],
          "deleted":[{"scope":"Range","decisions":["10.0.0.0/8", 3]}],
          "links":{"blocklists":[{"name":"x"}]}}"#;
        let ops = parse_stream(body, "CAPI").expect("valid");
        assert_eq!(ops.adds.len(), 2);
        assert!(ops.adds[1].1, "host bits counted as normalised");
        assert_eq!(ops.pairs.items()[ops.adds[0].2 as usize], ("CAPI".to_owned(), Some("ban".to_owned())));
        assert_eq!(ops.removes.len(), 1);
        assert_eq!(ops.pairs.items()[ops.removes[0].1 as usize], ("CAPI".to_owned(), None));
        // nope, soon, 5, FR, 7, 3
        assert_eq!(ops.skipped, 6);
        assert_eq!(ops.links.as_deref(), Some(&br#"{"blocklists":[{"name":"x"}]}"#[..]));
    }

    #[test]
    fn v2_flat_items() {
        let body = br#"{"deleted":null,"new":[
            {"duration":"3h59m59.65s","id":1,"origin":"cscli","scenario":"t","scope":"Ip","type":"ban","value":"1.2.3.4"},
            {"duration":"1h","origin":"","scope":"Range","type":"captcha","value":"10.0.0.0/8"},
            {"duration":"1h","origin":5,"scope":"ip","type":"ban","value":"1.2.3.5"},
            {"duration":"1h","scope":"ip","type":7,"value":"1.2.3.6"}]}"#;
        let ops = parse_stream(body, "CAPI").expect("valid");
        assert_eq!(ops.adds.len(), 2);
        assert_eq!(ops.skipped, 2);
        assert_eq!(ops.pairs.items()[ops.adds[1].2 as usize], ("CAPI".to_owned(), Some("captcha".to_owned())));
        assert!((ops.adds[0].3 - (3.0 * 3600.0 + 59.0 * 60.0 + 59.65)).abs() < 1e-9);
    }

    #[test]
    fn stream_types_not_kept_become_the_fallback() {
        let kept = ["ban".to_owned(), "captcha".to_owned()];
        assert_eq!(stored_type("ban", &kept, Some("ban")), "ban");
        assert_eq!(stored_type("captcha", &kept, Some("ban")), "captcha");
        assert_eq!(stored_type("allow", &kept, Some("ban")), "ban");
        assert_eq!(stored_type("custom", &kept, Some("captcha")), "captcha");
        assert_eq!(stored_type("allow", &kept, None), "allow", "no fallback: every type kept");
        assert_eq!(stored_type("ban", &[], Some("captcha")), "captcha");
    }

    #[test]
    fn not_json_is_an_error() {
        assert!(parse_stream(b"{", "CAPI").is_err());
        assert!(parse_stream(b"[]", "CAPI").is_err());
        assert!(parse_stream(b"{} x", "CAPI").is_err());
        assert!(parse_stream(b"{}", "CAPI").is_ok());
    }
}
