//! Trace replay: what a policy, a slot count and a schedule would have done on a routing trace, and
//! what it would have cost under a simple model of the hardware.
//!
//! Each layer is replayed on its own pool, from its own records, in file order. Promotions are
//! committed as if copied (no bytes move); the initial placement is the state the replay starts
//! from, not counted as moved.
//!
//! The cost model: a miss served from slow memory costs `slow_pair_seconds` (one token–expert pair
//! computed where the weights are); every promoted expert costs `expert_bytes` over a link of
//! `link_bytes_per_second`. A miss that a demand policy admits is paid by its load, not by the
//! slow-memory compute: `modeled_time = slow pairs × slow_pair_seconds + bytes moved / link`.
//!
//! A pool shared by all layers ([`Sharing::Shared`]) and prefetch ([`ReplayConfig::prefetch`])
//! replay all layers together instead, in trace order: by step, then layer (records of one step
//! and layer keep their file order), as a forward pass runs them. Layers are numbered by their
//! position among the layers that have records; "the next layer" is the next such position.

use alloc::vec::Vec;
use core::fmt;

use crate::error::PoolError;
use crate::plan::MigrationPlan;
use crate::policy::{Policy, PolicyError};
use crate::pool::{ExpertPool, InitialPlacement, PoolConfig, PoolStats};
use crate::prefetch::Predictor;
use crate::schedule::{Schedule, Step};
pub use crate::trace::interleaved::Sharing;
use crate::trace::{interleaved, Trace, TraceRecord};

/// What to replay: a pool policy, or a reference.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum ReplayPolicy {
    /// A pool with this policy.
    Pool(Policy),
    /// Interval placement from the hit counts of the steps up to the next refresh (the future):
    /// the best any interval policy could do with this schedule.
    Oracle,
    /// Every expert equally likely resident: hit rate `slots / experts`, nothing moved.
    Uniform,
}

impl ReplayPolicy {
    /// Every name [`ReplayPolicy::from_name`] knows.
    pub const NAMES: [&'static str; 8] = ["tide", "decay", "lru", "lfu", "lru2", "belady", "oracle", "uniform"];

    /// The name.
    pub const fn name(&self) -> &'static str {
        match self {
            Self::Pool(p) => p.name(),
            Self::Oracle => "oracle",
            Self::Uniform => "uniform",
        }
    }

    /// The policy named `name`.
    ///
    /// # Errors
    /// [`PolicyError::UnknownName`].
    pub fn from_name(name: &str) -> Result<Self, PolicyError> {
        match name {
            "oracle" => Ok(Self::Oracle),
            "uniform" => Ok(Self::Uniform),
            other => Policy::from_name(other).map(Self::Pool),
        }
    }
}

/// The hardware a replay prices.
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct CostModel {
    /// Bytes of one expert (all its projections).
    pub expert_bytes: u64,
    /// Seconds to compute one token–expert pair from slow memory.
    pub slow_pair_seconds: f64,
    /// Bytes per second from slow memory into a slot.
    pub link_bytes_per_second: f64,
    /// Seconds one layer computes a step, which prefetch copies for the next layer overlap
    /// (0: no overlap, no prefetch).
    pub layer_compute_seconds: f64,
}

impl CostModel {
    /// A cost model without prefetch overlap (`layer_compute_seconds` 0).
    pub const fn new(expert_bytes: u64, slow_pair_seconds: f64, link_bytes_per_second: f64) -> Self {
        Self { expert_bytes, slow_pair_seconds, link_bytes_per_second, layer_compute_seconds: 0.0 }
    }

    /// With `seconds` of compute per layer step for prefetch copies to overlap.
    pub const fn layer_compute(self, seconds: f64) -> Self {
        Self { layer_compute_seconds: seconds, ..self }
    }

    /// Seconds to copy `bytes` over the link (0 for a link of no cost).
    pub(crate) fn copy_seconds(&self, bytes: u64) -> f64 {
        if self.link_bytes_per_second > 0.0 {
            bytes as f64 / self.link_bytes_per_second
        } else {
            0.0
        }
    }

    pub(crate) fn seconds(&self, slow_pairs: u64, bytes: u64) -> f64 {
        slow_pairs as f64 * self.slow_pair_seconds + self.copy_seconds(bytes)
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
    /// modeled time; they count in `promotions` and `bytes_moved`, and in
    /// [`ReplayStats::prefetched`], [`ReplayStats::prefetch_hits`] and
    /// [`ReplayStats::prefetch_wasted_bytes`]. Other policies replay without prefetch.
    pub prefetch: Option<Predictor>,
}

impl ReplayConfig {
    /// A replay with per-layer pools and no prefetch.
    pub const fn new(
        policy: ReplayPolicy,
        slots: usize,
        schedule: Schedule,
        initial: InitialPlacement,
        cost: CostModel,
    ) -> Self {
        Self { policy, slots, schedule, initial, cost, sharing: Sharing::PerLayer, prefetch: None }
    }
}

/// Counters of a replayed layer, or of all layers.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct ReplayStats {
    /// Valid token–expert pairs.
    pub pairs: u64,
    /// Pairs served from a slot.
    pub hits: u64,
    /// Pairs not resident when served.
    pub misses: u64,
    /// Ids at or past the expert count.
    pub invalid: u64,
    /// Experts copied into slots.
    pub promotions: u64,
    /// Experts demoted from slots.
    pub demotions: u64,
    /// Bytes copied (promotions × expert bytes).
    pub bytes_moved: u64,
    /// Misses computed from slow memory (misses not paid by an admission's load).
    pub slow_pairs: u64,
    /// The cost model's time.
    pub modeled_time_s: f64,
    /// Experts copied by prefetch (counted in `promotions` and `bytes_moved` too).
    pub prefetched: u64,
    /// Prefetched experts the step they were prefetched for used.
    pub prefetch_hits: u64,
    /// Bytes of prefetched experts that step did not use.
    pub prefetch_wasted_bytes: u64,
}

impl ReplayStats {
    /// Hits over pairs, 0 without pairs.
    pub fn hit_rate(&self) -> f64 {
        if self.pairs == 0 {
            0.0
        } else {
            self.hits as f64 / self.pairs as f64
        }
    }

    /// Adds `other` to these counters.
    pub fn add(&mut self, other: &ReplayStats) {
        self.pairs = self.pairs.saturating_add(other.pairs);
        self.hits = self.hits.saturating_add(other.hits);
        self.misses = self.misses.saturating_add(other.misses);
        self.invalid = self.invalid.saturating_add(other.invalid);
        self.promotions = self.promotions.saturating_add(other.promotions);
        self.demotions = self.demotions.saturating_add(other.demotions);
        self.bytes_moved = self.bytes_moved.saturating_add(other.bytes_moved);
        self.slow_pairs = self.slow_pairs.saturating_add(other.slow_pairs);
        self.modeled_time_s += other.modeled_time_s;
        self.prefetched = self.prefetched.saturating_add(other.prefetched);
        self.prefetch_hits = self.prefetch_hits.saturating_add(other.prefetch_hits);
        self.prefetch_wasted_bytes = self.prefetch_wasted_bytes.saturating_add(other.prefetch_wasted_bytes);
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
    /// A policy that cannot drive a pool shared across layers (only demand policies can).
    NotShareable(&'static str),
}

impl fmt::Display for ReplayError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Pool { layer, error } => write!(f, "layer {layer}: {error}"),
            Self::NotShareable(policy) => write!(f, "{policy} cannot drive a shared pool (demand policies only)"),
        }
    }
}

impl core::error::Error for ReplayError {}

/// Replays `trace` under `config`.
///
/// # Errors
/// [`ReplayError::Pool`] when a pool cannot be built (no experts, too many) or a step has too many
/// ids; [`ReplayError::NotShareable`] for a shared pool under a policy other than a demand one.
pub fn replay(trace: &Trace, config: &ReplayConfig) -> Result<ReplayReport, ReplayError> {
    if config.sharing == Sharing::Shared || interleaved::prefetches(config) {
        return interleaved::replay(trace, config);
    }
    // Records grouped by layer in one pass, each group in file order.
    let mut by_layer: Vec<&TraceRecord> = trace.records().iter().collect();
    by_layer.sort_by_key(|r| r.layer);
    let mut report = ReplayReport { layers: Vec::new(), total: ReplayStats::default() };
    let mut scratch = Vec::new();
    for records in by_layer.chunk_by(|a, b| a.layer == b.layer) {
        let Some(layer) = records.first().map(|r| r.layer) else { continue };
        let counters = replay_layer(trace, records, layer, config, &mut scratch)
            .map_err(|error| ReplayError::Pool { layer, error })?;
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
    scratch: &mut Vec<u32>,
) -> Result<ReplayStats, PoolError> {
    let experts = trace.header().experts as usize;
    let policy = match config.policy {
        ReplayPolicy::Pool(p) => p,
        _ => Policy::Tide,
    };
    let pool_config = PoolConfig::new(experts, config.slots)
        .layer(layer as usize)
        .policy(policy)
        .schedule(config.schedule)
        .initial(config.initial);
    let slots = pool_config.slots();
    if config.policy == ReplayPolicy::Uniform {
        let mut c = ReplayStats::default();
        for r in records {
            let ids = trace.ids(r);
            let valid = ids.iter().filter(|&&id| (id as usize) < experts).count() as u64;
            c.pairs = c.pairs.saturating_add(valid);
            c.invalid = c.invalid.saturating_add((ids.len() as u64).saturating_sub(valid));
            // valid <= len
        }
        c.hits = uniform_hits(c.pairs, slots, experts);
        c.misses = c.pairs.saturating_sub(c.hits); // hits <= pairs, as slots <= experts
        c.slow_pairs = c.misses;
        c.modeled_time_s = config.cost.seconds(c.slow_pairs, 0);
        return Ok(c);
    }
    let mut pool = ExpertPool::new(pool_config)?;
    if policy == Policy::Belady {
        scratch.clear();
        records.iter().for_each(|r| scratch.extend_from_slice(trace.ids(r)));
        pool.load_future(scratch)?;
    }
    let mut plan = MigrationPlan::new(pool.slots());
    pool.initial_plan(&mut plan);
    commit(&mut pool, &plan, 0);
    let start = *pool.stats();

    let mut slow_pairs = 0u64;
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
            pool.refresh(scratch, &mut plan)?;
        } else {
            pool.plan_step(step, ids, &mut plan)?;
        }
        commit(&mut pool, &plan, config.cost.expert_bytes);
        let served = pool.serve(ids);
        // An admission (demand policies) pays for its miss with its load.
        let admitted = if policy.is_demand() { plan.len() as u64 } else { 0 };
        slow_pairs = slow_pairs.saturating_add(u64::from(served.misses).saturating_sub(admitted));
    }
    Ok(counters(pool.stats(), &start, slow_pairs, &config.cost))
}

/// The hits a uniformly random placement of `slots` of `experts` (at least 1) experts expects
/// over `pairs` pairs.
fn uniform_hits(pairs: u64, slots: usize, experts: usize) -> u64 {
    #[allow(
        clippy::arithmetic_side_effects,
        reason = "a product of two 64-bit values fits 128 bits; a trace has at least one expert"
    )]
    let hits = u128::from(pairs) * slots as u128 / (experts as u128).max(1);
    // slots <= experts, so hits <= pairs.
    u64::try_from(hits).unwrap_or(pairs)
}

fn commit(pool: &mut ExpertPool, plan: &MigrationPlan, bytes: u64) {
    for &p in plan.promotions() {
        // A plan the pool just made always fits it.
        let _ = pool.commit(p, bytes);
    }
}

fn counters(end: &PoolStats, start: &PoolStats, slow_pairs: u64, cost: &CostModel) -> ReplayStats {
    let bytes_moved = end.bytes_promoted.saturating_sub(start.bytes_promoted);
    ReplayStats {
        pairs: end.hits.saturating_add(end.misses),
        hits: end.hits,
        misses: end.misses,
        invalid: end.invalid_ids,
        promotions: end.promotions.saturating_sub(start.promotions),
        demotions: end.demotions.saturating_sub(start.demotions),
        bytes_moved,
        slow_pairs,
        modeled_time_s: cost.seconds(slow_pairs, bytes_moved),
        ..ReplayStats::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::TraceHeader;

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

    #[test]
    fn totals_are_the_sum_of_layers_and_costs_follow_the_model() {
        for name in ReplayPolicy::NAMES {
            let policy = ReplayPolicy::from_name(name).unwrap();
            assert_eq!(policy.name(), name);
            let r = replay(&trace(), &config(policy)).unwrap();
            let mut sum = ReplayStats::default();
            r.layers.iter().for_each(|(_, l)| sum.add(l));
            assert_eq!(sum, r.total, "{name}");
            assert_eq!(r.total.pairs, 29, "{name}");
            assert_eq!(r.total.invalid, 1, "{name}");
            assert_eq!(r.total.hits + r.total.misses, r.total.pairs);
            assert_eq!(r.total.bytes_moved, r.total.promotions * 100);
            let expected = r.total.slow_pairs as f64 + r.total.bytes_moved as f64 / 100.0;
            assert!((r.total.modeled_time_s - expected).abs() < 1e-9, "{name}");
        }
        assert!(ReplayPolicy::from_name("random").is_err());
    }

    #[test]
    fn references_bound_the_policies() {
        let hits = |name| replay(&trace(), &config(ReplayPolicy::from_name(name).unwrap())).unwrap().total;
        let (tide, oracle, lru, belady, uniform) =
            (hits("tide"), hits("oracle"), hits("lru"), hits("belady"), hits("uniform"));
        assert!(belady.misses <= lru.misses);
        // Refreshing every step, the oracle's window is the step itself: TIDE exactly.
        assert_eq!(oracle, tide);
        let every2 = ReplayConfig {
            schedule: Schedule::EveryDecodeSteps(core::num::NonZeroU32::MIN.saturating_add(1)),
            ..config(ReplayPolicy::Oracle)
        };
        let ahead = replay(&trace(), &every2).unwrap().total;
        let tide2 =
            replay(&trace(), &ReplayConfig { policy: ReplayPolicy::Pool(Policy::Tide), ..every2 }).unwrap().total;
        assert!(ahead.hits >= tide2.hits, "knowing the window helps: {} vs {}", ahead.hits, tide2.hits);
        assert_eq!(uniform.hits, 19 * 2 / 8 + 10 * 2 / 8);
        assert_eq!(uniform.bytes_moved, 0);
        // Demand policies admit their misses: slow pairs only when an admission was dropped.
        assert!(lru.slow_pairs <= lru.misses);
    }
}
