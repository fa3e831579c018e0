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
//! slow-memory compute; a miss it serves in place (a cost-aware policy's
//! [`MissAction::InPlace`](crate::MissAction::InPlace), or a step whose every slot is pinned) is a
//! slow pair: `modeled_time = slow pairs × slow_pair_seconds + bytes moved / link`.

use alloc::vec::Vec;
use core::fmt;

use crate::error::PoolError;
use crate::plan::MigrationPlan;
use crate::policy::{Policy, PolicyError};
use crate::pool::{ExpertPool, InitialPlacement, PoolConfig, PoolStats};
use crate::schedule::{Schedule, Step};
use crate::trace::{Trace, TraceRecord};

pub mod optimal;

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
    /// The least modeled time any per-layer placement reaches, knowing the future
    /// ([`optimal::optimal`]).
    Optimal,
    /// The least modeled time one pool of `slots × layers` slots shared by the layers reaches,
    /// knowing the future ([`optimal::optimal_shared`]).
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
}

impl CostModel {
    pub(crate) fn seconds(&self, slow_pairs: u64, bytes: u64) -> f64 {
        let link = if self.link_bytes_per_second > 0.0 { bytes as f64 / self.link_bytes_per_second } else { 0.0 };
        slow_pairs as f64 * self.slow_pair_seconds + link
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
}

impl fmt::Display for ReplayError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Pool { layer, error } => write!(f, "layer {layer}: {error}"),
        }
    }
}

impl core::error::Error for ReplayError {}

/// Replays `trace` under `config`.
///
/// # Errors
/// [`ReplayError::Pool`] when a pool cannot be built (no experts, too many) or a step has too many
/// ids.
pub fn replay(trace: &Trace, config: &ReplayConfig) -> Result<ReplayReport, ReplayError> {
    match config.policy {
        ReplayPolicy::Optimal => return Ok(optimal::optimal(trace, config)),
        ReplayPolicy::OptimalShared => return Ok(optimal::optimal_shared(trace, config)),
        _ => {}
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
        // An admission (demand policies) pays for its miss with its load; every other miss,
        // served in place, is a slow pair.
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
        ReplayConfig {
            policy,
            slots: 2,
            schedule: Schedule::EveryForward,
            initial: InitialPlacement::Cold,
            cost: CostModel { expert_bytes: 100, slow_pair_seconds: 1.0, link_bytes_per_second: 100.0 },
        }
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

    #[test]
    fn misses_served_in_place_are_slow_pairs_and_copies_are_paid_by_the_link() {
        let tinylfu = |threshold| {
            let policy = Policy::Tinylfu(crate::AdmissionConfig::new(4.0, 0.0, threshold).unwrap());
            replay(&trace(), &config(ReplayPolicy::Pool(policy))).unwrap().total
        };
        // A threshold no score reaches: every miss is served in place, nothing moves.
        let never = tinylfu(1e9);
        assert_eq!((never.promotions, never.bytes_moved, never.hits), (0, 0, 0));
        assert_eq!(never.slow_pairs, never.misses);
        assert!((never.modeled_time_s - never.misses as f64).abs() < 1e-9);
        // Threshold 0: some misses copied, each paying for its own pair; the rest in place.
        let eager = tinylfu(0.0);
        assert!(eager.promotions > 0 && eager.slow_pairs > 0);
        assert_eq!(eager.slow_pairs, eager.misses - eager.promotions);
        let expected = eager.slow_pairs as f64 + eager.promotions as f64;
        assert!((eager.modeled_time_s - expected).abs() < 1e-9);
    }
}
