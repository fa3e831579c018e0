//! The block formats' rows with AVX2. Integer sums: 32 products of an unsigned weight byte and
//! a signed activation byte per instruction (`vpmaddubsw`, pairs summed to 16 bits without
//! overflow: at most 2 · 128 · 127), then to 32 bits; integers are exact, so the sums are the
//! portable ones whatever the grouping. Terms: a super-block's eight (or eight Q8_0 blocks')
//! in the lanes of one vector, each lane the portable term's IEEE operations in its order (no
//! fused multiply-add), added to the accumulators of their blocks (lane `j` of the `k`-th
//! group of eight is accumulator `8 (k mod 4) + j`): the portable row's bits.

#![allow(unsafe_code, reason = "AVX2 intrinsics on slices whose lengths the caller checked")]
#![allow(
    clippy::arithmetic_side_effects,
    clippy::indexing_slicing,
    reason = "offsets within blocks whose count the row functions check against the slices' lengths"
)]

use core::arch::x86_64::{
    __m128i, __m256, __m256i, _mm256_add_epi32, _mm256_add_ps, _mm256_and_si256, _mm256_blendv_ps, _mm256_castps_si256,
    _mm256_castsi256_ps, _mm256_cmpgt_epi32, _mm256_cvtepi32_ps, _mm256_cvtepi8_epi32, _mm256_hadd_epi32,
    _mm256_loadu_ps, _mm256_loadu_si256, _mm256_madd_epi16, _mm256_maddubs_epi16, _mm256_max_epi32, _mm256_mul_ps,
    _mm256_or_si256, _mm256_permute2x128_si256, _mm256_permutevar8x32_epi32, _mm256_set1_epi16, _mm256_set1_epi32,
    _mm256_set1_epi8, _mm256_set1_ps, _mm256_setr_epi32, _mm256_setzero_ps, _mm256_sign_epi8, _mm256_slli_epi16,
    _mm256_slli_epi32, _mm256_srl_epi16, _mm256_storeu_ps, _mm256_storeu_si256, _mm256_sub_epi32, _mm256_sub_ps,
    _mm_cvtsi32_si128, _mm_loadu_si128, _mm_setr_epi8, _mm_shuffle_epi8, _mm_srli_si128,
};

use super::blocks::{q4k_scale_min, q6k_place, row_dot as row_dot_by, Blocks, Kind, Q8Activations, Q8_BLOCK};
use super::order::{f16_to_f32, lane_sum, LANES};

/// `Σ w_i · q_i` of 32 unsigned bytes `w` (at most 128) and signed bytes `q`, in four 32-bit
/// partial sums per half: lanes 0–3 sum the first 16 products, lanes 4–7 the last 16.
#[inline]
#[target_feature(enable = "avx2")]
fn partials(w: __m256i, q: __m256i) -> __m256i {
    _mm256_madd_epi16(_mm256_maddubs_epi16(w, q), _mm256_set1_epi16(1))
}

/// Four blocks' half sums from their partials ([`partials`]) by two rounds of pairwise adds:
/// lanes 0–3 the first halves of `p[0..4]`, lanes 4–7 their second halves.
#[inline]
#[target_feature(enable = "avx2")]
fn halves4(p: &[__m256i; 4]) -> __m256i {
    _mm256_hadd_epi32(_mm256_hadd_epi32(p[0], p[1]), _mm256_hadd_epi32(p[2], p[3]))
}

/// Eight blocks' halves from two [`halves4`]: (first halves of blocks 0..8, second halves).
#[inline]
#[target_feature(enable = "avx2")]
fn halves8(p: &[__m256i; 8]) -> (__m256i, __m256i) {
    let (a, b) = (halves4(&[p[0], p[1], p[2], p[3]]), halves4(&[p[4], p[5], p[6], p[7]]));
    (_mm256_permute2x128_si256::<0x20>(a, b), _mm256_permute2x128_si256::<0x31>(a, b))
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

/// Eight i32 from `v[at..]`.
///
/// # Safety
/// `at + 8 <= v.len()`.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn load8(v: &[i32], at: usize) -> __m256i {
    debug_assert!(at + 8 <= v.len());
    // SAFETY: the caller keeps the eight in `v`.
    unsafe { _mm256_loadu_si256(v.as_ptr().add(at).cast()) }
}

/// Eight f32 from `v[at..]`.
///
/// # Safety
/// `at + 8 <= v.len()`.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn loadf(v: &[f32], at: usize) -> __m256 {
    debug_assert!(at + 8 <= v.len());
    // SAFETY: the caller keeps the eight in `v`.
    unsafe { _mm256_loadu_ps(v.as_ptr().add(at)) }
}

/// The partials of a Q8_0 block (34 bytes from `bytes`, its 32 activations `q`).
///
/// # Safety
/// `bytes` holds 34 bytes and `q` 32.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn q8_0_partials(bytes: &[u8], q: &[i8]) -> __m256i {
    // SAFETY: 2 + 32 bytes and 32 activations (the caller's lengths).
    let (w, x) = unsafe { (load(bytes, 2), load(q, 0)) };
    // |w| (−128 as 128, unsigned) times x carrying w's sign.
    partials(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w))
}

/// The partials of a Q4_K super-block's eight blocks of 32.
///
/// # Safety
/// `bytes` holds 144 bytes and `q` 256.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn q4k_partials(bytes: &[u8], q: &[i8]) -> [__m256i; 8] {
    let low4 = _mm256_set1_epi8(0x0F);
    let mut p = [_mm256_set1_epi32(0); 8];
    for (g, pair) in p.chunks_exact_mut(2).enumerate() {
        // SAFETY: bytes 16 + 32g .. + 32 of 144, activations 64g .. 64g + 64 of 256.
        let (v, xl, xh) = unsafe { (load(bytes, 16 + 32 * g), load(q, 64 * g), load(q, 64 * g + 32)) };
        pair[0] = partials(_mm256_and_si256(v, low4), xl);
        pair[1] = partials(_mm256_and_si256(_mm256_srl_epi16(v, _mm_cvtsi32_si128(4)), low4), xh);
    }
    p
}

/// The partials of a Q6_K super-block's eight blocks of 32 (weights 0 to 63, before their −32).
///
/// # Safety
/// `bytes` holds 210 bytes and `q` 256.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn q6k_partials(bytes: &[u8], q: &[i8]) -> [__m256i; 8] {
    let (low4, low2) = (_mm256_set1_epi8(0x0F), _mm256_set1_epi8(0x03));
    let mut p = [_mm256_set1_epi32(0); 8];
    for (j, part) in p.iter_mut().enumerate() {
        let (low, high, low_shift, high_shift) = q6k_place(j);
        // SAFETY: the 32 low and 32 high bytes lie within the 210; activations 32j .. 32j + 32.
        let (l, h, x) = unsafe { (load(bytes, low), load(bytes, high), load(q, 32 * j)) };
        let l = _mm256_and_si256(_mm256_srl_epi16(l, _mm_cvtsi32_si128(i32::from(low_shift))), low4);
        let h = _mm256_and_si256(_mm256_srl_epi16(h, _mm_cvtsi32_si128(i32::from(high_shift))), low2);
        *part = partials(_mm256_or_si256(l, _mm256_slli_epi16::<4>(h)), x);
    }
    p
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
    let (first, second) = match kind {
        // SAFETY: the caller's lengths, for each.
        Kind::Q8_0 => {
            let zero = _mm256_set1_epi32(0);
            let h = halves4(&[unsafe { q8_0_partials(bytes, q) }, zero, zero, zero]);
            (h, h)
        }
        Kind::Q4K => halves8(&unsafe { q4k_partials(bytes, q) }),
        Kind::Q6K => halves8(&unsafe { q6k_partials(bytes, q) }),
    };
    let (mut a, mut b) = ([0i32; 8], [0i32; 8]);
    // SAFETY: each array holds 8 i32, the 32 bytes stored.
    unsafe {
        _mm256_storeu_si256(a.as_mut_ptr().cast(), first);
        _mm256_storeu_si256(b.as_mut_ptr().cast(), second);
    }
    if kind == Kind::Q8_0 {
        // One block: its halves in lanes 0 and 4 of the one vector.
        sums[0] = a[0];
        sums[1] = a[4];
        return;
    }
    for (j, pair) in sums.chunks_exact_mut(2).enumerate() {
        pair[0] = a[j];
        pair[1] = b[j];
    }
}

/// Eight blocks' activation half sums (16 from `sums[at..]`, each block's two in turn) as
/// (first halves, second halves).
///
/// # Safety
/// `at + 16 <= sums.len()`.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn activation_halves(sums: &[i32], at: usize) -> (__m256i, __m256i) {
    // SAFETY: the caller's length.
    let (a, b) = unsafe { (load8(sums, at), load8(sums, at + 8)) };
    // Each vector's first halves to its low 128 bits, its second halves to its high.
    let split = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
    let (a, b) = (_mm256_permutevar8x32_epi32(a, split), _mm256_permutevar8x32_epi32(b, split));
    (_mm256_permute2x128_si256::<0x20>(a, b), _mm256_permute2x128_si256::<0x31>(a, b))
}

/// `row · x` as [`super::blocks::row_dot`] gives it, eight blocks' terms a vector: Q4_K and
/// Q6_K by super-blocks, Q8_0 by eight blocks at a time (rows of other lengths, and activations
/// shorter than the row, take the portable loop with the vector sums, compiled here too).
///
/// # Safety
/// The CPU has AVX2.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn row_dot<B: Blocks>(row: &[u8], cols: usize, x: &Q8Activations) -> f32 {
    let groups = cols / (8 * Q8_BLOCK);
    let whole = groups * 8 * Q8_BLOCK == cols
        && row.len() / B::BYTES >= cols / B::ELEMS
        && x.q.len() >= cols
        && x.d.len() >= cols / Q8_BLOCK
        && x.sums.len() >= 2 * (cols / Q8_BLOCK);
    if !whole {
        return row_dot_by::<B>(row, cols, x, |bytes, q, s| {
            if bytes.len() >= B::BYTES && q.len() >= B::ELEMS {
                // SAFETY: the CPU has AVX2 (this function's contract); one whole block and its
                // activations, the lengths `sums` reads.
                unsafe { sums(B::KIND, bytes, q, s) }
            } else {
                B::sums(bytes, q, s);
            }
        });
    }
    let mut acc = [_mm256_setzero_ps(); 4];
    for k in 0..groups {
        let first = 8 * k;
        // SAFETY: `whole` checked the row's bytes, the activations' bytes, scales and sums
        // for every group.
        let t = unsafe {
            let dx = loadf(&x.d, first);
            let q = &x.q[first * Q8_BLOCK..];
            // The group's first block of the format: Q8_0's blocks are the blocks of 32.
            let bytes = &row[first * Q8_BLOCK / B::ELEMS * B::BYTES..];
            match B::KIND {
                Kind::Q8_0 => q8_0_terms(bytes, q, dx),
                Kind::Q4K => q4k_terms(bytes, q, dx, &x.sums, 2 * first),
                Kind::Q6K => q6k_terms(bytes, q, dx, &x.sums, 2 * first),
            }
        };
        acc[k % 4] = _mm256_add_ps(acc[k % 4], t);
    }
    let mut lanes = [0.0f32; LANES];
    for (i, v) in acc.iter().enumerate() {
        // SAFETY: eight f32 from 8i of 32.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr().add(8 * i), *v) };
    }
    lane_sum(lanes)
}

/// The whole-block sums of eight blocks from their halves ([`halves8`]).
#[inline]
#[target_feature(enable = "avx2")]
fn whole8(p: &[__m256i; 8]) -> __m256i {
    let (a, b) = halves8(p);
    _mm256_add_epi32(a, b)
}

/// [`f16_to_f32`] of eight halves at once (each in the low 16 bits of a lane): the same
/// operations lane by lane (a normal half's bits moved and multiplied by 2^112, a subnormal's
/// mantissa by 2^−24, exponent 31 kept with its payload, then the sign), so the same bits.
#[inline]
#[target_feature(enable = "avx2")]
fn f16x8_to_f32(bits: __m256i) -> __m256 {
    let magnitude = _mm256_slli_epi32::<13>(_mm256_and_si256(bits, _mm256_set1_epi32(0x7fff)));
    // Never a subnormal operand (see `f16_to_f32`): subnormal lanes multiply the smallest normal
    // and take `subnormal` below.
    let normal = _mm256_mul_ps(
        _mm256_castsi256_ps(_mm256_max_epi32(magnitude, _mm256_set1_epi32(0x0080_0000))),
        _mm256_set1_ps(f32::from_bits(0x7780_0000)),
    );
    let subnormal = _mm256_mul_ps(
        _mm256_cvtepi32_ps(_mm256_and_si256(bits, _mm256_set1_epi32(0x3ff))),
        _mm256_set1_ps(f32::from_bits(0x3380_0000)),
    );
    let special = _mm256_castsi256_ps(_mm256_or_si256(_mm256_set1_epi32(0x7f80_0000), magnitude));
    // Magnitudes are below 2^28: signed comparisons order them.
    let is_special = _mm256_castsi256_ps(_mm256_cmpgt_epi32(magnitude, _mm256_set1_epi32(0x0f7f_ffff)));
    let is_subnormal = _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(0x0080_0000), magnitude));
    let value = _mm256_blendv_ps(_mm256_blendv_ps(normal, subnormal, is_subnormal), special, is_special);
    let sign = _mm256_slli_epi32::<16>(_mm256_and_si256(bits, _mm256_set1_epi32(0x8000)));
    _mm256_castsi256_ps(_mm256_or_si256(_mm256_castps_si256(value), sign))
}

/// Eight Q8_0 blocks' terms `(dw · d) · I`.
///
/// # Safety
/// `bytes` holds 8 · 34 bytes, `q` 256.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn q8_0_terms(bytes: &[u8], q: &[i8], dx: __m256) -> __m256 {
    let mut p = [_mm256_set1_epi32(0); 8];
    let mut dw = [0i32; 8];
    for (b, (part, w)) in p.iter_mut().zip(&mut dw).enumerate() {
        // SAFETY: block b's 34 bytes and 32 activations (the caller's lengths).
        *part = unsafe { q8_0_partials(&bytes[34 * b..], &q[32 * b..]) };
        *w = i32::from(u16::from_le_bytes([bytes[34 * b], bytes[34 * b + 1]]));
    }
    // SAFETY: eight i32.
    let dw = f16x8_to_f32(unsafe { load8(&dw, 0) });
    _mm256_mul_ps(_mm256_mul_ps(dw, dx), _mm256_cvtepi32_ps(whole8(&p)))
}

/// A Q6_K super-block's scales of its blocks' first and second halves (signed bytes 192..208,
/// even and odd) as f32.
///
/// # Safety
/// `bytes` holds at least 208 bytes.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn q6k_scales(bytes: &[u8]) -> (__m256, __m256) {
    debug_assert!(bytes.len() >= 208);
    // SAFETY: bytes 192..208 (the caller's length); unaligned loads take any address.
    let s = unsafe { _mm_loadu_si128(bytes.as_ptr().add(192).cast()) };
    let split = _mm_shuffle_epi8(s, _mm_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15));
    let as_f32 = |v: __m128i| _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v));
    (as_f32(split), as_f32(_mm_srli_si128::<8>(split)))
}

/// A Q4_K super-block's eight terms `d · ((dq · I) − (mq · S))`.
///
/// # Safety
/// `bytes` holds 144 bytes, `q` 256, `sums[at..]` 16.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn q4k_terms(bytes: &[u8], q: &[i8], dx: __m256, sums: &[i32], at: usize) -> __m256 {
    // SAFETY: the caller's lengths.
    let (i, (s0, s1)) = unsafe { (whole8(&q4k_partials(bytes, q)), activation_halves(sums, at)) };
    let d = f16_to_f32(u16::from_le_bytes([bytes[0], bytes[1]]));
    let dmin = f16_to_f32(u16::from_le_bytes([bytes[2], bytes[3]]));
    let mut packed = [0u8; 12];
    packed.copy_from_slice(&bytes[4..16]);
    let (mut sc, mut m) = ([0.0f32; 8], [0.0f32; 8]);
    for j in 0..8 {
        let (a, b) = q4k_scale_min(j, &packed);
        sc[j] = f32::from(a);
        m[j] = f32::from(b);
    }
    // SAFETY: eight f32 each.
    let (sc, m) = unsafe { (loadf(&sc, 0), loadf(&m, 0)) };
    let (dq, mq) = (_mm256_mul_ps(_mm256_set1_ps(d), sc), _mm256_mul_ps(_mm256_set1_ps(dmin), m));
    let s = _mm256_cvtepi32_ps(_mm256_add_epi32(s0, s1));
    _mm256_mul_ps(dx, _mm256_sub_ps(_mm256_mul_ps(dq, _mm256_cvtepi32_ps(i)), _mm256_mul_ps(mq, s)))
}

/// A Q6_K super-block's eight terms `d · (((d_sb · s0) · J0) + ((d_sb · s1) · J1))`.
///
/// # Safety
/// `bytes` holds 210 bytes, `q` 256, `sums[at..]` 16.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn q6k_terms(bytes: &[u8], q: &[i8], dx: __m256, sums: &[i32], at: usize) -> __m256 {
    // SAFETY: the caller's lengths.
    let ((w0, w1), (h0, h1)) = unsafe { (halves8(&q6k_partials(bytes, q)), activation_halves(sums, at)) };
    let j0 = _mm256_sub_epi32(w0, _mm256_slli_epi32::<5>(h0));
    let j1 = _mm256_sub_epi32(w1, _mm256_slli_epi32::<5>(h1));
    let d = _mm256_set1_ps(f16_to_f32(u16::from_le_bytes([bytes[208], bytes[209]])));
    // SAFETY: the caller's 210 bytes hold the 16 scales from byte 192.
    let (s0, s1) = unsafe { q6k_scales(bytes) };
    let a = _mm256_mul_ps(_mm256_mul_ps(d, s0), _mm256_cvtepi32_ps(j0));
    let b = _mm256_mul_ps(_mm256_mul_ps(d, s1), _mm256_cvtepi32_ps(j1));
    _mm256_mul_ps(dx, _mm256_add_ps(a, b))
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

    /// A whole row by [`row_dot`] against the portable row: the same bits, whether its terms
    /// go eight a vector or block by block.
    fn check_row<B: Blocks>() {
        if !std::arch::is_x86_feature_detected!("avx2") {
            return;
        }
        // Q8_0 by eight blocks where the row has whole groups of eight (8, 24), else block by block.
        for (seed, blocks) in (0..40u64).map(|s| (s, [1usize, 3, 8, 9, 24][s as usize % 5])) {
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
    fn eight_halves_widen_to_the_bits_of_one_at_a_time() {
        if !std::arch::is_x86_feature_detected!("avx2") {
            return;
        }
        for first in (0..=u16::MAX).step_by(8) {
            let halves: [i32; 8] = core::array::from_fn(|i| i32::from(first) + i as i32);
            // SAFETY: AVX2 detected; eight i32 loaded, eight f32 stored.
            let got = unsafe {
                let mut out = [0.0f32; 8];
                _mm256_storeu_ps(out.as_mut_ptr(), f16x8_to_f32(load8(&halves, 0)));
                out
            };
            for (h, v) in halves.iter().zip(got) {
                let want = f16_to_f32(*h as u16);
                assert_eq!(v.to_bits(), want.to_bits(), "half {h:#06x}");
            }
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
