//! GPU tests of the MoE FFN: bit-identical outputs whatever the residency, policy and miss
//! action, and agreement with the CPU reference. They need a CUDA device and NVRTC; without a
//! driver or a device each test prints one line saying it was not run, and passes.

use std::io::Write;

use expertslab::trace::replay::{FetchCap, Sharing};
use expertslab::trace::synthetic::SplitMix64;
use expertslab::trace::synthetic::SyntheticTrace;
use expertslab::trace::Trace;
use expertslab::{AdmissionConfig, DecayConfig, Format, Policy, Predictor};
use expertslab_cuda::demo::{activations, open_device, router_weights, GpuModel, ModelSpec, Prefetch, RunConfig};
use expertslab_cuda::reference::{f32_to_bf16, f32_to_f16, moe_ffn, within_tolerance, ExpertWeights};
use expertslab_cuda::{CudaError, FfnShape, MissAction, MissCosts, MissRule};
use expertslab_std::ffn::{combine, ExpertFfn, PairSlabs};

/// Whether a CUDA device is here; prints the not-run line otherwise.
fn gpu(test: &str) -> bool {
    match open_device(0) {
        Ok(_) => true,
        Err(e @ (CudaError::NoDriver | CudaError::NoDevice { .. })) => {
            // Written past the test harness's capture, so `cargo test` shows it.
            let _ = writeln!(std::io::stdout(), "skipped: no CUDA device ({e}); GPU test {test} not run");
            false
        }
        Err(e) => panic!("{test}: {e}"),
    }
}

/// The formats the kernels read.
const FORMATS: [Format; 5] = [Format::BF16, Format::F32, Format::Q8_0, Format::Q4_K, Format::Q6_K];

fn spec(format: Format) -> ModelSpec {
    // hidden 264: BF16 rows of 528 bytes and F32 rows of 1056 bytes (both multiples of 16);
    // ffn 40 leaves every down row a partial block: 5 of the 32 lanes have a chunk. Q8_0 rows
    // are whole blocks of 32: hidden 288 leaves a partial pass of 256, ffn 96 three blocks
    // (12 of the 32 lanes have a chunk), and its rows of 34-byte blocks are not 16-byte aligned.
    // Q4_K and Q6_K rows are whole super-blocks of 256: hidden 512 (two passes), ffn 256.
    let (hidden, ffn) = match format {
        Format::Q8_0 => (288, 96),
        Format::Q4_K | Format::Q6_K => (512, 256),
        _ => (264, 40),
    };
    ModelSpec { experts: 16, layers: 2, shape: FfnShape::new(hidden, ffn, 4, format), seed: 7 }
}

/// The test models: one per format, and a Q4_K_M file's mix (Q4_K gate and up, Q6_K down), at
/// expert FFN 256 (Q6_K's down rows of 8 blocks, spread over the lanes), 1024 (32 blocks, one
/// a lane, four rows a warp) and 1536 (more activations than a block of down's four warps
/// quantizes in one round).
fn specs() -> Vec<ModelSpec> {
    let q4_k_m = spec(Format::Q4_K);
    let q4_k_m = ModelSpec { shape: FfnShape { down_format: Format::Q6_K, ..q4_k_m.shape }, ..q4_k_m };
    let wide = |ffn| ModelSpec { shape: FfnShape { ffn, ..q4_k_m.shape }, ..q4_k_m };
    FORMATS.map(spec).into_iter().chain([q4_k_m, wide(1024), wide(1536)]).collect()
}

/// A model's formats for messages and file names: `Q4_K`, or `Q4_K+Q6_K-ffn256` for a mix.
fn formats(spec: &ModelSpec) -> String {
    match (spec.shape.format, spec.shape.down_format) {
        (a, b) if a == b => format!("{a:?}"),
        (a, b) => format!("{a:?}+{b:?}-ffn{}", spec.shape.ffn),
    }
}

/// Host stacks: gate, up and down per layer, uniform in ±sqrt(3 / cols) (Q8_0: each block's
/// scale the half nearest `sqrt(3 / cols) / 127`, its values uniform in ±127; Q4_K and Q6_K:
/// random bytes, each block's f16 scales set so its weights span about ±sqrt(3 / cols)).
fn stacks(spec: &ModelSpec) -> Vec<[Vec<u8>; 3]> {
    let s = &spec.shape;
    let mut rng = SplitMix64::new(spec.seed);
    let mut matrix = |cols: usize, format: Format| -> Vec<u8> {
        let scale = (3.0 / cols as f64).sqrt();
        let rows = s.hidden * s.ffn / cols;
        let k_quant = match format {
            Format::Q4_K => Some((144, &[0usize, 2][..], (scale / (63.0 * 15.0)) as f32)),
            Format::Q6_K => Some((210, &[208usize][..], (scale / (127.0 * 32.0)) as f32)),
            _ => None,
        };
        if let Some((block, at, d)) = k_quant {
            let half = f32_to_f16(d).to_le_bytes();
            let mut bytes: Vec<u8> = (0..spec.experts * rows * FfnShape::row_bytes(format, cols).unwrap())
                .map(|_| rng.next_u64() as u8)
                .collect();
            for b in bytes.chunks_exact_mut(block) {
                for &a in at {
                    b[a..a + 2].copy_from_slice(&half);
                }
            }
            return bytes;
        }
        if format == Format::Q8_0 {
            let half = f32_to_f16((scale / 127.0) as f32);
            return (0..spec.experts * s.hidden * s.ffn / 32)
                .flat_map(|_| {
                    let values: Vec<u8> =
                        (0..32).map(|_| ((rng.next_f64() * 2.0 - 1.0) * 127.0).round() as i8 as u8).collect();
                    half.to_le_bytes().into_iter().chain(values)
                })
                .collect();
        }
        (0..spec.experts * s.hidden * s.ffn)
            .flat_map(|_| {
                let v = ((rng.next_f64() * 2.0 - 1.0) * scale) as f32;
                match format {
                    Format::BF16 => f32_to_bf16(v).to_le_bytes().to_vec(),
                    _ => v.to_le_bytes().to_vec(),
                }
            })
            .collect()
    };
    (0..spec.layers)
        .map(|_| [matrix(s.hidden, s.format), matrix(s.hidden, s.format), matrix(s.ffn, s.down_format)])
        .collect()
}

fn trace(spec: &ModelSpec) -> Trace {
    let mut settings = SyntheticTrace {
        experts: spec.experts as u32,
        layers: spec.layers as u32,
        top_k: spec.shape.top_k as u32,
        steps: 40,
        zipf: 0.9,
        reuse: 0.5,
        ..SyntheticTrace::DEFAULT
    };
    settings.prefill_tokens = 6;
    settings.phase = 16;
    settings.trace().unwrap()
}

/// Copy when an expert serves at least two pairs of the step, read over the bus otherwise.
const MIXED: MissRule = MissRule::Measured(MissCosts {
    copy: 1.5,
    resident_pair: 0.0,
    bus_pair: 1.0,
    host_pair: f64::INFINITY,
    host_step: 0.0,
    down_share: 0.0,
});
/// A step's misses split between copies and the host (a host pair costs two copies).
const BALANCED: MissRule = MissRule::Balanced(
    MissCosts { copy: 1.0, resident_pair: 0.0, bus_pair: 9.0, host_pair: 2.0, host_step: 0.0, down_share: 0.0 },
    FetchCap::Balanced,
);
const HOST: MissRule = MissRule::Always(MissAction::Host);
/// Every miss split: gate and up on the host, down copied and computed on the GPU.
const SPLIT: MissRule = MissRule::Always(MissAction::Split);
/// The GPU machine's costs (a copy 180, a host pair 97, 25 per step, down a third): a step's
/// misses copied, split and on the host together (two misses are both split).
const BALANCED_SPLIT: MissRule = MissRule::Balanced(
    MissCosts { copy: 180.0, resident_pair: 5.0, bus_pair: 275.0, host_pair: 97.0, host_step: 25.0, down_share: 0.34 },
    FetchCap::Balanced,
);

fn outputs(model: &GpuModel, trace: &Trace, slots: usize, policy: Policy, miss: MissRule) -> Vec<f32> {
    let run = RunConfig { record_outputs: true, ..RunConfig::new(slots, policy, miss) };
    let report = model.decode(trace, &run).unwrap_or_else(|e| panic!("{slots} slots, {policy:?}, {miss:?}: {e}"));
    assert!(report.outputs.iter().all(|v| v.is_finite()));
    report.outputs
}

/// As [`outputs`], with one pool of `slots × layers` slots shared by the layers.
fn outputs_shared(model: &GpuModel, trace: &Trace, slots: usize, policy: Policy, miss: MissRule) -> Vec<f32> {
    let run = RunConfig { record_outputs: true, sharing: Sharing::Shared, ..RunConfig::new(slots, policy, miss) };
    let report =
        model.decode(trace, &run).unwrap_or_else(|e| panic!("shared, {slots} slots, {policy:?}, {miss:?}: {e}"));
    assert!(report.promotions > 0, "a shared pool that moves nothing proves nothing");
    report.outputs
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// A small model of `spec` with host weights, on device 0, and its trace.
fn setup(spec: ModelSpec) -> (ModelSpec, Vec<[Vec<u8>; 3]>, GpuModel, Trace) {
    let host = stacks(&spec);
    let model = GpuModel::from_host(0, spec, &host, 0).unwrap();
    let trace = trace(&spec);
    (spec, host, model, trace)
}

#[test]
fn outputs_are_bit_identical_under_every_policy_and_miss_action() {
    if !gpu("outputs_are_bit_identical_under_every_policy_and_miss_action") {
        return;
    }
    for spec in specs() {
        let format = formats(&spec);
        let (spec, host, model, trace) = setup(spec);
        let all = bits(&outputs(&model, &trace, spec.experts, Policy::Tide, MissRule::Always(MissAction::Copy)));
        let decay = Policy::Decay(DecayConfig::DEFAULT);
        let mut runs = 0;
        for miss in [
            MissRule::Always(MissAction::Copy),
            MissRule::Always(MissAction::Bus),
            MIXED,
            HOST,
            BALANCED,
            SPLIT,
            BALANCED_SPLIT,
        ] {
            assert_eq!(bits(&outputs(&model, &trace, 0, Policy::Lru, miss)), all, "{format}, no slots, {miss:?}");
            runs += 1;
            for policy in [Policy::Lru, Policy::Tide, decay] {
                for slots in [3, 8] {
                    let got = bits(&outputs(&model, &trace, slots, policy, miss));
                    assert_eq!(got, all, "{format}, {slots} slots, {policy:?}, {miss:?}");
                    runs += 1;
                }
            }
            for policy in [Policy::Lru, Policy::Tinylfu(AdmissionConfig::DEFAULT)] {
                let got = bits(&outputs_shared(&model, &trace, 3, policy, miss));
                assert_eq!(got, all, "{format}, shared, {policy:?}, {miss:?}");
                runs += 1;
            }
            // Speculative copies into staging slots, read by the next layer after their copy.
            let prefetch = Prefetch { predictor: Predictor::Both, staging: 1, copies: 2 };
            let run =
                RunConfig { record_outputs: true, prefetch: Some(prefetch), ..RunConfig::new(4, Policy::Lru, miss) };
            let report = model.decode(&trace, &run).unwrap_or_else(|e| panic!("{format}, prefetch, {miss:?}: {e}"));
            assert!(report.prefetched > 0, "{format}, {miss:?}: nothing speculated");
            assert_eq!(bits(&report.outputs), all, "{format}, prefetch, {miss:?}");
            runs += 1;
        }
        // Host stacks off 16-byte alignment by 8, 2 and 1 bytes (F32 and BF16 elements keep
        // their own alignment): zero-copy reads F32 and BF16 element by element, block formats
        // as ever, slots with their widest loads; the arithmetic is the same.
        let pads: &[usize] = match spec.shape.format {
            Format::F32 => &[4, 8],
            Format::BF16 => &[2, 8],
            _ => &[1, 2, 8],
        };
        for &pad in pads {
            let shifted = GpuModel::from_host(0, spec, &host, pad).unwrap();
            let bus_read = outputs(&shifted, &trace, 0, Policy::Lru, MissRule::Always(MissAction::Bus));
            assert_eq!(bits(&bus_read), all, "{format}, host memory {pad} bytes off");
            let mixed = outputs(&shifted, &trace, 3, Policy::Tide, MIXED);
            assert_eq!(bits(&mixed), all, "{format}, {pad} bytes off, mixed");
            runs += 2;
        }
        println!("{format}: {runs} runs bit-identical to all-resident");
    }
}

#[test]
fn a_gguf_file_decodes_from_its_mapping_bit_identical_to_all_resident() {
    if !gpu("a_gguf_file_decodes_from_its_mapping_bit_identical_to_all_resident") {
        return;
    }
    for spec in specs() {
        let format = formats(&spec);
        // The file's model takes seed 1 for its activations.
        let spec = ModelSpec { seed: 1, ..spec };
        let host = stacks(&spec);
        let file = std::env::temp_dir().join(format!("expertslab-gpu-{}-{format}.gguf", std::process::id()));
        let s = &spec.shape;
        let types = s.formats().map(|f| f.ggml_type().unwrap());
        expertslab_tests::gguf::write_moe_types(&file, spec.experts, s.hidden, s.ffn, s.top_k as u32, types, &host);
        let model = GpuModel::open_gguf(0, &file).unwrap();
        assert_eq!(model.spec(), &spec, "the file's shape");
        assert!(model.weights().contains("mapped read-only"), "{}", model.weights());
        let trace = trace(&spec);
        let copy = MissRule::Always(MissAction::Copy);
        // The same weights from page-locked memory: the file changes nothing.
        let pinned = GpuModel::from_host(0, spec, &host, 0).unwrap();
        let all = bits(&outputs(&pinned, &trace, spec.experts, Policy::Tide, copy));
        assert_eq!(bits(&outputs(&model, &trace, spec.experts, Policy::Tide, copy)), all, "{format}, all resident");
        let mut runs = 1;
        for miss in [copy, MissRule::Always(MissAction::Bus), MIXED, HOST, BALANCED, SPLIT, BALANCED_SPLIT] {
            for (slots, policy) in [(0, Policy::Lru), (3, Policy::Lru), (8, Policy::Tide)] {
                let got = bits(&outputs(&model, &trace, slots, policy, miss));
                assert_eq!(got, all, "{format}, file, {slots} slots, {policy:?}, {miss:?}");
                runs += 1;
            }
        }
        drop(model);
        std::fs::remove_file(&file).unwrap();
        println!("{format}: {runs} runs from the mapped file bit-identical to all-resident");
    }
}

/// One record of a GPU run, for host-side checks: its ids, the input the chained runner gave it
/// (the previous layer's GPU output of the same step, or the run's activations), the expert
/// slabs of its layer and the GPU's output.
struct Checked<'a> {
    record: &'a expertslab::trace::TraceRecord,
    ids: &'a [u32],
    x: &'a [f32],
    layer: &'a [Vec<u8>; 3],
    gpu: &'a [f32],
}

/// Walks `got` (every record's GPU output, in trace order) as the runner chained the layers,
/// calling `check` per record; checks that the outputs were all walked.
fn each_record(
    spec: &ModelSpec,
    host: &[[Vec<u8>; 3]],
    trace: &Trace,
    got: &[f32],
    mut check: impl FnMut(Checked<'_>),
) {
    let s = &spec.shape;
    let first = activations(spec.seed, 64 * s.hidden);
    let mut previous: Option<(u64, u32, std::ops::Range<usize>)> = None;
    let mut at = 0;
    for record in trace.records() {
        let ids = trace.ids(record);
        let len = ids.len() / s.top_k * s.hidden;
        let x = match &previous {
            Some((step, layer, range)) if *step == record.step && layer + 1 == record.layer => &got[range.clone()],
            _ => &first[..len],
        };
        check(Checked { record, ids, x, layer: &host[record.layer as usize], gpu: &got[at..at + len] });
        previous = Some((record.step, record.layer, at..at + len));
        at += len;
    }
    assert_eq!(at, got.len());
}

#[test]
fn outputs_match_the_cpu_reference() {
    if !gpu("outputs_match_the_cpu_reference") {
        return;
    }
    for spec in specs() {
        let format = formats(&spec);
        let (spec, host, model, trace) = setup(spec);
        let got = outputs(&model, &trace, 3, Policy::Lru, MIXED);
        let s = &spec.shape;
        let [gate, _, down] = s.projection_bytes().unwrap();
        let mut worst = 0.0f32;
        // Layers are chained: a layer reads the previous layer's output of the same step (the
        // GPU's, so each layer's error is measured alone); layer 0 the run's activations.
        each_record(&spec, &host, &trace, &got, |c| {
            let (r, layer) = (c.record, c.layer);
            let w = router_weights(r.layer as usize, r.step, c.ids.len(), s.top_k);
            let y = moe_ffn(s, c.x, c.ids, &w, |e| {
                let (e, range) = (e as usize, e as usize * gate..(e as usize + 1) * gate);
                Some(ExpertWeights {
                    gate: layer[0].get(range.clone())?,
                    up: layer[1].get(range)?,
                    down: layer[2].get(e * down..(e + 1) * down)?,
                })
            })
            .unwrap();
            if let Err(e) = within_tolerance(s, c.gpu, &y) {
                panic!("{format}, layer {} step {}: {e}", r.layer, r.step);
            }
            for (a, b) in c.gpu.iter().zip(&y) {
                worst = worst.max((a - b).abs() / b.abs().max(1e-3));
            }
        });
        println!("{format}: largest relative difference from the reference {worst:.2e}");
    }
}

#[test]
fn the_host_ffn_gives_the_gpu_s_bits() {
    if !gpu("the_host_ffn_gives_the_gpu_s_bits") {
        return;
    }
    // The test model's shape, and one whose widths are not multiples of a chunk (8): a lane's
    // last chunk crosses the row's end, and BF16 rows are not 16-byte multiples.
    let odd = |format| ModelSpec { shape: FfnShape::new(100, 13, 4, format), ..spec(format) };
    let plain = [odd(Format::BF16), odd(Format::F32)];
    for spec in specs().into_iter().chain(plain) {
        let format = formats(&spec);
        let host = stacks(&spec);
        let model = GpuModel::from_host(0, spec, &host, 0).unwrap();
        let trace = trace(&spec);
        let got = outputs(&model, &trace, 3, Policy::Lru, MIXED);
        let s = &spec.shape;
        let ffn = ExpertFfn::new(s.hidden, s.ffn, s.format).unwrap().with_down_format(s.down_format).unwrap();
        let [gate, _, down] = s.projection_bytes().unwrap();
        let mut pairs_checked = 0;
        each_record(&spec, &host, &trace, &got, |c| {
            let (r, layer) = (c.record, c.layer);
            let pairs: Vec<PairSlabs<'_>> = c
                .ids
                .iter()
                .enumerate()
                .map(|(i, &e)| {
                    let (e, range) = (e as usize, e as usize * gate..(e as usize + 1) * gate);
                    PairSlabs {
                        gate: &layer[0][range.clone()],
                        up: &layer[1][range],
                        down: &layer[2][e * down..(e + 1) * down],
                        token: i / s.top_k,
                    }
                })
                .collect();
            let mut parts = vec![0.0f32; pairs.len() * s.hidden];
            ffn.parts(&pairs, c.x, &mut parts).unwrap();
            let w = router_weights(r.layer as usize, r.step, c.ids.len(), s.top_k);
            let mut y = vec![0.0f32; c.gpu.len()];
            for ((y, w), parts) in y.chunks_mut(s.hidden).zip(w.chunks(s.top_k)).zip(parts.chunks(s.top_k * s.hidden)) {
                combine(w, parts, y);
            }
            assert_eq!(bits(c.gpu), bits(&y), "{format}, layer {} step {}: host and GPU bits differ", r.layer, r.step);
            pairs_checked += pairs.len();
        });
        println!(
            "{format} {}×{}: {pairs_checked} pairs computed on the host ({}) with the GPU's bits",
            s.hidden,
            s.ffn,
            ffn.isa().name()
        );
    }
}

#[test]
fn calibration_measures_the_link_and_the_pairs() {
    if !gpu("calibration_measures_the_link_and_the_pairs") {
        return;
    }
    let spec = ModelSpec { layers: 1, ..ModelSpec::current_moe(1) };
    let model = GpuModel::generate(0, spec).unwrap();
    let c = model.calibrate(5).unwrap();
    println!("{c:?}");
    assert!(c.link_bytes_per_second > 1e9, "{c:?}");
    assert!(c.costs.resident_pair > 0.0 && c.costs.bus_pair > c.costs.resident_pair, "{c:?}");
    // The kernels alone for a token: at least the time to read its bytes at 10 TB/s (more than
    // any GPU's memory gives), at most what the resident pairs cost one by one.
    let kernels = model.kernel_floor(3).unwrap();
    let bytes = (spec.shape.top_k * model.expert_bytes()) as f64;
    println!("kernels alone: {:.1} µs per token ({bytes} bytes)", kernels * 1e6);
    assert!(kernels > bytes / 1e13 && kernels < 4.0 * c.costs.resident_pair * spec.shape.top_k as f64, "{kernels}");
    // The runner's decode: the driving thread waits on the device part of the time, not all.
    let trace = expertslab_cuda::demo::DemoRouting::Synthetic(SyntheticTrace::NEAR_UNIFORM).trace(&spec).unwrap();
    let run = RunConfig::new(spec.experts, Policy::Lru, MissRule::Always(MissAction::Copy));
    let report = model.decode_median(&trace, &run, 3).unwrap();
    println!("decode {:.1} µs, waited {:.1} µs", report.decode_seconds * 1e6, report.wait_seconds * 1e6);
    assert!(report.wait_seconds > 0.0 && report.wait_seconds < report.decode_seconds, "{report:?}");
    assert!(matches!(open_device(1 << 20), Err(CudaError::NoDevice { .. })));
}
