//! The host's expert FFN on one decode token: 8 pairs of a current MoE's experts (hidden 2048,
//! expert FFN 768, BF16: 9 MiB each, 72 MiB read per token), by `ExpertFfn` on the instruction
//! set found and on the portable one, against a plain loop (one f32 accumulator per row, the
//! math library's exp) over the same bytes on one thread; and `expert_ffn_format` the same 8
//! pairs in each weight format the FFN reads (random codes under fixed scales for the block
//! formats), with the bytes read per second; `expert_ffn_cold` 1, 2 and 8 pairs a call over 64
//! experts taken in turn, read from memory rather than cache, beside
//! `read_cold`, the same bytes only read; `expert_ffn_cold_format` 8 pairs a call in BF16, Q8_0
//! and Q4_K_M's mix over 512 MiB of experts; `one_thread_pair_format` one pair of this shape per
//! block format on one thread; `one_thread_in_cache` (BF16) and
//! `one_thread_in_cache_format` (the block formats) one small pair on one thread from the
//! cache, what one core computes. Run with `cargo bench -p
//! expertslab-std --bench ffn`.

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

/// Experts of the cold benches: more bytes (604 MiB of BF16) than a host's last-level cache holds.
const COLD_EXPERTS: usize = 64;

/// [`COLD_EXPERTS`] random BF16 experts (gate, up, down).
fn cold_experts() -> Vec<[Vec<u8>; 3]> {
    let mut s = 0x2545_F491_4F6C_DD1Du64;
    let mut slab = |cols: usize| -> Vec<u8> {
        let scale = (3.0 / cols as f32).sqrt();
        let mut v = Vec::with_capacity(HIDDEN * FFN * 2);
        for _ in 0..HIDDEN * FFN / 4 {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            for k in 0..4 {
                let v16 = ((s >> (16 * k)) & 0xFFFF) as f32 / 65536.0 * 2.0 - 1.0;
                v.extend_from_slice(&(((v16 * scale).to_bits() >> 16) as u16).to_le_bytes());
            }
        }
        v
    };
    (0..COLD_EXPERTS).map(|_| [slab(HIDDEN), slab(HIDDEN), slab(FFN)]).collect()
}

/// `pairs` pairs per call, each call reading the next experts of [`COLD_EXPERTS`] in turn, so
/// every call reads its weights from memory, as decode's misses do (the benches above read the
/// same 72 MiB every call, from cache where the cache holds them). Bytes read per second.
#[divan::bench(args = [1, 2, 8])]
fn expert_ffn_cold(bencher: Bencher, pairs: usize) {
    let experts = cold_experts();
    let ffn = ExpertFfn::new(HIDDEN, FFN, Format::BF16).expect("ffn");
    let x: Vec<f32> = (0..HIDDEN).map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0).collect();
    let mut parts = vec![0.0f32; pairs * HIDDEN];
    let mut next = 0usize;
    bencher.counter(divan::counter::BytesCount::new(pairs * 3 * HIDDEN * FFN * 2)).bench_local(|| {
        let p: Vec<PairSlabs<'_>> = (0..pairs)
            .map(|i| {
                let [g, u, d] = &experts[(next + i) % COLD_EXPERTS];
                PairSlabs { gate: g, up: u, down: d, token: 0 }
            })
            .collect();
        next = (next + pairs) % COLD_EXPERTS;
        ffn.parts(&p, &x, &mut parts).expect("parts")
    });
}

/// The baseline of `expert_ffn_cold`: the same experts' bytes, taken in the same turn, only
/// read (a sum of their 64-bit words) on the same thread pool in 64 KiB tasks: the rate this
/// host's memory gives those threads, which the FFN's rate is read against.
#[divan::bench(args = [1, 2, 8])]
fn read_cold(bencher: Bencher, pairs: usize) {
    use rayon::prelude::*;
    let experts = cold_experts();
    let mut next = 0usize;
    bencher.counter(divan::counter::BytesCount::new(pairs * 3 * HIDDEN * FFN * 2)).bench_local(|| {
        let slabs: Vec<&[u8]> =
            (0..pairs).flat_map(|i| experts[(next + i) % COLD_EXPERTS].iter().map(Vec::as_slice)).collect();
        next = (next + pairs) % COLD_EXPERTS;
        slabs
            .par_iter()
            .flat_map(|slab| slab.par_chunks(64 << 10))
            .map(|chunk| chunk.as_chunks::<8>().0.iter().fold(0u64, |a, w| a.wrapping_add(u64::from_le_bytes(*w))))
            .reduce(|| 0, u64::wrapping_add)
    });
}

/// A small normal half (2^−12): the block formats' scales in the benches but
/// `expert_ffn_scales`.
const NORMAL_SCALE: u16 = 0x0C00;

/// `pairs` pairs of random weights of a `hidden` × `ffn` expert: gate and up in `formats.0`,
/// down in `formats.1` (block formats: random codes, each block's f16 scales set to `scale`).
fn format_slabs(formats: (Format, Format), hidden: usize, ffn: usize, pairs: usize, scale: u16) -> Vec<[Vec<u8>; 3]> {
    let mut s = 0x9E37_79B9_7F4A_7C15u64;
    let mut slab = |format: Format, rows: usize, cols: usize| -> Vec<u8> {
        let bytes = rows * format.row_bytes(cols).expect("whole blocks");
        let mut v: Vec<u8> = (0..bytes)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 56) as u8
            })
            .collect();
        // The f16 scales of each block; BF16's every other byte (`NORMAL_SCALE`'s) keeps the
        // values finite.
        let scales: (usize, &[usize]) = match format {
            Format::Q8_0 => (34, &[0]),
            Format::Q4_K => (144, &[0, 2]),
            Format::Q6_K => (210, &[208]),
            _ => (2, &[0]),
        };
        for block in v.chunks_exact_mut(scales.0) {
            for &at in scales.1 {
                let half = if format.is_block_quantized() { scale } else { NORMAL_SCALE };
                block[at..at + 2].copy_from_slice(&half.to_le_bytes());
            }
        }
        v
    };
    (0..pairs)
        .map(|_| [slab(formats.0, ffn, hidden), slab(formats.0, ffn, hidden), slab(formats.1, hidden, ffn)])
        .collect()
}

/// Gate/up's and down's formats by a bench argument's name: a format's, or `q4_K+q6_K` (a Q4_K_M
/// file's mix).
fn formats_named(name: &str) -> (Format, Format) {
    match name {
        "q4_K+q6_K" => (Format::Q4_K, Format::Q6_K),
        other => {
            let f = Format::from_name(other).expect("format");
            (f, f)
        }
    }
}

/// The 8 pairs in each format (`q4_K+q6_K`: a Q4_K_M file's mix), bytes read per second.
#[divan::bench(args = ["bf16", "q8_0", "q4_K", "q6_K", "q4_K+q6_K"])]
fn expert_ffn_format(bencher: Bencher, name: &str) {
    let formats = formats_named(name);
    format_bench(bencher, formats, NORMAL_SCALE, PAIRS, None);
}

/// Bytes of experts the cold benches cycle through: more than a host's last-level cache holds.
const COLD_BYTES: usize = 512 << 20;

/// [`PAIRS`] pairs a call in each format, as `expert_ffn_format`, but each call reading the next
/// 8 of enough experts ([`COLD_BYTES`]) that every call reads its weights from memory, as
/// decode's misses do: where the FFN's compute and its reads from memory must overlap. Bytes
/// read per second.
#[divan::bench(args = ["bf16", "q8_0", "q4_K+q6_K"])]
fn expert_ffn_cold_format(bencher: Bencher, name: &str) {
    let formats = formats_named(name);
    let expert = 2 * formats.0.row_bytes(HIDDEN).expect("whole blocks") * FFN
        + formats.1.row_bytes(FFN).expect("whole blocks") * HIDDEN;
    let experts = COLD_BYTES.div_ceil(expert).next_multiple_of(PAIRS);
    let slabs = format_slabs(formats, HIDDEN, FFN, experts, NORMAL_SCALE);
    let ffn = ExpertFfn::new(HIDDEN, FFN, formats.0).and_then(|f| f.with_down_format(formats.1)).expect("ffn");
    let x: Vec<f32> = (0..HIDDEN).map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0).collect();
    let mut parts = vec![0.0f32; PAIRS * HIDDEN];
    let mut next = 0usize;
    bencher.counter(divan::counter::BytesCount::new(PAIRS * expert)).bench_local(|| {
        let p: Vec<PairSlabs<'_>> =
            slabs[next..next + PAIRS].iter().map(|[g, u, d]| PairSlabs { gate: g, up: u, down: d, token: 0 }).collect();
        next = (next + PAIRS) % experts;
        ffn.parts(&p, &x, &mut parts).expect("parts")
    });
}

/// One pair of the real shape in each block format on a pool of one thread, the same pair every
/// call (from the cache): what one core computes of a pair, where `one_thread_in_cache_format`'s
/// small expert has short rows. Bytes read per second.
#[divan::bench(args = ["q8_0", "q4_K", "q4_K+q6_K"])]
fn one_thread_pair_format(bencher: Bencher, name: &str) {
    let pool = std::sync::Arc::new(rayon::ThreadPoolBuilder::new().num_threads(1).build().expect("pool"));
    format_bench(bencher, formats_named(name), NORMAL_SCALE, 1, Some(pool));
}

/// The 8 pairs of a Q4_K_M file's mix with every block's scales a normal half (2^−12) and a
/// subnormal one (2^−16, as small scales of real quantized files are): the same instructions
/// either way, so the same time, where a multiplication taking a subnormal operand would cost
/// x86 cores about a hundred cycles each.
#[divan::bench(args = ["normal", "subnormal"])]
fn expert_ffn_scales(bencher: Bencher, scales: &str) {
    let scale = if scales == "normal" { NORMAL_SCALE } else { 0x0100 };
    format_bench(bencher, (Format::Q4_K, Format::Q6_K), scale, PAIRS, None);
}

/// `pairs` pairs of `formats` (block scales `scale`), the same every call, on `pool` (rayon's
/// global pool without one); bytes read per second.
fn format_bench(
    bencher: Bencher,
    formats: (Format, Format),
    scale: u16,
    pairs: usize,
    pool: Option<std::sync::Arc<rayon::ThreadPool>>,
) {
    let slabs = format_slabs(formats, HIDDEN, FFN, pairs, scale);
    let ffn = ExpertFfn::new(HIDDEN, FFN, formats.0).and_then(|f| f.with_down_format(formats.1)).expect("ffn");
    let ffn = match pool {
        Some(pool) => ffn.with_pool(pool),
        None => ffn,
    };
    let p: Vec<PairSlabs<'_>> = slabs.iter().map(|[g, u, d]| PairSlabs { gate: g, up: u, down: d, token: 0 }).collect();
    let x: Vec<f32> = (0..HIDDEN).map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0).collect();
    let bytes: usize = slabs.iter().flatten().map(Vec::len).sum();
    let mut parts = vec![0.0f32; pairs * HIDDEN];
    bencher
        .counter(divan::counter::BytesCount::new(bytes))
        .bench_local(|| ffn.parts(&p, &x, &mut parts).expect("parts"));
}

/// The inner loops' rate on one thread from the cache: one pair of a small expert (hidden and
/// FFN 256: 384 KiB of BF16, which a core's L2 holds) on a pool of one thread, repeated.
/// Bytes read per second: what one core computes when memory is not the limit.
#[divan::bench]
fn one_thread_in_cache(bencher: Bencher) {
    const SMALL: usize = 256;
    let pool = std::sync::Arc::new(rayon::ThreadPoolBuilder::new().num_threads(1).build().expect("pool"));
    let ffn = ExpertFfn::new(SMALL, SMALL, Format::BF16).expect("ffn").with_pool(pool);
    let slab: Vec<u8> =
        (0..SMALL * SMALL).flat_map(|i| (((i * 7919 % 251) as u16) << 4 | 0x3c00).to_le_bytes()).collect();
    let p = [PairSlabs { gate: &slab, up: &slab, down: &slab, token: 0 }];
    let x: Vec<f32> = (0..SMALL).map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0).collect();
    let mut parts = vec![0.0f32; SMALL];
    bencher
        .counter(divan::counter::BytesCount::new(3 * slab.len()))
        .bench_local(|| ffn.parts(&p, &x, &mut parts).expect("parts"));
}

/// The block formats' rows on one thread from the cache: one pair of hidden 1024 and FFN 256
/// (at most 420 KiB, which a core's L2 holds) on a pool of one thread, repeated. Bytes read per
/// second: what one core's instructions give where memory is not the limit.
#[divan::bench(args = ["q8_0", "q4_K", "q6_K"])]
fn one_thread_in_cache_format(bencher: Bencher, name: &str) {
    const SMALL: (usize, usize) = (1024, 256);
    let format = Format::from_name(name).expect("format");
    let pool = std::sync::Arc::new(rayon::ThreadPoolBuilder::new().num_threads(1).build().expect("pool"));
    let ffn = ExpertFfn::new(SMALL.0, SMALL.1, format).expect("ffn").with_pool(pool);
    let slabs = format_slabs((format, format), SMALL.0, SMALL.1, 1, NORMAL_SCALE);
    let p: Vec<PairSlabs<'_>> = slabs.iter().map(|[g, u, d]| PairSlabs { gate: g, up: u, down: d, token: 0 }).collect();
    let x: Vec<f32> = (0..SMALL.0).map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0).collect();
    let bytes: usize = slabs.iter().flatten().map(Vec::len).sum();
    let mut parts = vec![0.0f32; SMALL.0];
    bencher
        .counter(divan::counter::BytesCount::new(bytes))
        .bench_local(|| ffn.parts(&p, &x, &mut parts).expect("parts"));
}

fn main() {
    divan::main();
}
