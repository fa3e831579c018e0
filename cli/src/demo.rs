//! `expertslab demo`: the main job on a built-in model. A small MoE model is built in memory (F32
//! experts, real router weights); a token stream with drift is routed through it (softmax, top-k)
//! and run with its experts offloaded: every layer's pool plans from its own routing, the
//! migrator fills the slots, resident experts compute from their slots and the others from slow
//! memory. Every layer's output at every step is compared, bit for bit, with the output computed
//! with every expert read from slow memory; any difference fails the command.

use std::io::{self, Write};
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use clap::Args as ClapArgs;
use expertslab_std::ffn::ExpertFfn;
use expertslab_std::trace::synthetic::SplitMix64;
use expertslab_std::trace::TraceHeader;
use expertslab_std::{
    ExpertLayout, ExpertStore, Format, LayerStacks, Offloader, PoolConfig, RoutingCapture, Schedule, SharedBytes,
    StackLayout, Step, TraceRecorder,
};
use indicatif::{ProgressBar, ProgressStyle};

use crate::error::CliError;
use crate::output::OutputFile;
use crate::replay_args::{parse_policy, parse_predictor, parse_schedule, schedule_name};
use crate::units::format_size;

mod sizes;

/// `demo`'s arguments. The model's shape, slots and steps default per device: the CPU model
/// below, or on `--device cuda` a current MoE's shape.
#[derive(Debug, ClapArgs)]
pub struct Args {
    /// MoE layers [default: 4].
    #[arg(long)]
    layers: Option<usize>,
    /// Experts per layer [default: 32; cuda: 128].
    #[arg(long)]
    experts: Option<usize>,
    /// Experts per token [default: 4; cuda: 8].
    #[arg(long)]
    top_k: Option<usize>,
    /// Model width [default: 256; cuda: 2048].
    #[arg(long)]
    d_model: Option<usize>,
    /// Expert hidden width [default: 512; cuda: 768].
    #[arg(long)]
    d_ff: Option<usize>,
    /// Fast-memory slots per layer [default: 8; cuda: half the experts, 64 for the default shape].
    #[arg(long)]
    slots: Option<usize>,
    /// Decode steps, one token each [default: 200; cuda: 512, after a 64-token prefill].
    #[arg(long)]
    steps: Option<u64>,
    /// Placement policy (tide, decay, lru, lfu, lru2).
    #[arg(long, default_value = "tide", value_parser = parse_policy)]
    policy: expertslab_std::trace::replay::ReplayPolicy,
    /// Refresh schedule of interval policies: every:N or forward [default: every:4; cuda:
    /// forward].
    #[arg(long, value_parser = parse_schedule)]
    schedule: Option<Schedule>,
    /// Also write the routing as a trace file (for `simulate` and `tune`).
    #[arg(long)]
    trace: Option<PathBuf>,
    /// Where the slots live: `cpu` (the model above or --model's, slots in host memory) or `cuda` (a model of
    /// a current MoE's shape, slots in VRAM: by default 128 experts of 9 MiB (BF16) per layer,
    /// top-8, 4 layers, 64 slots per layer).
    #[arg(long, default_value = "cpu", value_parser = ["cpu", "cuda"])]
    device: String,
    /// With `--device cuda`: decode this routing trace instead of synthetic routing (its
    /// experts, layers and top-k set the model's unless given).
    #[arg(long)]
    routing: Option<PathBuf>,
    /// With `--device cuda`: how the expertslab row serves misses its pool does not admit:
    /// `copy` (into a scratch slot), `bus` (read over the bus), `host` (computed by the CPU),
    /// `split` (gate and up computed by the CPU while down is copied, down computed on the GPU)
    /// or `auto` (copies, the CPU and split experts side by side, by costs measured at start-up)
    /// [default: auto].
    #[arg(long, value_parser = ["copy", "bus", "host", "split", "auto"])]
    miss: Option<String>,
    /// With `--device cuda`: speculative copies for the expertslab row, guessed by this predictor
    /// (`transitions`, `previous` or `both`): once a layer is enqueued, its guesses for the next
    /// layer are copied into staging slots while it computes (per-layer pools under lru, lfu or
    /// lru2).
    #[arg(long, value_parser = parse_predictor)]
    prefetch: Option<expertslab_std::Predictor>,
    /// With `--prefetch`: slots of each layer's pool held for guesses [default: 1].
    #[arg(long, requires = "prefetch")]
    staging_slots: Option<usize>,
    /// Take the experts of this GGUF model file (its MoE layers' gate, up and down stacks, F32,
    /// BF16, Q8_0, Q4_K or Q6_K, down's format may differ as in Q4_K_M files), read in place
    /// from a memory map, instead of building a model; the file sets the shape. On the CPU the
    /// file's routers (`ffn_gate_inp`, F32) route the tokens.
    #[arg(long)]
    model: Option<PathBuf>,
}

/// The CPU demo's settings, defaults applied.
struct Cpu {
    layers: usize,
    experts: usize,
    top_k: usize,
    d_model: usize,
    d_ff: usize,
    slots: usize,
    steps: u64,
    schedule: Schedule,
    trace: Option<PathBuf>,
}

impl Args {
    fn cpu(&self) -> Cpu {
        Cpu {
            layers: self.layers.unwrap_or(4),
            experts: self.experts.unwrap_or(32),
            top_k: self.top_k.unwrap_or(4),
            d_model: self.d_model.unwrap_or(256),
            d_ff: self.d_ff.unwrap_or(512),
            slots: self.slots.unwrap_or(8),
            steps: self.steps.unwrap_or(200),
            schedule: self
                .schedule
                .unwrap_or(Schedule::EveryDecodeSteps(NonZeroU32::new(4).unwrap_or(NonZeroU32::MIN))),
            trace: self.trace.clone(),
        }
    }
}

/// `demo --device cuda`: the GPU demo of `expertslab-cuda`, every flag applied: the model's
/// shape (a trace given with `--routing` sets what is not given), the slots, policy and
/// schedule of the expertslab row, the synthetic routing's steps, and `--trace` writes the
/// routing decoded.
fn run_cuda(args: &Args, policy: expertslab_std::Policy) -> Result<(), CliError> {
    use expertslab_cuda::demo::{run_demo, DemoConfig, DemoRouting, ModelSpec};
    use expertslab_std::trace::synthetic::SyntheticTrace;
    let mut config = DemoConfig { policy, ..DemoConfig::default() };
    let trace = args.routing.as_deref().map(crate::replay_args::read_trace).transpose()?;
    let header = trace.as_ref().map(|t| t.header());
    if let Some(path) = &args.model {
        refuse_shape_flags(args)?;
        let experts = expertslab_cuda::demo::GgufExperts::open(path)
            .map_err(|e| CliError::Usage(format!("demo --device cuda --model: {e}")))?;
        config.model = *experts.spec();
        config.model_file = Some(path.clone());
        if let Some(h) = header {
            let m = &config.model;
            if (h.experts as usize, h.layers as usize, h.top_k as usize) != (m.experts, m.layers, m.shape.top_k) {
                return Err(CliError::Usage(format!(
                    "--routing has {} experts, {} layers, top-{}; --model's file has {} experts, {} MoE layers, top-{}",
                    h.experts, h.layers, h.top_k, m.experts, m.layers, m.shape.top_k
                )));
            }
        }
    }
    let model = &mut config.model;
    model.layers = args.layers.or(header.map(|h| h.layers as usize)).unwrap_or(model.layers);
    model.experts = args.experts.or(header.map(|h| h.experts as usize)).unwrap_or(model.experts);
    model.shape.top_k = args.top_k.or(header.map(|h| h.top_k as usize)).unwrap_or(model.shape.top_k);
    model.shape.hidden = args.d_model.unwrap_or(model.shape.hidden);
    model.shape.ffn = args.d_ff.unwrap_or(model.shape.ffn);
    let ModelSpec { layers, experts, shape, .. } = *model;
    if layers == 0 || shape.top_k == 0 || shape.top_k > experts {
        return Err(CliError::Usage("need layers >= 1 and experts >= top_k >= 1".into()));
    }
    let expert_bytes = match shape.expert_bytes() {
        Ok(bytes) if shape.hidden > 0 && shape.ffn > 0 => bytes,
        _ => {
            return Err(CliError::Usage(format!(
                "--d-model {} and --d-ff {}: no expert of that shape",
                shape.hidden, shape.ffn
            )))
        }
    };
    if config.model_file.is_none() {
        sizes::check_generated_cuda(args, &config.model, expert_bytes)?;
    }
    // At most every expert: what the runs use, and what the report shows.
    config.slots = args.slots.unwrap_or(experts / 2).min(experts);
    if let Some(miss) = &args.miss {
        config.miss = expertslab_cuda::demo::DemoMiss::from_name(miss)
            .ok_or_else(|| CliError::Usage(format!("--miss {miss}: copy, bus, host, split or auto")))?;
    }
    config.schedule = args.schedule.unwrap_or(Schedule::EveryForward);
    config.prefetch = args.prefetch.map(|predictor| expertslab_cuda::demo::Prefetch {
        predictor,
        staging: args.staging_slots.unwrap_or(1),
        copies: config.model.shape.top_k,
    });
    config.routing = match trace {
        Some(trace) => {
            if args.steps.is_some() {
                return Err(CliError::Usage(
                    "--steps sets synthetic routing; a --routing trace has its own steps".into(),
                ));
            }
            DemoRouting::Trace(trace)
        }
        None => DemoRouting::Synthetic(SyntheticTrace {
            steps: args.steps.unwrap_or(SyntheticTrace::LOCALITY.steps),
            ..SyntheticTrace::LOCALITY
        }),
    };
    let fail = |e: expertslab_cuda::CudaError| CliError::Run(format!("demo --device cuda: {e}"));
    // The routing decoded, written once the demo has run.
    let trace_file = match &args.trace {
        Some(path) => {
            let mut text = String::new();
            config
                .routing
                .trace(&config.model)
                .map_err(fail)?
                .write(&mut text)
                .map_err(|_| CliError::Run("the routing trace could not be written as text".into()))?;
            let mut file = OutputFile::create(path)?;
            file.write_all(text.as_bytes()).map_err(|e| CliError::io(path, e))?;
            Some(file)
        }
        None => None,
    };
    let report = run_demo(&config).map_err(fail)?;
    if let Some(file) = trace_file {
        file.commit()?;
    }
    let mut out = io::stdout().lock();
    writeln!(out, "{report}").map_err(|e| CliError::io(Path::new("stdout"), e))
}

/// A deterministic pseudo-random value in [-1, 1) from an index: the first output of the core's
/// SplitMix64 seeded with it.
fn pseudo(index: u64) -> f32 {
    (SplitMix64::new(index).next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
}

/// With `--model`, the shape flags are the file's: giving one is an error that names it.
fn refuse_shape_flags(args: &Args) -> Result<(), CliError> {
    let shape_flags = [
        ("--layers", args.layers.is_some()),
        ("--experts", args.experts.is_some()),
        ("--top-k", args.top_k.is_some()),
        ("--d-model", args.d_model.is_some()),
        ("--d-ff", args.d_ff.is_some()),
    ];
    match shape_flags.iter().find(|(_, given)| *given) {
        Some((flag, _)) => {
            Err(CliError::Usage(format!("{flag} sets a generated model's shape; --model's file sets its own")))
        }
        None => Ok(()),
    }
}

/// The model: router rows per layer and the expert store.
struct Model {
    d_model: usize,
    d_ff: usize,
    top_k: usize,
    experts: usize,
    format: Format,
    /// Down's format (a Q4_K_M file's Q6_K beside Q4_K gate and up).
    down_format: Format,
    routers: Vec<Vec<f32>>,
    store: ExpertStore,
}

/// The model of a GGUF file: its experts in place in the mapping, its routers read as F32.
fn from_file(path: &Path) -> Result<Model, CliError> {
    let fail = |why: String| CliError::Usage(format!("demo --model: {why}"));
    let experts = expertslab_cuda::demo::GgufExperts::open(path).map_err(|e| fail(e.to_string()))?;
    let spec = *experts.spec();
    let file = crate::model::open_model(path)?;
    let directory = file.file().map_err(|e| fail(format!("{}: {e}", path.display())))?;
    let mut routers = Vec::with_capacity(spec.layers);
    for &block in experts.blocks() {
        let name = format!("blk.{block}.ffn_gate_inp.weight");
        let tensor = directory
            .tensor(&name)
            .filter(|t| t.ggml_type == 0 && t.ne[0] as usize == spec.shape.hidden && t.ne[1] as usize == spec.experts)
            .ok_or_else(|| {
                fail(format!(
                    "{}: no F32 router {name} of {} × {} (the CPU demo routes with the file's routers)",
                    path.display(),
                    spec.experts,
                    spec.shape.hidden
                ))
            })?;
        let bytes = directory.tensor_data(tensor).map_err(|e| fail(format!("{}: {e}", path.display())))?;
        routers.push(bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect());
    }
    Ok(Model {
        d_model: spec.shape.hidden,
        d_ff: spec.shape.ffn,
        top_k: spec.shape.top_k,
        experts: spec.experts,
        format: spec.shape.format,
        down_format: spec.shape.down_format,
        routers,
        store: experts.store().clone(),
    })
}

fn build(args: &Cpu) -> Result<Model, CliError> {
    let usage = |e: expertslab_std::LayoutError| CliError::Usage(format!("model shape: {e}"));
    let gate = StackLayout::new(Format::F32, args.experts, args.d_ff, args.d_model).map_err(usage)?;
    let down = StackLayout::new(Format::F32, args.experts, args.d_model, args.d_ff).map_err(usage)?;
    let layout = ExpertLayout::gate_up_down(gate, gate, down).map_err(usage)?;
    let mut store = ExpertStore::new();
    let mut routers = Vec::with_capacity(args.layers);
    let scale = 1.0 / (args.d_model as f32).sqrt();
    for layer in 0..args.layers {
        let seed = (layer as u64) << 48;
        routers.push((0..args.experts * args.d_model).map(|i| 4.0 * scale * pseudo(seed + i as u64)).collect());
        let stacks = layout
            .projections()
            .iter()
            .enumerate()
            .map(|(p, (_, stack))| {
                let base = seed + ((p as u64 + 1) << 40);
                let values: Arc<[f32]> =
                    (0..stack.total_bytes() / 4).map(|i| scale * pseudo(base + i as u64)).collect();
                SharedBytes::from_typed(values)
            })
            .collect::<Vec<_>>();
        store.insert(layer, LayerStacks::new(layout.clone(), &stacks).map_err(usage)?).map_err(usage)?;
    }
    Ok(Model {
        d_model: args.d_model,
        d_ff: args.d_ff,
        top_k: args.top_k,
        experts: args.experts,
        format: Format::F32,
        down_format: Format::F32,
        routers,
        store,
    })
}

/// Softmax over the router's scores, the top-k experts (ties to the lower id) and their
/// renormalised weights.
fn route(router: &[f32], x: &[f32], top_k: usize) -> Vec<(u32, f32)> {
    let scores: Vec<f32> = router.chunks(x.len()).map(|row| row.iter().zip(x).map(|(w, v)| w * v).sum()).collect();
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exp: Vec<f32> = scores.iter().map(|s| (s - max).exp()).collect();
    let mut order: Vec<u32> = (0..exp.len() as u32).collect();
    order.sort_by(|&a, &b| exp[b as usize].total_cmp(&exp[a as usize]).then(a.cmp(&b)));
    order.truncate(top_k);
    let total: f32 = order.iter().map(|&e| exp[e as usize]).sum();
    order.into_iter().map(|e| (e, exp[e as usize] / total)).collect()
}

/// Where an offloaded output first differed from the all-resident one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Difference {
    step: u64,
    layer: usize,
    /// The first element whose bits differ (or the shorter length, when the lengths differ).
    element: usize,
}

/// The bit-exact comparison of every layer's offloaded output with its all-resident output, over
/// the whole run.
#[derive(Debug, Default)]
struct OutputCheck {
    /// Outputs compared (one per step and layer).
    compared: u64,
    /// Outputs that differed.
    differing: u64,
    first: Option<Difference>,
}

impl OutputCheck {
    /// Compares one layer's output at one step, bit for bit.
    fn compare(&mut self, step: u64, layer: usize, offloaded: &[f32], reference: &[f32]) {
        self.compared += 1;
        let element = match offloaded.iter().zip(reference).position(|(a, b)| a.to_bits() != b.to_bits()) {
            Some(element) => element,
            None if offloaded.len() != reference.len() => offloaded.len().min(reference.len()),
            None => return,
        };
        self.differing += 1;
        self.first.get_or_insert(Difference { step, layer, element });
    }

    /// The report's line: identical, or where the outputs differ.
    fn summary(&self) -> String {
        match self.first {
            None => {
                format!("identical to the all-resident output at every step and layer ({} compared)", self.compared)
            }
            Some(Difference { step, layer, element }) => format!(
                "differs from the all-resident output at {} of {} steps and layers (first: step {step}, layer {layer}, \
                 element {element})",
                self.differing, self.compared
            ),
        }
    }

    /// `Ok` when every compared output was identical; the failure the command exits with otherwise.
    fn result(&self) -> Result<(), CliError> {
        match self.first {
            None => Ok(()),
            Some(_) => Err(CliError::Check(format!("the offloaded output {}", self.summary()))),
        }
    }
}

pub fn run(args: &Args) -> Result<(), CliError> {
    let policy = args.policy.deployable().ok_or_else(|| {
        CliError::Usage(format!("demo runs deployable policies; {} is a reference", args.policy.name()))
    })?;
    if args.device == "cuda" {
        return run_cuda(args, policy);
    }
    if args.routing.is_some() {
        return Err(CliError::Usage("--routing needs --device cuda (the CPU demo routes with its own routers)".into()));
    }
    if args.miss.is_some() {
        return Err(CliError::Usage("--miss needs --device cuda (the CPU demo computes every miss in place)".into()));
    }
    if args.prefetch.is_some() {
        return Err(CliError::Usage("--prefetch needs --device cuda (the CPU demo copies nothing ahead)".into()));
    }
    let model = match &args.model {
        Some(path) => {
            refuse_shape_flags(args)?;
            Some(from_file(path)?)
        }
        None => None,
    };
    let mut cpu = args.cpu();
    if let Some(m) = &model {
        (cpu.layers, cpu.experts, cpu.top_k, cpu.d_model, cpu.d_ff) =
            (m.routers.len(), m.experts, m.top_k, m.d_model, m.d_ff);
        cpu.slots = args.slots.unwrap_or(m.experts / 4);
    }
    let args = &cpu;
    if args.layers == 0 || args.top_k == 0 || args.top_k > args.experts {
        return Err(CliError::Usage("need layers >= 1 and experts >= top_k >= 1".into()));
    }
    sizes::check_cpu(args, model.as_ref())?;
    let model = match model {
        Some(model) => model,
        None => build(args)?,
    };
    let ffn = ExpertFfn::new(model.d_model, model.d_ff, model.format)
        .and_then(|ffn| ffn.with_down_format(model.down_format))
        .map_err(|e| CliError::Run(format!("expert FFN: {e}")))?;
    let expert_bytes = model.store.layer(0).map_or(0, |l| l.layout().expert_bytes());
    let config = PoolConfig::new(args.experts, args.slots).policy(policy).schedule(args.schedule);
    let mut offloader = Offloader::new(model.store.clone(), config, 64).map_err(|e| CliError::Run(e.to_string()))?;
    offloader.warm_up().map_err(|e| CliError::Run(e.to_string()))?;
    // Counted from here: the warm start is the state the run begins in.
    let warm = offloader.stats();
    let mut recorder = match &args.trace {
        Some(path) => {
            let io = |e| CliError::io(path, e);
            let header =
                TraceHeader { experts: args.experts as u32, layers: args.layers as u32, top_k: args.top_k as u32 };
            Some(TraceRecorder::new(OutputFile::create(path)?, header).map_err(io)?)
        }
        None => None,
    };

    let bar = ProgressBar::new(args.steps);
    bar.set_style(
        ProgressStyle::with_template("{spinner} decoding {bar:30} {pos}/{len} {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let start = Instant::now();
    // The offloaded path's own time (pool steps, copies, pairs, combine), without the check.
    let mut decode = std::time::Duration::ZERO;
    let mut x: Vec<f32> = (0..model.d_model).map(|i| pseudo(1 << 60 | i as u64)).collect();
    let mut capture = RoutingCapture::new();
    let mut bytes_promoted = 0u64;
    let mut check = OutputCheck::default();
    for step in 0..args.steps {
        // The token's embedding drifts slowly, so routing has locality.
        for (i, v) in x.iter_mut().enumerate() {
            *v = 0.97 * *v + 0.25 * pseudo(step << 20 | i as u64 | 1 << 61);
        }
        let mut h = x.clone();
        capture.clear();
        for (layer, router) in model.routers.iter().enumerate() {
            let routed = route(router, &h, model.top_k);
            let ids: Vec<u32> = routed.iter().map(|&(e, _)| e).collect();
            capture.record(layer, &ids);
            let weights: Vec<f32> = routed.iter().map(|&(_, w)| w).collect();
            // The library's host path (the pool steps, its copies land in the slots, each pair is
            // computed from its slot or in place from the source), and every expert read in
            // place, for the bit-for-bit check.
            let fail = |e: expertslab_std::Error| CliError::Run(e.to_string());
            let (mut offloaded, mut reference) = (vec![0f32; model.d_model], vec![0f32; model.d_model]);
            let layer_start = Instant::now();
            let report = offloader
                .decode_layer(&ffn, layer, Step::decode(step), &ids, &weights, &h, &mut offloaded)
                .map_err(fail)?;
            decode += layer_start.elapsed();
            bytes_promoted += report.migrated.bytes_promoted;
            offloader.reference_layer(&ffn, layer, &ids, &weights, &h, &mut reference).map_err(fail)?;
            check.compare(step, layer, &offloaded, &reference);
            h.iter_mut().zip(&offloaded).for_each(|(v, o)| *v += o);
        }
        if let (Some(recorder), Some(path)) = (recorder.as_mut(), &args.trace) {
            recorder.record(step, false, &capture).map_err(|e| CliError::io(path, e))?;
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    if let (Some(recorder), Some(path)) = (recorder, &args.trace) {
        recorder.finish().map_err(|e| CliError::io(path, e))?.commit()?;
    }
    let elapsed = start.elapsed();

    let stats = offloader.stats();
    // Slots past the expert count are not there: the pool holds at most every expert.
    let slots = PoolConfig::new(args.experts, args.slots).slots();
    let mut out = io::stdout().lock();
    writeln!(
        out,
        "expertslab demo: {} layers × {} experts of {} ({}, top-{}), {} slots per layer, {}, {}",
        args.layers,
        args.experts,
        format_size(expert_bytes as u64),
        if model.down_format == model.format {
            model.format.name().to_owned()
        } else {
            format!("{} with {} down", model.format.name(), model.down_format.name())
        },
        args.top_k,
        slots,
        policy.name(),
        schedule_name(args.schedule)
    )?;
    writeln!(out, "  steps        {}", args.steps)?;
    writeln!(out, "  output       {}", check.summary())?;
    writeln!(
        out,
        "  hit rate     {:.1}% (uniform placement would give {:.1}%)",
        100.0 * stats.hit_rate(),
        100.0 * slots as f64 / args.experts as f64
    )?;
    writeln!(
        out,
        "  pairs        {} hits, {} misses ({} served by copy, {} in place)",
        stats.served.hits, stats.served.misses, stats.served.served_by_copy, stats.served.served_in_place
    )?;
    writeln!(out, "  promotions   {} ({} demotions)", stats.promotions - warm.promotions, stats.demotions)?;
    writeln!(out, "  bytes moved  {}", format_size(bytes_promoted))?;
    writeln!(
        out,
        "  time         {:.2} s ({:.3} ms per token on the offloaded path, the check besides)",
        elapsed.as_secs_f64(),
        1e3 * decode.as_secs_f64() / args.steps.max(1) as f64
    )?;
    if let Some(path) = &args.trace {
        writeln!(out, "  trace        {}", path.display())?;
    }
    check.result()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_outputs_pass_the_check() {
        let mut check = OutputCheck::default();
        let output = [1.0, -0.0, f32::MIN_POSITIVE];
        for step in 0..3 {
            check.compare(step, 1, &output, &output);
        }
        assert!(check.result().is_ok());
        assert_eq!(check.summary(), "identical to the all-resident output at every step and layer (3 compared)");
    }

    #[test]
    fn a_differing_output_fails_the_check_and_names_where() {
        let mut check = OutputCheck::default();
        check.compare(0, 0, &[1.0, 2.0], &[1.0, 2.0]);
        // One bit apart, and zeros of either sign: equal as numbers, not as bits.
        check.compare(4, 2, &[1.0, 0.0, 3.0], &[1.0, -0.0, 3.0]);
        check.compare(5, 1, &[1.0, f32::from_bits(2.0f32.to_bits() + 1)], &[1.0, 2.0]);
        check.compare(6, 0, &[1.0], &[1.0, 2.0]);
        let summary = check.summary();
        assert_eq!(
            summary,
            "differs from the all-resident output at 3 of 4 steps and layers (first: step 4, layer 2, element 1)"
        );
        match check.result() {
            Err(CliError::Check(message)) => assert_eq!(message, format!("the offloaded output {summary}")),
            other => panic!("{other:?}"),
        }
    }
}
