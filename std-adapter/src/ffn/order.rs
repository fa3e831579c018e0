//! The order of operations an expert pair is computed in, on the host and in the GPU kernels
//! (`expertslab-cuda`'s `moe_ffn.cu` follows this file step by step).
//!
//! Every operation is an IEEE-754 single-precision operation that rounds once (add, multiply,
//! divide, fused multiply-add, round to integer), in a fixed order, so both sides give the same
//! bits:
//!
//! - **A row's dot product** `w · x` over `cols` elements keeps [`BLOCK`] accumulators, as a GPU
//!   warp of [`LANES`] lanes keeps [`CHUNK`] each (lane `l` holds accumulators `CHUNK·l` to
//!   `CHUNK·l + CHUNK − 1` and reads those elements of each block with one vector load).
//!   Element `j` goes to accumulator `a = j mod BLOCK`: `acc[a] = fma(w[j], x[j], acc[a])` from 0
//!   over `j = a, a + BLOCK, …`, every accumulator taking `⌈cols / BLOCK⌉` terms (those at or
//!   past `cols` count as `w = x = 0`). Then [`reduce`] sums the accumulators: each lane's eight
//!   by halving (offsets 4, 2, 1), then the lanes by the butterfly of [`lane_sum`]. On the host
//!   the accumulators are whole vector registers and the weights are read in their own order,
//!   so no shuffling happens in the inner loop.
//! - **Block-quantized weights** (Q8_0, Q4_K, Q6_K) are not widened: their rows take the
//!   activations quantized to 8 bits and sum each block's products in integers
//!   ([`super::blocks`] gives that order).
//! - **The activation**: `h = (g / (1 + exp(−g))) · u` with [`exp`] below (not a math library's,
//!   whose last bit differs between platforms).
//! - **The combine**: `y = fma(weight_k, part_k, y)` from 0 over a token's pairs in `k` order.

/// Lanes a dot product is split among (a GPU warp).
pub const LANES: usize = 32;
/// Consecutive elements a lane takes at a time.
pub const CHUNK: usize = 8;
/// Elements of one pass of every lane: `LANES × CHUNK`.
pub const BLOCK: usize = LANES * CHUNK;

/// The sum of the lanes' accumulators, as the warp's butterfly forms it: at offsets 16, 8, 4, 2
/// and 1, lane `i` adds lane `i + offset`'s value to its own; lane 0's value is the sum.
#[inline(always)]
pub fn lane_sum(mut acc: [f32; LANES]) -> f32 {
    let mut offset = LANES / 2;
    while offset > 0 {
        let (low, high) = acc.split_at_mut(offset);
        for (a, b) in low.iter_mut().zip(high.iter()) {
            *a += *b;
        }
        offset /= 2;
    }
    acc[0]
}

/// `log2(e)` rounded to f32.
const LOG2E: f32 = f32::from_bits(0x3FB8_AA3B);
/// `ln 2` split in two: the high part has 8 trailing zero bits, so `n × LN2_HI` is exact.
const LN2_HI: f32 = f32::from_bits(0x3F31_7200);
const LN2_LO: f32 = f32::from_bits(0x35BF_BE8E);
/// Taylor coefficients of `e^r` from `r^7/7!` down to `r^2/2!`, rounded to f32 (as bits, which
/// the kernels write the same way).
const EXP_POLY: [f32; 6] = [
    f32::from_bits(0x3950_0D01),
    f32::from_bits(0x3AB6_0B61),
    f32::from_bits(0x3C08_8889),
    f32::from_bits(0x3D2A_AAAB),
    f32::from_bits(0x3E2A_AAAB),
    f32::from_bits(0x3F00_0000),
];

/// `e^x` as both sides compute it: `n = round_ties_even(x · log2 e)`, `r = x − n·ln 2` in two
/// fused steps, `p = 1 + r + r²/2 + … + r⁷/5040` by Horner's rule with fused multiply-adds,
/// then `p · 2^n` (one rounding). 0 below −87 and +∞ above 88; a NaN stays NaN. Within 2 ulp
/// of `e^x` on [−87, 88].
pub fn exp(x: f32) -> f32 {
    if x.is_nan() {
        return x;
    }
    if x < -87.0 {
        return 0.0;
    }
    if x > 88.0 {
        return f32::INFINITY;
    }
    let n = (x * LOG2E).round_ties_even();
    let r = n.mul_add(-LN2_HI, x);
    let r = n.mul_add(-LN2_LO, r);
    let mut p = EXP_POLY[0];
    for c in &EXP_POLY[1..] {
        p = p.mul_add(r, *c);
    }
    p = p.mul_add(r, 1.0);
    p = p.mul_add(r, 1.0);
    // n is in [−126, 127] for x in [−87, 88]: 2^n is a normal f32.
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::arithmetic_side_effects,
        reason = "n + 127 is in [1, 254]"
    )]
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
    p * scale
}

/// The activation of a row: `(g / (1 + exp(−g))) · u`, SiLU of the gate times the up value.
pub fn silu_mul(g: f32, u: f32) -> f32 {
    g / (1.0 + exp(-g)) * u
}

/// Copies `x` into `out` and pads it with zeros to a whole number of blocks: the activations
/// as a row's dot product reads them.
pub fn pad_to_blocks(x: &[f32], out: &mut Vec<f32>) {
    out.clear();
    out.extend_from_slice(x);
    out.resize(x.len().div_ceil(BLOCK).saturating_mul(BLOCK), 0.0);
}

/// The sum of a row's [`BLOCK`] accumulators: each lane's [`CHUNK`] by halving
/// (`v[e] + v[e + 4]`, then `+ 2`, then `+ 1`), then the lanes by [`lane_sum`]. On a CPU with
/// AVX2 (whatever instruction set the row loops run on) the same sums, operand for operand, run
/// eight lanes per instruction: a row of a few passes spends as long summing its accumulators
/// one by one as accumulating them.
#[inline(always)]
pub fn reduce(acc: &[f32; BLOCK]) -> f32 {
    const { assert!(BLOCK == 256 && LANES == 32 && CHUNK == 8, "the vector sum's shape") };
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        #[allow(unsafe_code, reason = "calling a function compiled for an instruction set the CPU was found to have")]
        // SAFETY: the CPU has AVX2 (detected just above).
        return unsafe { super::sum_avx2::reduce(acc) };
    }
    reduce_in_order(acc)
}

/// [`reduce`] one sum at a time: the reference the vector forms are tested against.
#[allow(clippy::indexing_slicing, reason = "fixed sizes: CHUNK is 8")]
pub fn reduce_in_order(acc: &[f32; BLOCK]) -> f32 {
    let mut lanes = [0.0f32; LANES];
    for (lane, v) in lanes.iter_mut().zip(acc.chunks_exact(CHUNK)) {
        let t = [v[0] + v[4], v[1] + v[5], v[2] + v[6], v[3] + v[7]];
        let u = [t[0] + t[2], t[1] + t[3]];
        *lane = u[0] + u[1];
    }
    lane_sum(lanes)
}

/// `bits` as an IEEE-754 half, widened to f32 (exactly: every half is an f32). Without
/// branches, so a block's scale widens in a few instructions: a normal half's exponent and
/// mantissa bits, moved to an f32's places, are its magnitude times 2^−112, so one
/// multiplication by 2^112 gives it exactly; a subnormal half is its mantissa times 2^−24;
/// exponent 31 (infinities and NaNs, the payload kept) is chosen apart, then the sign bit is
/// set. No multiplication ever takes a subnormal operand (a subnormal half's bits, moved, would
/// be one: the normal product is formed from the smallest normal instead, and not chosen), so
/// the bits hold where the CPU flushes subnormal operands to zero, and no multiplication takes
/// the slow path x86 cores take for them (about a hundred cycles each: block scales of quantized
/// model files are often subnormal halves).
#[inline]
pub fn f16_to_f32(bits: u16) -> f32 {
    /// 2^112 and 2^−24.
    const SCALE: f32 = f32::from_bits(0x7780_0000);
    const SUBNORMAL: f32 = f32::from_bits(0x3380_0000);
    let magnitude = u32::from(bits & 0x7fff) << 13;
    let normal = f32::from_bits(magnitude.max(0x0080_0000)) * SCALE;
    let subnormal = f32::from(bits & 0x3ff) * SUBNORMAL;
    let value = if magnitude >= 0x0f80_0000 {
        f32::from_bits(0x7f80_0000 | magnitude)
    } else if magnitude < 0x0080_0000 {
        subnormal
    } else {
        normal
    };
    f32::from_bits(value.to_bits() | u32::from(bits & 0x8000) << 16)
}

/// Weight formats a row can be read in: element `j` of a row's bytes as f32.
pub(super) trait Element {
    /// Bytes per element.
    const BYTES: usize;
    /// An element's bytes.
    type Raw: Copy;
    /// A row's elements (its bytes in whole elements).
    fn elements(bytes: &[u8]) -> &[Self::Raw];
    /// The element's value.
    fn get(raw: Self::Raw) -> f32;
}

/// F32 weights, little-endian.
pub(super) struct F32;
/// BF16 weights: the high half of an f32, little-endian.
pub(super) struct Bf16;

impl Element for F32 {
    const BYTES: usize = 4;
    type Raw = [u8; 4];
    #[inline(always)]
    fn elements(bytes: &[u8]) -> &[[u8; 4]] {
        bytes.as_chunks().0
    }
    #[inline(always)]
    fn get(raw: [u8; 4]) -> f32 {
        f32::from_le_bytes(raw)
    }
}

impl Element for Bf16 {
    const BYTES: usize = 2;
    type Raw = [u8; 2];
    #[inline(always)]
    fn elements(bytes: &[u8]) -> &[[u8; 2]] {
        bytes.as_chunks().0
    }
    #[inline(always)]
    fn get(raw: [u8; 2]) -> f32 {
        f32::from_bits(u32::from(u16::from_le_bytes(raw)) << 16)
    }
}

/// `row · x` in the shared order, `row` holding `cols` elements of `E` and `x` the activations
/// padded with zeros to a whole number of blocks ([`pad_to_blocks`]), the accumulators taken
/// `GROUP` at a time ([`dot_in_groups`]). Inlined into callers compiled for each instruction set,
/// which vectorise the accumulators.
#[inline(always)]
pub(super) fn dot<E: Element, const GROUP: usize>(row: &[u8], cols: usize, x: &[f32]) -> f32 {
    dot_in_groups::<E::Raw, GROUP>(E::elements(row), cols, x, E::get)
}

/// `w · x` in the shared order, for weights `w` (at least `cols` of them, each read by `get`)
/// and activations `x` padded to whole blocks. The [`BLOCK`] accumulators are summed `GROUP`
/// at a time: accumulators `GROUP·g .. GROUP·(g + 1)` take every whole pass's terms, in pass
/// order, before the next group starts. Each accumulator still takes its terms in the order of
/// the module docs, so the bits do not depend on `GROUP`; a group that fits the instruction
/// set's registers (8 of AVX2's 16, 16 of AVX-512's 32) stays there across the passes instead
/// of going through memory at every term. `GROUP` divides [`BLOCK`].
#[inline(always)]
#[allow(clippy::arithmetic_side_effects, reason = "indexes bounded by the block sizes")]
pub(super) fn dot_in_groups<R: Copy, const GROUP: usize>(
    w: &[R],
    cols: usize,
    x: &[f32],
    get: impl Fn(R) -> f32,
) -> f32 {
    const { assert!(GROUP > 0 && BLOCK.is_multiple_of(GROUP)) };
    let mut acc = [0.0f32; BLOCK];
    let whole = cols / BLOCK;
    let passes = || w.as_chunks::<BLOCK>().0.iter().zip(x.as_chunks::<BLOCK>().0).take(whole);
    for (g, out) in acc.as_chunks_mut::<GROUP>().0.iter_mut().enumerate() {
        let mut a = [0.0f32; GROUP];
        for (wp, xp) in passes() {
            let (Some(wg), Some(xg)) = (wp.as_chunks::<GROUP>().0.get(g), xp.as_chunks::<GROUP>().0.get(g)) else {
                continue;
            };
            for ((a, &w), &v) in a.iter_mut().zip(wg).zip(xg) {
                *a = get(w).mul_add(v, *a);
            }
        }
        *out = a;
    }
    // The last, partial pass: its elements at or past `cols` are 0 · 0.
    let base = whole * BLOCK;
    if base < cols {
        for (i, a) in acc.iter_mut().enumerate() {
            let j = base + i;
            let (w, v) = match (w.get(j), x.get(j)) {
                (Some(&w), Some(&v)) if j < cols => (get(w), v),
                _ => (0.0, 0.0),
            };
            *a = w.mul_add(v, *a);
        }
    }
    reduce(&acc)
}

/// A token's output from its pairs' down outputs: `y[i] = fma(weight_k, part_k[i], y[i])` from
/// 0 over `k` in order. `parts` holds `weights.len()` rows of `y.len()` values.
pub fn combine(weights: &[f32], parts: &[f32], y: &mut [f32]) {
    y.iter_mut().for_each(|v| *v = 0.0);
    let hidden = y.len();
    if hidden == 0 {
        return;
    }
    for (w, part) in weights.iter().zip(parts.chunks_exact(hidden)) {
        for (out, p) in y.iter_mut().zip(part) {
            *out = w.mul_add(*p, *out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_coefficients_are_the_taylor_ones_rounded() {
        let want = [1.0f32 / 5040.0, 1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5];
        assert_eq!(EXP_POLY, want);
        assert_eq!(LOG2E, core::f32::consts::LOG2_E);
        assert!((f64::from(LN2_HI) + f64::from(LN2_LO) - core::f64::consts::LN_2).abs() < 1e-12);
        assert_eq!(LN2_HI.to_bits() & 0xFF, 0, "n × LN2_HI is exact for |n| < 256");
    }

    #[test]
    fn exp_is_within_two_ulp_of_the_true_value() {
        let mut worst = 0u32;
        let mut x = -87.0f32;
        while x <= 88.0 {
            let exact = f64::from(x).exp();
            let got = exp(x);
            let want = exact as f32;
            let ulps = (got.to_bits() as i64 - want.to_bits() as i64).unsigned_abs() as u32;
            worst = worst.max(ulps);
            x += 0.0137;
        }
        assert!(worst <= 2, "{worst} ulp");
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(-100.0), 0.0);
        assert_eq!(exp(100.0), f32::INFINITY);
        assert!(exp(f32::NAN).is_nan());
    }

    #[test]
    fn the_lane_sum_is_the_butterfly() {
        let acc: [f32; LANES] = core::array::from_fn(|i| (i as f32 + 1.0) * 1e-3 + if i == 5 { 1e7 } else { 0.0 });
        // Lane 0 after offsets 16, 8, 4, 2, 1, written out.
        let r1: Vec<f32> = (0..16).map(|i| acc[i] + acc[i + 16]).collect();
        let r2: Vec<f32> = (0..8).map(|i| r1[i] + r1[i + 8]).collect();
        let r3: Vec<f32> = (0..4).map(|i| r2[i] + r2[i + 4]).collect();
        let r4: Vec<f32> = (0..2).map(|i| r3[i] + r3[i + 2]).collect();
        assert_eq!(lane_sum(acc).to_bits(), (r4[0] + r4[1]).to_bits());
    }

    /// The dot product written accumulator by accumulator, straight from the module docs.
    fn dot_by_the_letter(w: &[f32], x: &[f32]) -> f32 {
        let cols = w.len();
        let terms = cols.div_ceil(BLOCK);
        let mut acc = [0.0f32; BLOCK];
        for (a, v) in acc.iter_mut().enumerate() {
            for m in 0..terms {
                let j = BLOCK * m + a;
                let (wv, xv) = if j < cols { (w[j], x[j]) } else { (0.0, 0.0) };
                *v = wv.mul_add(xv, *v);
            }
        }
        let mut lanes = [0.0f32; LANES];
        for (l, lane) in lanes.iter_mut().enumerate() {
            let mut v: Vec<f32> = acc[CHUNK * l..CHUNK * (l + 1)].to_vec();
            let mut half = CHUNK / 2;
            while half > 0 {
                for e in 0..half {
                    v[e] += v[e + half];
                }
                half /= 2;
            }
            *lane = v[0];
        }
        lane_sum(lanes)
    }

    #[test]
    fn the_blocked_dot_product_is_the_one_written_out() {
        for cols in [1, 7, 8, 9, 255, 256, 257, 264, 768, 1000, 2048] {
            let w: Vec<f32> = (0..cols).map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.013).collect();
            let x: Vec<f32> = (0..cols).map(|i| ((i * 53 % 97) as f32 - 48.0) * 0.021).collect();
            let mut xt = Vec::new();
            pad_to_blocks(&x, &mut xt);
            let bytes: Vec<u8> = w.iter().flat_map(|v| v.to_le_bytes()).collect();
            let want = dot_by_the_letter(&w, &x).to_bits();
            assert_eq!(dot::<F32, BLOCK>(&bytes, cols, &xt).to_bits(), want, "{cols}");
            assert_eq!(dot::<F32, 64>(&bytes, cols, &xt).to_bits(), want, "{cols}, groups of 64");
            assert_eq!(dot::<F32, 8>(&bytes, cols, &xt).to_bits(), want, "{cols}, groups of 8");
            let bf: Vec<u8> = w.iter().flat_map(|v| ((v.to_bits() >> 16) as u16).to_le_bytes()).collect();
            let wb: Vec<f32> = w.iter().map(|v| f32::from_bits(v.to_bits() & 0xFFFF_0000)).collect();
            let want = dot_by_the_letter(&wb, &x).to_bits();
            assert_eq!(dot::<Bf16, BLOCK>(&bf, cols, &xt).to_bits(), want, "{cols}");
            assert_eq!(dot::<Bf16, 64>(&bf, cols, &xt).to_bits(), want, "{cols}, groups of 64");
        }
    }
}
