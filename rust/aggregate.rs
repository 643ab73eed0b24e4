//! Minimal CIDR lists of the addresses whose answer is a given remediation, with how long
//! each keeps that answer.
//!
//! The stored prefixes of a family are nested or disjoint, so one sweep in (start, length)
//! order splits the address space into intervals of constant answer ([`pieces`]); the intervals
//! answering the wanted rank are merged when adjacent, and each maximal run is cut into the
//! fewest aligned CIDR blocks (greedy largest block first, which is optimal for a run).
//!
//! Each piece carries `until`: the latest expiry among the active decisions of the wanted rank
//! covering it. No more severe decision covers a piece (else it would not answer the wanted
//! rank) and none can appear without a change, so the answer there holds exactly until then.
//! A block carries the latest `until` of the pieces it covers.

use crate::slot::NO_RANK;

fn low_mask(n: u32) -> u128 {
    if n >= 128 {
        u128::MAX
    } else {
        (1u128 << n) - 1
    }
}

/// The answer of a prefix nested in one answering `parent`: the more severe rank wins, and
/// equal ranks hold until the later expiry.
fn nest(own: (u16, u64), parent: (u16, u64)) -> (u16, u64) {
    match own.0.cmp(&parent.0) {
        std::cmp::Ordering::Less => own,
        std::cmp::Ordering::Greater => parent,
        std::cmp::Ordering::Equal => (own.0, own.1.max(parent.1)),
    }
}

/// Addresses (as `(first, last, until)` intervals) whose effective rank equals `want`.
/// `prefixes` holds `(start, len, own best rank, until of that rank)`; `bits` is 32 or 128.
/// Adjacent intervals are merged when their `until` is the same.
pub fn pieces(mut prefixes: Vec<(u128, u8, u16, u64)>, bits: u8, want: u16) -> Vec<(u128, u128, u64)> {
    prefixes.sort_unstable_by_key(|&(s, l, _, _)| (s, l));
    let mut out: Vec<(u128, u128, u64)> = Vec::new();
    let mut emit = |a: u128, b: u128, (rank, until): (u16, u64)| {
        if rank != want || a > b {
            return;
        }
        match out.last_mut() {
            Some(last) if last.1.checked_add(1) == Some(a) && last.2 == until => last.1 = b,
            _ => out.push((a, b, until)),
        }
    };
    // Open prefixes: (last address, effective answer).
    let mut stack: Vec<(u128, (u16, u64))> = Vec::new();
    let mut cursor: Option<u128> = Some(0);
    for (s, len, rank, until) in prefixes {
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
        let parent = stack.last().map_or((NO_RANK, 0), |&(_, r)| r);
        if let Some(c) = cursor {
            if c < s {
                emit(c, s - 1, parent);
            }
        }
        cursor = Some(s);
        stack.push((e, nest((rank, until), parent)));
    }
    while let Some((te, teff)) = stack.pop() {
        if let Some(c) = cursor {
            emit(c, te, teff);
        }
        cursor = te.checked_add(1);
    }
    out
}

/// The fewest CIDR blocks `(start, len, until)` covering exactly the `pieces` (sorted,
/// disjoint), each with the latest `until` of the pieces it covers.
pub fn blocks(pieces: &[(u128, u128, u64)], bits: u8) -> Vec<Block> {
    let mut out = Vec::new();
    let mut cut = Vec::new();
    let mut i = 0;
    while i < pieces.len() {
        // One maximal run of adjacent pieces: pieces[i..j].
        let mut j = i + 1;
        while j < pieces.len() && pieces[j - 1].1.checked_add(1) == Some(pieces[j].0) {
            j += 1;
        }
        cut.clear();
        run_to_cidrs(pieces[i].0, pieces[j - 1].1, bits, &mut cut);
        let mut p = i;
        for &(start, len) in &cut {
            let last = start | low_mask(u32::from(bits - len));
            while pieces[p].1 < start {
                p += 1;
            }
            let until = pieces[p..j].iter().take_while(|q| q.0 <= last).map(|q| q.2).max().unwrap_or(0);
            out.push((start, len, until));
        }
        i = j;
    }
    out
}

/// One exported block: `(start, len, until)`.
pub type Block = (u128, u8, u64);

/// What turns the export `old` into `new` (both from [`blocks`]: sorted, disjoint): the blocks
/// of `new` to add and those of `old` to delete. A block whose `until` changed is in both.
pub fn changes<'a>(old: &'a [Block], new: &'a [Block]) -> (Vec<&'a Block>, Vec<&'a Block>) {
    let (mut add, mut delete) = (Vec::new(), Vec::new());
    let (mut i, mut j) = (0, 0);
    while i < old.len() || j < new.len() {
        match (old.get(i), new.get(j)) {
            (Some(a), Some(b)) if (a.0, a.1) == (b.0, b.1) => {
                if a.2 != b.2 {
                    delete.push(a);
                    add.push(b);
                }
                i += 1;
                j += 1;
            }
            (Some(a), Some(b)) if (a.0, a.1) < (b.0, b.1) => {
                delete.push(a);
                i += 1;
            }
            (Some(a), None) => {
                delete.push(a);
                i += 1;
            }
            (_, Some(b)) => {
                add.push(b);
                j += 1;
            }
            (None, None) => break,
        }
    }
    (add, delete)
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

    fn with_until(p: &[(u128, u8, u16, u64)], want: u16) -> Vec<(u128, u8, u64)> {
        blocks(&pieces(p.to_vec(), 32, want), 32)
    }

    fn cidrs(p: Vec<(u128, u8, u16)>, want: u16) -> Vec<(u128, u8)> {
        let p: Vec<_> = p.into_iter().map(|(s, l, r)| (s, l, r, 9)).collect();
        with_until(&p, want).into_iter().map(|(s, l, _)| (s, l)).collect()
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
        let b = blocks(&pieces(vec![(0, 0, 0, 5)], 128, 0), 128);
        assert_eq!(b, vec![(0, 0, 5)]);
        let p = pieces(vec![(0, 0, 1, 5), (u128::MAX, 128, 0, 6)], 128, 0);
        assert_eq!(p, vec![(u128::MAX, u128::MAX, 6)]);
        assert_eq!(pieces(vec![(0, 0, 0, 5), (u128::MAX, 128, 1, 6)], 128, 1), vec![]);
    }

    #[test]
    fn changes_pair_blocks_by_start_and_length() {
        let old = [(1, 32, 5), (2, 31, 5), (8, 29, 5), (16, 28, 5)];
        let new = [(1, 32, 5), (2, 31, 6), (4, 30, 5), (16, 28, 5), (32, 27, 1)];
        let (add, delete) = changes(&old, &new);
        assert_eq!(add, vec![&(2, 31, 6), &(4, 30, 5), &(32, 27, 1)]);
        assert_eq!(delete, vec![&(2, 31, 5), &(8, 29, 5)]);
        let (add, delete) = changes(&[], &new);
        assert_eq!((add.len(), delete.len()), (5, 0));
        let (add, delete) = changes(&old, &[]);
        assert_eq!((add.len(), delete.len()), (0, 4));
    }

    #[test]
    fn until_follows_the_rank_that_answers() {
        // A ban /8 until 50 holding a ban /16 until 90 and a captcha /16 until 70.
        let p = [(0x0a00_0000, 8, 0, 50), (0x0a01_0000, 16, 0, 90), (0x0a02_0000, 16, 1, 70)];
        let ban = with_until(&p, 0);
        // One /8 (the captcha inside answers ban): it holds ban until the later of the two bans.
        assert_eq!(ban, vec![(0x0a00_0000, 8, 90)]);
        // A captcha /8 holding a ban host until 30: the captcha blocks keep 70, the host is out.
        let p = [(0x0a00_0000, 8, 1, 70), (0x0a00_0001, 32, 0, 30)];
        let cap = with_until(&p, 1);
        assert!(cap.iter().all(|&(s, _, u)| u == 70 && s != 0x0a00_0001));
        assert_eq!(with_until(&p, 0), vec![(0x0a00_0001, 32, 30)]);
        // Adjacent hosts with their own expiries merge into one /31 holding the later.
        let p = [(4, 32, 0, 10), (5, 32, 0, 20), (6, 32, 0, 30)];
        assert_eq!(with_until(&p, 0), vec![(4, 31, 20), (6, 32, 30)]);
    }
}
