//! ggml's dequantisation of the block formats the FFN reads, transcribed loop for loop from its
//! `dequantize_row_*` functions (f32 operations in ggml's order, none fused): the plain reference
//! the tests hold the FFN's widening to, bit for bit.

use super::order::f16_to_f32;

/// ggml's Q4_K dequantisation of one block, transcribed loop for loop (f32, no fusing).
pub(super) fn q4k(b: &[u8]) -> Vec<f32> {
    let d = f16_to_f32(u16::from_le_bytes([b[0], b[1]]));
    let min = f16_to_f32(u16::from_le_bytes([b[2], b[3]]));
    let scales = &b[4..16];
    let get = |j: usize| -> (u8, u8) {
        if j < 4 {
            (scales[j] & 63, scales[j + 4] & 63)
        } else {
            ((scales[j + 4] & 0xF) | ((scales[j - 4] >> 6) << 4), (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4))
        }
    };
    let mut y = Vec::new();
    let mut q = &b[16..];
    let mut is = 0;
    for _ in (0..256).step_by(64) {
        let (sc, m) = get(is);
        let (d1, m1) = (d * f32::from(sc), min * f32::from(m));
        let (sc, m) = get(is + 1);
        let (d2, m2) = (d * f32::from(sc), min * f32::from(m));
        y.extend(q[..32].iter().map(|&v| d1 * f32::from(v & 0xF) - m1));
        y.extend(q[..32].iter().map(|&v| d2 * f32::from(v >> 4) - m2));
        q = &q[32..];
        is += 2;
    }
    y
}

/// ggml's Q6_K dequantisation of one block, transcribed loop for loop (f32, no fusing).
pub(super) fn q6k(b: &[u8]) -> Vec<f32> {
    let d = f16_to_f32(u16::from_le_bytes([b[208], b[209]]));
    let mut y = vec![0.0f32; 256];
    let (mut ql, mut qh, mut sc) = (&b[0..128], &b[128..192], &b[192..208]);
    for n in (0..256).step_by(128) {
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i8 - 32;
            let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i8 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i8 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i8 - 32;
            let s = |i: usize| f32::from(sc[i] as i8);
            y[n + l] = d * s(is) * f32::from(q1);
            y[n + l + 32] = d * s(is + 2) * f32::from(q2);
            y[n + l + 64] = d * s(is + 4) * f32::from(q3);
            y[n + l + 96] = d * s(is + 6) * f32::from(q4);
        }
        ql = &ql[64..];
        qh = &qh[32..];
        sc = &sc[8..];
    }
    y
}

/// ggml's Q8_0 dequantisation of one block.
pub(super) fn q8_0(b: &[u8]) -> Vec<f32> {
    let d = f16_to_f32(u16::from_le_bytes([b[0], b[1]]));
    b[2..34].iter().map(|&q| f32::from(q as i8) * d).collect()
}
