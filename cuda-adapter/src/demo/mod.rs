//! The GPU demo: an MoE model's expert FFNs decoded on the GPU with expertslab deciding which
//! experts live in VRAM slots, against streaming every expert and reading every expert over the
//! bus.
//!
//! A [`GpuModel`] holds every layer's experts in page-locked, device-mapped host memory (the slow
//! memory) as an [`expertslab_std::ExpertStore`], generated on the GPU from a seed
//! ([`GpuModel::generate`]), given by the caller ([`GpuModel::from_host`]), or read in place
//! from a GGUF model file's memory map ([`GpuModel::open_gguf`]).
//! [`GpuModel::decode`] replays a routing [`Trace`] under a [`RunConfig`] (slots per layer, a
//! policy, schedule and kind of pool, and a [`MissRule`]) through the library's own path, the
//! one a runtime would call: each record is the pool's step through a [`crate::CudaSlotSink`],
//! a [`crate::DeviceSlotTable`] update, and the MoE FFN kernels reading slots through
//! [`crate::SlotView`]s (`runner/` says it step by step).
//!
//! **Layers are chained.** Layer `l`'s input is layer `l − 1`'s output (layer 0 reads the run's
//! activations), and the host takes layer `l`'s routing ids only after the event that ends
//! layer `l − 1`'s kernels: nothing of layer `l` is enqueued before (as in a runtime whose
//! router reads the previous layer's output). The demo has no attention or residual stream.
//! [`RunConfig::record_outputs`] keeps every record's output for comparisons.
//!
//! | file | what |
//! |---|---|
//! | `mod.rs` | settings and reports of a run ([`ModelSpec`], [`RunConfig`], [`RunReport`]), [`tune_pick`]; synthetic routing is the core's [`SyntheticTrace`](expertslab::trace::synthetic::SyntheticTrace) |
//! | `compare.rs` | the demo's comparison ([`DemoConfig`], [`DemoReport`], [`run_demo`]) |
//! | `gguf.rs` | [`GgufExperts`]: a GGUF file's experts, mapped, and the shape they make |
//! | `model.rs` | [`GpuModel`]: the weights, decode, the replay's prediction |
//! | `calibration.rs` | [`GpuModel::calibrate`]: the link's and each miss way's costs, measured |
//! | `kernels.rs` | the MoE FFN's launches as the runner makes them, two step buffers per layer |
//! | `runner/` | one decode run on the library's path (`kernels.rs`: what it launches; `host.rs`: pairs on the host); its order checked on the mock driver (`tests.rs`) |

use expertslab::trace::replay::{best_run, replay, CostModel, FetchCap, ReplayConfig, Sharing, TuneGrid};
use expertslab::trace::synthetic::SplitMix64;
#[cfg(test)]
use expertslab::trace::synthetic::SyntheticTrace;
use expertslab::trace::Trace;
use expertslab::{
    ExpertLayout, Format, InitialPlacement, MissOrder, Policy, Predictor, Schedule, ServeStats, StackLayout,
};

use crate::error::{CudaError, ResidencyError};
use crate::ffn::{MissAction, MissCosts, MissRule};
use crate::reference::FfnShape;

mod calibration;
mod compare;
mod gguf;
mod kernels;
mod model;
mod runner;

pub use compare::{run_demo, DemoConfig, DemoMiss, DemoReport, DemoRouting, DemoRow};
pub use gguf::GgufExperts;
pub use model::{default_host_threads, open_device, GpuModel};

/// The shape of a demo model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelSpec {
    /// Experts per layer.
    pub experts: usize,
    /// MoE layers.
    pub layers: usize,
    /// One layer's FFN shape (top-k, widths, weight format).
    pub shape: FfnShape,
    /// Seed of the weights and activations.
    pub seed: u64,
}

impl ModelSpec {
    /// The shape of a current MoE: 128 experts per layer, top-8, hidden 2048, expert FFN 768,
    /// BF16 (9 MiB per expert), with `layers` layers.
    pub const fn current_moe(layers: usize) -> Self {
        Self { experts: 128, layers, shape: FfnShape::new(2048, 768, 8, Format::BF16), seed: 1 }
    }

    /// The layout of one layer's experts (gate, up, down stacks as GGUF holds them).
    ///
    /// # Errors
    /// [`CudaError::Layout`].
    pub fn layout(&self) -> Result<ExpertLayout, CudaError> {
        let s = &self.shape;
        let gate = StackLayout::new(s.format, self.experts, s.ffn, s.hidden)?;
        let down = StackLayout::new(s.down_format, self.experts, s.hidden, s.ffn)?;
        Ok(ExpertLayout::gate_up_down(gate, gate, down)?)
    }
}

/// One decode run's settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RunConfig {
    /// Slots per layer (0: no slots, every routed expert is a miss; the expert count: every
    /// expert resident from the start).
    pub slots: usize,
    /// The pool's policy.
    pub policy: Policy,
    /// The pool's refresh schedule.
    pub schedule: Schedule,
    /// The miss action rule.
    pub miss: MissRule,
    /// One pool per layer, or one pool of `slots × layers` slots shared by the layers (demand
    /// policies only, see [`expertslab::Policy::drives_shared_pool`]).
    pub sharing: Sharing,
    /// Keep every record's output (`[tokens, hidden]` per record, in trace order).
    pub record_outputs: bool,
    /// The order a demand policy admits a step's misses in.
    pub miss_order: MissOrder,
    /// Speculative copies for the next layer, before its routing is known (`None`: none).
    pub prefetch: Option<Prefetch>,
}

/// Speculative copies: once a record of layer `l` is enqueued, the predictor's guesses for layer
/// `l + 1` of the same step are copied in while layer `l` computes, into free slots or the
/// pool's staging slots only, never in place of a resident. A wrong guess costs its copy; the
/// staging slots are taken from the policy's (its residents keep the other slots). A record
/// enqueued ahead of the device (its layer holds every expert) is not learnt or guessed from. The next record serves a guessed expert from its slot once the compute stream has
/// waited for the copy. Per-layer pools under a demand policy that takes prefetches (LRU, LFU,
/// LRU-2; [`expertslab::ExpertPool::prefetch`]). [`GpuModel::predict`] prices a run with them as
/// the same run without them.
///
/// They pay only where a layer's compute covers the copies: the copy stream is one queue, so the
/// next layer's own copies and its kernels wait behind them. With 9 MiB experts and about 40 µs
/// of kernels a layer they made decoding 1.2–2.1× slower on an H100 (BENCHMARKS.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prefetch {
    /// Where the guesses come from.
    pub predictor: Predictor,
    /// Slots of each pool held for guesses ([`expertslab::PoolConfig::staging`]): at least one,
    /// fewer than the slots (a guess goes into a staging slot, or a free one).
    pub staging: usize,
    /// Most experts copied per record. The copy stream is one queue: the next record's own
    /// copies wait behind these, so about as many as one layer step's compute covers.
    pub copies: usize,
}

impl RunConfig {
    /// `slots` slots per layer under `policy` refreshing every forward pass, one pool per layer,
    /// misses by `miss` (admitted in routing order), outputs not kept.
    pub const fn new(slots: usize, policy: Policy, miss: MissRule) -> Self {
        Self {
            slots,
            policy,
            schedule: Schedule::EveryForward,
            miss,
            sharing: Sharing::PerLayer,
            record_outputs: false,
            miss_order: MissOrder::Routing,
            prefetch: None,
        }
    }
}

/// What a decode run did and how long it took.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RunReport {
    /// How the pairs were served, as the pools count them (a miss served in place is served by
    /// the miss rule: a scratch copy, a bus read or the host).
    pub served: ServeStats,
    /// Experts copied into slots (promotions).
    pub promotions: u64,
    /// Bytes copied into slots.
    pub bytes_promoted: u64,
    /// Pairs computed from a scratch slot, and the bytes copied there.
    pub scratch_pairs: u64,
    /// Bytes copied into scratch slots.
    pub bytes_scratch: u64,
    /// Pairs read over the bus.
    pub bus_pairs: u64,
    /// Pairs computed on the host.
    pub host_pairs: u64,
    /// Split pairs: gate and up on the host, down on the GPU from a scratch copy of down (its
    /// bytes in `bytes_scratch`).
    pub split_pairs: u64,
    /// Experts copied speculatively ([`RunConfig::prefetch`]; counted in `promotions` and
    /// `bytes_promoted` too, not in `step_copy_bytes`, which counts the copies a step needed).
    pub prefetched: u64,
    /// Of `prefetched`, the experts the next record used.
    pub prefetch_hits: u64,
    /// Decode steps timed (records after the prefill, counted once per step, not per layer).
    pub decode_steps: u64,
    /// Decode tokens timed.
    pub decode_tokens: u64,
    /// Wall time of the timed decode steps, from the first enqueue to the end of the last kernel.
    pub decode_seconds: f64,
    /// Of `decode_seconds`, the wall time from each layer step's host pairs started (their
    /// input fetched) to their outputs' upload enqueued: the host's compute, with the GPU's work
    /// enqueued by the driving thread meanwhile.
    pub host_seconds: f64,
    /// Of `host_seconds`, the time from the host's pairs started to their handing to the thread
    /// pool: the layer's input on the host (read from the copy the previous record's stream made,
    /// or copied now) and the pairs' weights located.
    pub host_input_seconds: f64,
    /// Of `host_seconds`, the time from the host's pairs handed to the thread pool to a thread
    /// taking them up, summed over layer steps.
    pub host_queued_seconds: f64,
    /// Of `host_seconds`, the time the pool's threads spent computing the pairs
    /// ([`expertslab_std::ffn::ExpertFfn::parts_and_h`]), summed over layer steps.
    pub host_compute_seconds: f64,
    /// Of `host_seconds`, the time from the later of the pairs computed and the driving thread
    /// starting to wait for them to that thread holding their outputs (the pool's threads kept
    /// warm, the result sent, the driving thread woken if it slept).
    pub host_handoff_seconds: f64,
    /// Of `host_seconds`, the time the pairs' outputs waited, computed, for the driving thread
    /// to finish enqueueing the GPU's work of their layer step and start waiting for them.
    pub host_late_seconds: f64,
    /// Of `decode_seconds`, the wall time the driving thread waited for each record's previous
    /// record to end (the GPU's work it could not overlap); the rest is the driving thread's
    /// own: pool steps, staging, launches, and the host's pairs.
    pub wait_seconds: f64,
    /// Bytes copied (slots and scratch) per timed decode step.
    pub step_copy_bytes: Vec<u64>,
    /// Pairs read over the bus per timed decode step.
    pub step_bus_pairs: Vec<u64>,
    /// Pairs computed on the host per timed decode step.
    pub step_host_pairs: Vec<u64>,
    /// Split pairs per timed decode step.
    pub step_split_pairs: Vec<u64>,
    /// Every record's output, when asked for.
    pub outputs: Vec<f32>,
}

impl RunReport {
    /// Hits over pairs.
    pub fn hit_rate(&self) -> f64 {
        self.served.hit_rate()
    }

    /// Seconds per decode token.
    pub fn seconds_per_token(&self) -> f64 {
        if self.decode_tokens == 0 {
            0.0
        } else {
            self.decode_seconds / self.decode_tokens as f64
        }
    }

    /// Bytes moved over the bus by copies (slots and scratch).
    pub fn bytes_copied(&self) -> u64 {
        self.bytes_promoted.saturating_add(self.bytes_scratch)
    }
}

/// Costs measured on the device at start-up.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Calibration {
    /// Host-to-device copy bandwidth from page-locked memory, bytes per second.
    pub link_bytes_per_second: f64,
    /// The miss costs of one expert.
    pub costs: MissCosts,
}

/// The overlap bound of G4 for `report`: the sum over its decode steps of
/// `max(link time, compute time)`, with the link time every byte the step moves over the link
/// (its copied bytes and the experts of `expert_bytes` its pairs read over the bus: copies and
/// bus reads share the link) over the link's rate, and the compute time the all-resident time
/// per token plus the extra time of the step's pairs read over the bus.
pub fn overlap_bound(report: &RunReport, expert_bytes: usize, floor_per_token: f64, calibration: &Calibration) -> f64 {
    let extra = (calibration.costs.bus_pair - calibration.costs.resident_pair).max(0.0);
    report
        .step_copy_bytes
        .iter()
        .zip(&report.step_bus_pairs)
        .map(|(&bytes, &bus)| {
            let moved = bytes as f64 + bus as f64 * expert_bytes as f64;
            let link = moved / calibration.link_bytes_per_second;
            let compute = floor_per_token + bus as f64 * extra;
            link.max(compute)
        })
        .sum()
}

/// Device memory kept free beside the slots: step buffers, activations, the driver's own.
const VRAM_RESERVE: u64 = 256 << 20;

/// Checks that `slots` slots and `scratch` scratch slots per layer fit `free` bytes of device
/// memory, one slot of every layer taking `slot_bytes`, [`VRAM_RESERVE`] kept free.
///
/// # Errors
/// [`CudaError::DoesNotFit`] with how many slots per layer would fit.
fn check_fit(free: u64, slot_bytes: u64, slots: usize, scratch: usize) -> Result<(), CudaError> {
    let needed = slot_bytes.saturating_mul(slots.saturating_add(scratch) as u64);
    if needed.saturating_add(VRAM_RESERVE) <= free {
        return Ok(());
    }
    let room = free.saturating_sub(VRAM_RESERVE).saturating_sub(slot_bytes.saturating_mul(scratch as u64));
    let slots_that_fit = usize::try_from(room / slot_bytes.max(1)).unwrap_or(usize::MAX);
    Err(CudaError::DoesNotFit { layer: None, needed, free, slots_that_fit })
}

/// What the replay's cost model predicts for a run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Prediction {
    /// Seconds per decode token.
    pub seconds_per_token: f64,
    /// The replay's hit rate over the whole trace.
    pub hit_rate: f64,
    /// Bytes the replay moves into slots during decode.
    pub bytes_promoted: u64,
    /// Misses served in place (computed from slow memory) during decode.
    pub served_in_place: u64,
}

/// The median of `v` (0 for none).
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match (v.get((n / 2).wrapping_sub(1)), v.get(n / 2)) {
        (_, None) => 0.0,
        (Some(low), Some(high)) if n.is_multiple_of(2) => (low + high) / 2.0,
        (_, Some(middle)) => *middle,
    }
}

/// A token's activations: uniform in `[-1, 1)` from SplitMix64.
pub fn activations(seed: u64, len: usize) -> Vec<f32> {
    let mut rng = SplitMix64::new(seed ^ 0xA5A5_5A5A);
    (0..len).map(|_| (rng.next_f64() * 2.0 - 1.0) as f32).collect()
}

/// The router weights of one record: positive, each token's summing to 1, from its layer and
/// step.
pub fn router_weights(layer: usize, step: u64, pairs: usize, top_k: usize) -> Vec<f32> {
    let mut rng = SplitMix64::new((layer as u64) << 40 ^ step);
    let mut w: Vec<f32> = (0..pairs).map(|_| 0.05 + rng.next_f64() as f32).collect();
    for token in w.chunks_mut(top_k.max(1)) {
        let sum: f32 = token.iter().sum();
        token.iter_mut().for_each(|v| *v /= sum);
    }
    w
}

/// The cost model the core's replay prices a run under `rule` with, from the measured costs:
/// under [`MissRule::Balanced`] with a host, a pair on the host (and its cost per step) and the
/// overlapped model with the rule's cap ([`CostModel::overlapped`]: copies and host compute at once, a step's misses in
/// place split between them); otherwise the cost of the way the rule serves a lone miss (a copy
/// and a resident pair, a pair over the bus, a pair on the host), priced additively.
pub fn replay_cost(rule: MissRule, expert_bytes: u64, calibration: &Calibration) -> CostModel {
    let link = calibration.link_bytes_per_second;
    // The costs the rule carries, or the calibration's for a rule that carries none.
    let c = match rule {
        MissRule::Measured(c) | MissRule::Balanced(c, _) => c,
        MissRule::Always(_) => calibration.costs,
    };
    match rule {
        MissRule::Balanced(_, cap) if c.host_pair.is_finite() => {
            CostModel::new(expert_bytes, c.host_pair, link).slow_step(c.host_step).overlapped(cap).split(c.down_share)
        }
        _ => {
            let slow_pair_seconds = match rule.choose(1) {
                MissAction::Copy => c.copy + c.resident_pair,
                MissAction::Bus => c.bus_pair,
                MissAction::Host => c.host_pair,
                // Down's copy, then gate and up on the host, one after the other.
                MissAction::Split => c.down_share * c.copy + (1.0 - c.down_share) * c.host_pair,
            };
            CostModel::new(expert_bytes, slow_pair_seconds, link)
        }
    }
}

/// The pick of `expertslab tune` at a fixed budget of `slots` per layer: the run with the lowest
/// modeled time under the core's replay ([`replay_cost`]), over the core's search grid
/// ([`TuneGrid::new`]: every deployable policy, tinylfu at each admission setting, the interval
/// policies at each refresh interval, the demand policies on per-layer pools and on one pool of
/// `slots × layers` shared by the layers), and, under
/// [`MissRule::Balanced`], over the way itself: the rule's cap, the pool uncapped and the pool
/// capped at the balanced share ([`FetchCap`]), and each single way, every miss copied and every
/// miss computed on the host (so `auto` is never priced above a single way); misses by `rule`
/// otherwise.
///
/// # Errors
/// [`CudaError::Residency`] when the replay refuses the trace.
pub fn tune_pick(
    trace: &Trace,
    slots: usize,
    expert_bytes: u64,
    calibration: &Calibration,
    rule: MissRule,
) -> Result<RunConfig, CudaError> {
    let mut rules = vec![rule];
    if let MissRule::Balanced(c, cap) = rule {
        for other in [FetchCap::Uncapped, FetchCap::Balanced] {
            if other != cap {
                rules.push(MissRule::Balanced(c, other));
            }
        }
        rules.push(MissRule::Always(MissAction::Copy));
        if c.host_pair.is_finite() {
            rules.push(MissRule::Always(MissAction::Host));
        }
    }
    let jobs = TuneGrid::new(vec![slots]).jobs();
    let mut runs = Vec::with_capacity(rules.len() * jobs.len());
    for rule in rules {
        let cost = replay_cost(rule, expert_bytes, calibration);
        for job in &jobs {
            let Some(policy) = job.policy.deployable() else { continue };
            let config = ReplayConfig {
                sharing: job.sharing,
                miss_order: job.miss_order,
                ..ReplayConfig::new(job.policy, slots, job.schedule, InitialPlacement::Warm, cost)
            };
            let report = replay(trace, &config).map_err(|e| CudaError::Residency(ResidencyError::Replay(e)))?;
            let run = RunConfig {
                schedule: job.schedule,
                sharing: job.sharing,
                miss_order: job.miss_order,
                ..RunConfig::new(slots, policy, rule)
            };
            runs.push((run, report));
        }
    }
    // Every search has candidates; LRU at τ = 1 would be the pick of none.
    Ok(best_run(&runs, |(_, report)| (report, slots)).map_or(RunConfig::new(slots, Policy::Lru, rule), |(run, _)| *run))
}

#[cfg(test)]
mod tests {
    use super::*;
    use expertslab::trace::replay::ReplayPolicy;

    #[test]
    fn slots_that_do_not_fit_say_how_many_would() {
        let gib = 1u64 << 30;
        assert!(check_fit(10 * gib, gib, 4, 2).is_ok());
        match check_fit(10 * gib, gib, 16, 2) {
            Err(CudaError::DoesNotFit { layer: None, needed, free, slots_that_fit }) => {
                assert_eq!((needed, free), (18 * gib, 10 * gib));
                assert_eq!(slots_that_fit, 7); // 10 GiB less 256 MiB, less 2 scratch slots
            }
            other => panic!("{other:?}"),
        }
        let message = check_fit(gib, gib, 1, 0).unwrap_err().to_string();
        assert!(message.contains("0 slots per layer would fit"), "{message}");
    }

    #[test]
    fn the_overlap_bound_puts_bus_reads_on_the_link_beside_copies() {
        let calibration = Calibration {
            link_bytes_per_second: 1e9,
            costs: MissCosts {
                copy: 1e-3,
                resident_pair: 1e-6,
                bus_pair: 101e-6,
                host_pair: 1e-4,
                host_step: 0.0,
                down_share: 0.5,
            },
        };
        // A step copying 1 MB (1 ms) and reading two experts of 1 MB over the bus: 3 ms on the
        // link, above the compute (10 µs + 2 × 100 µs); a step with nothing moved: the compute.
        let report =
            RunReport { step_copy_bytes: vec![1_000_000, 0], step_bus_pairs: vec![2, 0], ..RunReport::default() };
        let bound = overlap_bound(&report, 1_000_000, 10e-6, &calibration);
        assert!((bound - (3e-3 + 10e-6)).abs() < 1e-12, "{bound}");
    }

    #[test]
    fn with_the_host_the_tune_pick_is_priced_by_layer_step() {
        // The H100's costs: a copy 179 µs, a pair on the host 102 µs; near-uniform routing.
        let costs = MissCosts {
            copy: 179e-6,
            resident_pair: 6e-6,
            bus_pair: 275e-6,
            host_pair: 102e-6,
            host_step: 0.0,
            down_share: 0.0,
        };
        let calibration = Calibration { link_bytes_per_second: 52.6e9, costs };
        let trace = SyntheticTrace { steps: 32, prefill_tokens: 4, ..SyntheticTrace::NEAR_UNIFORM }.trace().unwrap();
        let bytes: u64 = 9 << 20;
        let modeled = |run: &RunConfig| {
            let cost = replay_cost(run.miss, bytes, &calibration);
            let config =
                ReplayConfig::new(ReplayPolicy::Pool(run.policy), 64, run.schedule, InitialPlacement::Warm, cost);
            replay(&trace, &config).unwrap().total.modeled_time_s
        };
        let copying = tune_pick(&trace, 64, bytes, &calibration, MissRule::Measured(costs)).unwrap();
        let hybrid = tune_pick(&trace, 64, bytes, &calibration, MissRule::Balanced(costs, FetchCap::Uncapped)).unwrap();
        assert!(matches!(copying.miss, MissRule::Measured(_)));
        // Copies and the host side by side, the pool capped at the link's share on this
        // near-uniform routing: under half the time of copying every miss.
        assert_eq!(hybrid.miss, MissRule::Balanced(costs, FetchCap::Balanced), "{hybrid:?}");
        assert!(modeled(&hybrid) < 0.5 * modeled(&copying), "{hybrid:?} {copying:?}");
        let locality = SyntheticTrace { steps: 32, prefill_tokens: 4, ..SyntheticTrace::LOCALITY }.trace().unwrap();
        let rule = |cap| MissRule::Balanced(costs, cap);
        let pick = tune_pick(&locality, 32, bytes, &calibration, rule(FetchCap::Balanced)).unwrap();
        let on_locality = |run: &RunConfig| {
            let cost = replay_cost(run.miss, bytes, &calibration);
            let config =
                ReplayConfig::new(ReplayPolicy::Pool(run.policy), 32, run.schedule, InitialPlacement::Warm, cost);
            replay(&locality, &config).unwrap().total.modeled_time_s
        };
        // The pick is the best of both caps and of each single way: no policy beats it under any.
        let single = [MissRule::Always(MissAction::Copy), MissRule::Always(MissAction::Host)];
        for miss in [rule(FetchCap::Uncapped), rule(FetchCap::Balanced)].into_iter().chain(single) {
            for policy in [Policy::Lru, Policy::Lfu, Policy::Tide] {
                assert!(on_locality(&pick) <= on_locality(&RunConfig::new(32, policy, miss)), "{pick:?} {miss:?}");
            }
            let way = tune_pick(&locality, 32, bytes, &calibration, miss).unwrap();
            assert!(on_locality(&pick) <= on_locality(&way), "{pick:?} {way:?}");
        }
        // A host that costs more than a copy per pair: capping gains nothing, the pool is left
        // uncapped.
        let slow = MissCosts { host_pair: 400e-6, host_step: 100e-6, ..costs };
        let calibration = Calibration { link_bytes_per_second: 52.6e9, costs: slow };
        let pick = tune_pick(&locality, 32, bytes, &calibration, MissRule::Balanced(slow, FetchCap::Balanced)).unwrap();
        assert_eq!(pick.miss, MissRule::Balanced(slow, FetchCap::Uncapped), "{pick:?}");
    }

    #[test]
    fn router_weights_sum_to_one_per_token() {
        let w = router_weights(2, 9, 16, 8);
        for token in w.chunks(8) {
            assert!((token.iter().sum::<f32>() - 1.0).abs() < 1e-6);
            assert!(token.iter().all(|&v| v > 0.0));
        }
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&mut []), 0.0);
    }
}
