//! Minimal CIDR lists of the addresses whose answer is a given remediation.
//!
//! The stored prefixes of a family are nested or disjoint, so one sweep in (start, length)
//! order splits the address space into intervals of constant answer; the intervals answering
//! the wanted rank are merged when adjacent, and each maximal run is cut into the fewest
//! aligned CIDR blocks (greedy largest block first, which is optimal for a run).

use crate::slot::NO_RANK;

fn low_mask(n: u32) -> u128 {
    if n >= 128 {
        u128::MAX
    } else {
        (1u128 << n) - 1
    }
}

/// Addresses (as `(first, last)` runs) whose effective rank equals `want`.
/// `prefixes` holds `(start, len, own best rank)`; `bits` is 32 or 128.
pub fn runs(mut prefixes: Vec<(u128, u8, u16)>, bits: u8, want: u16) -> Vec<(u128, u128)> {
    prefixes.sort_unstable_by_key(|&(s, l, _)| (s, l));
    let mut out: Vec<(u128, u128)> = Vec::new();
    let mut emit = |a: u128, b: u128, eff: u16| {
        if eff != want || a > b {
            return;
        }
        match out.last_mut() {
            Some(last) if last.1.checked_add(1) == Some(a) => last.1 = b,
            _ => out.push((a, b)),
        }
    };
    // Open prefixes: (last address, effective rank).
    let mut stack: Vec<(u128, u16)> = Vec::new();
    let mut cursor: Option<u128> = Some(0);
    for (s, len, own) in prefixes {
        let e = s | low_mask(u32::from(bits - len));
        while let Some(&(te, teff)) = stack.last() {
            if te >= s {
                break;
            }
            stack.pop();
            if let Some(c) = cursor {
                emit(c, te, teff);
            }
            cursor = Some(te + 1);
        }
        let parent = stack.last().map_or(NO_RANK, |&(_, r)| r);
        if let Some(c) = cursor {
            if c < s {
                emit(c, s - 1, parent);
            }
        }
        cursor = Some(s);
        stack.push((e, own.min(parent)));
    }
    while let Some((te, teff)) = stack.pop() {
        if let Some(c) = cursor {
            emit(c, te, teff);
        }
        cursor = te.checked_add(1);
    }
    out
}

/// Cuts the run `[a, b]` into the fewest CIDR blocks `(start, len)`.
pub fn run_to_cidrs(mut a: u128, b: u128, bits: u8, out: &mut Vec<(u128, u8)>) {
    loop {
        let mut n = if a == 0 { u32::from(bits) } else { a.trailing_zeros().min(u32::from(bits)) };
        while a | low_mask(n) > b {
            n -= 1;
        }
        out.push((a, bits - n as u8));
        let last = a | low_mask(n);
        if last >= b {
            return;
        }
        a = last + 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidrs(p: Vec<(u128, u8, u16)>, want: u16) -> Vec<(u128, u8)> {
        let mut out = Vec::new();
        for (a, b) in runs(p, 32, want) {
            run_to_cidrs(a, b, 32, &mut out);
        }
        out
    }

    #[test]
    fn nested_prefixes_split_by_rank() {
        // 10.0.0.0/8 captcha (rank 1) with 10.1.0.0/16 ban (rank 0) inside.
        let p = vec![(0x0a00_0000, 8, 1), (0x0a01_0000, 16, 0)];
        assert_eq!(cidrs(p.clone(), 0), vec![(0x0a01_0000, 16)]);
        let cap = cidrs(p, 1);
        assert_eq!(cap.first(), Some(&(0x0a00_0000, 16)));
        assert!(cap.contains(&(0x0a02_0000, 15)));
        assert!(cap.contains(&(0x0a80_0000, 9)));
        assert_eq!(cap.len(), 8);
    }

    #[test]
    fn ban_inside_ban_and_siblings_merge() {
        let p = vec![(0x0a00_0000, 8, 0), (0x0a01_0000, 16, 1), (0x0b00_0000, 8, 0)];
        // The captcha /16 inside a ban /8 answers ban: everything is one /7.
        assert_eq!(cidrs(p, 0), vec![(0x0a00_0000, 7)]);
        let hosts = vec![(4, 32, 0), (5, 32, 0), (6, 32, 0), (7, 32, 0)];
        assert_eq!(cidrs(hosts, 0), vec![(4, 30)]);
    }

    #[test]
    fn whole_space() {
        let mut out = Vec::new();
        for (a, b) in runs(vec![(0, 0, 0)], 128, 0) {
            run_to_cidrs(a, b, 128, &mut out);
        }
        assert_eq!(out, vec![(0, 0)]);
        assert_eq!(runs(vec![(0, 0, 1), (u128::MAX, 128, 0)], 128, 0), vec![(u128::MAX, u128::MAX)]);
        assert_eq!(runs(vec![(0, 0, 0), (u128::MAX, 128, 1)], 128, 1), vec![]);
    }
}
