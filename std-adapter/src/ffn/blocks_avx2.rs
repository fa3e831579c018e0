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
    __m256i, _mm256_and_si256, _mm256_hadd_epi32, _mm256_loadu_si256, _mm256_madd_epi16, _mm256_maddubs_epi16,
    _mm256_or_si256, _mm256_set1_epi16, _mm256_set1_epi8, _mm256_sign_epi8, _mm256_slli_epi16, _mm256_srl_epi16,
    _mm256_storeu_si256, _mm_cvtsi32_si128,
};

use super::blocks::{q6k_place, row_dot as row_dot_by, Blocks, Kind, Q8Activations};

/// `Σ w_i · q_i` of 32 unsigned bytes `w` (at most 128) and signed bytes `q`, in four 32-bit
/// partial sums per half: lanes 0–3 sum the first 16 products, lanes 4–7 the last 16.
#[inline]
#[target_feature(enable = "avx2")]
fn partials(w: __m256i, q: __m256i) -> __m256i {
    _mm256_madd_epi16(_mm256_maddubs_epi16(w, q), _mm256_set1_epi16(1))
}

/// The half sums of four blocks' partials ([`partials`]) by two rounds of pairwise adds: lanes
/// 0–3 the first halves of `p[0..4]`, lanes 4–7 their second halves, into `out` as
/// `[b0 h0, b0 h1, b1 h0, …]`.
#[inline]
#[target_feature(enable = "avx2")]
fn halves4(p: [__m256i; 4], out: &mut [i32]) {
    let r = _mm256_hadd_epi32(_mm256_hadd_epi32(p[0], p[1]), _mm256_hadd_epi32(p[2], p[3]));
    let mut lanes = [0i32; 8];
    // SAFETY: `lanes` holds 8 i32, the 32 bytes stored; unaligned stores take any address.
    unsafe { _mm256_storeu_si256(lanes.as_mut_ptr().cast(), r) };
    for (b, pair) in out.chunks_exact_mut(2).take(4).enumerate() {
        pair[0] = lanes[b];
        pair[1] = lanes[4 + b];
    }
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
#[inline]
#[target_feature(enable = "avx2")]
pub(super) unsafe fn sums(kind: Kind, bytes: &[u8], q: &[i8], sums: &mut [i32; 16]) {
    let low4 = _mm256_set1_epi8(0x0F);
    let zero = _mm256_set1_epi8(0);
    match kind {
        Kind::Q8_0 => {
            // SAFETY: 2 + 32 bytes and 32 activations (the caller's lengths).
            let (w, x) = unsafe { (load(bytes, 2), load(q, 0)) };
            // |w| (−128 as 128, unsigned) times x carrying w's sign.
            halves4([partials(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w)), zero, zero, zero], &mut sums[..8]);
        }
        Kind::Q4K => {
            for (g, out) in sums.chunks_exact_mut(8).enumerate() {
                // Groups 2g and 2g + 1: sub-blocks 4g .. 4g + 4.
                let mut p = [zero; 4];
                for (i, pair) in p.chunks_exact_mut(2).enumerate() {
                    let at = 2 * g + i;
                    // SAFETY: bytes 16 + 32at .. + 32 of 144, activations 64at .. 64at + 64 of 256.
                    let (v, xl, xh) = unsafe { (load(bytes, 16 + 32 * at), load(q, 64 * at), load(q, 64 * at + 32)) };
                    pair[0] = partials(_mm256_and_si256(v, low4), xl);
                    pair[1] = partials(_mm256_and_si256(_mm256_srl_epi16(v, _mm_cvtsi32_si128(4)), low4), xh);
                }
                halves4(p, out);
            }
        }
        Kind::Q6K => {
            let low2 = _mm256_set1_epi8(0x03);
            for (g, out) in sums.chunks_exact_mut(8).enumerate() {
                let mut p = [zero; 4];
                for (i, part) in p.iter_mut().enumerate() {
                    let j = 4 * g + i;
                    let (low, high, low_shift, high_shift) = q6k_place(j);
                    // SAFETY: the 32 low and 32 high bytes lie within the 210; activations 32j .. 32j + 32.
                    let (l, h, x) = unsafe { (load(bytes, low), load(bytes, high), load(q, 32 * j)) };
                    let l = _mm256_and_si256(_mm256_srl_epi16(l, _mm_cvtsi32_si128(i32::from(low_shift))), low4);
                    let h = _mm256_and_si256(_mm256_srl_epi16(h, _mm_cvtsi32_si128(i32::from(high_shift))), low2);
                    *part = partials(_mm256_or_si256(l, _mm256_slli_epi16::<4>(h)), x);
                }
                halves4(p, out);
            }
        }
    }
}

/// [`super::blocks::row_dot`] with the half-block sums of [`sums`], the whole row compiled for
/// AVX2 so the sums and the terms are inlined into its loop.
///
/// # Safety
/// The CPU has AVX2.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn row_dot<B: Blocks>(row: &[u8], cols: usize, x: &Q8Activations) -> f32 {
    row_dot_by::<B>(row, cols, x, |bytes, q, s| {
        if bytes.len() >= B::BYTES && q.len() >= B::ELEMS {
            // SAFETY: the CPU has AVX2 (this function's contract); one whole block and its
            // activations, the lengths `sums` reads.
            unsafe { sums(B::KIND, bytes, q, s) }
        } else {
            B::sums(bytes, q, s);
        }
    })
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

    /// A whole row by [`row_dot`] against the portable row: the same bits.
    fn check_row<B: Blocks>() {
        if !std::arch::is_x86_feature_detected!("avx2") {
            return;
        }
        for (seed, blocks) in [(1u64, 1usize), (2, 3), (3, 9)] {
            let cols = blocks * B::ELEMS;
            let mut row = noise(blocks * B::BYTES, seed);
            // Finite f16 scales: clear the exponent's top bit of every byte pair that may hold one.
            row.iter_mut().skip(1).step_by(2).for_each(|b| *b &= 0xBF);
            let x: Vec<f32> = noise(cols, seed + 7).into_iter().map(|v| f32::from(v) / 37.0 - 3.0).collect();
            let x = Q8Activations::new(&x);
            // SAFETY: AVX2 detected.
            let got = unsafe { row_dot::<B>(&row, cols, &x) };
            let want = row_dot_by::<B>(&row, cols, &x, B::sums);
            assert_eq!(got.to_bits(), want.to_bits(), "{:?}, {blocks} blocks", B::KIND);
        }
    }

    #[test]
    fn a_row_compiled_for_avx2_is_the_portable_row() {
        check_row::<Q8_0>();
        check_row::<Q4K>();
        check_row::<Q6K>();
    }

    #[test]
    fn the_vector_sums_are_the_portable_ones() {
        check::<Q8_0>();
        check::<Q4K>();
        check::<Q6K>();
    }
}
