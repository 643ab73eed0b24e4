//! criterion benches of the crate's core, without Python: building, single lookups, batch codes.
//!
//! Same workload shape as the pytest-benchmark suite (seeded): ~95% IPv4 addresses, ~3% IPv4
//! ranges /8 to /31, ~2% IPv6; queries half present addresses, half random IPv4.
//! `BENCH_N` sets the number of decisions (default 1,000,000).

use _native::index::{Index, Op};
use _native::parse::{parse_addr, Addr, Net};
use criterion::{criterion_main, BatchSize, Criterion, Throughput};
use std::hint::black_box;

const NOW: u64 = 1_800_000_000_000;

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
}

fn workload(n: usize, rng: &mut Rng) -> (Vec<Net>, Vec<u32>) {
    let lens: Vec<u8> = [8u8]
        .iter()
        .chain([16u8; 3].iter())
        .chain([20u8; 4].iter())
        .copied()
        .chain((22..32).cycle().take(60))
        .collect();
    let mut nets = Vec::with_capacity(n);
    let mut hosts = Vec::new();
    for _ in 0..n {
        let roll = rng.next() % 100;
        let r = rng.next();
        if roll < 95 {
            nets.push(Net::V4(r as u32, 32));
            hosts.push(r as u32);
        } else if roll < 98 {
            let l = lens[(rng.next() % lens.len() as u64) as usize];
            nets.push(Net::V4((r as u32) >> (32 - l) << (32 - l), l));
        } else {
            let v = (0x2001u128 << 112) | u128::from(r);
            nets.push(Net::V6(v, 128));
        }
    }
    (nets, hosts)
}

fn build(nets: &[Net]) -> Index {
    let mut ix = Index::new(&["ban".into(), "captcha".into()]).expect("valid priorities");
    let ban = ix.tag("CAPI", "ban").expect("tag");
    let ops: Vec<Op> = nets.iter().map(|&n| Op::Add(n, ban, NOW + 3_600_000)).collect();
    ix.reserve_v4_hosts(ops.len());
    ix.apply(&ops);
    ix
}

fn benches(c: &mut Criterion) {
    let n: usize = std::env::var("BENCH_N").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let mut rng = Rng(20261124);
    let (nets, hosts) = workload(n, &mut rng);
    let queries: Vec<u32> = (0..100_000)
        .map(|i| if i % 2 == 0 { hosts[(rng.next() % hosts.len() as u64) as usize] } else { rng.next() as u32 })
        .collect();
    let texts: Vec<String> = queries.iter().map(|&q| std::net::Ipv4Addr::from(q).to_string()).collect();

    let mut g = c.benchmark_group("index");
    g.sample_size(10);
    g.throughput(Throughput::Elements(n as u64));
    g.bench_function("build", |b| b.iter_batched(|| nets.clone(), |nets| build(&nets), BatchSize::LargeInput));
    let ix = build(&nets);
    g.throughput(Throughput::Elements(queries.len() as u64));
    g.bench_function("lookup", |b| {
        b.iter(|| queries.iter().map(|&q| ix.lookup(Addr::V4(q), NOW).is_some() as usize).sum::<usize>())
    });
    g.bench_function("parse+lookup", |b| {
        b.iter(|| {
            texts.iter().map(|t| parse_addr(t).map_or(0, |a| ix.lookup(a, NOW).is_some() as usize)).sum::<usize>()
        })
    });
    g.bench_function("codes_v4", |b| b.iter(|| black_box(ix.codes_v4(queries.iter().copied(), NOW))));
    g.finish();
}

#[allow(missing_docs)]
mod group {
    criterion::criterion_group!(core, super::benches);
}
criterion_main!(group::core);
