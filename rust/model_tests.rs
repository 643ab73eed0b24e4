//! Model-based tests: random operations mirrored into a naive list scanned on every lookup.

use crate::batch::{AddItem, Batch, RemoveItem};
use crate::index::{AddRule, Index, Op};
use crate::parse::{Addr, Net};
use hashbrown::HashMap;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        // splitmix64
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[derive(Clone)]
struct ModelDec {
    net: Net,
    origin: usize,
    rem: usize,
    exp: u64,
}

const ORIGINS: [&str; 3] = ["CAPI", "lists:tor", "cscli"];

/// One randomised setting of the model test.
struct Scenario {
    priorities: &'static [&'static str],
    /// Every remediation used, in rank order: the model ranks a decision by its position here.
    rems: &'static [&'static str],
    net: fn(&mut Rng) -> Net,
    addr: fn(&mut Rng) -> Addr,
    /// The remediation (position in `rems`) of a decision about to be added on a network.
    rem: fn(&mut Rng, Net) -> usize,
}

fn covers(net: Net, a: Addr) -> bool {
    use crate::bits::Bits;
    match (net, a) {
        (Net::V4(k, l), Addr::V4(x)) => x & u32::mask(l) == k,
        (Net::V6(k, l), Addr::V6(x)) => x & u128::mask(l) == k,
        _ => false,
    }
}

/// True when IPv4 `net` and the block `start/len` share an address (one holds the other).
fn meets(net: Net, start: u32, len: u8) -> bool {
    use crate::bits::Bits;
    match net {
        Net::V4(k, l) => {
            let m = u32::mask(l.min(len));
            k & m == start & m
        }
        Net::V6(..) => false,
    }
}

fn model_lookup(m: &[ModelDec], rems: &[&'static str], a: Addr, now: u64) -> Option<&'static str> {
    m.iter().filter(|d| d.exp > now && covers(d.net, a)).map(|d| d.rem).min().map(|r| rems[r])
}

fn is_inner(net: Net) -> bool {
    match net {
        Net::V4(_, l) | Net::V6(_, l) => l >= 16,
    }
}

/// The settle rank a family should have: the most severe rank among the inner decisions held
/// (expired ones included until purged), NO_RANK when none.
fn model_settle(m: &[ModelDec], v4: bool) -> u16 {
    m.iter()
        .filter(|d| matches!(d.net, Net::V4(..)) == v4 && is_inner(d.net))
        .map(|d| d.rem as u16)
        .min()
        .unwrap_or(crate::slot::NO_RANK)
}

fn v4_pool(r: &mut Rng) -> u32 {
    0x0a00_0000 | (r.below(4) as u32) << 16 | (r.below(4) as u32) << 8 | r.below(8) as u32
}

fn v6_pool(r: &mut Rng) -> u128 {
    0x2001_0db8_0000_0000_0000_0000_0000_0000 | u128::from(r.below(16) as u8) << 80 | u128::from(r.below(8))
}

/// Small address pools so prefixes overlap often.
fn random_net(r: &mut Rng) -> Net {
    if r.below(3) == 0 {
        let len = [128u8, 128, 64, 48, 44, 32, 0][r.below(7) as usize];
        Net::V6(v6_pool(r) & <u128 as crate::bits::Bits>::mask(len), len)
    } else {
        let len = [32u8, 32, 32, 31, 30, 24, 16, 15, 8, 0][r.below(10) as usize];
        Net::V4(v4_pool(r) & <u32 as crate::bits::Bits>::mask(len), len)
    }
}

fn random_addr(r: &mut Rng) -> Addr {
    if r.below(3) == 0 {
        Addr::V6(v6_pool(r))
    } else {
        Addr::V4(v4_pool(r))
    }
}

/// Mostly hosts and /8s, some /24s and /16s; /12 and /0 on the short side.
fn allowlist_net(r: &mut Rng) -> Net {
    if r.below(4) == 0 {
        let len = [128u8, 128, 64, 16, 12, 8, 0][r.below(7) as usize];
        Net::V6(v6_pool(r) & <u128 as crate::bits::Bits>::mask(len), len)
    } else {
        let len = [32u8, 32, 32, 32, 24, 16, 12, 8, 8, 0][r.below(10) as usize];
        Net::V4(v4_pool(r) & <u32 as crate::bits::Bits>::mask(len), len)
    }
}

/// ["allow", "ban", "captcha"]: wide prefixes mostly ban, a few inner allows under them.
fn allowlist_rem(r: &mut Rng, net: Net) -> usize {
    let roll = r.below(20);
    if is_inner(net) {
        match roll {
            0..=2 => 0,
            3..=15 => 1,
            _ => 2,
        }
    } else {
        match roll {
            0 => 0,
            1..=15 => 1,
            _ => 2,
        }
    }
}

const PLAIN: Scenario = Scenario {
    priorities: &["ban", "captcha"],
    // "mfa" is unlisted: it ranks below the priorities.
    rems: &["ban", "captcha", "mfa"],
    net: random_net,
    addr: random_addr,
    rem: |r, _| r.below(3) as usize,
};

const ALLOWLIST: Scenario = Scenario {
    priorities: &["allow", "ban", "captcha"],
    rems: &["allow", "ban", "captcha"],
    net: allowlist_net,
    addr: random_addr,
    rem: allowlist_rem,
};

fn check_lookups(ix: &Index, model: &[ModelDec], sc: &Scenario, addrs: &[Addr], now: u64, at: &str) {
    let name = |id: Option<u8>| id.map(|id| ix.remediations()[id as usize].as_str());
    let codes = ix.codes(addrs, now);
    let v4: Vec<u32> = addrs.iter().filter_map(|a| if let Addr::V4(x) = a { Some(*x) } else { None }).collect();
    let codes4 = ix.codes_v4(v4.iter().copied(), now);
    let mut i4 = 0;
    for (i, &a) in addrs.iter().enumerate() {
        let want = model_lookup(model, sc.rems, a, now);
        let got = name(ix.lookup(a, now));
        if got != want {
            for d in model.iter().filter(|d| covers(d.net, a)) {
                eprintln!("{:?} {} {} exp {} now {now}", d.net, d.origin, d.rem, d.exp);
            }
        }
        assert_eq!(got, want, "lookup, {at} addr {a:?}");
        assert_eq!(name(codes[i].checked_sub(1)), want, "codes, {at} addr {a:?}");
        if matches!(a, Addr::V4(_)) {
            assert_eq!(name(codes4[i4].checked_sub(1)), want, "codes_v4, {at} addr {a:?}");
            i4 += 1;
        }
    }
}

fn run_model(sc: &Scenario, seeds: std::ops::Range<u64>) {
    let prios: Vec<String> = sc.priorities.iter().map(|p| (*p).to_owned()).collect();
    for seed in seeds {
        let mut r = Rng(seed);
        let mut ix = Index::new(&prios).expect("index");
        let mut model: Vec<ModelDec> = Vec::new();
        let mut now: u64 = 1_000_000;
        for step in 0..3000 {
            let at = format!("seed {seed} step {step}");
            match r.below(12) {
                0..=4 => {
                    // Replace, sometimes already expired (which removes the decision).
                    let net = (sc.net)(&mut r);
                    let (o, m) = (r.below(3) as usize, (sc.rem)(&mut r, net));
                    let exp = if r.below(10) == 0 { now - r.below(1_000) } else { now + 1 + r.below(300_000) };
                    // Through the batch rules, as the binding applies a caller's add.
                    let mut b = Batch::default();
                    let pair = b.pair(ORIGINS[o], sc.rems[m]);
                    b.adds.push(AddItem { net, normalized: false, pair, exp, rule: AddRule::Replace });
                    let out = b.apply(&mut ix, now, true).expect("batch");
                    let (added, removed) = (out.added, out.removed);
                    let held = model.iter().position(|d| d.net == net && d.origin == o && d.rem == m);
                    match held {
                        _ if exp <= now => {
                            model.retain(|d| !(d.net == net && d.origin == o && d.rem == m));
                            assert_eq!((added, removed), (0, usize::from(held.is_some())), "{at}");
                        }
                        Some(i) => {
                            model[i].exp = exp;
                            assert_eq!((added, removed), (0, 0), "{at}");
                        }
                        None => {
                            model.push(ModelDec { net, origin: o, rem: m, exp });
                            assert_eq!((added, removed), (1, 0), "{at}");
                        }
                    }
                }
                5 => {
                    // A stream answer: the same decision up to three times in one batch, with
                    // different expiries, some already over; the latest expiry wins.
                    let net = (sc.net)(&mut r);
                    let (o, m) = (r.below(3) as usize, (sc.rem)(&mut r, net));
                    let mut b = Batch::default();
                    let pair = b.pair(ORIGINS[o], sc.rems[m]);
                    let mut latest = None;
                    for _ in 0..1 + r.below(3) {
                        let exp = if r.below(6) == 0 { now - r.below(1_000) } else { now + 1 + r.below(300_000) };
                        if exp > now {
                            latest = latest.max(Some(exp));
                        }
                        b.adds.push(AddItem { net, normalized: false, pair, exp, rule: AddRule::Extend });
                    }
                    let out = b.apply(&mut ix, now, true).expect("batch");
                    let (added, removed) = (out.added, out.removed);
                    assert_eq!(removed, 0, "{at}");
                    let held = model.iter().position(|d| d.net == net && d.origin == o && d.rem == m);
                    match (held, latest) {
                        (Some(i), Some(exp)) => {
                            model[i].exp = model[i].exp.max(exp);
                            assert_eq!(added, 0, "{at}");
                        }
                        (None, Some(exp)) => {
                            model.push(ModelDec { net, origin: o, rem: m, exp });
                            assert_eq!(added, 1, "{at}");
                        }
                        (_, None) => assert_eq!(added, 0, "{at}"),
                    }
                }
                6 => {
                    let net = (sc.net)(&mut r);
                    let o = r.below(4) as usize;
                    let m = r.below(sc.rems.len() as u64 + 1) as usize;
                    let mut b = Batch::default();
                    b.removes.push(RemoveItem {
                        net,
                        origin: (o < 3).then(|| ORIGINS[o].to_owned()),
                        remediation: sc.rems.get(m).map(|r| (*r).to_owned()),
                    });
                    let removed = b.apply(&mut ix, now, true).expect("batch").removed;
                    let before = model.len();
                    model
                        .retain(|d| !(d.net == net && (o == 3 || d.origin == o) && (m == sc.rems.len() || d.rem == m)));
                    assert_eq!(removed, before - model.len(), "{at}");
                }
                7 => now += r.below(120_000),
                8 => {
                    let (n, done) = ix.purge(now, usize::MAX);
                    assert!(done);
                    let before = model.len();
                    model.retain(|d| d.exp > now);
                    assert_eq!(n, before - model.len(), "purge count, {at}");
                }
                _ => {
                    let addrs: Vec<Addr> = (0..6).map(|_| (sc.addr)(&mut r)).collect();
                    check_lookups(&ix, &model, sc, &addrs, now, &at);
                }
            }
            assert_eq!(ix.len(), model.len(), "{at}");
            assert_eq!(ix.settle_ranks(), (model_settle(&model, true), model_settle(&model, false)), "{at}");
        }
        // Export agrees with lookups on every address of the small pool.
        let ban_id = ix.remediations().iter().position(|n| n == "ban").expect("ban interned") as u8;
        let ban = ix.rank_of(ban_id);
        let pieces = crate::aggregate::pieces(ix.active_prefixes(4, now), 32, ban);
        let blocks = crate::aggregate::blocks(&pieces, 32);
        // Each block holds `ban` until the last active ban decision meeting it expires.
        for &(s, l, until) in &blocks {
            let last = model
                .iter()
                .filter(|d| d.exp > now && sc.rems[d.rem] == "ban" && meets(d.net, s as u32, l))
                .map(|d| d.exp)
                .max();
            assert_eq!(Some(until), last, "until seed {seed} block {s:#x}/{l}");
        }
        for x in 0..(4u32 << 16) {
            let a = 0x0a00_0000 | x;
            let exported = blocks.iter().any(|&(s, l, _)| covers(Net::V4(s as u32, l), Addr::V4(a)));
            assert_eq!(
                exported,
                model_lookup(&model, sc.rems, Addr::V4(a), now) == Some("ban"),
                "export seed {seed} addr {a:#x}"
            );
        }
        // Snapshot round trip keeps every active decision and nothing else.
        let bytes = crate::snapshot::encode(&ix, now, b"meta");
        let (back, meta) = crate::snapshot::decode(&bytes).expect("decode");
        assert_eq!(meta, b"meta");
        let active: Vec<ModelDec> = model.iter().filter(|d| d.exp > now).cloned().collect();
        assert_eq!(back.len(), active.len());
        assert_eq!(back.settle_ranks(), (model_settle(&active, true), model_settle(&active, false)), "snapshot");
        let addrs: Vec<Addr> = (0..200).map(|_| (sc.addr)(&mut r)).collect();
        check_lookups(&back, &model, sc, &addrs, now, &format!("snapshot seed {seed}"));
        // The mapped form answers in place as the model does, now and as decisions expire,
        // and rebuilds the same index.
        let mapped = crate::mapped::encode(&ix, now, b"meta");
        let layout = crate::mapped::Layout::open(mapped.as_slice()).expect("open mapped");
        for later in [now, now + 1_000, now + 100_000, now + 10_000_000] {
            for &a in &addrs {
                let want = model_lookup(&model, sc.rems, a, later);
                let got =
                    layout.lookup(mapped.as_slice(), a, later).map(|id| layout.remediations()[id as usize].as_str());
                assert_eq!(got, want, "mapped seed {seed} addr {a:?} at {later}");
            }
        }
        let (rebuilt, meta) = layout.to_index(mapped.as_slice()).expect("rebuild mapped");
        assert_eq!((rebuilt.len(), meta.as_slice()), (active.len(), &b"meta"[..]), "mapped rebuild seed {seed}");
        // A clone keeps the counts behind the settle rank.
        let copy = ix.clone();
        assert_eq!(copy.settle_ranks(), ix.settle_ranks(), "clone seed {seed}");
        // Removing every allow decision (and purging) brings the settle rank back to the most
        // severe rank left, and every block whose short prefixes give that rank or better
        // answers from its summary again.
        if let Some(f) = ix.filter(None, Some("allow")) {
            let allows: Vec<Op> =
                model.iter().filter(|d| sc.rems[d.rem] == "allow").map(|d| Op::Remove(d.net, f)).collect();
            ix.apply(&allows);
            model.retain(|d| sc.rems[d.rem] != "allow");
        }
        ix.purge(now, usize::MAX);
        model.retain(|d| d.exp > now);
        let settle = model_settle(&model, true);
        assert_eq!(ix.settle_ranks().0, settle, "after the allows went, seed {seed}");
        let any_range = model.iter().any(|d| matches!(d.net, Net::V4(_, l) if l < 32));
        let pool: Vec<Addr> = (0..4u32 << 16).step_by(7).map(|x| Addr::V4(0x0a00_0000 | x)).collect();
        for &a in &pool {
            let short = model.iter().filter(|d| !is_inner(d.net) && covers(d.net, a)).map(|d| d.rem as u16).min();
            let expected = any_range && short.unwrap_or(crate::slot::NO_RANK) <= settle;
            assert_eq!(ix.settles(a, now), expected, "fast path, seed {seed} addr {a:?}");
        }
        check_lookups(&ix, &model, sc, &pool, now, &format!("after the allows went, seed {seed}"));
    }
}

#[test]
fn random_operations_match_naive_scan() {
    run_model(&PLAIN, 0..40);
}

#[test]
fn random_operations_with_an_allowlist_rank_match_naive_scan() {
    run_model(&ALLOWLIST, 100..140);
}

#[test]
fn damaged_snapshots_are_errors_not_panics() {
    let mut ix = Index::new(&["ban".into()]).expect("index");
    let tag = ix.tag("CAPI", "ban").expect("tag");
    ix.apply(&[Op::Add(Net::V4(0x0102_0304, 32), tag, 5000), Op::Add(Net::V6(1 << 127, 1), tag, 5000)]);
    let good = crate::snapshot::encode(&ix, 0, b"");
    assert!(crate::snapshot::decode(&good).is_ok());
    for cut in 0..good.len() {
        assert!(crate::snapshot::decode(&good[..cut]).is_err(), "truncated at {cut} accepted");
    }
    for i in 0..good.len() {
        for bit in [0x01u8, 0x80] {
            let mut bad = good.clone();
            bad[i] ^= bit;
            assert!(crate::snapshot::decode(&bad).is_err(), "flip at {i} accepted");
        }
    }
}

#[test]
fn block_summaries_follow_a_rerank() {
    // An unlisted remediation interned later can outrank an existing one (alphabetical order
    // below the priorities): the per-block summaries must take the new ranks.
    use crate::parse::{parse_addr, parse_net};
    let mut ix = Index::new(&["ban".into()]).expect("valid");
    let throttle = ix.tag("CAPI", "throttle").expect("tag");
    let (wide, _) = parse_net("10.0.0.0/8").expect("net");
    ix.apply(&[Op::Add(wide, throttle, 1_000)]);
    let host = parse_addr("10.1.2.3").expect("addr");
    let name = |ix: &Index, a| ix.lookup(a, 0).map(|r| ix.remediations()[r as usize].clone());
    assert_eq!(name(&ix, host).as_deref(), Some("throttle"));
    let mfa = ix.tag("cscli", "mfa").expect("tag");
    let (one, _) = parse_net("10.1.2.3").expect("net");
    ix.apply(&[Op::Add(one, mfa, 1_000)]);
    assert_eq!(name(&ix, host).as_deref(), Some("mfa"), "mfa sorts before throttle, so it wins");
    assert_eq!(ix.winner(host, 0).map(|t| ix.tag_parts(t)), Some((1, 2)), "cscli's mfa decides");
}

#[test]
fn common_blocks_stop_answering_when_their_prefixes_expire() {
    // Ten /8s under one ban key flag their 2560 blocks for the one-bit fast path; the shortest
    // lived of them expires first. Once it has, no block it covered may still answer ban, and
    // the other blocks keep answering until their own prefixes expire.
    use crate::parse::{parse_addr, parse_net};
    let mut ix = Index::new(&["ban".into(), "captcha".into()]).expect("valid");
    let ban = ix.tag("CAPI", "ban").expect("tag");
    let captcha = ix.tag("CAPI", "captcha").expect("tag");
    for i in 0..10u64 {
        let (net, _) = parse_net(&format!("{}.0.0.0/8", 20 + i)).expect("net");
        // 20/8 lives 5 s, the others 100 s and more.
        ix.apply(&[Op::Add(net, ban, if i == 0 { 5_000 } else { 100_000 + i * 1_000 })]);
    }
    let (wide, _) = parse_net("20.0.0.0/7").expect("net");
    ix.apply(&[Op::Add(wide, captcha, 1_000_000)]);
    let name = |a: &str, now: u64| {
        let addr = parse_addr(a).expect("addr");
        ix.lookup(addr, now).map(|r| ix.remediations()[r as usize].clone())
    };
    assert_eq!(name("20.1.2.3", 4_999).as_deref(), Some("ban"));
    assert_eq!(name("20.1.2.3", 5_000).as_deref(), Some("captcha"), "20/8 expired: the /7 captcha answers");
    assert_eq!(name("21.1.2.3", 5_000).as_deref(), Some("ban"));
    assert_eq!(name("25.9.9.9", 104_999).as_deref(), Some("ban"));
    assert_eq!(name("25.9.9.9", 105_000), None, "25/8 expired at 105 s and nothing else covers it");
    assert_eq!(name("29.0.0.1", 108_999).as_deref(), Some("ban"));
    assert_eq!(name("29.0.0.1", 109_000), None);
    assert_eq!(name("21.255.255.255", 109_000).as_deref(), Some("captcha"));
}

/// An index ranking ["allow", "ban", "captcha"] with ban on 10/8 and on the single address
/// 10.1.2.4 (so the IPv4 settle rank is ban's).
fn allowlist_index() -> (Index, u16, u16) {
    use crate::parse::parse_net;
    let mut ix = Index::new(&["allow".into(), "ban".into(), "captcha".into()]).expect("valid");
    let ban = ix.tag("CAPI", "ban").expect("tag");
    let allow = ix.tag("lists:ok", "allow").expect("tag");
    let net = |s: &str| parse_net(s).expect("net").0;
    ix.apply(&[Op::Add(net("10.0.0.0/8"), ban, 1_000_000), Op::Add(net("10.1.2.4"), ban, 1_000_000)]);
    (ix, ban, allow)
}

fn answer(ix: &Index, ip: &str, now: u64) -> Option<String> {
    let a = crate::parse::parse_addr(ip).expect("addr");
    let single = ix.lookup(a, now).map(|r| ix.remediations()[r as usize].clone());
    // The batch paths (summary first, then warmed probes) must agree with the single lookup.
    let code = |c: u8| c.checked_sub(1).map(|r| ix.remediations()[r as usize].clone());
    assert_eq!(code(ix.codes(&[a], now)[0]), single, "codes of {ip}");
    if let Addr::V4(x) = a {
        assert_eq!(code(ix.codes_v4([x].into_iter(), now)[0]), single, "codes_v4 of {ip}");
    }
    single
}

#[test]
fn an_allowed_address_inside_a_banned_block_answers_allow() {
    // The ban summary of 10.1/16 must not answer for 10.1.2.3 once an allow decision sits on
    // it, though the batch adding it touches no short prefix (no summary is rebuilt).
    use crate::parse::{parse_addr, parse_net};
    let (mut ix, _, allow) = allowlist_index();
    let net = |s: &str| parse_net(s).expect("net").0;
    let ip = |s: &str| parse_addr(s).expect("addr");
    assert_eq!(ix.settle_ranks().0, 1, "ban is the most severe inner rank");
    assert!(ix.settles(ip("10.1.2.3"), 0));
    ix.apply(&[Op::Add(net("10.1.2.3"), allow, 500_000), Op::Add(net("10.1.3.0/24"), allow, 1_000_000)]);
    assert_eq!(ix.settle_ranks().0, 0, "an inner allow lowers the settle rank");
    assert!(!ix.settles(ip("10.9.9.9"), 0), "ban summaries no longer settle");
    assert_eq!(answer(&ix, "10.1.2.3", 0).as_deref(), Some("allow"));
    assert_eq!(answer(&ix, "10.1.3.77", 0).as_deref(), Some("allow"));
    assert_eq!(answer(&ix, "10.1.2.4", 0).as_deref(), Some("ban"));
    assert_eq!(answer(&ix, "10.9.9.9", 0).as_deref(), Some("ban"));
    // The allowed address's decision expires: ban again, before and after purging.
    assert_eq!(answer(&ix, "10.1.2.3", 500_000).as_deref(), Some("ban"));
    assert_eq!(ix.purge(500_000, usize::MAX), (1, true));
    assert_eq!(ix.settle_ranks().0, 0, "the /24 allow is still held");
    // Removing the last inner allow restores the fast path.
    let f = ix.filter(None, Some("allow")).expect("filter");
    assert_eq!(ix.apply(&[Op::Remove(net("10.1.3.0/24"), f)]), (0, 1));
    assert_eq!(ix.settle_ranks().0, 1);
    assert!(ix.settles(ip("10.9.9.9"), 0));
    assert_eq!(answer(&ix, "10.1.3.77", 0).as_deref(), Some("ban"));
}

#[test]
fn a_short_allow_range_settles_its_own_blocks() {
    // An allow /12 (a short prefix) ranks above every inner decision: its blocks settle too.
    use crate::parse::{parse_addr, parse_net};
    let (mut ix, _, allow) = allowlist_index();
    ix.apply(&[Op::Add(parse_net("10.16.0.0/12").expect("net").0, allow, 1_000_000)]);
    assert!(ix.settles(parse_addr("10.17.0.1").expect("addr"), 0));
    assert_eq!(answer(&ix, "10.17.0.1", 0).as_deref(), Some("allow"));
    assert_eq!(answer(&ix, "10.1.0.1", 0).as_deref(), Some("ban"));
}

#[test]
fn without_allow_decisions_ban_summaries_still_take_the_fast_path() {
    // "allow" ranks first but nothing holds it: ban (rank 1) summaries settle lookups, and the
    // one-bit path keeps the ban key even when a short allow range covers a few blocks.
    use crate::parse::{parse_addr, parse_net};
    let (mut ix, ban, allow) = allowlist_index();
    let captcha = ix.tag("CAPI", "captcha").expect("tag");
    let net = |s: &str| parse_net(s).expect("net").0;
    let mut ops: Vec<Op> = (20..30).map(|i| Op::Add(net(&format!("{i}.0.0.0/8")), ban, 1_000_000)).collect();
    ops.push(Op::Add(net("10.2.3.0/24"), captcha, 1_000_000));
    ops.push(Op::Add(net("10.2.3.9"), captcha, 1_000_000));
    ops.push(Op::Add(net("11.0.0.0/12"), allow, 1_000_000));
    ix.apply(&ops);
    assert_eq!(ix.settle_ranks(), (1, crate::slot::NO_RANK));
    let ban_key = (1 << 16) | crate::slot::Key::from(ban);
    assert_eq!(ix.common_keys().0, ban_key, "the ban key flags the most blocks");
    for a in ["10.2.3.9", "10.200.0.1", "25.1.2.3", "11.0.0.1"] {
        assert!(ix.settles(parse_addr(a).expect("addr"), 0), "{a} answers from its summary");
    }
    assert!(!ix.settles(parse_addr("12.0.0.1").expect("addr"), 0), "no range covers 12/8, hosts exist");
    assert_eq!(answer(&ix, "10.2.3.9", 0).as_deref(), Some("ban"), "the ban /8 outranks captcha");
    assert_eq!(answer(&ix, "11.0.0.1", 0).as_deref(), Some("allow"));
    assert_eq!(answer(&ix, "12.0.0.1", 0), None);
}

#[test]
fn a_family_without_inner_decisions_settles_uncovered_blocks_as_none() {
    // Only short prefixes: a block no prefix covers answers "none" from its summary alone.
    use crate::parse::{parse_addr, parse_net};
    let mut ix = Index::new(&["allow".into(), "ban".into()]).expect("valid");
    let ban = ix.tag("CAPI", "ban").expect("tag");
    ix.apply(&[Op::Add(parse_net("10.0.0.0/8").expect("net").0, ban, 1_000)]);
    assert_eq!(ix.settle_ranks().0, crate::slot::NO_RANK);
    assert!(ix.settles(parse_addr("12.0.0.1").expect("addr"), 0));
    assert_eq!(answer(&ix, "12.0.0.1", 0), None);
    assert_eq!(answer(&ix, "10.0.0.1", 0).as_deref(), Some("ban"));
}

#[test]
fn stream_adds_keep_the_later_expiry() {
    // CAPI lists 192.0.2.1 under two scenarios, 4 h then 30 s: it stays banned for 4 h.
    use crate::parse::{parse_addr, parse_net};
    let mut ix = Index::new(&["ban".into(), "captcha".into()]).expect("valid");
    let ban = ix.tag("CAPI", "ban").expect("tag");
    let h4 = 4 * 3_600_000;
    for s in ["192.0.2.1", "198.51.100.0/24", "10.0.0.0/8"] {
        let (net, _) = parse_net(s).expect("net");
        let ip = parse_addr(s.split('/').next().expect("address")).expect("addr");
        let name = |ix: &Index, now| ix.lookup(ip, now).map(|r| ix.remediations()[r as usize].clone());
        let ext = |ix: &Index, exp| ix.add_op(net, ban, exp, 1_000, AddRule::Extend).expect("live add");
        let ops = [ext(&ix, h4), ext(&ix, 31_000)];
        assert_eq!(ix.apply(&ops), (1, 0), "{s}: one decision, added once");
        assert_eq!(name(&ix, 31_000).as_deref(), Some("ban"), "{s}: the shorter copy did not shorten it");
        assert_eq!(ix.purge(31_000, usize::MAX), (0, true), "{s}: nothing expired");
        // A later answer with a shorter duration keeps it; an expired one changes nothing.
        assert_eq!(ix.apply(&[ext(&ix, 60_000)]), (0, 0));
        assert_eq!(ix.add_op(net, ban, 1_000, 1_000, AddRule::Extend), None, "{s}: already over");
        assert_eq!(name(&ix, h4 - 1).as_deref(), Some("ban"));
        assert_eq!(name(&ix, h4), None);
        // A longer one lengthens it.
        ix.apply(&[ext(&ix, h4 + 5_000)]);
        assert_eq!(name(&ix, h4 + 4_999).as_deref(), Some("ban"));
        // The caller's own add still replaces, and an expired one still removes.
        let replace = ix.add_op(net, ban, 60_000, 1_000, AddRule::Replace).expect("live add");
        assert_eq!(replace, Op::Add(net, ban, 60_000));
        ix.apply(&[replace]);
        assert_eq!(name(&ix, 60_000), None, "{s}: replaced by the shorter expiry");
        let gone = ix.add_op(net, ban, 1_000, 1_000, AddRule::Replace).expect("a removal");
        assert_eq!(ix.apply(&[gone]), (0, 1), "{s}");
        assert_eq!(ix.len(), 0);
        assert_eq!(ix.purge(h4 + 10_000, usize::MAX), (0, true), "{s}: stale expiry hints are harmless");
    }
}

#[test]
fn pairs_the_index_cannot_hold_are_skipped_unless_strict() {
    let mut ix = Index::new(&["ban".to_owned(), "captcha".to_owned()]).expect("priorities");
    let long = "o".repeat(300);
    let origins: Vec<String> = (0..70_000).map(|i| format!("o{i}")).collect();
    let mut pairs: Vec<(&str, &str)> = vec![("CAPI", "ban"), (long.as_str(), "ban"), ("CAPI", "")];
    pairs.extend(origins.iter().map(|o| (o.as_str(), "ban")));
    let tags = ix.tags(pairs.iter().copied(), false).expect("lenient");
    assert!(tags[0].is_some(), "a pair it can hold gets its tag");
    assert_eq!(tags[1], None, "a 300-character origin is skipped");
    assert_eq!(tags[2], None, "an empty remediation is skipped");
    let held = tags.iter().filter(|t| t.is_some()).count();
    assert!(held > 65_000 && held <= usize::from(crate::slot::MAX_TAG) + 1, "pairs up to the limit are held, no more");
    assert!(ix.tags([("one-more", "ban")], true).is_err(), "strict: the first pair past the limit is an error");
    assert_eq!(ix.tags([("CAPI", "ban")], true).expect("known"), vec![tags[0]], "a known pair still resolves");
}

/// Memory under churn: many removals, re-adds and re-timings of a steady set of decisions keep
/// the index within twice a fresh index holding the same decisions, and compaction loses nothing
/// (lookups and a final purge agree with the model).
#[test]
fn churn_keeps_memory_near_a_fresh_index() {
    use crate::shared::Shared;
    let prios = vec!["ban".to_owned(), "captcha".to_owned()];
    let mut r = Rng(7);
    let shared = Shared::new(Index::new(&prios).expect("index"));
    let tag = shared.write(0, |ix| ix.tag("CAPI", "ban")).expect("tag");
    let any = shared.read().filter(None, None).expect("filter");
    let random_net = |r: &mut Rng| match r.below(10) {
        0 => Net::V4((r.next() as u32) & 0xffff_ff00, 24),
        1 => Net::V6(u128::from(r.next()) << 64, 128),
        _ => Net::V4(r.next() as u32, 32),
    };
    let now = 1_000_000_000u64;
    let life = |r: &mut Rng| now + 3_600_000 + r.below(86_400_000);
    // The model: what is held, and where each network sits in it.
    let mut live: Vec<(Net, u64)> = Vec::new();
    let mut pos: HashMap<Net, usize> = HashMap::new();
    let put = |live: &mut Vec<(Net, u64)>, pos: &mut HashMap<Net, usize>, net: Net, exp: u64| match pos.get(&net) {
        Some(&i) => live[i].1 = exp,
        None => {
            pos.insert(net, live.len());
            live.push((net, exp));
        }
    };
    let mut ops = Vec::new();
    for _ in 0..20_000 {
        let (net, exp) = (random_net(&mut r), life(&mut r));
        put(&mut live, &mut pos, net, exp);
        ops.push(Op::Add(net, tag, exp));
    }
    shared.write(ops.len(), |ix| ix.apply(&ops));
    let mut worst: f64 = 0.0;
    for round in 0..1_000 {
        let mut ops = Vec::new();
        for _ in 0..2_000 {
            // Replace one decision with a new one, and re-time another (a renewal).
            let i = r.below(live.len() as u64) as usize;
            let gone = live.swap_remove(i).0;
            pos.remove(&gone);
            if let Some(&(moved, _)) = live.get(i) {
                pos.insert(moved, i);
            }
            ops.push(Op::Remove(gone, any));
            let (net, exp) = (random_net(&mut r), life(&mut r));
            put(&mut live, &mut pos, net, exp);
            ops.push(Op::Add(net, tag, exp));
            let i = r.below(live.len() as u64) as usize;
            live[i].1 = live[i].1.max(life(&mut r));
            ops.push(Op::Extend(live[i].0, tag, live[i].1));
        }
        // Half the rounds in small in-place batches, half as one large batch.
        if round % 2 == 0 {
            for chunk in ops.chunks(500) {
                shared.write(chunk.len(), |ix| ix.apply(chunk));
            }
        } else {
            shared.write(ops.len(), |ix| ix.apply(&ops));
        }
        if round % 50 == 49 {
            let mut fresh = Index::new(&prios).expect("index");
            let t = fresh.tag("CAPI", "ban").expect("tag");
            let adds: Vec<Op> = live.iter().map(|&(n, e)| Op::Add(n, t, e)).collect();
            fresh.apply(&adds);
            let ix = shared.snapshot();
            assert_eq!(ix.len(), live.len(), "round {round}");
            let ratio = ix.heap_bytes() as f64 / fresh.heap_bytes() as f64;
            worst = worst.max(ratio);
            assert!(ratio <= 2.0, "round {round}: {} bytes against {} fresh", ix.heap_bytes(), fresh.heap_bytes());
        }
    }
    assert!(worst > 1.0, "churn left something behind at some point: the bound was exercised");
    // Nothing was lost to compaction: every live decision answers, and purging at the latest
    // expiry removes exactly what is held.
    let ix = shared.snapshot();
    for &(net, _) in live.iter().take(5_000) {
        let addr = match net {
            Net::V4(k, _) => Addr::V4(k),
            Net::V6(k, _) => Addr::V6(k),
        };
        assert!(ix.lookup(addr, now).is_some(), "{net:?} still answers");
    }
    let last = live.iter().map(|&(_, e)| e).max().expect("decisions");
    assert_eq!(shared.purge(last), live.len(), "every decision is found by its expiry hint");
    assert_eq!(shared.read().len(), 0);
}

#[test]
fn active_decisions_are_counted_by_tag_until_they_expire() {
    use crate::parse::parse_net;
    let mut ix = Index::new(&["ban".into(), "captcha".into()]).expect("valid");
    let capi = ix.tag("CAPI", "ban").expect("tag");
    let list = ix.tag("lists:tor", "captcha").expect("tag");
    let net = |t: &str| parse_net(t).expect("net").0;
    // Two decisions on one address (one slot holding a set), a range, and IPv6.
    ix.apply(&[
        Op::Add(net("192.0.2.1"), capi, 1_000),
        Op::Add(net("192.0.2.1"), list, 5_000),
        Op::Add(net("198.51.100.0/24"), capi, 5_000),
        Op::Add(net("2001:db8::/32"), list, 5_000),
    ]);
    let counts = ix.active_by_tag(0);
    assert_eq!((counts[capi as usize], counts[list as usize]), (2, 2));
    let counts = ix.active_by_tag(1_000); // the first expires at 1000: active while exp > now
    assert_eq!((counts[capi as usize], counts[list as usize]), (1, 2));
    assert_eq!(ix.active_by_tag(5_000).iter().sum::<u64>(), 0);
}
