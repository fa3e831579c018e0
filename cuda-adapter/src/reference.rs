//! The CPU reference of the MoE FFN the kernels compute, over host bytes.
//!
//! For each token `t` and each of its `top_k` experts `e` with router weight `w`:
//! `h = SiLU(gate_e · x_t) ⊙ (up_e · x_t)` and `y_t += w · (down_e · h)`. An expert's weights
//! are its gate `[ffn, hidden]`, up `[ffn, hidden]` and down `[hidden, ffn]` matrices, row-major,
//! in F32, BF16, Q8_0, Q4_K or Q6_K (as GGUF stacks them; a block format's weights are computed
//! here in `f64` from the block's fields as ggml's dequantisation defines them, and the
//! activations it multiplies, `x` and `h`, are the 8-bit form the kernels read, as llama.cpp's
//! kernels quantize them: `expertslab_std::ffn::blocks`). The reference accumulates in `f64`, so
//! it is the precise value the kernels' `f32` arithmetic approximates; [`within_tolerance`] is
//! the bound the GPU tests hold the kernels to.

use expertslab::Format;
use expertslab_std::ffn::blocks::Q8Activations;

use crate::error::CudaError;

/// The shape of one MoE FFN layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FfnShape {
    /// Model width: the length of a token's activation and output.
    pub hidden: usize,
    /// Expert FFN width: rows of gate and up, columns of down.
    pub ffn: usize,
    /// Experts per token.
    pub top_k: usize,
    /// Weight format of gate and up: [`Format::F32`], [`Format::BF16`], [`Format::Q8_0`],
    /// [`Format::Q4_K`] or [`Format::Q6_K`].
    pub format: Format,
    /// Weight format of down, one of the same: `format` in most files; files quantized as
    /// llama.cpp's Q4_K_M mix Q4_K gate and up with Q6_K down.
    pub down_format: Format,
}

impl FfnShape {
    /// One format for gate, up and down.
    pub const fn new(hidden: usize, ffn: usize, top_k: usize, format: Format) -> Self {
        Self { hidden, ffn, top_k, format, down_format: format }
    }

    /// Bytes of one row of `cols` weights in `format`.
    ///
    /// # Errors
    /// [`CudaError::Unsupported`] for formats other than F32, BF16, Q8_0, Q4_K and Q6_K, and
    /// for a width that is not a whole number of the format's blocks.
    pub fn row_bytes(format: Format, cols: usize) -> Result<usize, CudaError> {
        if !expertslab_std::ffn::reads(format) {
            return Err(CudaError::Unsupported(format!("weight format {}", format.name())));
        }
        format.row_bytes(cols).map_err(|e| CudaError::Unsupported(format!("{cols} {} weights: {e}", format.name())))
    }

    /// Bytes of one expert's gate (or up) matrix: `ffn` rows of `hidden` weights in `format`.
    ///
    /// # Errors
    /// As [`FfnShape::row_bytes`], and for a size that overflows.
    pub fn gate_bytes(&self) -> Result<usize, CudaError> {
        self.matrix_bytes(self.format, self.ffn, self.hidden)
    }

    /// Bytes of one expert's down matrix: `hidden` rows of `ffn` weights in `down_format`.
    ///
    /// # Errors
    /// As [`FfnShape::gate_bytes`].
    pub fn down_bytes(&self) -> Result<usize, CudaError> {
        self.matrix_bytes(self.down_format, self.hidden, self.ffn)
    }

    /// Bytes of one expert's gate, up and down matrices, in that order.
    ///
    /// # Errors
    /// As [`FfnShape::gate_bytes`].
    pub fn projection_bytes(&self) -> Result<[usize; 3], CudaError> {
        let gate = self.gate_bytes()?;
        Ok([gate, gate, self.down_bytes()?])
    }

    /// The format of the projections (`gate`, `up`, `down`).
    pub const fn formats(&self) -> [Format; 3] {
        [self.format, self.format, self.down_format]
    }

    /// Bytes of one expert: gate, up and down.
    ///
    /// # Errors
    /// As [`FfnShape::gate_bytes`].
    pub fn expert_bytes(&self) -> Result<usize, CudaError> {
        let (gate, down) = (self.gate_bytes()?, self.down_bytes()?);
        gate.checked_mul(2)
            .and_then(|g| g.checked_add(down))
            .ok_or_else(|| CudaError::Unsupported("expert size overflows".into()))
    }

    fn matrix_bytes(&self, format: Format, rows: usize, cols: usize) -> Result<usize, CudaError> {
        rows.checked_mul(Self::row_bytes(format, cols)?)
            .ok_or_else(|| CudaError::Unsupported(format!("shape {self:?}")))
    }
}

/// One expert's weights as host bytes.
#[derive(Debug, Clone, Copy)]
pub struct ExpertWeights<'a> {
    /// Gate `[ffn, hidden]`.
    pub gate: &'a [u8],
    /// Up `[ffn, hidden]`.
    pub up: &'a [u8],
    /// Down `[hidden, ffn]`.
    pub down: &'a [u8],
}

/// A half's value, from its sign, exponent and mantissa.
fn half(bits: u16) -> f64 {
    let sign = if bits & 0x8000 != 0 { -1.0 } else { 1.0 };
    let (exponent, mantissa) = (i32::from((bits >> 10) & 0x1f), f64::from(bits & 0x3ff));
    match exponent {
        0 => sign * mantissa * 2f64.powi(-24),
        31 if mantissa == 0.0 => sign * f64::INFINITY,
        31 => f64::NAN,
        _ => sign * (1.0 + mantissa / 1024.0) * 2f64.powi(exponent - 15),
    }
}

/// Decodes element `i` of a weight matrix in `format` (F32, BF16, Q8_0, Q4_K or Q6_K,
/// little-endian; a block format's rows are whole blocks, so element `i` is element `i mod n`
/// of block `i / n`, `n` the block's elements).
fn element(bytes: &[u8], format: Format, i: usize) -> Option<f64> {
    match format {
        Format::Q4_K => {
            let block = bytes.get((i / 256).checked_mul(144)?..)?.get(..144)?;
            let at = |k: usize| block.get(k).copied();
            let e = i % 256;
            // Sub-block `e / 32` has a 6-bit scale and min: pairs 0–3 in the low six bits of
            // bytes 4–11, pairs 4–7 split between those bytes' top two bits and bytes 12–15.
            let sub = e / 32;
            let (sc, m) = if sub < 4 {
                (at(4 + sub)? & 63, at(8 + sub)? & 63)
            } else {
                ((at(8 + sub)? & 0xF) | ((at(sub)? >> 6) << 4), (at(8 + sub)? >> 4) | ((at(4 + sub)? >> 6) << 4))
            };
            // Elements 64g..64g+32 are the low nibbles of bytes 16+32g.., the next 32 the high.
            let byte = at(16 + 32 * (e / 64) + e % 32)?;
            let q = if sub.is_multiple_of(2) { byte & 0xF } else { byte >> 4 };
            let (d, dmin) = (half(u16::from_le_bytes([at(0)?, at(1)?])), half(u16::from_le_bytes([at(2)?, at(3)?])));
            Some(d * f64::from(sc) * f64::from(q) - dmin * f64::from(m))
        }
        Format::Q6_K => {
            let block = bytes.get((i / 256).checked_mul(210)?..)?.get(..210)?;
            let at = |k: usize| block.get(k).copied();
            let e = i % 256;
            // Each half of 128: element l + 32k takes 4 low bits from byte l (k even) or l + 32
            // (k odd) of the half's 64 (low nibble for k < 2) and 2 high bits from bits 2k of
            // byte l of the half's 32 at 128; 16 elements share one signed scale.
            let (h, p) = (e / 128, e % 128);
            let (k, l) = (p / 32, p % 32);
            let low = at(64 * h + l + 32 * (k % 2))?;
            let low = if k < 2 { low & 0xF } else { low >> 4 };
            let high = (at(128 + 32 * h + l)? >> (2 * k)) & 3;
            let q = i32::from(low | (high << 4)) - 32;
            let sc = at(192 + 8 * h + l / 16 + 2 * k)?.cast_signed();
            Some(half(u16::from_le_bytes([at(208)?, at(209)?])) * f64::from(sc) * f64::from(q))
        }
        Format::Q8_0 => {
            let block = bytes.get((i / 32).checked_mul(34)?..)?;
            let (scale, values) = block.split_first_chunk::<2>()?;
            Some(half(u16::from_le_bytes(*scale)) * f64::from(values.get(i % 32)?.cast_signed()))
        }
        Format::F32 => {
            let b: [u8; 4] = bytes.get(i.checked_mul(4)?..i.checked_mul(4)?.checked_add(4)?)?.try_into().ok()?;
            Some(f64::from(f32::from_le_bytes(b)))
        }
        Format::BF16 => {
            let b: [u8; 2] = bytes.get(i.checked_mul(2)?..i.checked_mul(2)?.checked_add(2)?)?.try_into().ok()?;
            Some(f64::from(bf16_to_f32(u16::from_le_bytes(b))))
        }
        _ => None,
    }
}

/// The `f32` a BF16 value stands for.
pub fn bf16_to_f32(bits: u16) -> f32 {
    f32::from_bits(u32::from(bits) << 16)
}

/// The BF16 nearest to `value` (ties to even; NaN stays NaN).
pub fn f32_to_bf16(value: f32) -> u16 {
    let bits = value.to_bits();
    if value.is_nan() {
        return ((bits >> 16) as u16) | 0x40;
    }
    let rounded = bits.wrapping_add(0x7fff + ((bits >> 16) & 1));
    (rounded >> 16) as u16
}

/// The half nearest `value` (ties to even), for finite values in a normal half's range
/// (`2^−14 ..= 65504` in magnitude); values below it give the smallest normal half of their
/// sign, values above the largest finite half.
pub fn f32_to_f16(value: f32) -> u16 {
    let bits = value.to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    let magnitude = value.abs().clamp(f32::from_bits(0x3880_0000), 65504.0).to_bits();
    // Rebias the exponent (127 → 15) and keep 10 of the 23 mantissa bits, rounding the 13 dropped.
    let truncated = (magnitude - (112 << 23)) >> 13;
    let rest = magnitude & 0x1fff;
    let rounded = truncated + u32::from(rest > 0x1000 || (rest == 0x1000 && truncated & 1 == 1));
    sign | rounded.min(0x7bff) as u16
}

/// Activations as rows of `format` read them, in f64: the values, or for a block format their
/// 8-bit form (`expertslab_std::ffn::blocks`, the quantization the kernels and the host share),
/// each byte times its block's scale.
fn as_read(x: &[f32], format: Format) -> Vec<f64> {
    if !format.is_block_quantized() {
        return x.iter().map(|&v| f64::from(v)).collect();
    }
    Q8Activations::new(x).values().collect()
}

/// `matrix · v` for a row-major `[rows, cols]` matrix in `format`.
fn gemv(matrix: &[u8], format: Format, rows: usize, cols: usize, v: &[f64]) -> Option<Vec<f64>> {
    (0..rows)
        .map(|r| {
            let start = r.checked_mul(cols)?;
            (0..cols).try_fold(0.0f64, |acc, c| Some(acc + element(matrix, format, start + c)? * v.get(c)?))
        })
        .collect()
}

/// The reference output of one layer for `tokens` tokens: `x` is `[tokens, hidden]`, `ids` and
/// `weights` are `[tokens, top_k]` (token-major, as routers emit them), `expert(e)` gives expert
/// `e`'s weights. Returns `y`, `[tokens, hidden]`, rounded to `f32`.
///
/// # Errors
/// [`CudaError::Unsupported`] when a length does not match the shape, an expert is missing or
/// its matrices are too short, or the format is not one the kernels read.
pub fn moe_ffn<'a>(
    shape: &FfnShape,
    x: &[f32],
    ids: &[u32],
    weights: &[f32],
    mut expert: impl FnMut(u32) -> Option<ExpertWeights<'a>>,
) -> Result<Vec<f32>, CudaError> {
    let (matrix, down) = (shape.gate_bytes()?, shape.down_bytes()?);
    let bad = |what: &str| CudaError::Unsupported(format!("reference FFN: {what}"));
    if shape.hidden == 0 || shape.top_k == 0 || !x.len().is_multiple_of(shape.hidden) {
        return Err(bad("x is not a whole number of tokens"));
    }
    let tokens = x.len() / shape.hidden;
    if tokens.checked_mul(shape.top_k) != Some(ids.len()) || ids.len() != weights.len() {
        return Err(bad("ids and weights must be tokens × top_k long"));
    }
    let mut y = Vec::with_capacity(x.len());
    for (xt, (ids_t, w_t)) in x.chunks(shape.hidden).zip(ids.chunks(shape.top_k).zip(weights.chunks(shape.top_k))) {
        let xt = as_read(xt, shape.format);
        let mut yt = vec![0.0f64; shape.hidden];
        for (&id, &w) in ids_t.iter().zip(w_t) {
            let e = expert(id).ok_or_else(|| bad("no weights for an expert"))?;
            if e.gate.len() < matrix || e.up.len() < matrix || e.down.len() < down {
                return Err(bad("an expert's matrices are too short"));
            }
            let g = gemv(e.gate, shape.format, shape.ffn, shape.hidden, &xt).ok_or_else(|| bad("gate"))?;
            let u = gemv(e.up, shape.format, shape.ffn, shape.hidden, &xt).ok_or_else(|| bad("up"))?;
            // h rounded to f32, as the kernels keep it, then as down reads it.
            let h: Vec<f32> = g.iter().zip(&u).map(|(&g, &u)| (g / (1.0 + (-g).exp()) * u) as f32).collect();
            let h = as_read(&h, shape.down_format);
            let d = gemv(e.down, shape.down_format, shape.hidden, shape.ffn, &h).ok_or_else(|| bad("down"))?;
            yt.iter_mut().zip(&d).for_each(|(y, d)| *y += f64::from(w) * d);
        }
        y.extend(yt.iter().map(|&v| v as f32));
    }
    Ok(y)
}

/// The tolerance the GPU output is held to against [`moe_ffn`]: every element of a token's
/// output within `1e-4 × max(1e-3, max |reference| over that token)` for F32 and BF16 weights,
/// `2e-3 ×` the same for a shape with a block format. The kernels accumulate in `f32` in another
/// order than the reference (per lane, then a warp butterfly), and round the intermediate `h` to
/// `f32`; on rows of a few thousand elements that costs a few `f32` epsilons (1.2e-7) relative to
/// the row's magnitude, far below the bound. A block format's rows read `h` quantized to 8 bits,
/// and where the kernels' `f32` `h` lies within its rounding error of the midpoint between two
/// bytes, the reference's `h` (from `f64` sums) can take the other byte: each such byte moves the
/// output by one step of `h` times a weight, about 1e-4 of the output's size, and a token meets
/// a few. A wrong weight, a wrong expert, scale or sub-block, or a lost term moves the output by
/// orders of magnitude more than either bound.
pub fn within_tolerance(shape: &FfnShape, gpu: &[f32], reference: &[f32]) -> Result<(), String> {
    if gpu.len() != reference.len() || shape.hidden == 0 {
        return Err(format!("lengths differ: {} against {}", gpu.len(), reference.len()));
    }
    for (t, (g, r)) in gpu.chunks(shape.hidden).zip(reference.chunks(shape.hidden)).enumerate() {
        let scale = r.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
        let quantized = shape.format.is_block_quantized() || shape.down_format.is_block_quantized();
        let tol = if quantized { 2e-3 } else { 1e-4 } * scale;
        if let Some((i, (a, b))) =
            g.iter().zip(r).enumerate().find(|(_, (a, b))| (*a - *b).abs() > tol || a.is_nan() || b.is_nan())
        {
            return Err(format!("token {t}, element {i}: GPU {a} against reference {b} (tolerance {tol})"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f32_bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    #[test]
    fn q8_0_weights_are_the_scale_times_the_signed_byte() {
        // Two blocks: scale 1.0 (0x3C00) then −0.5 (0xB800); values 1, −2, 3, … and 127, −128.
        let mut bytes = vec![0x00, 0x3C];
        bytes.extend((0..32i8).map(|i| if i % 2 == 0 { i + 1 } else { -(i + 1) }.cast_unsigned()));
        bytes.extend([0x00, 0xB8, 127, 128]);
        bytes.extend([0u8; 30]);
        assert_eq!(element(&bytes, Format::Q8_0, 0), Some(1.0));
        assert_eq!(element(&bytes, Format::Q8_0, 1), Some(-2.0));
        assert_eq!(element(&bytes, Format::Q8_0, 31), Some(-32.0));
        assert_eq!(element(&bytes, Format::Q8_0, 32), Some(-63.5));
        assert_eq!(element(&bytes, Format::Q8_0, 33), Some(64.0));
        assert_eq!(element(&bytes, Format::Q8_0, 64), None, "past the last block");
        let shape = FfnShape::new(64, 32, 1, Format::Q8_0);
        assert_eq!((shape.gate_bytes().unwrap(), shape.down_bytes().unwrap()), (32 * 2 * 34, 64 * 34));
        assert!(FfnShape { hidden: 40, ..shape }.gate_bytes().is_err(), "40 is not whole blocks");
        assert!(FfnShape::new(64, 32, 1, Format::Q4_K).expert_bytes().is_err());
        // Q4_K_M's mix: gate and up in Q4_K, down in Q6_K.
        let mixed = FfnShape { down_format: Format::Q6_K, ..FfnShape::new(512, 256, 1, Format::Q4_K) };
        assert_eq!(mixed.projection_bytes().unwrap(), [256 * 2 * 144, 256 * 2 * 144, 512 * 210]);
    }

    #[test]
    fn halves_round_to_nearest_within_the_normal_range() {
        assert_eq!(f32_to_f16(1.0), 0x3C00);
        assert_eq!(f32_to_f16(-0.5), 0xB800);
        assert_eq!(f32_to_f16(65504.0), 0x7BFF);
        assert_eq!(f32_to_f16(1e9), 0x7BFF, "clamped to the largest finite half");
        assert_eq!(f32_to_f16(1e-9), 0x0400, "clamped to the smallest normal half");
        // 1 + 2^-11 is halfway between 1 and 1 + 2^-10: ties to even (1); just above rounds up.
        assert_eq!(f32_to_f16(1.0 + 2f32.powi(-11)), 0x3C00);
        assert_eq!(f32_to_f16(1.0 + 2f32.powi(-11) + 2f32.powi(-20)), 0x3C01);
        for bits in (0x0400u16..0x7C00).step_by(7) {
            assert_eq!(f32_to_f16(half(bits) as f32), bits, "{bits:#06x} reads back");
        }
    }

    #[test]
    fn the_block_formats_decode_as_the_host_ffn_reads_them() {
        use expertslab_std::ffn::{ExpertFfn, PairSlabs};
        // Random blocks with their f16 scales set: small normal and subnormal values.
        let (hidden, ffn) = (512, 256);
        for (format, block, scales) in [
            (Format::Q8_0, 34usize, &[(0usize, 0x1000u16)][..]),
            (Format::Q4_K, 144, &[(0, 0x0400), (2, 0x0200)][..]),
            (Format::Q6_K, 210, &[(208, 0x0100)][..]),
        ] {
            let shape = FfnShape::new(hidden, ffn, 1, format);
            let matrix = |seed: usize| -> Vec<u8> {
                let mut m: Vec<u8> = (0..shape.gate_bytes().unwrap())
                    .map(|i| ((i * 131 + seed * 977 + i * i % 61) % 256) as u8)
                    .collect();
                for (b, bytes) in m.chunks_exact_mut(block).enumerate() {
                    for &(at, base) in scales {
                        bytes[at..at + 2].copy_from_slice(&(base | (b * 37 % 0x100) as u16).to_le_bytes());
                    }
                }
                m
            };
            let (gate, up, down) = (matrix(1), matrix(2), matrix(3));
            let x: Vec<f32> = (0..hidden).map(|i| ((i * 53 % 97) as f32 - 48.0) * 0.02).collect();
            let want = moe_ffn(&shape, &x, &[0], &[1.0], |_| Some(ExpertWeights { gate: &gate, up: &up, down: &down }))
                .unwrap();
            let host = ExpertFfn::new(hidden, ffn, format).unwrap();
            let mut got = vec![0.0f32; hidden];
            host.parts(&[PairSlabs { gate: &gate, up: &up, down: &down, token: 0 }], &x, &mut got).unwrap();
            assert!(want.iter().any(|v| v.abs() > 1e-3), "{format:?}: outputs that test nothing");
            within_tolerance(&shape, &got, &want).unwrap_or_else(|e| panic!("{format:?}: {e}"));
        }
    }

    #[test]
    fn a_hand_computed_layer() {
        // hidden 2, ffn 1, top-2, one token.
        let shape = FfnShape::new(2, 1, 2, Format::F32);
        // Expert 0: gate [1, 0], up [0, 2], down [[1], [-1]]. Expert 1: gate [0, 0] (SiLU(0) = 0).
        let e0 = [f32_bytes(&[1.0, 0.0]), f32_bytes(&[0.0, 2.0]), f32_bytes(&[1.0, -1.0])];
        let e1 = [f32_bytes(&[0.0, 0.0]), f32_bytes(&[5.0, 5.0]), f32_bytes(&[3.0, 3.0])];
        let experts = [&e0, &e1];
        let x = [2.0f32, 0.5];
        let y = moe_ffn(&shape, &x, &[0, 1], &[0.25, 0.75], |e| {
            experts.get(e as usize).map(|m| ExpertWeights { gate: &m[0], up: &m[1], down: &m[2] })
        })
        .unwrap();
        // g = 2, u = 1, h = SiLU(2) = 2 / (1 + e^-2); y = 0.25 · h · [1, -1].
        let h = 2.0 / (1.0 + (-2.0f64).exp());
        assert_eq!(y, [(0.25 * h) as f32, (-0.25 * h) as f32]);
        assert!(within_tolerance(&shape, &y, &[(0.25 * h) as f32, (-0.25 * h) as f32]).is_ok());
        assert!(within_tolerance(&shape, &y, &[(0.25 * h) as f32, (-0.24 * h) as f32]).is_err());
    }

    #[test]
    fn bf16_weights_decode_and_round() {
        assert_eq!(f32_to_bf16(1.0), 0x3f80);
        assert_eq!(bf16_to_f32(0x3f80), 1.0);
        assert_eq!(f32_to_bf16(1.0 + 1.0 / 256.0), 0x3f80); // tie, to even
        assert_eq!(f32_to_bf16(1.0 + 3.0 / 256.0), 0x3f82); // tie, to even (up)
        assert!(bf16_to_f32(f32_to_bf16(f32::NAN)).is_nan());
        let shape = FfnShape::new(1, 1, 1, Format::BF16);
        let one = f32_to_bf16(1.0).to_le_bytes();
        let two = f32_to_bf16(2.0).to_le_bytes();
        let y = moe_ffn(&shape, &[3.0], &[0], &[1.0], |_| Some(ExpertWeights { gate: &one, up: &two, down: &two }))
            .unwrap();
        let silu3 = 3.0 / (1.0 + (-3.0f64).exp());
        assert_eq!(y, [(silu3 * 6.0 * 2.0) as f32]);
    }

    #[test]
    fn mismatched_inputs_are_refused() {
        let shape = FfnShape::new(2, 1, 1, Format::F32);
        let m = f32_bytes(&[1.0, 1.0]);
        let e = |_| Some(ExpertWeights { gate: &m, up: &m, down: &m });
        assert!(moe_ffn(&shape, &[1.0; 3], &[0], &[1.0], e).is_err());
        assert!(moe_ffn(&shape, &[1.0; 2], &[0, 1], &[1.0], e).is_err());
        assert!(moe_ffn(&shape, &[1.0; 2], &[0], &[1.0], |_| None).is_err());
        let short = [0u8; 4];
        assert!(moe_ffn(&shape, &[1.0; 2], &[0], &[1.0], |_| Some(ExpertWeights {
            gate: &short,
            up: &short,
            down: &short
        }))
        .is_err());
        let q = FfnShape::new(shape.hidden, shape.ffn, shape.top_k, Format::Q8_0);
        assert!(matches!(q.expert_bytes(), Err(CudaError::Unsupported(_))));
        assert_eq!(shape.expert_bytes().unwrap(), 24);
    }
}
