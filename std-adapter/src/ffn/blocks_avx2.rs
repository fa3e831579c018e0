//! The block formats' integer sums ([`super::blocks::Blocks::sums`]) with AVX2: 32 products of
//! an unsigned weight byte and a signed activation byte per instruction (`vpmaddubsw`, pairs
//! summed to 16 bits without overflow: at most 2 · 128 · 127), then to 32 bits. Integers are
//! exact, so the sums are the portable ones whatever the grouping.

#![allow(unsafe_code, reason = "AVX2 intrinsics on slices whose lengths the caller checked")]
#![allow(
    clippy::arithmetic_side_effects,
    clippy::indexing_slicing,
    reason = "offsets within a block of fixed size; sums[..16] indexed by g < 4 and j < 8"
)]

use core::arch::x86_64::{
    __m128i, __m256i, _mm256_and_si256, _mm256_castsi256_si128, _mm256_extracti128_si256, _mm256_loadu_si256,
    _mm256_madd_epi16, _mm256_maddubs_epi16, _mm256_or_si256, _mm256_set1_epi16, _mm256_set1_epi8, _mm256_sign_epi8,
    _mm256_slli_epi16, _mm256_srl_epi16, _mm_add_epi32, _mm_cvtsi128_si32, _mm_cvtsi32_si128, _mm_shuffle_epi32,
};

use super::blocks::{q6k_place, Kind};

/// The sum of a vector's four 32-bit lanes.
#[inline]
#[target_feature(enable = "avx2")]
fn sum4(v: __m128i) -> i32 {
    let s = _mm_add_epi32(v, _mm_shuffle_epi32::<0b01_00_11_10>(v));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s));
    _mm_cvtsi128_si32(s)
}

/// `Σ w_i · q_i` over each half of 32 unsigned bytes `w` (at most 128) and signed bytes `q`.
#[inline]
#[target_feature(enable = "avx2")]
fn halves(w: __m256i, q: __m256i) -> [i32; 2] {
    let pairs = _mm256_madd_epi16(_mm256_maddubs_epi16(w, q), _mm256_set1_epi16(1));
    [sum4(_mm256_castsi256_si128(pairs)), sum4(_mm256_extracti128_si256::<1>(pairs))]
}

/// 32 bytes from `bytes[at..]`.
///
/// # Safety
/// `at + 32 <= bytes.len()`.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn load<T>(bytes: &[T], at: usize) -> __m256i {
    debug_assert!(size_of::<T>() == 1 && at + 32 <= bytes.len());
    // SAFETY: the caller keeps the 32 bytes in `bytes`; unaligned loads take any address.
    unsafe { _mm256_loadu_si256(bytes.as_ptr().add(at).cast()) }
}

/// The half-block sums of one block of `kind` (`bytes` its bytes, `q` its activations' bytes)
/// into `sums`, as [`super::blocks::Blocks::sums`] gives them.
///
/// # Safety
/// The CPU has AVX2; `bytes` holds at least the format's block (34, 144 or 210 bytes) and `q`
/// at least its elements (32, 256 or 256).
#[target_feature(enable = "avx2")]
pub(super) unsafe fn sums(kind: Kind, bytes: &[u8], q: &[i8], sums: &mut [i32; 16]) {
    let low4 = _mm256_set1_epi8(0x0F);
    match kind {
        Kind::Q8_0 => {
            // SAFETY: 2 + 32 bytes and 32 activations (the caller's lengths).
            let (w, x) = unsafe { (load(bytes, 2), load(q, 0)) };
            // |w| (−128 as 128, unsigned) times x carrying w's sign.
            let [a, b] = halves(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w));
            sums[0] = a;
            sums[1] = b;
        }
        Kind::Q4K => {
            for g in 0..4 {
                // SAFETY: bytes 16 + 32g .. + 32 of 144, activations 64g .. 64g + 64 of 256.
                let (v, xl, xh) = unsafe { (load(bytes, 16 + 32 * g), load(q, 64 * g), load(q, 64 * g + 32)) };
                let lo = _mm256_and_si256(v, low4);
                let hi = _mm256_and_si256(_mm256_srl_epi16(v, _mm_cvtsi32_si128(4)), low4);
                let [a, b] = halves(lo, xl);
                let [c, d] = halves(hi, xh);
                sums[4 * g..4 * g + 4].copy_from_slice(&[a, b, c, d]);
            }
        }
        Kind::Q6K => {
            let low2 = _mm256_set1_epi8(0x03);
            for j in 0..8 {
                let (low, high, low_shift, high_shift) = q6k_place(j);
                // SAFETY: the 32 low and 32 high bytes lie within the 210; activations 32j .. 32j + 32.
                let (l, h, x) = unsafe { (load(bytes, low), load(bytes, high), load(q, 32 * j)) };
                let l = _mm256_and_si256(_mm256_srl_epi16(l, _mm_cvtsi32_si128(i32::from(low_shift))), low4);
                let h = _mm256_and_si256(_mm256_srl_epi16(h, _mm_cvtsi32_si128(i32::from(high_shift))), low2);
                let [a, b] = halves(_mm256_or_si256(l, _mm256_slli_epi16::<4>(h)), x);
                sums[2 * j] = a;
                sums[2 * j + 1] = b;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::blocks::tests::noise;
    use super::super::blocks::{Blocks, Q4K, Q6K, Q8_0};
    use super::*;

    /// The vector sums against the portable ones ([`Blocks::sums`], held to the layouts by
    /// `blocks`' tests): every byte value on random blocks (−128 among the weights).
    fn check<B: Blocks>() {
        if !std::arch::is_x86_feature_detected!("avx2") {
            return;
        }
        for seed in 0..50u64 {
            let bytes = noise(B::BYTES, seed);
            let q: Vec<i8> = noise(B::ELEMS, seed + 1000).into_iter().map(|v| v.cast_signed().max(-127)).collect();
            let (mut want, mut got) = ([0i32; 16], [0i32; 16]);
            B::sums(&bytes, &q, &mut want);
            // SAFETY: AVX2 detected; one whole block and its activations.
            unsafe { sums(B::KIND, &bytes, &q, &mut got) };
            assert_eq!(got, want, "{:?}, seed {seed}", B::KIND);
        }
    }

    #[test]
    fn the_vector_sums_are_the_portable_ones() {
        check::<Q8_0>();
        check::<Q4K>();
        check::<Q6K>();
    }
}
