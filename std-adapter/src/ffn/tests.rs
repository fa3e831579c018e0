use super::blocks::{Blocks, Q8Activations, Q4K, Q6K, Q8_0};
use super::order::{dot, pad_to_blocks, BLOCK};
use super::rows::{Activations, RowFormat};
use super::*;

mod pool;

/// Uniform values in ±`scale` from a small LCG.
fn values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

fn encode(v: &[f32], format: Format) -> Vec<u8> {
    match format {
        Format::BF16 => v.iter().flat_map(|x| ((x.to_bits() >> 16) as u16).to_le_bytes()).collect(),
        _ => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
    }
}

/// A half's value, computed in f64 from its fields (independently of the library's widening).
/// Powers of two are built from their bits, exactly (`powi` may round, and does under Miri).
fn half(bits: u16) -> f64 {
    let sign = if bits & 0x8000 != 0 { -1.0 } else { 1.0 };
    let (e, m) = (i64::from((bits >> 10) & 0x1f), f64::from(bits & 0x3ff));
    let two_to = |n: i64| f64::from_bits(((n + 1023) as u64) << 52);
    match e {
        0 => sign * m * two_to(-24),
        31 if m == 0.0 => sign * f64::INFINITY,
        31 => f64::NAN,
        _ => sign * (1.0 + m / 1024.0) * two_to(e - 15),
    }
}

/// Q8_0 weights of `elems` elements (a multiple of 32): each block a random scale near 2^-11
/// and random values in ±127, as a quantizer leaves them.
fn q8_0(elems: usize, seed: u64) -> Vec<u8> {
    let r = values(elems / 32 * 33, seed, 1.0);
    r.chunks_exact(33)
        .flat_map(|b| {
            let scale: u16 = 0x1000 | ((b[0].abs() * 1023.0) as u16 & 0x3ff) | if b[0] < 0.0 { 0x0400 } else { 0 };
            let values = b[1..].iter().map(|v| (v * 127.0).round() as i8 as u8);
            scale.to_le_bytes().into_iter().chain(values)
        })
        .collect()
}

/// K-quant blocks of `elems` elements (a multiple of 256) of `format`: random bytes with each
/// block's f16 scales set to small normal or subnormal values, so weights are about ±0.1.
fn k_quant(elems: usize, seed: u64, format: Format) -> Vec<u8> {
    let (bytes, scales): (usize, &[(usize, u16)]) = match format {
        Format::Q4_K => (144, &[(0, 0x0400), (2, 0x0200)]),
        _ => (210, &[(208, 0x0100)]),
    };
    let r = values(elems / 256 * bytes, seed, 1.0);
    let mut out: Vec<u8> = r.iter().map(|v| ((v + 1.0) * 127.9) as u8).collect();
    for (i, block) in out.chunks_exact_mut(bytes).enumerate() {
        for &(at, base) in scales {
            let half = base | (i * 37 % 0x100) as u16;
            block[at..at + 2].copy_from_slice(&half.to_le_bytes());
        }
    }
    out
}

fn decode(b: &[u8], format: Format) -> Vec<f64> {
    let widened = |weights: Vec<f32>| weights.into_iter().map(f64::from).collect::<Vec<f64>>();
    match format {
        Format::Q4_K => widened(b.chunks_exact(144).flat_map(super::ggml::q4k).collect()),
        Format::Q6_K => widened(b.chunks_exact(210).flat_map(super::ggml::q6k).collect()),
        Format::Q8_0 => b
            .chunks_exact(34)
            .flat_map(|block| {
                let d = half(u16::from_le_bytes([block[0], block[1]]));
                block[2..].iter().map(move |&q| d * f64::from(q as i8))
            })
            .collect(),
        Format::BF16 => b
            .chunks_exact(2)
            .map(|c| f64::from(f32::from_bits(u32::from(u16::from_le_bytes([c[0], c[1]])) << 16)))
            .collect(),
        _ => b.chunks_exact(4).map(|c| f64::from(f32::from_le_bytes([c[0], c[1], c[2], c[3]]))).collect(),
    }
}

/// Experts of a shape: gate, up, down bytes per expert.
struct Experts {
    slabs: Vec<[Vec<u8>; 3]>,
}

fn experts(n: usize, hidden: usize, ffn: usize, format: Format) -> Experts {
    let slabs = (0..n)
        .map(|e| {
            let s = |p: u64, cols: usize| match format {
                Format::Q8_0 => q8_0(hidden * ffn, e as u64 * 3 + p),
                Format::Q4_K | Format::Q6_K => k_quant(hidden * ffn, e as u64 * 3 + p, format),
                _ => encode(&values(hidden * ffn, e as u64 * 3 + p, (3.0 / cols as f32).sqrt()), format),
            };
            [s(0, hidden), s(1, hidden), s(2, ffn)]
        })
        .collect();
    Experts { slabs }
}

fn pairs<'a>(ex: &'a Experts, routing: &[(usize, usize)]) -> Vec<PairSlabs<'a>> {
    routing
        .iter()
        .map(|&(expert, token)| {
            let [g, u, d] = &ex.slabs[expert];
            PairSlabs { gate: g, up: u, down: d, token }
        })
        .collect()
}

/// A vector as a row of `format` reads it, in f64: the values, or for a block format their
/// 8-bit form (the shared quantization), `d · q`.
fn as_read(x: &[f32], format: Format) -> Vec<f64> {
    if !format.is_block_quantized() {
        return x.iter().map(|&v| f64::from(v)).collect();
    }
    Q8Activations::new(x).values().collect()
}

/// The plain reference: f64 throughout, the library's exp, the weights as ggml dequantises them;
/// the activations (`x`, and `h` rounded to f32) as the rows read them ([`as_read`]), or as
/// they are when `exact`.
fn reference_of(
    p: &PairSlabs<'_>,
    x: &[f32],
    hidden: usize,
    ffn: usize,
    formats: [Format; 2],
    exact: bool,
) -> Vec<f64> {
    let read = |v: &[f32], f: Format| if exact { as_read(v, Format::F32) } else { as_read(v, f) };
    let (g, u, d) = (decode(p.gate, formats[0]), decode(p.up, formats[0]), decode(p.down, formats[1]));
    let x = read(&x[p.token * hidden..(p.token + 1) * hidden], formats[0]);
    let h: Vec<f32> = (0..ffn)
        .map(|r| {
            let gv: f64 = (0..hidden).map(|c| g[r * hidden + c] * x[c]).sum();
            let uv: f64 = (0..hidden).map(|c| u[r * hidden + c] * x[c]).sum();
            (gv / (1.0 + (-gv).exp()) * uv) as f32
        })
        .collect();
    let h = read(&h, formats[1]);
    (0..hidden).map(|r| (0..ffn).map(|c| d[r * ffn + c] * h[c]).sum()).collect()
}

/// [`reference_of`] with the activations as the rows read them.
fn reference(p: &PairSlabs<'_>, x: &[f32], hidden: usize, ffn: usize, formats: [Format; 2]) -> Vec<f64> {
    reference_of(p, x, hidden, ffn, formats, false)
}

/// The shapes tested: whole blocks with a partial one, two whole blocks, and widths that are not
/// whole chunks. Under Miri, orders of magnitude slower, the last only (it has a partial block).
#[cfg(not(miri))]
const SHAPES: &[(usize, usize)] = &[(264, 40), (512, 96), (100, 13)];
#[cfg(miri)]
const SHAPES: &[(usize, usize)] = &[(100, 13)];
/// Q8_0's: whole blocks of 32, one with a partial span of 256.
#[cfg(not(miri))]
const Q8_0_SHAPES: &[(usize, usize)] = &[(288, 64), (512, 96)];
#[cfg(miri)]
const Q8_0_SHAPES: &[(usize, usize)] = &[(96, 32)];
/// Q4_K's and Q6_K's: whole blocks of 256, one with a partial pass only past the first block.
/// Not under Miri: Q8_0's shape covers the block path there.
#[cfg(not(miri))]
const K_SHAPES: &[(usize, usize)] = &[(256, 512), (512, 256)];
#[cfg(miri)]
const K_SHAPES: &[(usize, usize)] = &[];

/// Every format the FFN reads with the shapes it is tested at.
fn cases() -> impl Iterator<Item = (Format, usize, usize)> {
    let plain = [Format::F32, Format::BF16].into_iter().flat_map(|f| SHAPES.iter().map(move |&(h, w)| (f, h, w)));
    let k = [Format::Q4_K, Format::Q6_K].into_iter().flat_map(|f| K_SHAPES.iter().map(move |&(h, w)| (f, h, w)));
    plain.chain(Q8_0_SHAPES.iter().map(|&(h, w)| (Format::Q8_0, h, w))).chain(k)
}
const ROUTING: [(usize, usize); 5] = [(0, 0), (3, 0), (1, 1), (3, 1), (2, 2)];

fn run(ffn: &ExpertFfn, p: &[PairSlabs<'_>], x: &[f32], hidden: usize) -> Vec<u32> {
    let mut parts = vec![0.0f32; p.len() * hidden];
    ffn.parts(p, x, &mut parts).unwrap();
    parts.iter().map(|v| v.to_bits()).collect()
}

#[test]
fn pairs_agree_with_the_plain_reference() {
    for (format, hidden, width) in cases() {
        let ex = experts(4, hidden, width, format);
        let p = pairs(&ex, &ROUTING);
        let x = values(3 * hidden, 99, 1.0);
        let ffn = ExpertFfn::new(hidden, width, format).unwrap();
        let mut parts = vec![0.0f32; p.len() * hidden];
        ffn.parts(&p, &x, &mut parts).unwrap();
        for (i, pair) in p.iter().enumerate() {
            let want = reference(pair, &x, hidden, width, [format; 2]);
            let scale = want.iter().map(|v| v.abs()).fold(0.0, f64::max);
            assert!(scale > 1e-3, "{format:?} {hidden}×{width}: outputs of {scale} test nothing");
            for (got, want) in parts[i * hidden..(i + 1) * hidden].iter().zip(&want) {
                assert!((f64::from(*got) - want).abs() <= 2e-5 * scale, "{format:?} {hidden}×{width}: {got} vs {want}");
            }
        }
    }
}

#[test]
fn the_bits_do_not_depend_on_instruction_set_threads_batch_or_alignment() {
    let one = Arc::new(rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap());
    let three = Arc::new(rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap());
    for (format, hidden, width) in cases() {
        let ex = experts(4, hidden, width, format);
        let p = pairs(&ex, &ROUTING);
        let x = values(3 * hidden, 7, 1.0);
        let base = ExpertFfn::new(hidden, width, format).unwrap().with_isa(Isa::Portable).unwrap();
        let want = run(&base, &p, &x, hidden);
        for isa in Isa::all_available() {
            for pool in [&one, &three] {
                let ffn = base.clone().with_isa(isa).unwrap().with_pool(Arc::clone(pool));
                assert_eq!(run(&ffn, &p, &x, hidden), want, "{format:?} {hidden}×{width} {isa:?}");
            }
        }
        // A pool of its own, of the threads asked for.
        let own = base.clone().with_threads(2).unwrap();
        assert_eq!(own.threads(), 2);
        assert_eq!(run(&own, &p, &x, hidden), want, "{format:?} {hidden}×{width} own pool");
        // One pair alone gives the bits it gives in the batch.
        let alone = run(&base, &p[3..4], &x, hidden);
        assert_eq!(alone, want[3 * hidden..4 * hidden], "{format:?} batch");
        // Slabs one byte off their alignment.
        let shifted: Vec<[Vec<u8>; 3]> = ex.slabs.iter().map(|s| s.clone().map(|b| [vec![0u8], b].concat())).collect();
        let moved: Vec<PairSlabs<'_>> = ROUTING
            .iter()
            .map(|&(e, token)| {
                let [g, u, d] = &shifted[e];
                PairSlabs { gate: &g[1..], up: &u[1..], down: &d[1..], token }
            })
            .collect();
        assert_eq!(run(&base.clone().with_isa(Isa::detect()).unwrap(), &moved, &x, hidden), want, "{format:?} shifted");
    }
}

#[test]
fn bad_input_is_refused_before_anything_is_written() {
    let (hidden, width) = (16, 8);
    let ex = experts(2, hidden, width, Format::F32);
    let ffn = ExpertFfn::new(hidden, width, Format::F32).unwrap();
    let x = values(hidden, 1, 1.0);
    let mut parts = vec![7.0f32; hidden];
    let short = &ex.slabs[0][1][..10];
    let bad = [PairSlabs { gate: &ex.slabs[0][0], up: short, down: &ex.slabs[0][2], token: 0 }];
    assert_eq!(
        ffn.parts(&bad, &x, &mut parts),
        Err(FfnError::Slab { pair: 0, projection: "up", expected: 512, actual: 10 })
    );
    let far = pairs(&ex, &[(1, 1)]);
    assert_eq!(ffn.parts(&far, &x, &mut parts), Err(FfnError::Token { pair: 0, token: 1, tokens: 1 }));
    let ok = pairs(&ex, &[(1, 0)]);
    assert!(matches!(ffn.parts(&ok, &x[1..], &mut parts), Err(FfnError::Length { what: "activations", .. })));
    assert!(matches!(ffn.parts(&ok, &x, &mut parts[1..]), Err(FfnError::Length { what: "parts", .. })));
    assert!(parts.iter().all(|&v| v == 7.0), "nothing written");
    assert_eq!(ExpertFfn::new(4, 4, Format::Q5_K).unwrap_err(), FfnError::Format(Format::Q5_K));
    let e = ExpertFfn::new(256, 288, Format::Q4_K).unwrap_err();
    assert_eq!(e, FfnError::NotWholeBlocks { format: Format::Q4_K, width: 288 });
    let e = ExpertFfn::new(64, 40, Format::Q8_0).unwrap_err();
    assert_eq!(e, FfnError::NotWholeBlocks { format: Format::Q8_0, width: 40 });
    assert_eq!(e.to_string(), "a width of 40 is not a whole number of q8_0's blocks of 32");
    let q = ExpertFfn::new(64, 32, Format::Q8_0).unwrap();
    let slab = vec![0u8; 32 * 2 * 34];
    let bad = [PairSlabs { gate: &slab, up: &slab, down: &slab[1..], token: 0 }];
    let mut out = vec![0.0f32; 64];
    assert_eq!(
        q.parts(&bad, &values(64, 1, 1.0), &mut out),
        Err(FfnError::Slab { pair: 0, projection: "down", expected: 2176, actual: 2175 })
    );
    assert_eq!(ExpertFfn::new(0, 4, Format::F32).unwrap_err(), FfnError::EmptyShape);
    let missing = [Isa::Avx2, Isa::Avx512, Isa::Neon].into_iter().find(|i| !i.available());
    if let Some(isa) = missing {
        assert_eq!(ffn.with_isa(isa).unwrap_err(), FfnError::Isa(isa));
    }
}

#[test]
fn a_pair_s_slabs_come_from_its_source() {
    use crate::{ExpertLayout, ExpertStore, LayerStacks, SharedBytes, StackLayout};
    let ex = experts(3, 16, 8, Format::F32);
    let stack = |p: usize| SharedBytes::copy_from(&ex.slabs.iter().flat_map(|s| s[p].clone()).collect::<Vec<u8>>());
    let gate = StackLayout::new(Format::F32, 3, 8, 16).unwrap();
    let down = StackLayout::new(Format::F32, 3, 16, 8).unwrap();
    let layout = ExpertLayout::gate_up_down(gate, gate, down).unwrap();
    let mut store = ExpertStore::new();
    store.insert(5, LayerStacks::new(layout, &[stack(0), stack(1), stack(2)]).unwrap()).unwrap();
    let pair = PairSlabs::from_source(&store, 5, 2, 7).unwrap();
    assert_eq!(
        (pair.gate, pair.up, pair.down, pair.token),
        (&ex.slabs[2][0][..], &ex.slabs[2][1][..], &ex.slabs[2][2][..], 7)
    );
    assert!(PairSlabs::from_source(&store, 4, 0, 0).is_err(), "no layer 4");
    assert!(PairSlabs::from_source(&store, 5, 3, 0).is_err(), "no expert 3");
}

#[test]
fn a_call_makes_a_few_tasks_per_thread() {
    use super::rows_per_task;
    // One pair of the current MoE shape on 16 threads: 64 tasks of 12 gate/up rows, 64 of 32
    // down rows; eight pairs: gate/up tasks of the most rows, down tasks of up to 170 rows
    // (256 KiB of BF16 rows of 768) evened out to 13 tasks of at most 158 a pair, or 256 where a
    // task may take more.
    assert_eq!(rows_per_task(768, 1, 16, 32), 12);
    assert_eq!(rows_per_task(2048, 1, 16, 170), 32);
    assert_eq!(rows_per_task(768, 8, 16, 32), 32);
    assert_eq!(rows_per_task(2048, 8, 16, 170), 158);
    assert_eq!(rows_per_task(2048, 8, 16, 512), 256);
    // Evened out: the same number of tasks, none a small remainder.
    for (rows, most) in [(2048, 170), (768, 100), (1000, 33), (7, 3), (2048, 512)] {
        let (per, uneven) = (rows_per_task(rows, 8, 16, most), (rows * 8).div_ceil(64).clamp(1, most));
        let tasks = rows.div_ceil(per);
        assert_eq!(tasks, rows.div_ceil(uneven), "{rows} by {most}");
        // The last task within `tasks` rows of the others.
        assert!(rows - per * (tasks - 1) + tasks > per, "{rows} by {most}: {per}");
    }
    // Never more than the most rows a task takes, never 0.
    assert_eq!(rows_per_task(100_000, 1, 2, 32), 32);
    assert_eq!(rows_per_task(3, 1, 64, 32), 1);
    assert_eq!(rows_per_task(0, 0, 0, 0), 1);
}

#[test]
fn every_half_widens_exactly() {
    use super::order::f16_to_f32;
    // Under Miri, every 97th half (subnormals, normals and the specials among them).
    let step = if cfg!(miri) { 97 } else { 1 };
    for bits in (0..=u16::MAX).step_by(step) {
        let (got, want) = (f16_to_f32(bits), half(bits));
        if want.is_nan() {
            // The sign and the payload kept.
            let nan = u32::from(bits & 0x8000) << 16 | 0x7f80_0000 | u32::from(bits & 0x3ff) << 13;
            assert_eq!(got.to_bits(), nan, "{bits:#06x}");
        } else {
            assert_eq!(f64::from(got), want, "{bits:#06x}");
            assert_eq!(got.is_sign_negative(), bits & 0x8000 != 0, "{bits:#06x}");
        }
    }
}

#[test]
fn a_q4_k_m_expert_reads_q4_k_gate_and_up_beside_q6_k_down() {
    // Under Miri, one super-block per row.
    let (hidden, ffn) = if cfg!(miri) { (256, 256) } else { (512, 256) };
    let (gate, up) = (k_quant(hidden * ffn, 1, Format::Q4_K), k_quant(hidden * ffn, 2, Format::Q4_K));
    let down = k_quant(hidden * ffn, 3, Format::Q6_K);
    let pair = PairSlabs { gate: &gate, up: &up, down: &down, token: 0 };
    let x = values(hidden, 5, 1.0);
    let mixed = ExpertFfn::new(hidden, ffn, Format::Q4_K).unwrap().with_down_format(Format::Q6_K).unwrap();
    let mut got = vec![0.0f32; hidden];
    mixed.parts(&[pair], &x, &mut got).unwrap();
    let want = reference(&pair, &x, hidden, ffn, [Format::Q4_K, Format::Q6_K]);
    let scale = want.iter().map(|v| v.abs()).fold(0.0, f64::max);
    assert!(scale > 1e-3);
    for (g, w) in got.iter().zip(&want) {
        assert!((f64::from(*g) - w).abs() <= 2e-5 * scale, "{g} vs {w}");
    }
    // Down's slab is sized by its own format.
    let uniform = ExpertFfn::new(hidden, ffn, Format::Q4_K).unwrap();
    assert!(matches!(uniform.parts(&[pair], &x, &mut got), Err(FfnError::Slab { projection: "down", .. })));
    assert_eq!(
        ExpertFfn::new(hidden, 288, Format::Q8_0).unwrap().with_down_format(Format::Q6_K).unwrap_err(),
        FfnError::NotWholeBlocks { format: Format::Q6_K, width: 288 }
    );
}

/// Pseudo-random bytes.
fn bytes(n: usize, seed: usize) -> Vec<u8> {
    (0..n).map(|i| ((i * 131 + seed * 977 + (i * i) % 61) % 256) as u8).collect()
}

/// A row of `cols` elements of `B`: its blocks' scales made finite (exponent below 31).
fn row_of<B: Blocks>(cols: usize, seed: usize, scales: &[usize]) -> Vec<u8> {
    let mut row = bytes(cols / B::ELEMS * B::BYTES, seed);
    for block in row.chunks_exact_mut(B::BYTES) {
        for &at in scales {
            block[at + 1] &= 0xF7; // exponent field at most 0b11101
        }
    }
    row
}

/// A row's dot product is, to f32 rounding, the f64 sum of ggml's dequantised weights times
/// the quantized activations: a nibble, scale or min read from the wrong place moves it by
/// orders of magnitude more.
fn check_blocks<B: Blocks + RowFormat>(scales: &[usize], ggml: fn(&[u8]) -> Vec<f32>) {
    // Under Miri, the one- and two-block rows and one pass of 256.
    let widths: &[usize] =
        if cfg!(miri) { &[B::ELEMS, 2 * B::ELEMS, 256] } else { &[B::ELEMS, 2 * B::ELEMS, 256, 288, 768, 2048] };
    for cols in widths.iter().copied().filter(|c| c % B::ELEMS == 0) {
        let row = row_of::<B>(cols, cols, scales);
        assert_eq!(row.len(), B::row_bytes(cols));
        let weights: Vec<f32> = row.chunks_exact(B::BYTES).flat_map(ggml).collect();
        let x: Vec<f32> = (0..cols).map(|i| ((i * 53 % 97) as f32 - 48.0) * 0.021).collect();
        let xq = as_read(&x, Format::Q8_0);
        let want: f64 = weights.iter().zip(&xq).map(|(&w, &v)| f64::from(w) * v).sum();
        let size: f64 = weights.iter().zip(&xq).map(|(&w, &v)| (f64::from(w) * v).abs()).sum();
        let got = B::dot::<BLOCK>(&row, cols, &Activations::new(&x, true));
        assert!((f64::from(got) - want).abs() <= 1e-6 * size, "{cols}: {got} against {want} (size {size})");
    }
}

#[test]
fn block_rows_are_ggml_s_weights_times_the_quantized_activations() {
    use super::ggml::{q4k as ggml_q4k, q6k as ggml_q6k, q8_0 as ggml_q8_0};
    check_blocks::<Q8_0>(&[0], ggml_q8_0);
    check_blocks::<Q4K>(&[0, 2], ggml_q4k);
    check_blocks::<Q6K>(&[208], ggml_q6k);
}

/// What the 8-bit activations cost: a pair of each block format against the reference with
/// the activations unquantized, relative to the largest output.
#[test]
#[cfg_attr(miri, ignore = "a measurement over whole pairs: too slow under Miri")]
fn quantized_activations_stay_within_two_percent_of_the_exact_products() {
    for (format, hidden, width) in cases().filter(|c| c.0.is_block_quantized()) {
        let ex = experts(2, hidden, width, format);
        let p = pairs(&ex, &[(0, 0), (1, 0)]);
        let x = values(hidden, 3, 1.0);
        let ffn = ExpertFfn::new(hidden, width, format).unwrap();
        let mut parts = vec![0.0f32; 2 * hidden];
        ffn.parts(&p, &x, &mut parts).unwrap();
        let mut worst = 0.0f64;
        for (i, pair) in p.iter().enumerate() {
            let exact = reference_of(pair, &x, hidden, width, [format; 2], true);
            let scale = exact.iter().map(|v| v.abs()).fold(0.0, f64::max);
            for (got, want) in parts[i * hidden..(i + 1) * hidden].iter().zip(&exact) {
                worst = worst.max((f64::from(*got) - want).abs() / scale);
            }
        }
        assert!(worst <= 2e-2, "{format:?} {hidden}×{width}: {worst:.2e} of the largest output");
        println!("{format:?} {hidden}×{width}: within {worst:.2e} of the largest output");
    }
}

#[test]
fn gate_up_gives_the_rows_down_reads_and_one_call_computes_both_kinds() {
    use super::order::Bf16;
    let (hidden, ffn) = if cfg!(miri) { (16, 8) } else { (64, 48) };
    let bf16 = ExpertFfn::new(hidden, ffn, Format::BF16).unwrap();
    let slabs: Vec<[Vec<u8>; 3]> = (0..3u64)
        .map(|i| {
            let m = |seed| encode(&values(ffn * hidden, seed, 0.3), Format::BF16);
            [m(10 + i), m(20 + i), m(30 + i)]
        })
        .collect();
    let pairs: Vec<PairSlabs<'_>> =
        slabs.iter().enumerate().map(|(i, [g, u, d])| PairSlabs { gate: g, up: u, down: d, token: i % 2 }).collect();
    let x = values(2 * hidden, 5, 1.0);
    let mut parts = vec![0.0f32; 3 * hidden];
    bf16.parts(&pairs, &x, &mut parts).unwrap();
    let mut h = vec![0.0f32; 3 * ffn];
    bf16.gate_up(&pairs, &x, &mut h).unwrap();
    // Down from those rows, in the shared order, gives the whole pairs' bits.
    for (i, p) in pairs.iter().enumerate() {
        let mut ht = Vec::new();
        pad_to_blocks(&h[i * ffn..(i + 1) * ffn], &mut ht);
        for r in 0..hidden {
            let got = dot::<Bf16, BLOCK>(&p.down[r * ffn * 2..(r + 1) * ffn * 2], ffn, &ht);
            assert_eq!(got.to_bits(), parts[i * hidden + r].to_bits(), "pair {i}, row {r}");
        }
    }
    // One call: pairs 0 and 2 whole, pair 1 halved (its down not given).
    let half = PairSlabs { down: &[], ..pairs[1] };
    let (mut whole, mut half_h) = (vec![0.0f32; 2 * hidden], vec![0.0f32; ffn]);
    bf16.parts_and_h(&[pairs[0], pairs[2]], &x, &mut whole, &[half], &mut half_h).unwrap();
    let want: Vec<u32> = parts[..hidden].iter().chain(&parts[2 * hidden..]).map(|v| v.to_bits()).collect();
    assert_eq!(whole.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), want);
    assert_eq!(
        half_h.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
        h[ffn..2 * ffn].iter().map(|v| v.to_bits()).collect::<Vec<_>>()
    );
    // Wrong lengths and slabs are refused, the halves numbered after the whole pairs.
    let short = PairSlabs { gate: &slabs[1][0][2..], ..half };
    let err = bf16.parts_and_h(&[pairs[0]], &x, &mut whole[..hidden], &[short], &mut half_h).unwrap_err();
    assert!(matches!(err, FfnError::Slab { pair: 1, projection: "gate", .. }), "{err:?}");
    let err = bf16.gate_up(&pairs, &x, &mut half_h).unwrap_err();
    assert!(matches!(err, FfnError::Length { what: "h", .. }), "{err:?}");
}

/// The vector sum of a row's accumulators gives the bits of the sum taken one by one, on
/// ordinary values, values from 2^-20 to 2^20 in size (where the order of the sums shows),
/// ordinary values among signed zeros, infinities, NaNs and subnormals, and any bits (a NaN for
/// a NaN: Rust leaves their payloads unspecified).
#[test]
fn the_vector_sum_of_the_accumulators_is_the_sum_in_order() {
    use super::order::{reduce, reduce_in_order};
    let mut s = 0x2545_F491_4F6C_DD1Du64;
    let mut next = || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    let specials = [0.0f32, -0.0, f32::INFINITY, f32::NEG_INFINITY, f32::NAN, f32::MIN_POSITIVE / 4.0, 1e30, -1e30];
    for round in 0..200 {
        let acc: [f32; BLOCK] = core::array::from_fn(|_| {
            let r = next();
            match round % 4 {
                0 => (r >> 40) as f32 / (1u64 << 24) as f32 - 0.5,
                // Magnitudes from 2^-20 to 2^20: sums that round differently in another order.
                1 => {
                    ((r >> 40) as f32 / (1u64 << 24) as f32 - 0.5)
                        * f32::from_bits(((107 + (r >> 8) % 41) as u32) << 23)
                }
                2 if r % 16 == 0 => specials[(r >> 8) as usize % specials.len()],
                2 => (r >> 40) as f32 / (1u64 << 24) as f32 - 0.5,
                _ => f32::from_bits((r >> 32) as u32),
            }
        });
        let (got, want) = (reduce(&acc), reduce_in_order(&acc));
        assert!(
            got.to_bits() == want.to_bits() || got.is_nan() && want.is_nan(),
            "round {round}: {got} against {want}"
        );
    }
}
