//! Block-quantized weights (Q8_0, Q4_K, Q6_K, as ggml lays them out) and their dot products
//! with activations quantized to 8 bits, on the host and in the GPU kernels (`moe_ffn.cu`
//! follows this file step by step).
//!
//! A row of a block format is not widened to f32 weights: as llama.cpp's CPU and GPU paths do,
//! the activations are quantized to signed bytes in blocks of [`Q8_BLOCK`] and each block's
//! products are summed in integers, which are exact in any order; only a block's scales are f32
//! arithmetic. The order (every operation an IEEE-754 single-precision one that rounds once,
//! none fused):
//!
//! - **The activations** `x` (a token's, or a pair's intermediate row `h`), block by block of 32:
//!   `amax` the largest `|x_i|` (a NaN counts as 0), `d = amax / 127`, and each
//!   `q_i = round_ties_even(x_i / d)` clamped to ±127 (0 when `d` is not above 0 or the quotient
//!   is a NaN); [`Q8Activations`] also keeps each half-block's sum `Σ q_i` (16 elements).
//! - **A block's term** `t_b` for block `b` of 32 elements of a row, from its integer products
//!   `I = Σ q_w,i · q_i`:
//!   - Q8_0 (an f16 scale `dw`, 32 signed bytes): `t = (dw · d) · I`;
//!   - Q4_K (sub-block `j` of a super-block: `dq = d_sb · sc_j`, `mq = dmin_sb · m_j`):
//!     `t = d · ((dq · I) − (mq · S))`, `S` the block's `Σ q_i`;
//!   - Q6_K (two groups of 16 with signed scales `s0`, `s1` under the super-block's `d_sb`;
//!     `J_g = Σ (q_w,i − 32) · q_i` over the group):
//!     `t = d · (((d_sb · s0) · J_0) + ((d_sb · s1) · J_1))`.
//! - **The row**: `acc[b mod 32] = acc[b mod 32] + t_b` from 0 over the row's blocks in order,
//!   then [`super::order::lane_sum`] of the 32 accumulators (the GPU's lane `l` takes blocks
//!   `l, l + 32, …` and the warp's butterfly sums them).
//!
//! So a pair computed on the host has the bits of the same pair on the GPU, whatever the load
//! width, the lane count a CPU vector holds or where the weights lie. Against the products with
//! the f32 activations, the 8-bit activations move a pair's outputs by up to about 1.5% of its
//! largest output (tested on random weights: 0.6–1.4%).

#![allow(
    clippy::arithmetic_side_effects,
    reason = "indexes bounded by a row's blocks and a block's bytes; integer sums of at most 256 products of \
              bytes (|p| ≤ 255 · 128) fit i32"
)]

use super::order::{f16_to_f32, lane_sum, LANES};

/// Elements of an activation block (and of a block term).
pub const Q8_BLOCK: usize = 32;
/// Elements of a half-block, the group of a Q6_K scale.
const HALF: usize = Q8_BLOCK / 2;

/// A vector's activations quantized to 8 bits ([module docs](self)): the signed bytes, each
/// block's scale and each half-block's sum.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Q8Activations {
    /// The signed bytes, a whole number of blocks.
    pub q: Vec<i8>,
    /// Each block's scale `d`.
    pub d: Vec<f32>,
    /// Each half-block's `Σ q_i`.
    pub sums: Vec<i32>,
}

impl Q8Activations {
    /// `x` quantized: its whole blocks of [`Q8_BLOCK`] (elements past the last whole block are
    /// dropped: block formats' rows are whole blocks).
    pub fn new(x: &[f32]) -> Self {
        let mut out = Self::default();
        out.quantize(x);
        out
    }

    /// Quantizes `x` into `self`, reusing its buffers.
    pub fn quantize(&mut self, x: &[f32]) {
        let blocks = x.len() / Q8_BLOCK;
        self.q.clear();
        self.d.clear();
        self.sums.clear();
        self.q.reserve(blocks * Q8_BLOCK);
        for block in x.as_chunks::<Q8_BLOCK>().0 {
            let amax = block.iter().fold(0.0f32, |m, v| if v.abs() > m { v.abs() } else { m });
            let d = amax / 127.0;
            let start = self.q.len();
            self.q.extend(block.iter().map(|&v| quantize_one(v, d)));
            self.d.push(d);
            let q = self.q.get(start..).unwrap_or_default();
            self.sums.extend(q.chunks_exact(HALF).map(|h| h.iter().map(|&v| i32::from(v)).sum::<i32>()));
        }
    }

    /// Blocks held.
    pub fn blocks(&self) -> usize {
        self.d.len()
    }

    /// Each activation as the block formats' rows read it: `d · q`, exact in f64 (what a
    /// reference computing in f64 multiplies the weights by).
    pub fn values(&self) -> impl Iterator<Item = f64> + '_ {
        self.q
            .chunks_exact(Q8_BLOCK)
            .zip(&self.d)
            .flat_map(|(q, &d)| q.iter().map(move |&v| f64::from(d) * f64::from(v)))
    }
}

/// One activation's byte under its block's scale `d`: `x / d` rounded to the nearest integer,
/// ties to even, clamped to ±127; 0 when `d` is not above 0 or the quotient is a NaN.
#[inline]
#[allow(clippy::cast_possible_truncation, reason = "the value is an integer within ±127")]
fn quantize_one(x: f32, d: f32) -> i8 {
    if d <= 0.0 {
        return 0;
    }
    let r = x / d;
    if r > 127.0 {
        127
    } else if r < -127.0 {
        -127
    } else if r.is_nan() {
        0
    } else {
        r.round_ties_even() as i8
    }
}

/// Which block format (the vector sums pick theirs by it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Q8_0,
    Q4K,
    Q6K,
}

/// A block-quantized format: fixed blocks of [`Blocks::ELEMS`] elements in [`Blocks::BYTES`]
/// bytes. A block's integer sums ([`Blocks::sums`]: per half-block of 16 elements, `Σ q_w · q`
/// with `q_w` the stored value, Q6_K's 0 to 63 before its −32) are exact however they are
/// summed; its terms ([module docs](self)) are formed from them.
pub(super) trait Blocks {
    /// Elements of a block (32 or 256).
    const ELEMS: usize;
    /// Bytes of a block.
    const BYTES: usize;
    /// Which format.
    const KIND: Kind;
    /// The half-block sums of the block `bytes` (exactly [`Blocks::BYTES`]) against the
    /// activations' bytes `q` (exactly [`Blocks::ELEMS`]), into `sums[..ELEMS / 16]`.
    fn sums(bytes: &[u8], q: &[i8], sums: &mut [i32; 16]);
    /// The terms of the block from its sums, against the activation blocks from `first` on, in
    /// order, into `out` (`ELEMS / 32` long).
    fn terms(bytes: &[u8], x: &Q8Activations, first: usize, sums: &[i32; 16], out: &mut [f32]);
}

/// `Σ a_i · b_i` over equal lengths, in integers (exact).
#[inline(always)]
fn products(a: impl Iterator<Item = i32>, b: &[i8]) -> i32 {
    a.zip(b).map(|(a, &b)| a * i32::from(b)).sum()
}

/// The f16 at `bytes[at..at + 2]`, little-endian, widened (0 when out of range).
#[inline(always)]
fn half_at(bytes: &[u8], at: usize) -> f32 {
    match bytes.get(at..).and_then(<[u8]>::first_chunk::<2>) {
        Some(b) => f16_to_f32(u16::from_le_bytes(*b)),
        None => 0.0,
    }
}

/// Activation block `b`'s scale and half-block sums (zeros past the end).
#[inline(always)]
fn activation(x: &Q8Activations, b: usize) -> (f32, [i32; 2]) {
    let s = |h: usize| x.sums.get(2 * b + h).copied().unwrap_or(0);
    (x.d.get(b).copied().unwrap_or(0.0), [s(0), s(1)])
}

/// Q8_0 weights: blocks of 32 elements, each an f16 scale `dw` then 32 signed bytes.
pub(super) struct Q8_0;

impl Blocks for Q8_0 {
    const ELEMS: usize = 32;
    const BYTES: usize = 34;
    const KIND: Kind = Kind::Q8_0;

    #[inline(always)]
    fn sums(bytes: &[u8], q: &[i8], sums: &mut [i32; 16]) {
        let w = bytes.get(2..).unwrap_or_default();
        for (h, s) in sums.iter_mut().take(2).enumerate() {
            let w = w.iter().skip(HALF * h).take(HALF).map(|&b| i32::from(b.cast_signed()));
            *s = products(w, q.get(HALF * h..).unwrap_or_default());
        }
    }

    #[inline(always)]
    fn terms(bytes: &[u8], x: &Q8Activations, first: usize, sums: &[i32; 16], out: &mut [f32]) {
        let (d, _) = activation(x, first);
        if let Some(t) = out.first_mut() {
            *t = half_at(bytes, 0) * d * (sums[0] + sums[1]) as f32;
        }
    }
}

/// Q4_K weights: super-blocks of 256 elements in 144 bytes: f16 `d`, f16 `dmin`, 12 bytes
/// packing eight 6-bit scales and eight 6-bit mins (one pair per 32 elements), then 128 bytes
/// of 4-bit values. Elements `64g .. 64g + 32` are the low nibbles of bytes `32g .. 32g + 32`,
/// the next 32 their high nibbles, with scale and min pair `2g` and `2g + 1`. An element stands
/// for `(d · sc) · q − (dmin · m)`.
pub(super) struct Q4K;

/// Q4_K's scale and min of sub-block `j` (0..8) from its 12 packed bytes.
#[inline(always)]
#[allow(clippy::indexing_slicing, clippy::arithmetic_side_effects, reason = "j < 8 and 12 bytes")]
pub(super) fn q4k_scale_min(j: usize, packed: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (packed[j] & 63, packed[j + 4] & 63)
    } else {
        ((packed[j + 4] & 0xF) | ((packed[j - 4] >> 6) << 4), (packed[j + 4] >> 4) | ((packed[j] >> 6) << 4))
    }
}

impl Blocks for Q4K {
    const ELEMS: usize = 256;
    const BYTES: usize = 144;
    const KIND: Kind = Kind::Q4K;

    #[inline(always)]
    fn sums(bytes: &[u8], q: &[i8], sums: &mut [i32; 16]) {
        let values = bytes.get(16..).unwrap_or_default();
        for (half, s) in sums.iter_mut().enumerate() {
            // Half `half` of sub-block j = half / 2: group j / 2's bytes, nibble j % 2.
            let (j, h) = (half / 2, half % 2);
            let shift = 4 * (j % 2);
            let w = values.iter().skip(32 * (j / 2) + HALF * h).take(HALF).map(|&b| i32::from((b >> shift) & 0xF));
            *s = products(w, q.get(HALF * half..).unwrap_or_default());
        }
    }

    #[inline(always)]
    #[allow(clippy::indexing_slicing, reason = "fixed-size arrays indexed by constants in range")]
    fn terms(bytes: &[u8], x: &Q8Activations, first: usize, sums: &[i32; 16], out: &mut [f32]) {
        let Some(block) = bytes.first_chunk::<144>() else {
            out.fill(0.0);
            return;
        };
        let d = f16_to_f32(u16::from_le_bytes([block[0], block[1]]));
        let dmin = f16_to_f32(u16::from_le_bytes([block[2], block[3]]));
        let mut packed = [0u8; 12];
        packed.copy_from_slice(&block[4..16]);
        for (j, t) in out.iter_mut().enumerate().take(8) {
            let (dx, s) = activation(x, first + j);
            let (sc, m) = q4k_scale_min(j, &packed);
            let (dq, mq) = (d * f32::from(sc), dmin * f32::from(m));
            *t = dx * (dq * (sums[2 * j] + sums[2 * j + 1]) as f32 - mq * (s[0] + s[1]) as f32);
        }
    }
}

/// Q6_K weights: super-blocks of 256 elements in 210 bytes: 128 bytes of low 4 bits, 64 bytes
/// of high 2 bits, 16 signed 8-bit scales (one per 16 elements), then f16 `d`. Element
/// `l + 32k` of a half of 128 (`k` 0..4) takes 4 low bits from byte `l` (`k` even) or `l + 32`
/// (`k` odd) of the half's 64 low bytes (the low nibble for `k < 2`), 2 high bits from bits
/// `2k` of byte `l` of the half's 32 high bytes, and the scale `2k + l / 16` of the half's 8;
/// it stands for `(d · sc) · (q − 32)`.
pub(super) struct Q6K;

/// Where 32-block `j` (0..8) of a Q6_K super-block keeps its bits: the offsets of its 32 low and
/// 32 high bytes, and the shifts of its bits in them.
#[inline(always)]
pub(super) const fn q6k_place(j: usize) -> (usize, usize, u8, u8) {
    let (half, k) = (j / 4, j % 4);
    (64 * half + 32 * (k % 2), 128 + 32 * half, if k < 2 { 0 } else { 4 }, 2 * k as u8)
}

impl Blocks for Q6K {
    const ELEMS: usize = 256;
    const BYTES: usize = 210;
    const KIND: Kind = Kind::Q6K;

    #[inline(always)]
    fn sums(bytes: &[u8], q: &[i8], sums: &mut [i32; 16]) {
        for (half, s) in sums.iter_mut().enumerate() {
            let (low, high, low_shift, high_shift) = q6k_place(half / 2);
            let at = HALF * (half % 2);
            let lows = bytes.iter().skip(low + at).take(HALF);
            let highs = bytes.iter().skip(high + at).take(HALF);
            let w =
                lows.zip(highs).map(|(&l, &h)| i32::from(((l >> low_shift) & 0xF) | (((h >> high_shift) & 3) << 4)));
            *s = products(w, q.get(HALF * half..).unwrap_or_default());
        }
    }

    #[inline(always)]
    #[allow(clippy::indexing_slicing, reason = "fixed-size arrays indexed by constants in range")]
    fn terms(bytes: &[u8], x: &Q8Activations, first: usize, sums: &[i32; 16], out: &mut [f32]) {
        let Some(block) = bytes.first_chunk::<210>() else {
            out.fill(0.0);
            return;
        };
        let d = f16_to_f32(u16::from_le_bytes([block[208], block[209]]));
        for (j, t) in out.iter_mut().enumerate().take(8) {
            let (dx, s) = activation(x, first + j);
            let scale = |g: usize| d * f32::from(block[192 + 8 * (j / 4) + 2 * (j % 4) + g].cast_signed());
            let (j0, j1) = (sums[2 * j] - 32 * s[0], sums[2 * j + 1] - 32 * s[1]);
            *t = dx * (scale(0) * j0 as f32 + scale(1) * j1 as f32);
        }
    }
}

/// `row · x` for a row of `cols` elements (whole blocks of `B`) against quantized activations
/// of at least `cols` elements, in this module's order: each block's half-block sums by `sums`
/// (the portable [`Blocks::sums`] or the vector ones: the same integers), its terms, then
/// `acc[b mod 32] += t_b` over the row's blocks of 32 in order and [`lane_sum`] of the
/// accumulators. Inlined into its callers, so a caller compiled for an instruction set compiles
/// the whole row for it.
#[inline(always)]
#[allow(clippy::arithmetic_side_effects, reason = "block indexes bounded by the row's blocks")]
pub(super) fn row_dot<B: Blocks>(
    row: &[u8],
    cols: usize,
    x: &Q8Activations,
    sums: impl Fn(&[u8], &[i8], &mut [i32; 16]),
) -> f32 {
    const { assert!(B::ELEMS.is_multiple_of(Q8_BLOCK) && B::ELEMS / Q8_BLOCK <= 8) };
    let per = B::ELEMS / Q8_BLOCK;
    let mut acc = [0.0f32; LANES];
    let mut terms = [0.0f32; 8];
    let terms = terms.get_mut(..per).unwrap_or_default();
    let mut s = [0i32; 16];
    for (block, bytes) in row.chunks_exact(B::BYTES).take(cols / B::ELEMS).enumerate() {
        let first = block * per;
        let q = x.q.get(first * Q8_BLOCK..).and_then(|q| q.get(..B::ELEMS)).unwrap_or_default();
        sums(bytes, q, &mut s);
        B::terms(bytes, x, first, &s, terms);
        for (i, t) in terms.iter().enumerate() {
            if let Some(a) = acc.get_mut((first + i) % LANES) {
                *a += *t;
            }
        }
    }
    lane_sum(acc)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    #[test]
    fn activations_quantize_by_the_letter() {
        let mut x: Vec<f32> = (0..64).map(|i| (i as f32 - 20.0) * 0.37).collect();
        x[3] = f32::NAN;
        x[40] = 0.0;
        let a = Q8Activations::new(&x);
        assert_eq!(a.blocks(), 2);
        // Block 0: |x| at most 20 · 0.37 (element 0; the NaN counts as 0).
        let d0 = (20.0f32 * 0.37) / 127.0;
        assert_eq!(a.d[0].to_bits(), d0.to_bits());
        assert_eq!(a.q[0], -127);
        assert_eq!(a.q[3], 0, "a NaN is 0");
        assert_eq!(a.q[10], (x[10] / d0).round_ties_even() as i8);
        let s0: i32 = a.q[..16].iter().map(|&v| i32::from(v)).sum();
        assert_eq!(a.sums[0], s0);
        assert_eq!(a.sums.len(), 4);
        // A block of zeros has d = 0 and bytes 0.
        let z = Q8Activations::new(&[0.0; 32]);
        assert_eq!((z.d[0], z.q.iter().all(|&v| v == 0)), (0.0, true));
        // Ties go to even: 2.5 and 3.5 quanta.
        let mut t = [0.0f32; 32];
        t[0] = 127.0;
        t[1] = 2.5;
        t[2] = 3.5;
        t[3] = -2.5;
        let q = Q8Activations::new(&t);
        assert_eq!(&q.q[..4], &[127, 2, 4, -2]);
        // As the rows read them: d · q, exactly.
        assert_eq!(a.values().count(), 64);
        assert_eq!(a.values().nth(42), Some(f64::from(a.d[1]) * f64::from(a.q[42])));
        // Past the last whole block: dropped.
        assert_eq!(Q8Activations::new(&[1.0; 40]).q.len(), 32);
    }

    /// Pseudo-random bytes.
    pub(in crate::ffn) fn noise(n: usize, seed: u64) -> Vec<u8> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 24) as u8
            })
            .collect()
    }

    /// Each format's half-block sums written out from the module docs' layouts, element by
    /// element, against [`Blocks::sums`]: every byte value (−128 among the weights, activations
    /// of ±127) on random blocks.
    fn check_sums<B: Blocks>(weight: impl Fn(&[u8], usize) -> i32) {
        for seed in 0..50u64 {
            let bytes = noise(B::BYTES, seed);
            let mut q: Vec<i8> = noise(B::ELEMS, seed + 1000).into_iter().map(u8::cast_signed).collect();
            q.iter_mut().for_each(|v| *v = (*v).max(-127));
            let want: Vec<i32> = (0..B::ELEMS / HALF)
                .map(|h| (HALF * h..HALF * (h + 1)).map(|e| weight(&bytes, e) * i32::from(q[e])).sum())
                .collect();
            let mut got = [0i32; 16];
            B::sums(&bytes, &q, &mut got);
            assert_eq!(&got[..want.len()], &want[..], "{:?} portable, seed {seed}", B::KIND);
        }
    }

    #[test]
    fn half_block_sums_follow_the_layouts() {
        check_sums::<Q8_0>(|b, e| i32::from(b[2 + e].cast_signed()));
        check_sums::<Q4K>(|b, e| {
            let (group, high, i) = (e / 64, (e % 64) / 32, e % 32);
            i32::from((b[16 + 32 * group + i] >> (4 * high)) & 0xF)
        });
        check_sums::<Q6K>(|b, e| {
            let (half, p) = (e / 128, e % 128);
            let (k, l) = (p / 32, p % 32);
            let low = b[64 * half + l + 32 * (k % 2)];
            let low = if k < 2 { low & 0xF } else { low >> 4 };
            i32::from(low | (((b[128 + 32 * half + l] >> (2 * k)) & 3) << 4))
        });
    }
}
