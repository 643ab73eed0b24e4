//! Model-based tests: random operations mirrored into a naive list scanned on every lookup.

use crate::index::{Index, Op};
use crate::parse::{Addr, Net};

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
const REMS: [&str; 3] = ["ban", "captcha", "mfa"];

fn covers(net: Net, a: Addr) -> bool {
    use crate::bits::Bits;
    match (net, a) {
        (Net::V4(k, l), Addr::V4(x)) => x & u32::mask(l) == k,
        (Net::V6(k, l), Addr::V6(x)) => x & u128::mask(l) == k,
        _ => false,
    }
}

fn model_lookup(m: &[ModelDec], a: Addr, now: u64) -> Option<&'static str> {
    // ban > captcha > unlisted ("mfa")
    m.iter().filter(|d| d.exp > now && covers(d.net, a)).map(|d| d.rem).min().map(|r| REMS[r])
}

/// Small address pools so prefixes overlap often.
fn random_net(r: &mut Rng) -> Net {
    if r.below(3) == 0 {
        let base: u128 = 0x2001_0db8_0000_0000_0000_0000_0000_0000 | u128::from(r.below(16) as u8) << 80;
        let host = base | u128::from(r.below(8));
        let len = [128u8, 128, 64, 48, 44, 32, 0][r.below(7) as usize];
        Net::V6(host & <u128 as crate::bits::Bits>::mask(len), len)
    } else {
        let host = 0x0a00_0000u32 | (r.below(4) as u32) << 16 | (r.below(4) as u32) << 8 | r.below(8) as u32;
        let len = [32u8, 32, 32, 31, 30, 24, 16, 15, 8, 0][r.below(10) as usize];
        Net::V4(host & <u32 as crate::bits::Bits>::mask(len), len)
    }
}

fn random_addr(r: &mut Rng) -> Addr {
    match random_net(r) {
        Net::V4(_, _) => {
            Addr::V4(0x0a00_0000 | (r.below(4) as u32) << 16 | (r.below(4) as u32) << 8 | r.below(8) as u32)
        }
        Net::V6(_, _) => Addr::V6(
            0x2001_0db8_0000_0000_0000_0000_0000_0000 | u128::from(r.below(16) as u8) << 80 | u128::from(r.below(8)),
        ),
    }
}

#[test]
fn random_operations_match_naive_scan() {
    for seed in 0..40 {
        let mut r = Rng(seed);
        let mut ix = Index::new(&["ban".into(), "captcha".into()]).expect("index");
        let mut model: Vec<ModelDec> = Vec::new();
        let mut now: u64 = 1_000_000;
        for step in 0..3000 {
            match r.below(10) {
                0..=4 => {
                    let (net, o, m) = (random_net(&mut r), r.below(3) as usize, r.below(3) as usize);
                    let exp = now + 1 + r.below(300_000);
                    let tag = ix.tag(ORIGINS[o], REMS[m]).expect("tag");
                    ix.apply(&[Op::Add(net, tag, exp)]);
                    match model.iter_mut().find(|d| d.net == net && d.origin == o && d.rem == m) {
                        Some(d) => d.exp = exp,
                        None => model.push(ModelDec { net, origin: o, rem: m, exp }),
                    }
                }
                5 => {
                    let net = random_net(&mut r);
                    let o = r.below(4) as usize;
                    let f = ix.filter((o < 3).then(|| ORIGINS[o]), None);
                    let (_, removed) = f.map_or((0, 0), |f| ix.apply(&[Op::Remove(net, f)]));
                    let before = model.len();
                    model.retain(|d| !(d.net == net && (o == 3 || d.origin == o)));
                    assert_eq!(removed, before - model.len(), "seed {seed} step {step}");
                }
                6 => now += r.below(120_000),
                7 => {
                    let (n, done) = ix.purge(now, usize::MAX);
                    assert!(done);
                    let before = model.len();
                    model.retain(|d| d.exp > now);
                    assert_eq!(n, before - model.len(), "purge count, seed {seed} step {step}");
                }
                _ => {
                    for _ in 0..5 {
                        let a = random_addr(&mut r);
                        let got = ix.lookup(a, now).map(|id| ix.remediations()[id as usize].as_str());
                        if got != model_lookup(&model, a, now) {
                            for d in model.iter().filter(|d| covers(d.net, a)) {
                                eprintln!("{:?} {} {} exp {} now {now}", d.net, d.origin, d.rem, d.exp);
                            }
                        }
                        assert_eq!(got, model_lookup(&model, a, now), "seed {seed} step {step} addr {a:?}");
                    }
                }
            }
            assert_eq!(ix.len(), model.len(), "seed {seed} step {step}");
        }
        // Export agrees with lookups on every address of the small pool.
        let ban = ix.rank_of(0);
        let mut blocks = Vec::new();
        for (a, b) in crate::export::runs(ix.active_prefixes(4, now), 32, ban) {
            crate::export::run_to_cidrs(a, b, 32, &mut blocks);
        }
        for x in 0..(4u32 << 16) {
            let a = 0x0a00_0000 | x;
            let exported = blocks.iter().any(|&(s, l)| covers(Net::V4(s as u32, l), Addr::V4(a)));
            assert_eq!(
                exported,
                model_lookup(&model, Addr::V4(a), now) == Some("ban"),
                "export seed {seed} addr {a:#x}"
            );
        }
        // Snapshot round trip keeps every active decision and nothing else.
        let bytes = crate::snapshot::encode(&ix, now, b"meta");
        let (back, meta) = crate::snapshot::decode(&bytes).expect("decode");
        assert_eq!(meta, b"meta");
        assert_eq!(back.len(), model.iter().filter(|d| d.exp > now).count());
        for _ in 0..200 {
            let a = random_addr(&mut r);
            let got = back.lookup(a, now).map(|id| back.remediations()[id as usize].as_str());
            assert_eq!(got, model_lookup(&model, a, now));
        }
    }
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
