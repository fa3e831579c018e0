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
pub mod markov;
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
    /// The least modeled time a per-layer placement reaches that sees only the present step but
    /// knows the trace's step-to-step statistics (see the [`markov`] module): what online
    /// placement could reach, between the policies and [`ReplayPolicy::Optimal`].
    Markov,
    /// The least modeled time any per-layer placement reaches, knowing the future
    /// (see the [`optimal`] module).
    Optimal,
    /// The least modeled time one pool of `slots × layers` slots shared by the layers reaches,
    /// knowing the future (see the [`optimal`] module).
    OptimalShared,
}

impl ReplayPolicy {
    /// Every name [`ReplayPolicy::from_name`] knows.
    pub const NAMES: [&'static str; 12] = [
        "tide",
        "decay",
        "lru",
        "lfu",
        "lru2",
        "belady",
        "tinylfu",
        "oracle",
        "uniform",
        "markov",
        "optimal",
        "optimal-shared",
    ];

    /// The name.
    pub const fn name(&self) -> &'static str {
        match self {
            Self::Pool(p) => p.name(),
            Self::Oracle => "oracle",
            Self::Uniform => "uniform",
            Self::Markov => "markov",
            Self::Optimal => "optimal",
            Self::OptimalShared => "optimal-shared",
        }
    }

    /// Whether replays of it follow [`CostModel::overlapped`] when asked: every pool policy and
    /// the oracle; the uniform reference, the Markov reference and the optima are priced by
    /// adding their costs.
    pub const fn prices_by_step(&self) -> bool {
        matches!(self, Self::Pool(_) | Self::Oracle)
    }

    /// The pool policy a runtime can deploy, or `None` for a reference (Belady's, the oracle,
    /// uniform, the Markov reference, the optima), which needs the future, the trace's own
    /// statistics, or is a bound.
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
            "markov" => Ok(Self::Markov),
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
    /// A layer's [`ReplayPolicy::Markov`] model is past its limits ([`markov::MAX_STATES`],
    /// [`markov::MAX_OPTIONS`]): too many experts or slots for the reference.
    TooLarge {
        /// The layer.
        layer: u32,
        /// Its (residents, demand set) states (past [`markov::MAX_STATES`], or its choices past
        /// [`markov::MAX_OPTIONS`]), or `usize::MAX` where more than 63 experts are used or the
        /// resident sets alone are past the limit.
        states: usize,
    },
}

impl fmt::Display for ReplayError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Pool { layer, error } => write!(f, "layer {layer}: {error}"),
            Self::Start { layer, error } => write!(f, "layer {layer}: warm start: {error}"),
            Self::NotShareable(policy) => {
                write!(f, "{policy} cannot drive a shared pool (lru, lfu, lru2, belady and tinylfu can)")
            }
            Self::TooLarge { layer, states } => {
                write!(f, "layer {layer}: the markov reference is past its limits (")?;
                if *states == usize::MAX {
                    write!(f, "more than 63 experts used or more than {} resident sets", markov::MAX_STATES)?;
                } else {
                    write!(
                        f,
                        "{states} states against at most {}, or more than {} choices",
                        markov::MAX_STATES,
                        markov::MAX_OPTIONS
                    )?;
                }
                write!(f, "); it is computed for few experts per layer, such as Mixtral's 8")
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
        ReplayPolicy::Markov => return markov::markov(trace, config, &start_keys(trace, config, start)?),
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
mod tests;
