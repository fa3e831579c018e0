//! The all-resident floor against the device's read bandwidth, per weight format: every expert
//! in VRAM, one token per step, the time per token of the decode runner (the library's path:
//! pool step, table, kernels), beside the time the same bytes take to read at the bandwidth a
//! read-only streaming kernel measures in the same run over a 2 GiB buffer (bytes read per
//! second: each thread sums 16-byte words it reads once, grid-stride, and writes one word, so
//! nothing is written per byte read).
//!
//! Rows: BF16, Q8_0, Q4_K and Q4_K_M's mix (Q4_K gate and up, Q6_K down) on the shape of
//! `ModelSpec::current_moe(4)` (128 experts per layer, top-8, hidden 2048, expert FFN 768), weights
//! generated on the GPU. Per row: the bytes a token reads (layers × top-k × one expert), µs per
//! token (median of `EXPERTSLAB_REPS` runs, default 5), the read time of those bytes at the
//! measured bandwidth, and their ratio (the floor's goal: at most 1.6); then the kernels alone
//! for the same token (`GpuModel::kernel_floor`: every layer launched back to back, no host work
//! between layers) and their ratio to the read time, so the floor splits into the kernels' time
//! and what the runner adds per layer; and the host's time per token (the floor less
//! `RunReport::wait_seconds`: pool steps, staging and launches). Every expert being resident, the
//! runner does not wait for a layer before enqueueing the next, so the host runs ahead of the
//! device and this column is the enqueueing, including the waits of the step buffers' reuse on
//! their uploads: when it is about the floor, the host is held back by the device, not the
//! other way round.
//!
//! A plain binary (`harness = false`): without a CUDA driver or device it prints one line and
//! succeeds.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::process::ExitCode;
use std::time::Instant;

use cudarc::driver::{CudaContext, LaunchConfig, PushKernelArg};
use cudarc::nvrtc::{compile_ptx_with_opts, CompileOptions};
use expertslab::trace::synthetic::SyntheticTrace;
use expertslab::{Format, Policy};
use expertslab_cuda::demo::{open_device, DemoRouting, GpuModel, ModelSpec, RunConfig};
use expertslab_cuda::{CudaError, FfnShape, MissAction, MissRule};

/// The streaming read: every thread sums the 16-byte words it takes (grid-stride) and writes its
/// sum once, so the compiler keeps every load.
const READ_KERNEL: &str = r#"
extern "C" __global__ void read_words(const uint4* words, unsigned long long n, unsigned int* out) {
    unsigned int sum = 0;
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n;
         i += (unsigned long long)gridDim.x * blockDim.x) {
        const uint4 w = words[i];
        sum ^= w.x ^ w.y ^ w.z ^ w.w;
    }
    out[blockIdx.x * blockDim.x + threadIdx.x] = sum;
}
"#;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Bytes per second a read-only streaming kernel reads from a 2 GiB device buffer (median of
/// `reps` after one warm-up).
fn read_bandwidth(reps: usize) -> Result<f64, Box<dyn std::error::Error>> {
    let ctx = CudaContext::new(0)?;
    let stream = ctx.default_stream();
    let (major, minor) = ctx.compute_capability()?;
    let opts = CompileOptions {
        options: vec![format!("--gpu-architecture=compute_{major}{minor}")],
        ..CompileOptions::default()
    };
    let module = ctx.load_module(compile_ptx_with_opts(READ_KERNEL, opts)?)?;
    let read = module.load_function("read_words")?;
    let bytes: usize = 2 << 30;
    let words = (bytes / 16) as u64;
    let buffer = stream.alloc_zeros::<u8>(bytes)?;
    // Enough threads to keep every SM of any current GPU busy, a few words each.
    let (blocks, threads) = (65_536u32, 256u32);
    let out = stream.alloc_zeros::<u32>((blocks * threads) as usize)?;
    let mut times = Vec::new();
    for rep in 0..=reps {
        let cfg = LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: 0 };
        stream.synchronize()?;
        let start = Instant::now();
        let mut launch = stream.launch_builder(&read);
        launch.arg(&buffer).arg(&words).arg(&out);
        // SAFETY: `read_words(words, n, out)` reads `n` 16-byte words of `buffer` (2 GiB = n × 16
        // bytes) and writes one u32 per thread of the grid into `out`, which holds that many.
        unsafe { launch.launch(cfg) }?;
        stream.synchronize()?;
        if rep > 0 {
            times.push(start.elapsed().as_secs_f64());
        }
    }
    Ok(bytes as f64 / median(times))
}

fn run(reps: usize) -> Result<(), Box<dyn std::error::Error>> {
    let bandwidth = read_bandwidth(reps)?;
    let base = ModelSpec::current_moe(4);
    let q4_k_m = FfnShape { down_format: Format::Q6_K, ..FfnShape::new(2048, 768, 8, Format::Q4_K) };
    println!("read bandwidth (2 GiB, read-only streaming kernel): {:.0} GB/s", bandwidth / 1e9);
    println!(
        "format      bytes/token   µs/token   read time µs   floor / read time   kernels µs/token   kernels / read time   host µs/token"
    );
    for shape in
        [base.shape, FfnShape::new(2048, 768, 8, Format::Q8_0), FfnShape::new(2048, 768, 8, Format::Q4_K), q4_k_m]
    {
        let spec = ModelSpec { shape, ..base };
        let model = GpuModel::generate(0, spec)?;
        let trace = DemoRouting::Synthetic(SyntheticTrace::NEAR_UNIFORM).trace(&spec)?;
        let run = RunConfig::new(spec.experts, Policy::Lru, MissRule::Always(MissAction::Copy));
        let report = model.decode_median(&trace, &run, reps)?;
        // One token a step: each layer reads its top-k experts' weights once.
        let bytes = (spec.layers * shape.top_k * model.expert_bytes()) as f64;
        let read = bytes / bandwidth;
        let kernels = model.kernel_floor(reps)?;
        let name = match (shape.format, shape.down_format) {
            (a, b) if a == b => a.name().to_string(),
            (a, b) => format!("{}+{}", a.name(), b.name()),
        };
        println!(
            "{name:<10} {:>8.1} MiB {:>10.1} {:>14.1} {:>19.2} {:>18.1} {:>21.2} {:>23.1}",
            bytes / f64::from(1 << 20),
            report.seconds_per_token() * 1e6,
            read * 1e6,
            report.seconds_per_token() / read,
            kernels * 1e6,
            kernels / read,
            (report.decode_seconds - report.wait_seconds) / report.decode_tokens.max(1) as f64 * 1e6
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    let reps = std::env::var("EXPERTSLAB_REPS").ok().and_then(|v| v.parse().ok()).unwrap_or(5);
    match open_device(0) {
        Err(e @ (CudaError::NoDriver | CudaError::NoDevice { .. })) => {
            println!("skipped: no CUDA device ({e}); floor benchmark not run");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("floor: {e}");
            return ExitCode::FAILURE;
        }
        Ok(_) => {}
    }
    match run(reps) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("floor: {e}");
            ExitCode::FAILURE
        }
    }
}
