//! Address keys: one trait over `u32` (IPv4) and `u128` (IPv6) so every table is written once.

use std::fmt::Debug;
use std::hash::Hash;

/// An address family's integer key, most significant bit first.
pub trait Bits: Copy + Eq + Ord + Hash + Debug + Send + Sync + Default + 'static {
    /// Width of an address in bits (32 or 128).
    const BITS: u8;
    /// The network mask with `len` leading ones.
    fn mask(len: u8) -> Self;
    /// The bit at position `i` counted from the most significant (0) end.
    fn bit(self, i: u8) -> usize;
    /// Number of leading bits `self` and `other` share.
    fn common(self, other: Self) -> u8;
    /// The top 16 bits, used to index the range-coverage counters.
    fn top16(self) -> usize;
    /// Bitwise and.
    fn and(self, other: Self) -> Self;
    /// Widens to `u128` (IPv4 keys stay below 2^32).
    fn to_u128(self) -> u128;
    /// Narrows from `u128`; the caller guarantees the value fits.
    fn from_u128(v: u128) -> Self;
    /// A 64-bit hash of the key under `seed`, well mixed in its high bits.
    fn hash64(self, seed: u64) -> u64;
    /// The first address of top-16-bit block `b`.
    fn block_start(b: usize) -> Self;
}

macro_rules! impl_bits {
    ($t:ty, $bits:expr) => {
        impl Bits for $t {
            const BITS: u8 = $bits;
            #[inline]
            fn mask(len: u8) -> Self {
                if len == 0 {
                    0
                } else {
                    <$t>::MAX << ($bits - len as u32)
                }
            }
            #[inline]
            fn bit(self, i: u8) -> usize {
                ((self >> ($bits - 1 - i as u32)) & 1) as usize
            }
            #[inline]
            fn common(self, other: Self) -> u8 {
                (self ^ other).leading_zeros() as u8
            }
            #[inline]
            fn top16(self) -> usize {
                (self >> ($bits - 16)) as usize
            }
            #[inline]
            fn and(self, other: Self) -> Self {
                self & other
            }
            #[inline]
            fn to_u128(self) -> u128 {
                self as u128
            }
            #[inline]
            fn from_u128(v: u128) -> Self {
                v as $t
            }
            #[inline]
            fn hash64(self, seed: u64) -> u64 {
                let v = self as u128;
                let folded = (v as u64) ^ ((v >> 64) as u64).rotate_left(29);
                let h = (folded ^ seed).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                (h ^ (h >> 29)).wrapping_mul(0xBF58_476D_1CE4_E5B9)
            }
            #[inline]
            fn block_start(b: usize) -> Self {
                ((b as $t) << ($bits - 16))
            }
        }
    };
}

impl_bits!(u32, 32);
impl_bits!(u128, 128);

#[cfg(test)]
mod tests {
    use super::Bits;

    #[test]
    fn masks_and_bits() {
        assert_eq!(u32::mask(0), 0);
        assert_eq!(u32::mask(8), 0xff00_0000);
        assert_eq!(u32::mask(32), u32::MAX);
        assert_eq!(u128::mask(128), u128::MAX);
        assert_eq!(0x8000_0000u32.bit(0), 1);
        assert_eq!(0x8000_0000u32.bit(1), 0);
        assert_eq!(1u32.bit(31), 1);
        assert_eq!(0xff00_0000u32.common(0xfe00_0000), 7);
        assert_eq!(5u32.common(5), 32);
        assert_eq!(0x0a0b_0000u32.top16(), 0x0a0b);
    }
}
