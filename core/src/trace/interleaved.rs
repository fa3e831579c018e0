//! Replay of all layers together, in trace order `(step, layer)`, as a forward pass runs them:
//! the path for a slot pool shared across layers ([`Sharing::Shared`]) and for prefetch (a layer's
//! routing guesses the next layer's experts, see [`crate::predict`]).
//!
//! Records are ordered by step, then layer (records of one step and layer keep their file order).
//! Layers are numbered by their position among the layers that have records; "the next layer" is
//! the next such position.
//!
//! **Shared pool.** One [`SharedSlotPool`] of `slots × layers` slots (the same memory as the
//! per-layer pools' `slots` each), driven by the replay's demand policy. Each record is planned,
//! migrated and served as one step of its layer; a layer's counters hold what its records did
//! (the promotions and demotions its misses caused).
//!
//! **Prefetch.** With [`ReplayConfig::prefetch`] set, an LRU or LFU policy, and a
//! [`CostModel::layer_compute_seconds`] long enough for at least one copy, after each record the
//! [`Prefetcher`] guesses the next layer's experts and the next layer's pool (or the shared pool)
//! places up to `layer_compute_seconds / copy time` of them ([`ExpertPool::prefetch`]). Those
//! copies overlap the layer's compute, so they cost no modeled time; they count in
//! `promotions` and `bytes_promoted`, and in `prefetched`, `prefetch_hits` (prefetched experts the
//! next layer's step used) and `prefetch_wasted_bytes` (those it did not use). With
//! [`ReplayConfig::staging`] the pools hold that many staging slots per layer
//! ([`crate::PoolConfig::staging`]), and a guess never takes a slot of the policy's residents.

use alloc::collections::BTreeMap;
use alloc::vec;
use alloc::vec::Vec;

use super::{
    OverlapClock, ReplayConfig, ReplayError, ReplayPolicy, ReplayReport, ReplayStats, Trace, TraceRecord, WarmStart,
};
use crate::error::PoolError;
use crate::plan::MigrationPlan;
use crate::policy::Policy;
use crate::pool::{split_key, ExpertPool, PoolConfig, SharedSlotPool};
use crate::predict::Prefetcher;
use crate::schedule::{Mode, Step};

/// How a replay's slots are pooled.
///
/// A shared replay has one [`SharedSlotPool`] of `slots × layers` slots (the memory of the
/// per-layer pools' `slots` each), driven by the replay's demand policy. Each record is planned,
/// migrated and served as one step of its layer; a layer's counters hold what its records did (the
/// promotions and demotions its misses caused, the prefetches into it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Sharing {
    /// One pool of `slots` slots per layer (the default).
    #[default]
    PerLayer,
    /// One pool of `slots × layers` slots for all layers, keyed by `(layer, expert)`; the
    /// policies [`crate::Policy::drives_shared_pool`] names only.
    Shared,
}

impl Sharing {
    /// Every name [`Sharing::from_name`] knows.
    pub const NAMES: [&'static str; 2] = ["per-layer", "shared"];

    /// The name.
    pub const fn name(&self) -> &'static str {
        match self {
            Self::PerLayer => "per-layer",
            Self::Shared => "shared",
        }
    }

    /// The sharing named `name`.
    ///
    /// # Errors
    /// [`crate::PolicyError::UnknownName`].
    pub fn from_name(name: &str) -> Result<Self, crate::PolicyError> {
        match name {
            "per-layer" => Ok(Self::PerLayer),
            "shared" => Ok(Self::Shared),
            _ => Err(crate::PolicyError::UnknownName),
        }
    }

    /// Whether `policy` can be replayed with this sharing (a shared pool takes the policies
    /// [`crate::Policy::drives_shared_pool`] names).
    pub const fn supports(&self, policy: ReplayPolicy) -> bool {
        match self {
            Self::PerLayer => true,
            Self::Shared => matches!(policy, ReplayPolicy::Pool(p) if p.drives_shared_pool()),
        }
    }
}

/// Whether `config` prefetches: a predictor, an LRU or LFU pool, and room for a copy.
pub(crate) fn prefetches(config: &ReplayConfig) -> bool {
    config.prefetch.is_some() && config.policy.prefetches() && config.cost.prefetch_copies() > 0
}

/// The records in the order a forward pass serves them: by step, then layer (file order within
/// one step and layer). A layer whose step counter restarts (a diffusion model's next block, whose
/// first record may carry a smaller step) starts a new round, ordered after every record of the
/// rounds before it, so blocks stay in sequence.
pub(crate) fn forward_order(trace: &Trace) -> Vec<&TraceRecord> {
    let mut last: BTreeMap<u32, (u64, u64)> = BTreeMap::new();
    let mut keyed: Vec<((u64, u64, u32), &TraceRecord)> = trace
        .records()
        .iter()
        .map(|r| {
            let (step, round) = last.entry(r.layer).or_insert((r.step, 0));
            if r.step < *step {
                *round = round.saturating_add(1);
            }
            *step = r.step;
            ((*round, r.step, r.layer), r)
        })
        .collect();
    keyed.sort_by_key(|&(key, _)| key); // stable: file order within a key
    keyed.into_iter().map(|(_, r)| r).collect()
}

/// The pools of an interleaved replay.
enum Pools {
    PerLayer(Vec<ExpertPool>),
    Shared(alloc::boxed::Box<SharedSlotPool>),
}

/// Replays `trace` layer-interleaved. See the [module docs](self).
pub(crate) fn replay(trace: &Trace, config: &ReplayConfig, start: &WarmStart) -> Result<ReplayReport, ReplayError> {
    let ReplayPolicy::Pool(policy) = config.policy else {
        return Err(ReplayError::NotShareable(config.policy.name()));
    };
    if !config.sharing.supports(config.policy) {
        return Err(ReplayError::NotShareable(policy.name()));
    }
    let layers: Vec<u32> = trace.layers().collect();
    let records = forward_order(trace);
    let position = |layer: u32| layers.binary_search(&layer).unwrap_or(0);
    let first = |error| ReplayError::Pool { layer: layers.first().copied().unwrap_or(0), error };
    let experts = trace.header().experts as usize;
    let top_k = trace.header().top_k as usize;
    let max_ids = records.iter().map(|r| trace.ids(r).len()).max().unwrap_or(0);
    let staging = if prefetches(config) { config.staging } else { 0 };
    let base = PoolConfig::new(experts, config.slots)
        .policy(policy)
        .schedule(config.schedule)
        .initial(config.initial)
        .miss_order(config.miss_order)
        .staging(staging);
    let mut plan = MigrationPlan::new(0);
    let mut pools = match config.sharing {
        Sharing::PerLayer => {
            let mut pools = Vec::with_capacity(layers.len());
            for &layer in &layers {
                let mut pool =
                    ExpertPool::new(base.layer(layer as usize)).map_err(|error| ReplayError::Pool { layer, error })?;
                start.plan(&pool, layer, &mut plan).map_err(|error| ReplayError::Start { layer, error })?;
                for &p in plan.promotions() {
                    let _ = pool.commit(p, 0); // a plan the pool just made always fits it
                }
                pools.push(pool);
            }
            Pools::PerLayer(pools)
        }
        Sharing::Shared => {
            let total = base.slots().saturating_mul(layers.len());
            let config = PoolConfig::new(experts, total)
                .policy(policy)
                .initial(config.initial)
                .miss_order(config.miss_order)
                .staging(staging.saturating_mul(layers.len()));
            let mut pool = SharedSlotPool::new(layers.len(), config, max_ids).map_err(first)?;
            if policy == Policy::Belady {
                pool.load_future(records.iter().map(|r| (position(r.layer), trace.ids(r)))).map_err(first)?;
            }
            pool.placement_plan(|at| layers.get(at).and_then(|&l| start.layer(l)), &mut plan).map_err(|error| {
                // The layer whose list names an expert out of range.
                let out_of_range =
                    |&l: &u32| start.layer(l).is_some_and(|list| list.iter().any(|&e| e as usize >= experts));
                let layer = layers.iter().copied().find(out_of_range).unwrap_or(0);
                ReplayError::Start { layer, error }
            })?;
            for &p in plan.promotions() {
                let _ = pool.commit(p, 0);
            }
            Pools::Shared(alloc::boxed::Box::new(pool))
        }
    };
    let mut prefetcher = match config.prefetch {
        Some(predictor) if prefetches(config) => Some(
            Prefetcher::new(
                layers.len(),
                experts,
                top_k,
                predictor,
                policy,
                config.sharing == Sharing::Shared,
                max_ids,
            )
            .map_err(first)?,
        ),
        _ => None,
    };
    let copies = config.cost.prefetch_copies();
    let bytes = config.cost.expert_bytes;
    let mut stats = vec![ReplayStats::default(); layers.len()];
    let mut clocks: Vec<OverlapClock> = (0..layers.len()).map(|_| OverlapClock::default()).collect();
    // Per layer: the experts prefetched for its next step.
    let mut pending: Vec<Vec<u16>> = vec![Vec::new(); layers.len()];
    let mut keys: Vec<u16> = Vec::new();
    for record in records {
        let at = position(record.layer);
        let ids = trace.ids(record);
        let step = Step { index: record.step, prefill: record.prefill, mode: Mode::Scheduled };
        let fail = |error| ReplayError::Pool { layer: record.layer, error };
        let served = match &mut pools {
            Pools::PerLayer(pools) => {
                let pool = pools.get_mut(at).ok_or(fail(PoolError::NoExperts))?;
                if let Some(clock) = clocks.get_mut(at) {
                    pool.set_fetch_cap(clock.cap(&config.cost, ids, |e| pool.is_resident(e), experts));
                }
                pool.plan_step(step, ids, &mut plan).map_err(fail)?;
                for &p in plan.promotions() {
                    let _ = pool.commit(p, bytes);
                }
                pool.serve(ids)
            }
            Pools::Shared(pool) => {
                if let Some(clock) = clocks.get_mut(at) {
                    let cap = clock.cap(&config.cost, ids, |e| pool.slot_of(at, e).is_some(), experts);
                    pool.set_fetch_cap(cap);
                }
                pool.plan_step(at, step, ids, &mut plan).map_err(fail)?;
                for &p in plan.promotions() {
                    let _ = pool.commit(p, bytes);
                }
                pool.serve(at, ids)
            }
        };
        if let Some(clock) = clocks.get_mut(at) {
            match &pools {
                Pools::PerLayer(pools) => {
                    let pool = pools.get(at);
                    clock.step(&config.cost, plan.len(), ids, |e| pool.is_some_and(|p| p.is_resident(e)), experts);
                }
                Pools::Shared(pool) => {
                    clock.step(&config.cost, plan.len(), ids, |e| pool.slot_of(at, e).is_some(), experts);
                }
            }
        }
        let Some(s) = stats.get_mut(at) else { continue };
        count_moves(s, &plan, bytes);
        s.served.add(&served);
        if let Some(prefetched) = pending.get_mut(at) {
            let used = prefetched.iter().filter(|&&e| ids.contains(&u32::from(e))).count() as u64;
            s.prefetch_hits = s.prefetch_hits.saturating_add(used);
            let wasted = (prefetched.len() as u64).saturating_sub(used).saturating_mul(bytes);
            s.prefetch_wasted_bytes = s.prefetch_wasted_bytes.saturating_add(wasted);
            prefetched.clear();
        }
        let Some(prefetcher) = prefetcher.as_mut() else { continue };
        prefetcher.observe(at, ids);
        let next = at.saturating_add(1);
        let guesses = prefetcher.predict(at, ids, experts);
        if guesses.is_empty() {
            continue;
        }
        let prefetcher = &*prefetcher;
        let guesses = prefetcher.guesses();
        match &mut pools {
            Pools::PerLayer(pools) => {
                let Some(pool) = pools.get_mut(next) else { continue };
                pool.prefetch(guesses, copies, |v, g| prefetcher.outranked(next, v, next, g), &mut plan)
                    .map_err(fail)?;
                for &p in plan.promotions() {
                    let _ = pool.commit(p, bytes);
                }
            }
            Pools::Shared(pool) => {
                keys.clear();
                keys.extend(guesses.iter().filter_map(|&e| pool.key(next, usize::from(e))).map(|k| k as u16));
                let experts = pool.experts();
                let outranked = |v: usize, g: usize| {
                    let ((vl, ve), (gl, ge)) = (split_key(v, experts), split_key(g, experts));
                    prefetcher.outranked(vl, ve, gl, ge)
                };
                pool.keyed().prefetch(&keys, copies, outranked, &mut plan).map_err(fail)?;
                for &p in plan.promotions() {
                    let _ = pool.commit(p, bytes);
                }
            }
        }
        let Some(s) = stats.get_mut(next) else { continue };
        count_moves(s, &plan, bytes);
        s.prefetched = s.prefetched.saturating_add(plan.len() as u64);
        if let (Some(list), Pools::Shared(pool)) = (pending.get_mut(next), &pools) {
            list.extend(plan.promotions().iter().map(|p| pool.split(p.expert).1 as u16));
        } else if let Some(list) = pending.get_mut(next) {
            list.extend(plan.promotions().iter().map(|p| p.expert));
        }
    }
    let mut report = ReplayReport { layers: Vec::with_capacity(layers.len()), total: ReplayStats::default() };
    for ((&layer, mut s), clock) in layers.iter().zip(stats).zip(&clocks) {
        // Prefetch copies overlap the previous layer's compute: only demand copies cost time.
        let hidden = s.prefetched.saturating_mul(bytes);
        s.modeled_time_s = config.cost.seconds(s.served.served_in_place, s.bytes_promoted.saturating_sub(hidden));
        clock.apply(&config.cost, &mut s);
        report.total.add(&s);
        report.layers.push((layer, s));
    }
    Ok(report)
}

/// Adds a committed plan's promotions, demotions and bytes to `s`.
fn count_moves(s: &mut ReplayStats, plan: &MigrationPlan, bytes: u64) {
    let moved = plan.len() as u64;
    s.promotions = s.promotions.saturating_add(moved);
    s.demotions = s.demotions.saturating_add(plan.promotions().iter().filter(|p| p.demoted.is_some()).count() as u64);
    s.bytes_promoted = s.bytes_promoted.saturating_add(moved.saturating_mul(bytes));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::TraceHeader;

    #[test]
    fn records_run_by_step_then_layer_whatever_the_file_order() {
        let mut t = Trace::new(TraceHeader { experts: 4, layers: 2, top_k: 1 }).unwrap();
        // Written layer by layer; two records of layer 0 in step 2 keep their file order.
        for (layer, step, id) in [(1, 0, 0), (1, 2, 1), (0, 0, 2), (0, 2, 3), (0, 2, 1), (0, 3, 0)] {
            t.push(layer, step, step == 0, &[id]).unwrap();
        }
        let order: Vec<(u64, u32, u32)> = forward_order(&t).iter().map(|r| (r.step, r.layer, t.ids(r)[0])).collect();
        assert_eq!(order, [(0, 0, 2), (0, 1, 0), (2, 0, 3), (2, 0, 1), (2, 1, 1), (3, 0, 0)]);
    }
}
