//! Trace replay: what a policy, a slot count and a schedule would have done on a routing trace, and
//! what it would have cost under a simple model of the hardware.
//!
//! Each layer is replayed on its own pool, from its own records, in file order. Promotions are
//! committed as if copied (no bytes move); the initial placement is the state the replay starts
//! from, not counted as moved: the configuration's, or a [`WarmStart`]'s list for the layers it
//! has ([`replay_from`]), for every policy alike.
//!
//! Pairs are counted as the pool counts them ([`crate::PoolStats`]): a hit when the expert was
//! resident before the step's routing was known; otherwise a miss, served by copy (the expert was
//! copied in for this step, by a refresh or a demand admission) or served in place.
//!
//! The cost model: a miss served in place costs `slow_pair_seconds` (one token–expert pair
//! computed where the weights are); every promoted expert costs `expert_bytes` over a link of
//! `link_bytes_per_second`. A miss served by copy is paid by that copy, not by the slow-memory
//! compute; a miss a demand policy serves in place (a cost-aware policy's
//! [`Admission::InPlace`](crate::Admission::InPlace), or a step whose every slot is pinned) is
//! charged as one: `modeled_time = served in place × slow_pair_seconds + bytes moved / link`.
//!
//! A pool shared by all layers ([`Sharing::Shared`]) and prefetch ([`ReplayConfig::prefetch`])
//! replay all layers together instead, in trace order: by step, then layer (records of one step
//! and layer keep their file order), as a forward pass runs them. Layers are numbered by their
//! position among the layers that have records; "the next layer" is the next such position.

use alloc::vec::Vec;
use core::fmt;

use crate::error::{PlanError, PoolError};
use crate::plan::MigrationPlan;
use crate::policy::{MissOrder, Policy, PolicyError};
use crate::pool::{ExpertPool, InitialPlacement, PoolConfig, PoolStats, ServeStats};
use crate::predict::Predictor;
use crate::schedule::{Schedule, Step};
pub use crate::trace::interleaved::Sharing;
use crate::trace::{interleaved, Trace, TraceRecord, WarmStart};

mod cost;
pub mod optimal;
mod tune;
mod uniform;

pub(crate) use cost::OverlapClock;
pub use cost::{count_uses, split_misses, CostModel, FetchCap, MissSplit, MissedUses, SplitCosts, StepCost};
pub use tune::{best_run, slot_counts, TuneGrid, TuneJob};

/// What to replay: a pool policy, or a reference.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum ReplayPolicy {
    /// A pool with this policy.
    Pool(Policy),
    /// Interval placement from the hit counts of the steps up to the next refresh (the future):
    /// the best any interval policy could do with this schedule.
    Oracle,
    /// Every expert equally likely resident: hit rate `slots / experts`, nothing moved after the
    /// start (a cold start copies each layer's placement in first).
    Uniform,
    /// The least modeled time any per-layer placement reaches, knowing the future
    /// (see the [`optimal`] module).
    Optimal,
    /// The least modeled time one pool of `slots × layers` slots shared by the layers reaches,
    /// knowing the future (see the [`optimal`] module).
    OptimalShared,
}

impl ReplayPolicy {
    /// Every name [`ReplayPolicy::from_name`] knows.
    pub const NAMES: [&'static str; 11] =
        ["tide", "decay", "lru", "lfu", "lru2", "belady", "tinylfu", "oracle", "uniform", "optimal", "optimal-shared"];

    /// The name.
    pub const fn name(&self) -> &'static str {
        match self {
            Self::Pool(p) => p.name(),
            Self::Oracle => "oracle",
            Self::Uniform => "uniform",
            Self::Optimal => "optimal",
            Self::OptimalShared => "optimal-shared",
        }
    }

    /// Whether replays of it follow [`CostModel::overlapped`] when asked: every pool policy and
    /// the oracle; the uniform reference and the optima are priced by adding their costs.
    pub const fn prices_by_step(&self) -> bool {
        matches!(self, Self::Pool(_) | Self::Oracle)
    }

    /// The pool policy a runtime can deploy, or `None` for a reference (Belady's, the oracle,
    /// uniform, the optima), which needs the future or is a bound.
    pub const fn deployable(&self) -> Option<Policy> {
        match self {
            Self::Pool(Policy::Belady) => None,
            Self::Pool(p) => Some(*p),
            _ => None,
        }
    }

    /// Whether replays of it prefetch when [`ReplayConfig::prefetch`] names a predictor (and the
    /// cost model leaves time for a copy, [`CostModel::prefetch_copies`]): LRU and LFU pools.
    pub const fn prefetches(&self) -> bool {
        matches!(self, Self::Pool(Policy::Lru | Policy::Lfu))
    }

    /// The policy named `name`.
    ///
    /// # Errors
    /// [`PolicyError::UnknownName`].
    pub fn from_name(name: &str) -> Result<Self, PolicyError> {
        match name {
            "oracle" => Ok(Self::Oracle),
            "uniform" => Ok(Self::Uniform),
            "optimal" => Ok(Self::Optimal),
            "optimal-shared" => Ok(Self::OptimalShared),
            other => Policy::from_name(other).map(Self::Pool),
        }
    }
}

/// One replay's settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReplayConfig {
    /// The policy.
    pub policy: ReplayPolicy,
    /// Slots per layer.
    pub slots: usize,
    /// The refresh schedule (interval policies and the oracle).
    pub schedule: Schedule,
    /// The initial placement.
    pub initial: InitialPlacement,
    /// The cost model.
    pub cost: CostModel,
    /// Per-layer pools (the default) or one pool for all layers.
    pub sharing: Sharing,
    /// Prefetch guesses of the next layer's experts; `None`: no prefetch. With an LRU or LFU
    /// policy and a [`CostModel::layer_compute_seconds`] long enough for at least one copy, after
    /// each record a [`crate::Prefetcher`] (learning online) guesses the next layer's experts, and
    /// its pool (or the shared pool) places up to `layer_compute_seconds / copy time` of them with
    /// [`crate::ExpertPool::prefetch`]. Those copies overlap the layer's compute, so they cost no
    /// modeled time; they count in `promotions` and `bytes_promoted`, and in
    /// [`ReplayStats::prefetched`], [`ReplayStats::prefetch_hits`] and
    /// [`ReplayStats::prefetch_wasted_bytes`]. Other policies replay without prefetch.
    pub prefetch: Option<Predictor>,
    /// The order demand policies admit a step's misses in ([`crate::PoolConfig::miss_order`]).
    pub miss_order: MissOrder,
    /// Staging slots per layer for prefetch ([`crate::PoolConfig::staging`]; a shared pool holds
    /// this many per layer), taken from the slots; used only by replays that prefetch (see
    /// `prefetch`), ignored by the others.
    pub staging: usize,
}

impl ReplayConfig {
    /// A replay with per-layer pools, no prefetch and misses admitted in routing order.
    pub const fn new(
        policy: ReplayPolicy,
        slots: usize,
        schedule: Schedule,
        initial: InitialPlacement,
        cost: CostModel,
    ) -> Self {
        Self {
            policy,
            slots,
            schedule,
            initial,
            cost,
            sharing: Sharing::PerLayer,
            prefetch: None,
            miss_order: MissOrder::Routing,
            staging: 0,
        }
    }
}

/// Counters of a replayed layer, or of all layers.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct ReplayStats {
    /// How the pairs were served: a miss served by copy is paid by the copy, one served in
    /// place costs `slow_pair_seconds`.
    pub served: ServeStats,
    /// Experts copied into slots.
    pub promotions: u64,
    /// Experts demoted from slots.
    pub demotions: u64,
    /// Bytes copied (promotions × expert bytes).
    pub bytes_promoted: u64,
    /// The cost model's time.
    pub modeled_time_s: f64,
    /// Experts copied by prefetch (counted in `promotions` and `bytes_promoted` too).
    pub prefetched: u64,
    /// Prefetched experts the step they were prefetched for used.
    pub prefetch_hits: u64,
    /// Bytes of prefetched experts that step did not use.
    pub prefetch_wasted_bytes: u64,
    /// Under the overlapped model ([`CostModel::overlapped`]): experts fetched for misses served
    /// in place (their pairs stay counted in `served_in_place`; the bytes are not in
    /// `bytes_promoted`, which counts slots filled).
    pub fetched: u64,
    /// Experts split ([`CostModel::split`]): down fetched, gate and up computed in place.
    pub split: u64,
}

impl ReplayStats {
    /// Hits over pairs, 0 without pairs.
    pub fn hit_rate(&self) -> f64 {
        self.served.hit_rate()
    }

    /// Adds `other` to these counters.
    pub fn add(&mut self, other: &ReplayStats) {
        self.served.add(&other.served);
        self.promotions = self.promotions.saturating_add(other.promotions);
        self.demotions = self.demotions.saturating_add(other.demotions);
        self.bytes_promoted = self.bytes_promoted.saturating_add(other.bytes_promoted);
        self.modeled_time_s += other.modeled_time_s;
        self.prefetched = self.prefetched.saturating_add(other.prefetched);
        self.prefetch_hits = self.prefetch_hits.saturating_add(other.prefetch_hits);
        self.prefetch_wasted_bytes = self.prefetch_wasted_bytes.saturating_add(other.prefetch_wasted_bytes);
        self.fetched = self.fetched.saturating_add(other.fetched);
        self.split = self.split.saturating_add(other.split);
    }
}

/// A replay's result: per layer that has records, and the total (the sum of the layers).
#[derive(Debug, Clone, PartialEq)]
pub struct ReplayReport {
    /// `(layer, counters)` for every layer with records, ascending.
    pub layers: Vec<(u32, ReplayStats)>,
    /// Over all layers.
    pub total: ReplayStats,
}

/// Why a replay could not run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum ReplayError {
    /// A layer's pool refused the configuration or a step.
    Pool {
        /// The layer.
        layer: u32,
        /// Why.
        error: PoolError,
    },
    /// A layer's warm-start list does not fit its pool (an expert out of range).
    Start {
        /// The layer.
        layer: u32,
        /// Why.
        error: PlanError,
    },
    /// A policy that cannot drive a pool shared across layers (only demand policies can).
    NotShareable(&'static str),
}

impl fmt::Display for ReplayError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Pool { layer, error } => write!(f, "layer {layer}: {error}"),
            Self::Start { layer, error } => write!(f, "layer {layer}: warm start: {error}"),
            Self::NotShareable(policy) => {
                write!(f, "{policy} cannot drive a shared pool (lru, lfu, lru2, belady and tinylfu can)")
            }
        }
    }
}

impl core::error::Error for ReplayError {}

/// Replays `trace` under `config`.
///
/// # Errors
/// [`ReplayError::Pool`] when a pool cannot be built (no experts, too many) or a step has too many
/// ids; [`ReplayError::NotShareable`] for a shared pool under a policy that cannot drive one
/// ([`crate::Policy::drives_shared_pool`]).
pub fn replay(trace: &Trace, config: &ReplayConfig) -> Result<ReplayReport, ReplayError> {
    replay_from(trace, config, &WarmStart::new())
}

/// Replays `trace` under `config`, each layer that `start` has a list for starting with those
/// experts ([`ExpertPool::placement_plan`]) instead of the configuration's initial placement.
///
/// # Errors
/// As [`replay`], and [`ReplayError::Start`] when a list names an expert out of the trace's range.
pub fn replay_from(trace: &Trace, config: &ReplayConfig, start: &WarmStart) -> Result<ReplayReport, ReplayError> {
    match config.policy {
        ReplayPolicy::Optimal => return Ok(optimal::optimal(trace, config, &start_keys(trace, config, start)?)),
        ReplayPolicy::OptimalShared => {
            return Ok(optimal::optimal_shared(trace, config, &start_keys(trace, config, start)?))
        }
        _ => {}
    }
    if config.sharing == Sharing::Shared || interleaved::prefetches(config) {
        return interleaved::replay(trace, config, start);
    }
    // Records grouped by layer in one pass, each group in file order.
    let mut by_layer: Vec<&TraceRecord> = trace.records().iter().collect();
    by_layer.sort_by_key(|r| r.layer);
    let mut report = ReplayReport { layers: Vec::new(), total: ReplayStats::default() };
    if config.policy == ReplayPolicy::Uniform {
        uniform::uniform(trace, &by_layer, config, &mut report);
        return Ok(report);
    }
    let mut scratch = Vec::new();
    for records in by_layer.chunk_by(|a, b| a.layer == b.layer) {
        let Some(layer) = records.first().map(|r| r.layer) else { continue };
        let counters = replay_layer(trace, records, layer, config, start, &mut scratch)?;
        report.total.add(&counters);
        report.layers.push((layer, counters));
    }
    Ok(report)
}

fn replay_layer(
    trace: &Trace,
    records: &[&TraceRecord],
    layer: u32,
    config: &ReplayConfig,
    start: &WarmStart,
    scratch: &mut Vec<u32>,
) -> Result<ReplayStats, ReplayError> {
    let pool_error = |error| ReplayError::Pool { layer, error };
    let experts = trace.header().experts as usize;
    let policy = match config.policy {
        ReplayPolicy::Pool(p) => p,
        _ => Policy::Tide,
    };
    let pool_config = PoolConfig::new(experts, config.slots)
        .layer(layer as usize)
        .policy(policy)
        .schedule(config.schedule)
        .initial(config.initial)
        .miss_order(config.miss_order);
    let mut pool = ExpertPool::new(pool_config).map_err(pool_error)?;
    if policy == Policy::Belady {
        scratch.clear();
        records.iter().for_each(|r| scratch.extend_from_slice(trace.ids(r)));
        pool.load_future(scratch).map_err(pool_error)?;
    }
    let mut plan = MigrationPlan::new(pool.slots());
    start.plan(&pool, layer, &mut plan).map_err(|error| ReplayError::Start { layer, error })?;
    commit(&mut pool, &plan, 0);
    let start = *pool.stats();
    let mut overlapped = OverlapClock::default();

    for (i, record) in records.iter().enumerate() {
        let ids = trace.ids(record);
        let step = Step { index: record.step, prefill: record.prefill, mode: crate::schedule::Mode::Scheduled };
        if config.policy == ReplayPolicy::Oracle && config.schedule.is_due(step) {
            // The ids of this step and of every step before the next refresh.
            scratch.clear();
            scratch.extend_from_slice(ids);
            for next in records.iter().skip(i.saturating_add(1)) {
                let next_step = Step { index: next.step, prefill: next.prefill, ..step };
                if config.schedule.is_due(next_step) {
                    break;
                }
                scratch.extend_from_slice(trace.ids(next));
            }
            pool.refresh(scratch, &mut plan).map_err(pool_error)?;
        } else {
            let cap = overlapped.cap(&config.cost, ids, |e| pool.is_resident(e), experts);
            pool.set_fetch_cap(cap);
            pool.plan_step(step, ids, &mut plan).map_err(pool_error)?;
        }
        commit(&mut pool, &plan, config.cost.expert_bytes);
        pool.serve(ids);
        overlapped.step(&config.cost, plan.len(), ids, |e| pool.is_resident(e), experts);
    }
    let mut c = counters(pool.stats(), &start, &config.cost);
    overlapped.apply(&config.cost, &mut c);
    Ok(c)
}

/// The experts every layer with records starts with, as the policies' pools place them, as
/// `layer << 32 | expert` keys, ascending (the optimum's start).
fn start_keys(trace: &Trace, config: &ReplayConfig, start: &WarmStart) -> Result<Vec<u64>, ReplayError> {
    let mut keys = Vec::new();
    for layer in trace.layers() {
        let pool_config = PoolConfig::new(trace.header().experts as usize, config.slots)
            .layer(layer as usize)
            .initial(config.initial);
        let pool = ExpertPool::new(pool_config).map_err(|error| ReplayError::Pool { layer, error })?;
        let mut plan = MigrationPlan::new(pool.slots());
        start.plan(&pool, layer, &mut plan).map_err(|error| ReplayError::Start { layer, error })?;
        keys.extend(plan.promotions().iter().map(|p| u64::from(layer) << 32 | u64::from(p.expert)));
    }
    keys.sort_unstable();
    Ok(keys)
}

fn commit(pool: &mut ExpertPool, plan: &MigrationPlan, bytes: u64) {
    for &p in plan.promotions() {
        // A plan the pool just made always fits it.
        let _ = pool.commit(p, bytes);
    }
}

fn counters(end: &PoolStats, start: &PoolStats, cost: &CostModel) -> ReplayStats {
    let bytes_promoted = end.bytes_promoted.saturating_sub(start.bytes_promoted);
    ReplayStats {
        served: end.served,
        promotions: end.promotions.saturating_sub(start.promotions),
        demotions: end.demotions.saturating_sub(start.demotions),
        bytes_promoted,
        modeled_time_s: cost.seconds(end.served.served_in_place, bytes_promoted),
        ..ReplayStats::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::TraceHeader;

    #[cfg(feature = "demand")]
    fn trace() -> Trace {
        let mut t = Trace::new(TraceHeader { experts: 8, layers: 2, top_k: 2 }).unwrap();
        let steps: [[u32; 4]; 5] = [[0, 1, 2, 3], [1, 2, 1, 9], [4, 5, 4, 5], [4, 5, 6, 7], [0, 1, 4, 5]];
        for (s, ids) in steps.iter().enumerate() {
            t.push(0, s as u64, s == 0, ids).unwrap();
            t.push(1, s as u64, false, &ids[..2]).unwrap();
        }
        t
    }

    fn config(policy: ReplayPolicy) -> ReplayConfig {
        ReplayConfig::new(policy, 2, Schedule::EveryForward, InitialPlacement::Cold, CostModel::new(100, 1.0, 100.0))
    }

    #[cfg(feature = "demand")]
    #[test]
    fn busiest_first_changes_only_steps_of_more_pairs_than_slots_and_lowers_prompt_heavy_costs() {
        use crate::trace::synthetic::SyntheticTrace;
        let cost = CostModel::new(4 << 20, 200e-6, 16e9);
        let run = |trace: &Trace, policy, slots, sharing, miss_order| {
            let base = ReplayConfig::new(policy, slots, Schedule::EveryForward, InitialPlacement::Warm, cost);
            replay(trace, &ReplayConfig { sharing, miss_order, ..base }).unwrap().total
        };
        let shape = SyntheticTrace { experts: 16, layers: 2, top_k: 2, steps: 60, ..SyntheticTrace::DEFAULT };
        // Decode steps of 2 pairs and no prefill: no step has more pairs than 2 slots.
        let decode = SyntheticTrace { prefill_tokens: 0, ..shape }.trace().unwrap();
        // Four sequences, each a prompt of 32 tokens and 15 decode steps.
        let prompts = SyntheticTrace { sequences: 4, prefill_tokens: 32, steps: 15, ..shape }.trace().unwrap();
        for name in ["lru", "lfu", "lru2", "belady", "tinylfu"] {
            let policy = ReplayPolicy::from_name(name).unwrap();
            for sharing in [Sharing::PerLayer, Sharing::Shared] {
                let (routing, busiest) = (
                    run(&decode, policy, 2, sharing, MissOrder::Routing),
                    run(&decode, policy, 2, sharing, MissOrder::Busiest),
                );
                assert_eq!(routing, busiest, "{name}");
            }
            let routing = run(&prompts, policy, 4, Sharing::PerLayer, MissOrder::Routing);
            let busiest = run(&prompts, policy, 4, Sharing::PerLayer, MissOrder::Busiest);
            assert_eq!(routing.served.pairs(), busiest.served.pairs());
            if name != "tinylfu" {
                // Its admission filter ranks a step's experts itself.
                assert!(busiest.modeled_time_s < 0.95 * routing.modeled_time_s, "{name}: {busiest:?} {routing:?}");
            }
        }
    }

    #[cfg(feature = "demand")]
    #[test]
    fn totals_are_the_sum_of_layers_and_costs_follow_the_model() {
        for name in ReplayPolicy::NAMES {
            let policy = ReplayPolicy::from_name(name).unwrap();
            assert_eq!(policy.name(), name);
            let r = replay(&trace(), &config(policy)).unwrap();
            let mut sum = ReplayStats::default();
            r.layers.iter().for_each(|(_, l)| sum.add(l));
            assert_eq!(sum, r.total, "{name}");
            assert_eq!(r.total.served.pairs(), 29, "{name}");
            assert_eq!(r.total.served.invalid_ids, 1, "{name}");
            assert_eq!(r.total.served.hits + r.total.served.misses, r.total.served.pairs());
            assert_eq!(r.total.served.served_by_copy + r.total.served.served_in_place, r.total.served.misses);
            assert_eq!(r.total.bytes_promoted, r.total.promotions * 100);
            let expected = r.total.served.served_in_place as f64 + r.total.bytes_promoted as f64 / 100.0;
            assert!((r.total.modeled_time_s - expected).abs() < 1e-9, "{name}");
        }
        assert!(ReplayPolicy::from_name("random").is_err());
    }

    #[cfg(feature = "demand")]
    #[test]
    fn only_pool_policies_but_belady_are_deployable() {
        let deployable: Vec<&str> = ReplayPolicy::NAMES
            .into_iter()
            .filter(|name| ReplayPolicy::from_name(name).unwrap().deployable().is_some())
            .collect();
        assert_eq!(deployable, ["tide", "decay", "lru", "lfu", "lru2", "tinylfu"]);
        assert_eq!(ReplayPolicy::Pool(Policy::Lru).deployable(), Some(Policy::Lru));
    }

    #[cfg(feature = "demand")]
    #[test]
    fn references_bound_the_policies() {
        let hits = |name| replay(&trace(), &config(ReplayPolicy::from_name(name).unwrap())).unwrap().total;
        let (tide, oracle, lru, belady, uniform) =
            (hits("tide"), hits("oracle"), hits("lru"), hits("belady"), hits("uniform"));
        assert!(belady.served.misses <= lru.served.misses);
        // Refreshing every step, the oracle's window is the step itself: TIDE exactly.
        assert_eq!(oracle, tide);
        let every2 = ReplayConfig {
            schedule: Schedule::EveryDecodeSteps(core::num::NonZeroU32::MIN.saturating_add(1)),
            ..config(ReplayPolicy::Oracle)
        };
        let ahead = replay(&trace(), &every2).unwrap().total;
        let tide2 =
            replay(&trace(), &ReplayConfig { policy: ReplayPolicy::Pool(Policy::Tide), ..every2 }).unwrap().total;
        assert!(
            ahead.served.hits >= tide2.served.hits,
            "knowing the window helps: {} vs {}",
            ahead.served.hits,
            tide2.served.hits
        );
        // The expectation of all 29 pairs at 2 of 8 slots, rounded down once: 7.25.
        assert_eq!(uniform.served.hits, 29 * 2 / 8);
        // Starting cold, each of the two layers copies its two slots in first.
        assert_eq!((uniform.promotions, uniform.bytes_promoted), (4, 400));
        // Demand policies admit their misses: served in place only when every slot was pinned by
        // the step (layer 0: two ids of step 0, two of step 3 and two of step 4).
        assert_eq!(lru.served.served_in_place, 6);
        assert_eq!(lru.served.served_by_copy + lru.served.served_in_place, lru.served.misses);
    }

    #[cfg(feature = "demand")]
    #[test]
    fn hits_are_pairs_resident_before_the_step() {
        // One layer, two slots, cold. Step 0 copies 0 and 1 in: four misses served by copy.
        let mut t = Trace::new(TraceHeader { experts: 4, layers: 1, top_k: 2 }).unwrap();
        t.push(0, 0, true, &[0, 1, 0, 1]).unwrap();
        t.push(0, 1, false, &[0, 1, 2, 2]).unwrap();
        let run = |name| replay(&t, &config(ReplayPolicy::from_name(name).unwrap())).unwrap().total;
        // TIDE, step 1: targets 2 (twice) and 0; 2 replaces 1. 0 hits, 1 is computed in place,
        // both pairs of 2 are served by its copy.
        let tide = run("tide");
        let counts = |r: ReplayStats| (r.served.hits, r.served.served_by_copy, r.served.served_in_place, r.promotions);
        assert_eq!(counts(tide), (1, 6, 1, 3));
        // LRU, step 1: 0 and 1 hit and stay pinned, so 2 is computed in place, both times.
        let lru = run("lru");
        assert_eq!(counts(lru), (2, 4, 2, 2));
        // One second per pair in place, one per copy (100 bytes over 100 bytes/s).
        assert!((tide.modeled_time_s - 4.0).abs() < 1e-9 && (lru.modeled_time_s - 4.0).abs() < 1e-9);
        // Cold, the uniform placement of 2 of 4 experts is copied in first: half the 8 pairs hit.
        assert_eq!(counts(run("uniform")), (4, 0, 4, 2));
    }

    #[test]
    fn diffusion_blocks_restart_the_schedule() {
        // One layer, one slot, cold; record j routes 2^j tokens to expert j % 8, so the pairs
        // served by copy (the records that refreshed) spell a bit mask of the refreshing records.
        let records = |steps: [u64; 10]| {
            let mut t = Trace::new(TraceHeader { experts: 8, layers: 1, top_k: 1 }).unwrap();
            for (j, step) in steps.into_iter().enumerate() {
                t.push(0, step, j % 5 == 0, &alloc::vec![j as u32 % 8; 1 << j]).unwrap();
            }
            t
        };
        let every2 = ReplayConfig {
            slots: 1,
            schedule: Schedule::EveryDenoiseSteps(core::num::NonZeroU32::MIN.saturating_add(1)),
            ..config(ReplayPolicy::Pool(Policy::Tide))
        };
        // Two blocks of five denoise steps, the counter restarting at each: refreshes on steps 0,
        // 2 and 4 of each block (records 0, 2, 4, 5, 7, 9).
        let restarting = replay(&records([0, 1, 2, 3, 4, 0, 1, 2, 3, 4]), &every2).unwrap().total;
        assert_eq!(restarting.served.served_by_copy, 0b10_1011_0101);
        assert_eq!((restarting.promotions, restarting.served.hits), (6, 0));
        // The same blocks with a counter that keeps running: records 0, 2, 4, 5 (a prefill), 6 and 8.
        let running = replay(&records([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]), &every2).unwrap().total;
        assert_eq!(running.served.served_by_copy, 0b01_0111_0101);
        // A block that restarts at an odd step: its first step refreshes all the same.
        let odd = replay(&records([0, 1, 2, 3, 4, 3, 4, 5, 6, 7]), &every2).unwrap().total;
        assert_eq!(odd.served.served_by_copy, 0b01_0111_0101);
    }

    #[cfg(feature = "demand")]
    #[test]
    fn misses_served_in_place_are_slow_pairs_and_copies_are_paid_by_the_link() {
        let tinylfu = |threshold| {
            let policy = Policy::Tinylfu(crate::AdmissionConfig::new(4.0, 0.0, threshold).unwrap());
            replay(&trace(), &config(ReplayPolicy::Pool(policy))).unwrap().total
        };
        // A threshold no score reaches: every miss is served in place, nothing moves.
        let never = tinylfu(1e9);
        assert_eq!((never.promotions, never.bytes_promoted, never.served.hits), (0, 0, 0));
        assert_eq!((never.served.served_in_place, never.served.served_by_copy), (never.served.misses, 0));
        assert!((never.modeled_time_s - never.served.misses as f64).abs() < 1e-9);
        // Threshold 0: some misses copied (each copy serving at least its own pair), the rest in
        // place; the copies are paid by the link, the pairs in place one second each.
        let eager = tinylfu(0.0);
        assert!(eager.promotions > 0 && eager.served.served_in_place > 0);
        assert!(eager.served.served_by_copy >= eager.promotions);
        assert_eq!(eager.served.served_in_place + eager.served.served_by_copy, eager.served.misses);
        let expected = eager.served.served_in_place as f64 + eager.promotions as f64;
        assert!((eager.modeled_time_s - expected).abs() < 1e-9);
    }
}
