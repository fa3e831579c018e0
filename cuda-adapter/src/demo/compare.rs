//! The demo's comparison: every expert resident, streaming, reading over the bus, and
//! expertslab's slots, on one model and one routing ([`run_demo`]).

use std::fmt;
use std::path::PathBuf;

use expertslab::trace::replay::{FetchCap, Sharing};
use expertslab::trace::synthetic::SyntheticTrace;
use expertslab::trace::Trace;
use expertslab::{Policy, Schedule};

use super::{Calibration, GpuModel, ModelSpec, Prefetch, RunConfig};
use crate::error::{CudaError, ResidencyError};
use crate::ffn::{MissAction, MissCosts, MissRule};

/// How the demo's expertslab row serves misses the pool does not admit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DemoMiss {
    /// Copy each into a scratch slot ([`MissAction::Copy`]).
    Copy,
    /// Read each over the bus ([`MissAction::Bus`]).
    Bus,
    /// Compute each on the host ([`MissAction::Host`]).
    Host,
    /// Split each: gate and up on the host, down copied and computed on the GPU
    /// ([`MissAction::Split`]).
    Split,
    /// Copies, the host and split experts side by side, by the measured costs
    /// ([`MissRule::Balanced`], promotions capped at the step's balanced share); where the demo
    /// tunes its pool ([`tune_pick`](super::tune_pick)), the modeled fastest of that, the pool
    /// uncapped, and each single way.
    Auto,
}

impl DemoMiss {
    /// The rule, with `costs` measured at start-up.
    pub const fn rule(self, costs: MissCosts) -> MissRule {
        match self {
            Self::Copy => MissRule::Always(MissAction::Copy),
            Self::Bus => MissRule::Always(MissAction::Bus),
            Self::Host => MissRule::Always(MissAction::Host),
            Self::Split => MissRule::Always(MissAction::Split),
            Self::Auto => MissRule::Balanced(costs, FetchCap::Balanced),
        }
    }

    /// `copy`, `bus`, `host`, `split` or `auto`.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Copy => "copy",
            Self::Bus => "bus",
            Self::Host => "host",
            Self::Split => "split",
            Self::Auto => "auto",
        }
    }

    /// The way named `name` (see [`DemoMiss::name`]).
    pub fn from_name(name: &str) -> Option<Self> {
        [Self::Copy, Self::Bus, Self::Host, Self::Split, Self::Auto].into_iter().find(|m| m.name() == name)
    }
}

/// Where the demo's routing comes from.
#[derive(Debug, Clone)]
pub enum DemoRouting {
    /// Synthetic routing generated like `expertslab synth`; its experts, layers and top-k are
    /// the model's (those of the settings are replaced).
    Synthetic(SyntheticTrace),
    /// A routing trace (read by the caller) of the model's experts, layers and top-k.
    Trace(Trace),
}

impl DemoRouting {
    /// What the routing is, for reports: the synthetic generator's settings, or the trace's
    /// size.
    pub fn describe(&self) -> String {
        match self {
            Self::Synthetic(s) => format!(
                "synthetic, generated like `expertslab synth --zipf {} --reuse {} --steps {} --prefill-tokens {}` (seed {})",
                s.zipf, s.reuse, s.steps, s.prefill_tokens, s.seed
            ),
            Self::Trace(trace) => format!("a routing trace of {} records", trace.records().len()),
        }
    }

    /// The trace the demo decodes on `model`.
    ///
    /// # Errors
    /// [`CudaError::Unsupported`] for a trace of other experts, layers or top-k than the
    /// model's (a trace of fewer layers would leave layers unrouted), and
    /// [`CudaError::Residency`] for [`SyntheticTrace::trace`]'s errors.
    pub fn trace(&self, model: &ModelSpec) -> Result<Trace, CudaError> {
        let as_u32 = |n: usize, what: &str| u32::try_from(n).map_err(|_| CudaError::Unsupported(format!("{n} {what}")));
        let (experts, layers, top_k) =
            (as_u32(model.experts, "experts")?, as_u32(model.layers, "layers")?, as_u32(model.shape.top_k, "top-k")?);
        match self {
            Self::Synthetic(settings) => SyntheticTrace { experts, layers, top_k, ..*settings }
                .trace()
                .map_err(|e| CudaError::Residency(ResidencyError::Synthetic(e))),
            Self::Trace(trace) => {
                let h = trace.header();
                if (h.experts, h.layers, h.top_k) != (experts, layers, top_k) {
                    return Err(CudaError::Unsupported(format!(
                        "a trace of {} experts, {} layers, top-{} for a model of {experts} experts, {layers} layers, top-{top_k}",
                        h.experts, h.layers, h.top_k
                    )));
                }
                Ok(trace.clone())
            }
        }
    }
}

/// The demo's settings.
#[derive(Debug, Clone)]
pub struct DemoConfig {
    /// The CUDA device.
    pub device: usize,
    /// The model's shape when its weights are generated; a model file sets its own.
    pub model: ModelSpec,
    /// A GGUF model file whose experts the demo decodes, read in place from its memory map
    /// ([`GpuModel::open_gguf`]); `None` generates weights of `model`'s shape on the GPU.
    pub model_file: Option<PathBuf>,
    /// The routing.
    pub routing: DemoRouting,
    /// Slots per layer for the expertslab row.
    pub slots: usize,
    /// The expertslab row's policy.
    pub policy: Policy,
    /// The expertslab row's refresh schedule (interval policies).
    pub schedule: Schedule,
    /// How the expertslab row serves misses.
    pub miss: DemoMiss,
    /// The expertslab row's pools: one per layer, or one shared by the layers.
    pub sharing: Sharing,
    /// Timed repetitions per row (the median is reported).
    pub reps: usize,
    /// The expertslab row's speculative copies ([`RunConfig::prefetch`]).
    pub prefetch: Option<Prefetch>,
}

impl Default for DemoConfig {
    /// The model (128 experts, top-8, hidden 2048, FFN 768, BF16, 4 layers) on device 0,
    /// the locality trace, half the experts in slots under TIDE, 5 repetitions.
    fn default() -> Self {
        Self {
            device: 0,
            model: ModelSpec::current_moe(4),
            model_file: None,
            routing: DemoRouting::Synthetic(SyntheticTrace::LOCALITY),
            slots: 64,
            policy: Policy::Tide,
            schedule: Schedule::EveryForward,
            sharing: Sharing::PerLayer,
            miss: DemoMiss::Auto,
            reps: 5,
            prefetch: None,
        }
    }
}

/// One row of the demo's comparison.
#[derive(Debug, Clone, PartialEq)]
pub struct DemoRow {
    /// What ran.
    pub name: String,
    /// Slots per layer.
    pub slots: usize,
    /// Hit rate over the trace.
    pub hit_rate: f64,
    /// Bytes copied over the bus per decode token.
    pub bytes_per_token: f64,
    /// Pairs read over the bus per decode token.
    pub bus_pairs_per_token: f64,
    /// Median seconds per decode token.
    pub seconds_per_token: f64,
    /// Whether the outputs are bit-identical to the all-resident row's.
    pub bit_identical: bool,
}

/// The demo's result; `Display` prints it as a table.
#[derive(Debug, Clone, PartialEq)]
pub struct DemoReport {
    /// The device's name.
    pub device: String,
    /// The driver's version.
    pub driver: String,
    /// The model's shape.
    pub model: ModelSpec,
    /// Where the weights come from ([`GpuModel::weights`]).
    pub weights: String,
    /// Where the routing comes from ([`DemoRouting::describe`]).
    pub routing: String,
    /// Bytes per expert.
    pub expert_bytes: usize,
    /// Decode steps per run.
    pub decode_steps: u64,
    /// Costs measured at start-up.
    pub calibration: Calibration,
    /// The rows: all resident, streaming, bus reads, expertslab.
    pub rows: Vec<DemoRow>,
}

impl fmt::Display for DemoReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = &self.model;
        let c = &self.calibration;
        writeln!(
            f,
            "{} (driver {}): {} layers × {} experts, top-{}, hidden {}, FFN {}, {} ({:.1} MiB per expert)",
            self.device,
            self.driver,
            m.layers,
            m.experts,
            m.shape.top_k,
            m.shape.hidden,
            m.shape.ffn,
            m.shape.format.name(),
            self.expert_bytes as f64 / (1 << 20) as f64
        )?;
        writeln!(f, "weights: {}", self.weights)?;
        writeln!(f, "routing: {}", self.routing)?;
        writeln!(
            f,
            "measured: link {:.1} GB/s (expert copy {:.0} µs), pair from VRAM {:.2} µs, pair over the bus {:.1} µs, pair on the host {:.1} µs",
            c.link_bytes_per_second / 1e9,
            c.costs.copy * 1e6,
            c.costs.resident_pair * 1e6,
            c.costs.bus_pair * 1e6,
            c.costs.host_pair * 1e6
        )?;
        writeln!(f, "{} decode steps, one token each; medians of the timed runs", self.decode_steps)?;
        writeln!(
            f,
            "{:<34} {:>6} {:>9} {:>13} {:>10} {:>12} {:>9} {:>13}",
            "run", "slots", "hit rate", "copied/token", "bus pairs", "time/token", "vs floor", "bit-identical"
        )?;
        let floor = self.rows.first().map_or(0.0, |r| r.seconds_per_token);
        for r in &self.rows {
            writeln!(
                f,
                "{:<34} {:>6} {:>8.1}% {:>9.1} MiB {:>10.1} {:>9.1} µs {:>8.2}× {:>13}",
                r.name,
                r.slots,
                100.0 * r.hit_rate,
                r.bytes_per_token / (1 << 20) as f64,
                r.bus_pairs_per_token,
                r.seconds_per_token * 1e6,
                if floor > 0.0 { r.seconds_per_token / floor } else { 0.0 },
                if r.bit_identical { "yes" } else { "NO" }
            )?;
        }
        Ok(())
    }
}

/// Runs the GPU demo: generates the model's weights on the GPU (or maps the model file's),
/// measures the link and the
/// per-pair costs, and decodes the routing four ways (every expert resident; no slots and every
/// routed expert uploaded each step; no slots and every routed expert read over the bus;
/// expertslab slots under the configured policy with the measured miss rule), checking that
/// every way gives bit-identical outputs.
///
/// # Errors
/// [`CudaError::NoDriver`] or [`CudaError::NoDevice`] without a GPU, [`CudaError::DoesNotFit`]
/// when the slots do not fit the free VRAM (with how many would), and the errors of
/// [`GpuModel::generate`], [`GpuModel::open_gguf`] and [`GpuModel::decode`].
pub fn run_demo(config: &DemoConfig) -> Result<DemoReport, CudaError> {
    let model = match &config.model_file {
        Some(path) => GpuModel::open_gguf(config.device, path)?,
        None => GpuModel::generate(config.device, config.model)?,
    };
    let spec = *model.spec();
    let trace = config.routing.trace(&spec)?;
    let calibration = model.calibrate(10)?;
    let experts = spec.experts;
    let runs = [
        (
            "every expert resident (floor)".to_string(),
            RunConfig::new(experts, config.policy, MissRule::Always(MissAction::Copy)),
        ),
        (
            "no slots, upload each step".to_string(),
            RunConfig::new(0, config.policy, MissRule::Always(MissAction::Copy)),
        ),
        (
            "no slots, read over the bus".to_string(),
            RunConfig::new(0, config.policy, MissRule::Always(MissAction::Bus)),
        ),
        (
            format!(
                "expertslab {}, misses: {}{}",
                config.policy.name(),
                config.miss.name(),
                if config.prefetch.is_some() { ", speculative" } else { "" }
            ),
            RunConfig {
                schedule: config.schedule,
                sharing: config.sharing,
                prefetch: config.prefetch,
                ..RunConfig::new(config.slots, config.policy, config.miss.rule(calibration.costs))
            },
        ),
    ];
    let mut rows = Vec::new();
    let mut reference: Option<Vec<f32>> = None;
    let mut decode_steps = 0;
    for (name, run) in runs {
        let run = RunConfig { record_outputs: true, ..run };
        let report = model.decode_median(&trace, &run, config.reps)?;
        let bits: Vec<u32> = report.outputs.iter().map(|v| v.to_bits()).collect();
        let reference_bits = reference.get_or_insert_with(|| report.outputs.clone());
        let identical = bits.iter().copied().eq(reference_bits.iter().map(|v| v.to_bits()));
        let tokens = report.decode_tokens.max(1) as f64;
        decode_steps = report.decode_steps;
        let copied_decode: u64 = report.step_copy_bytes.iter().sum();
        let zc_decode: u64 = report.step_bus_pairs.iter().sum();
        rows.push(DemoRow {
            name,
            slots: run.slots.min(experts),
            hit_rate: report.hit_rate(),
            bytes_per_token: copied_decode as f64 / tokens,
            bus_pairs_per_token: zc_decode as f64 / tokens,
            seconds_per_token: report.seconds_per_token(),
            bit_identical: identical,
        });
    }
    Ok(DemoReport {
        device: model.device_name()?,
        driver: model.driver_version()?,
        model: spec,
        weights: model.weights().to_string(),
        routing: config.routing.describe(),
        expert_bytes: model.expert_bytes(),
        decode_steps,
        calibration,
        rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_routing_follows_the_model_and_a_trace_of_another_shape_is_refused() {
        let model = ModelSpec::current_moe(6);
        let settings = SyntheticTrace { steps: 2, prefill_tokens: 0, ..SyntheticTrace::LOCALITY };
        let trace = DemoRouting::Synthetic(settings).trace(&model).unwrap();
        assert_eq!((trace.header().layers, trace.header().experts, trace.header().top_k), (6, 128, 8));
        assert_eq!(trace.records().len(), 2 * 6, "every layer is routed");
        let two = ModelSpec::current_moe(2);
        let err = DemoRouting::Trace(trace.clone()).trace(&two).unwrap_err();
        assert!(err.to_string().contains("6 layers"), "{err}");
        assert_eq!(DemoRouting::Trace(trace.clone()).trace(&model).unwrap(), trace);
    }
}
