//! The host's expert FFN on one decode token: 8 pairs of a current MoE's experts (hidden 2048,
//! expert FFN 768, BF16: 9 MiB each, 72 MiB read per token), by `ExpertFfn` on the instruction
//! set found and on the portable one, against a plain loop (one f32 accumulator per row, the
//! math library's exp) over the same bytes on one thread. Run with
//! `cargo bench -p expertslab-std --bench ffn`.

use divan::Bencher;
use expertslab_std::ffn::{ExpertFfn, Isa, PairSlabs};
use expertslab_std::Format;

const HIDDEN: usize = 2048;
const FFN: usize = 768;
const PAIRS: usize = 8;

struct Setup {
    slabs: Vec<[Vec<u8>; 3]>,
    x: Vec<f32>,
}

fn setup() -> Setup {
    let mut s = 0x2545_F491_4F6C_DD1Du64;
    let mut slab = |cols: usize| -> Vec<u8> {
        let scale = (3.0 / cols as f32).sqrt();
        (0..HIDDEN * FFN)
            .flat_map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                let v = ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale;
                ((v.to_bits() >> 16) as u16).to_le_bytes()
            })
            .collect()
    };
    let slabs = (0..PAIRS).map(|_| [slab(HIDDEN), slab(HIDDEN), slab(FFN)]).collect();
    let x = (0..HIDDEN).map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0).collect();
    Setup { slabs, x }
}

fn pairs(s: &Setup) -> Vec<PairSlabs<'_>> {
    s.slabs.iter().map(|[g, u, d]| PairSlabs { gate: g, up: u, down: d, token: 0 }).collect()
}

fn bf16(b: &[u8]) -> f32 {
    f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16)
}

/// The plain loop: every row's dot product in element order, one accumulator.
fn plain(s: &Setup, parts: &mut [f32]) {
    let mut h = vec![0.0f32; FFN];
    for ([g, u, d], part) in s.slabs.iter().zip(parts.chunks_mut(HIDDEN)) {
        for (r, out) in h.iter_mut().enumerate() {
            let row = |m: &[u8]| -> f32 {
                m[r * HIDDEN * 2..(r + 1) * HIDDEN * 2].chunks_exact(2).zip(&s.x).map(|(w, x)| bf16(w) * x).sum()
            };
            let (gv, uv) = (row(g), row(u));
            *out = gv / (1.0 + (-gv).exp()) * uv;
        }
        for (r, out) in part.iter_mut().enumerate() {
            *out = d[r * FFN * 2..(r + 1) * FFN * 2].chunks_exact(2).zip(&h).map(|(w, x)| bf16(w) * x).sum();
        }
    }
}

#[divan::bench]
fn expert_ffn(bencher: Bencher) {
    let s = setup();
    let ffn = ExpertFfn::new(HIDDEN, FFN, Format::BF16).expect("ffn");
    let p = pairs(&s);
    let mut parts = vec![0.0f32; PAIRS * HIDDEN];
    println!("instruction set: {}, threads: {}", ffn.isa().name(), rayon::current_num_threads());
    bencher.bench_local(|| ffn.parts(&p, &s.x, &mut parts).expect("parts"));
}

/// One pair alone, as a decode step with one miss on the host computes it: the rows of one
/// expert spread over the threads.
#[divan::bench]
fn expert_ffn_one_pair(bencher: Bencher) {
    let s = setup();
    let ffn = ExpertFfn::new(HIDDEN, FFN, Format::BF16).expect("ffn");
    let p = pairs(&s);
    let mut parts = vec![0.0f32; HIDDEN];
    bencher.bench_local(|| ffn.parts(&p[..1], &s.x, &mut parts).expect("parts"));
}

#[divan::bench]
fn expert_ffn_portable(bencher: Bencher) {
    let s = setup();
    let ffn = ExpertFfn::new(HIDDEN, FFN, Format::BF16).expect("ffn").with_isa(Isa::Portable).expect("portable");
    let p = pairs(&s);
    let mut parts = vec![0.0f32; PAIRS * HIDDEN];
    bencher.bench_local(|| ffn.parts(&p, &s.x, &mut parts).expect("parts"));
}

#[divan::bench]
fn plain_loop_one_thread(bencher: Bencher) {
    let s = setup();
    let mut parts = vec![0.0f32; PAIRS * HIDDEN];
    bencher.bench_local(|| plain(&s, &mut parts));
}

fn main() {
    divan::main();
}
