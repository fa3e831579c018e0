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
//!     `J_g = Σ (q_w,i − 32) · q_i` over the group): `t = d · (((d_sb · s0) · J_0) + ((d_sb · s1) · J_1))`.
//! - **The row**: `acc[b mod 32] = acc[b mod 32] + t_b` from 0 over the row's blocks in order,
//!   then [`lane_sum`] of the 32 accumulators (the GPU's lane `l` takes blocks `l, l + 32, …`
//!   and the warp's butterfly sums them).
//!
//! So a pair computed on the host has the bits of the same pair on the GPU, whatever the load
//! width, the lane count a CPU vector holds or where the weights lie. Against the products of
//! the f32 activations the 8-bit activations cost about 0.5% of a row's magnitude (tested).

use super::order::{f16_to_f32, lane_sum, Activations, RowFormat, LANES};

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

/// A block-quantized format: fixed blocks of [`Blocks::ELEMS`] elements in [`Blocks::BYTES`]
/// bytes, its terms ([module docs](self)) one per [`Q8_BLOCK`] elements.
pub(super) trait Blocks {
    /// Elements of a block (32 or 256).
    const ELEMS: usize;
    /// Bytes of a block.
    const BYTES: usize;
    /// The terms of the block `bytes` (exactly [`Blocks::BYTES`] long) against the
    /// activation blocks from `first` on, in order, into `out` (`ELEMS / 32` long).
    fn terms(bytes: &[u8], x: &Q8Activations, first: usize, out: &mut [f32]);
}

/// `Σ a_i · b_i` over equal lengths, in integers (exact).
#[inline(always)]
fn products(a: &[i8], b: &[i8]) -> i32 {
    a.iter().zip(b).map(|(&a, &b)| i32::from(a) * i32::from(b)).sum()
}

/// The f16 at `bytes[at..at + 2]`, little-endian, widened (0 when out of range).
#[inline(always)]
fn half_at(bytes: &[u8], at: usize) -> f32 {
    match bytes.get(at..).and_then(<[u8]>::first_chunk::<2>) {
        Some(b) => f16_to_f32(u16::from_le_bytes(*b)),
        None => 0.0,
    }
}

/// Activation block `b`'s bytes, scale and half-block sums (zeros past the end).
#[inline(always)]
fn activation(x: &Q8Activations, b: usize) -> (&[i8; Q8_BLOCK], f32, [i32; 2]) {
    const ZERO: [i8; Q8_BLOCK] = [0; Q8_BLOCK];
    let q = x.q.get(b * Q8_BLOCK..).and_then(<[i8]>::first_chunk::<Q8_BLOCK>).unwrap_or(&ZERO);
    let d = x.d.get(b).copied().unwrap_or(0.0);
    let s = |h: usize| x.sums.get(2 * b + h).copied().unwrap_or(0);
    (q, d, [s(0), s(1)])
}

/// Q8_0 weights: blocks of 32 elements, each an f16 scale `dw` then 32 signed bytes.
pub(super) struct Q8_0;

impl Blocks for Q8_0 {
    const ELEMS: usize = 32;
    const BYTES: usize = 34;

    #[inline(always)]
    fn terms(bytes: &[u8], x: &Q8Activations, first: usize, out: &mut [f32]) {
        let dw = half_at(bytes, 0);
        let (q, d, _) = activation(x, first);
        let w = bytes.get(2..).and_then(<[u8]>::first_chunk::<32>).map_or([0i8; 32], |w| w.map(u8::cast_signed));
        if let Some(t) = out.first_mut() {
            *t = dw * d * products(&w, q) as f32;
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

    #[inline(always)]
    #[allow(clippy::indexing_slicing, reason = "fixed-size arrays indexed by constants in range")]
    fn terms(bytes: &[u8], x: &Q8Activations, first: usize, out: &mut [f32]) {
        let Some(block) = bytes.first_chunk::<144>() else {
            out.fill(0.0);
            return;
        };
        let d = f16_to_f32(u16::from_le_bytes([block[0], block[1]]));
        let dmin = f16_to_f32(u16::from_le_bytes([block[2], block[3]]));
        let mut packed = [0u8; 12];
        packed.copy_from_slice(&block[4..16]);
        for (j, t) in out.iter_mut().enumerate().take(8) {
            let nibbles = block[16 + 32 * (j / 2)..].first_chunk::<32>().unwrap_or(&[0; 32]);
            let shift = 4 * (j % 2);
            let w: [i8; 32] = nibbles.map(|b| ((b >> shift) & 0xF).cast_signed());
            let (q, dx, s) = activation(x, first + j);
            let (sc, m) = q4k_scale_min(j, &packed);
            let (dq, mq) = (d * f32::from(sc), dmin * f32::from(m));
            *t = dx * (dq * products(&w, q) as f32 - mq * (s[0] + s[1]) as f32);
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

impl Blocks for Q6K {
    const ELEMS: usize = 256;
    const BYTES: usize = 210;

    #[inline(always)]
    #[allow(clippy::indexing_slicing, reason = "fixed-size arrays indexed by constants in range")]
    fn terms(bytes: &[u8], x: &Q8Activations, first: usize, out: &mut [f32]) {
        let Some(block) = bytes.first_chunk::<210>() else {
            out.fill(0.0);
            return;
        };
        let d = f16_to_f32(u16::from_le_bytes([block[208], block[209]]));
        for (j, t) in out.iter_mut().enumerate().take(8) {
            let (half, k) = (j / 4, j % 4);
            let low = block[64 * half + 32 * (k % 2)..].first_chunk::<32>().unwrap_or(&[0; 32]);
            let high = block[128 + 32 * half..].first_chunk::<32>().unwrap_or(&[0; 32]);
            let (low_shift, high_shift) = (if k < 2 { 0 } else { 4 }, 2 * k);
            let w: [i8; 32] = core::array::from_fn(|l| {
                (((low[l] >> low_shift) & 0xF) | (((high[l] >> high_shift) & 3) << 4)).cast_signed() - 32
            });
            let (q, dx, _) = activation(x, first + j);
            let scale = |g: usize| d * f32::from(block[192 + 8 * half + 2 * k + g].cast_signed());
            let (w0, w1) = w.split_at(HALF);
            let (q0, q1) = q.split_at(HALF);
            *t = dx * (scale(0) * products(w0, q0) as f32 + scale(1) * products(w1, q1) as f32);
        }
    }
}

/// `row · x` for a row of `cols` elements (whole blocks of `B`) against quantized activations
/// of at least `cols` elements, in the [module docs](self)' order.
#[inline(always)]
pub(super) fn dot<B: Blocks>(row: &[u8], cols: usize, x: &Q8Activations) -> f32 {
    const { assert!(B::ELEMS.is_multiple_of(Q8_BLOCK) && B::ELEMS / Q8_BLOCK <= 8) };
    let per = B::ELEMS / Q8_BLOCK;
    let mut acc = [0.0f32; LANES];
    let mut terms = [0.0f32; 8];
    let terms = terms.get_mut(..per).unwrap_or_default();
    for (block, bytes) in row.chunks_exact(B::BYTES).take(cols / B::ELEMS).enumerate() {
        let first = block * per;
        B::terms(bytes, x, first, terms);
        for (i, t) in terms.iter().enumerate() {
            if let Some(a) = acc.get_mut((first + i) % LANES) {
                *a += *t;
            }
        }
    }
    lane_sum(acc)
}

impl<B: Blocks> RowFormat for B {
    fn row_bytes(cols: usize) -> usize {
        cols.checked_div(B::ELEMS).unwrap_or(0).saturating_mul(B::BYTES)
    }

    /// [`dot`] over the quantized activations (`GROUP` is not used: a block's terms are few).
    #[inline(always)]
    fn dot<const GROUP: usize>(row: &[u8], cols: usize, x: &Activations) -> f32 {
        dot::<B>(row, cols, &x.q8)
    }
}

#[cfg(test)]
mod tests {
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
        // Past the last whole block: dropped.
        assert_eq!(Q8Activations::new(&[1.0; 40]).q.len(), 32);
    }

    #[test]
    fn the_row_sums_its_block_terms_in_32_accumulators() {
        // A Q8_0 row of 40 blocks: block b's bytes all 1 with scale 1.0, activations 1 so each
        // term is its activation scale times 32; blocks 0 and 32 share accumulator 0.
        let cols = 40 * 32;
        let row: Vec<u8> = (0..40).flat_map(|_| [0x00, 0x3C].into_iter().chain([1u8; 32])).collect();
        let x: Vec<f32> = (0..cols).map(|i| 1.0 + (i / 32) as f32).collect();
        let a = Q8Activations::new(&x);
        let mut acc = [0.0f32; LANES];
        for b in 0..40 {
            let t = 1.0 * a.d[b] * (32 * 127) as f32;
            acc[b % 32] += t;
        }
        assert_eq!(dot::<Q8_0>(&row, cols, &a).to_bits(), lane_sum(acc).to_bits());
    }
}
