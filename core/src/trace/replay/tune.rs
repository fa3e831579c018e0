//! The search `tune` makes, one for every caller (the command line and the GPU runner): the grid
//! of runs it tries, policy by policy, and the pick among their replays.

use alloc::vec::Vec;
use core::num::NonZeroU32;

use super::{ReplayPolicy, ReplayReport, Sharing};
use crate::policy::{AdmissionConfig, MissOrder, Policy, PolicyError};
use crate::schedule::Schedule;

/// One run of a search: a policy with its settings, slots per layer, a refresh schedule, the
/// pools' sharing and the order misses are admitted in.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TuneJob {
    /// The policy, its settings applied.
    pub policy: ReplayPolicy,
    /// Slots per layer.
    pub slots: usize,
    /// The refresh schedule (every step for demand policies).
    pub schedule: Schedule,
    /// Per-layer pools, or one for all layers.
    pub sharing: Sharing,
    /// The order a demand policy admits a step's misses in (routing order for the others).
    pub miss_order: MissOrder,
    /// Staging slots per layer ([`ReplayConfig::staging`](super::ReplayConfig::staging); 0 for
    /// the policies that do not prefetch).
    pub staging: usize,
}

impl TuneJob {
    /// `policy` at `slots` slots, refreshing every forward pass, on per-layer pools, misses
    /// admitted in routing order, no staging slots.
    pub const fn new(policy: ReplayPolicy, slots: usize) -> Self {
        Self {
            policy,
            slots,
            schedule: Schedule::EveryForward,
            sharing: Sharing::PerLayer,
            miss_order: MissOrder::Routing,
            staging: 0,
        }
    }
}

/// What a search tries: every policy at every slot count; interval policies at every refresh
/// interval on per-layer pools; demand policies at every refresh on every sharing they support,
/// in every miss order, tinylfu once per admission setting (in routing order: its admission
/// filter ranks a step's experts itself).
#[derive(Debug, Clone, PartialEq)]
pub struct TuneGrid {
    /// The policies, their settings applied (tinylfu's is replaced by each of `admissions`).
    pub policies: Vec<ReplayPolicy>,
    /// Slot counts per layer.
    pub slots: Vec<usize>,
    /// Refresh intervals τ (decode steps) for interval policies.
    pub intervals: Vec<NonZeroU32>,
    /// Sharings for demand policies (interval policies run on per-layer pools).
    pub sharings: Vec<Sharing>,
    /// Tinylfu's admission settings.
    pub admissions: Vec<AdmissionConfig>,
    /// The orders demand policies other than tinylfu admit misses in.
    pub miss_orders: Vec<MissOrder>,
    /// Staging slot counts for the policies that prefetch ([`ReplayPolicy::prefetches`]); the
    /// others run with none. Only replays that prefetch use them.
    pub stagings: Vec<usize>,
}

impl TuneGrid {
    /// The deployable policies a search tries by default.
    pub const POLICIES: [&'static str; 6] = ["tide", "decay", "lru", "lfu", "lru2", "tinylfu"];
    /// The miss orders a search tries by default (for lru, lfu and lru2).
    pub const MISS_ORDERS: [MissOrder; 2] = [MissOrder::Routing, MissOrder::Busiest];
    /// The refresh intervals a search tries by default.
    pub const INTERVALS: [u32; 6] = [1, 2, 4, 8, 16, 32];
    /// Tinylfu's frequency half-lives (steps) a search tries by default.
    pub const ADMIT_HALF_LIVES: [f32; 5] = [16.0, 32.0, 64.0, 256.0, 1024.0];
    /// Tinylfu's horizons (steps) a search tries by default.
    pub const ADMIT_HORIZONS: [f32; 4] = [0.5, 2.0, 8.0, 32.0];
    /// Tinylfu's admission thresholds (uses) a search tries by default; one no score reaches
    /// (1e9) is the miss action "always serve in place".
    pub const ADMIT_THRESHOLDS: [f32; 4] = [0.0, 1.0, 4.0, 1e9];

    /// The default grid at `slots`: every policy of [`TuneGrid::POLICIES`] (decay with its
    /// default settings), every interval of [`TuneGrid::INTERVALS`], per-layer and shared pools,
    /// both miss orders, and tinylfu at its default setting and at every combination of the default half-lives,
    /// horizons and thresholds.
    pub fn new(slots: Vec<usize>) -> Self {
        let policies = Self::POLICIES.iter().filter_map(|name| ReplayPolicy::from_name(name).ok()).collect();
        let intervals = Self::INTERVALS.iter().filter_map(|&n| NonZeroU32::new(n)).collect();
        let admissions = Self::admissions(
            AdmissionConfig::DEFAULT,
            &Self::ADMIT_HALF_LIVES,
            &Self::ADMIT_HORIZONS,
            &Self::ADMIT_THRESHOLDS,
        )
        .unwrap_or_else(|_| Vec::from([AdmissionConfig::DEFAULT]));
        let sharings = Vec::from([Sharing::PerLayer, Sharing::Shared]);
        let miss_orders = Vec::from(Self::MISS_ORDERS);
        Self { policies, slots, intervals, sharings, admissions, miss_orders, stagings: Vec::from([0]) }
    }

    /// Tinylfu's settings to try: `base`, then every combination of the lists not already there.
    ///
    /// # Errors
    /// The [`PolicyError`] of the first combination [`AdmissionConfig::new`] refuses.
    pub fn admissions(
        base: AdmissionConfig,
        half_lives: &[f32],
        horizons: &[f32],
        thresholds: &[f32],
    ) -> Result<Vec<AdmissionConfig>, PolicyError> {
        let mut grid = Vec::from([base]);
        for &half_life in half_lives {
            for &horizon in horizons {
                for &threshold in thresholds {
                    let config = AdmissionConfig::new(half_life, horizon, threshold)?;
                    if !grid.contains(&config) {
                        grid.push(config);
                    }
                }
            }
        }
        Ok(grid)
    }

    /// Every run of the grid, slot count by slot count, in the order of the policies.
    pub fn jobs(&self) -> Vec<TuneJob> {
        let mut jobs = Vec::new();
        for &slots in &self.slots {
            for &policy in &self.policies {
                if matches!(policy, ReplayPolicy::Pool(p) if p.is_demand()) {
                    let tinylfu = matches!(policy, ReplayPolicy::Pool(Policy::Tinylfu(_)));
                    let settings: Vec<ReplayPolicy> = if tinylfu {
                        self.admissions.iter().map(|&a| ReplayPolicy::Pool(Policy::Tinylfu(a))).collect()
                    } else {
                        Vec::from([policy])
                    };
                    let orders = if tinylfu { &[MissOrder::Routing][..] } else { &self.miss_orders[..] };
                    let stagings = if policy.prefetches() { &self.stagings[..] } else { &[0][..] };
                    for &sharing in self.sharings.iter().filter(|s| s.supports(policy)) {
                        for &miss_order in orders {
                            for &staging in stagings {
                                jobs.extend(settings.iter().map(|&policy| TuneJob {
                                    sharing,
                                    miss_order,
                                    staging,
                                    ..TuneJob::new(policy, slots)
                                }));
                            }
                        }
                    }
                } else {
                    jobs.extend(
                        self.intervals.iter().map(|&n| TuneJob {
                            schedule: Schedule::EveryDecodeSteps(n),
                            ..TuneJob::new(policy, slots)
                        }),
                    );
                }
            }
        }
        jobs
    }
}

/// The slot counts a search tries up to `max`: powers of two below it, and `max` itself.
pub fn slot_counts(max: usize) -> Vec<usize> {
    let mut counts: Vec<usize> =
        core::iter::successors(Some(1usize), |x| x.checked_mul(2)).take_while(|&x| x < max).collect();
    counts.push(max);
    counts
}

/// The pick of a search: the run with the least modeled time, ties to the fewer slots, then to
/// the earlier run; `None` when there is none.
pub fn best_run<T>(runs: &[T], key: impl Fn(&T) -> (&ReplayReport, usize)) -> Option<&T> {
    runs.iter()
        .enumerate()
        .min_by(|(i, a), (j, b)| {
            let ((ra, sa), (rb, sb)) = (key(a), key(b));
            ra.total.modeled_time_s.total_cmp(&rb.total.modeled_time_s).then(sa.cmp(&sb)).then(i.cmp(j))
        })
        .map(|(_, run)| run)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_grid_tries_every_policy_where_it_runs() {
        let grid = TuneGrid::new(slot_counts(8));
        assert_eq!(grid.slots, [1, 2, 4, 8]);
        // The default setting is one of the combinations: 80 settings.
        assert_eq!(grid.admissions.len(), 5 * 4 * 4);
        let jobs = grid.jobs();
        // Per slot count: tide and decay at 6 intervals; lru, lfu and lru2 on both sharings in
        // both miss orders; tinylfu's 80 settings on both sharings.
        assert_eq!(jobs.len(), 4 * (2 * 6 + 3 * 2 * 2 + 80 * 2));
        assert_eq!(jobs.iter().filter(|j| j.miss_order == MissOrder::Busiest).count(), 4 * 3 * 2);
        assert!(jobs.iter().all(|j| j.miss_order == MissOrder::Routing || !j.policy.name().contains("tinylfu")));
        assert!(jobs.iter().all(|j| match j.policy {
            ReplayPolicy::Pool(p) if p.is_demand() => j.schedule == Schedule::EveryForward,
            _ => j.sharing == Sharing::PerLayer && matches!(j.schedule, Schedule::EveryDecodeSteps(_)),
        }));
        assert!(jobs.iter().all(|j| j.policy.deployable().is_some()));
        // A grid without shared pools, as the GPU runner searches.
        let per_layer = TuneGrid { sharings: Vec::from([Sharing::PerLayer]), ..TuneGrid::new(Vec::from([3])) };
        assert_eq!(per_layer.jobs().len(), 2 * 6 + 3 * 2 + 80);
        // Staging slot counts multiply the runs of the policies that prefetch (lru and lfu).
        let staged = TuneGrid { stagings: Vec::from([0, 1, 2]), ..per_layer };
        let jobs = staged.jobs();
        assert_eq!(jobs.len(), 2 * 6 + (2 * 3 + 1) * 2 + 80);
        assert!(jobs.iter().all(|j| j.staging == 0 || j.policy.prefetches()));
        assert_eq!(slot_counts(1), [1]);
        assert_eq!(slot_counts(5), [1, 2, 4, 5]);
    }

    #[test]
    fn a_bad_admission_setting_is_refused_and_repeats_are_kept_once() {
        let base = AdmissionConfig::DEFAULT;
        assert!(TuneGrid::admissions(base, &[0.0], &[1.0], &[1.0]).is_err());
        let grid =
            TuneGrid::admissions(base, &[base.half_life()], &[base.horizon()], &[base.threshold(), 2.0]).unwrap();
        assert_eq!(grid.len(), 2);
    }
}
