//! Warm starts from a profile: which experts each layer's slots hold before the first step.
//!
//! By default a warm pool starts with experts `0..slots` ([`crate::InitialPlacement::Warm`]).
//! A [`WarmStart`] names, per layer, the experts to start with instead, hottest first: the
//! first `slots` of a layer's list go into slots `0..slots`
//! ([`crate::ExpertPool::placement_plan`]). [`WarmStart::hottest`] reads them off a saved
//! routing trace (a profile): per layer, the experts with the most token–expert pairs, ties to
//! the lower id, then the experts the profile never routed to, by id. One warm start serves
//! every slot count.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use super::Trace;
use crate::error::PlanError;
use crate::plan::MigrationPlan;
use crate::pool::ExpertPool;
use crate::slot_table::MAX_EXPERTS;

/// Per layer, the experts to start with, in slot order. Layers without a list start as their
/// pool's configuration says. See the [module docs](self).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WarmStart {
    layers: BTreeMap<u32, Vec<u32>>,
}

impl WarmStart {
    /// No list for any layer: every layer starts as its configuration says (the default).
    pub const fn new() -> Self {
        Self { layers: BTreeMap::new() }
    }

    /// The hottest experts of every layer that has records in `profile`: all experts of the
    /// header's count (at most [`MAX_EXPERTS`], the most slots a pool has), by valid pairs in
    /// that layer's records, descending, ties to the lower id. Ids at or past the expert count
    /// are not counted.
    pub fn hottest(profile: &Trace) -> Self {
        let experts = profile.header().experts;
        let mut counts: BTreeMap<u32, BTreeMap<u32, u64>> = BTreeMap::new();
        for record in profile.records() {
            let layer = counts.entry(record.layer).or_default();
            for &id in profile.ids(record).iter().filter(|&&id| id < experts) {
                let count = layer.entry(id).or_insert(0);
                *count = count.saturating_add(1);
            }
        }
        let len = (experts as usize).min(MAX_EXPERTS);
        let layers = counts
            .into_iter()
            .map(|(layer, counts)| {
                let mut ranked: Vec<(u32, u64)> = counts.iter().map(|(&id, &n)| (id, n)).collect();
                ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
                let mut list: Vec<u32> = ranked.into_iter().map(|(id, _)| id).take(len).collect();
                let cold = (0..experts).filter(|id| !counts.contains_key(id));
                list.extend(cold.take(len.saturating_sub(list.len())));
                (layer, list)
            })
            .collect();
        Self { layers }
    }

    /// Sets `layer`'s list: `experts[i]` starts in slot `i`.
    pub fn set(&mut self, layer: u32, experts: Vec<u32>) {
        self.layers.insert(layer, experts);
    }

    /// `layer`'s list, if it has one.
    pub fn layer(&self, layer: u32) -> Option<&[u32]> {
        self.layers.get(&layer).map(Vec::as_slice)
    }

    /// The start of `layer`'s `pool` as a plan: the layer's list through
    /// [`ExpertPool::placement_plan`], or the pool's [`ExpertPool::initial_plan`] when the layer
    /// has none.
    ///
    /// # Errors
    /// [`PlanError::ExpertOutOfRange`] when the list names an expert past the pool's.
    pub fn plan(&self, pool: &ExpertPool, layer: u32, plan: &mut MigrationPlan) -> Result<(), PlanError> {
        match self.layer(layer) {
            Some(experts) => pool.placement_plan(experts, plan),
            None => {
                pool.initial_plan(plan);
                Ok(())
            }
        }
    }

    /// Whether no layer has a list.
    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::TraceHeader;

    #[test]
    fn hottest_ranks_by_pairs_with_ties_to_the_lower_id_then_fills_by_id() {
        let mut t = Trace::new(TraceHeader { experts: 6, layers: 3, top_k: 2 }).unwrap();
        t.push(0, 0, true, &[4, 4, 2, 5]).unwrap();
        t.push(0, 1, false, &[5, 2]).unwrap();
        t.push(0, 2, false, &[1, 9]).unwrap(); // 9 is invalid: not counted
        t.push(2, 0, true, &[3, 3]).unwrap();
        let warm = WarmStart::hottest(&t);
        // Layer 0: 2, 4 and 5 have two pairs each, 1 has one; 0 and 3 none.
        assert_eq!(warm.layer(0), Some(&[2, 4, 5, 1, 0, 3][..]));
        assert_eq!(warm.layer(1), None, "no records, no list");
        assert_eq!(warm.layer(2), Some(&[3, 0, 1, 2, 4, 5][..]));
        assert!(!warm.is_empty() && WarmStart::new().is_empty());
    }

    #[test]
    fn lists_stop_at_the_most_slots_a_pool_has() {
        let mut t = Trace::new(TraceHeader { experts: u32::MAX, layers: 1, top_k: 1 }).unwrap();
        t.push(0, 0, true, &[70_000]).unwrap();
        let warm = WarmStart::hottest(&t);
        let list = warm.layer(0).unwrap();
        assert_eq!(list.len(), MAX_EXPERTS);
        assert_eq!(&list[..3], &[70_000, 0, 1]);
    }
}

#[cfg(all(test, feature = "demand"))]
mod replay_tests {
    use super::*;
    use crate::pool::InitialPlacement;
    use crate::schedule::Schedule;
    use crate::trace::replay::{replay, replay_from, CostModel, ReplayConfig, ReplayError, ReplayPolicy};
    use crate::trace::TraceHeader;

    /// Two layers routed mostly to experts 6 and 7, which a default warm start of 2 slots lacks.
    fn trace() -> Trace {
        let mut t = Trace::new(TraceHeader { experts: 8, layers: 2, top_k: 2 }).unwrap();
        for s in 0..6u64 {
            let ids = if s % 3 == 2 { [6, 1] } else { [7, 6] };
            t.push(0, s, s == 0, &ids).unwrap();
            t.push(1, s, s == 0, &[ids[1], ids[0]]).unwrap();
        }
        t
    }

    fn config(policy: ReplayPolicy, initial: InitialPlacement) -> ReplayConfig {
        let every4 = Schedule::EveryDecodeSteps(core::num::NonZeroU32::new(4).unwrap());
        ReplayConfig::new(policy, 2, every4, initial, CostModel::new(100, 1.0, 100.0))
    }

    #[test]
    fn every_policy_starts_from_the_profile_and_the_default_is_unchanged() {
        let t = trace();
        let warm = WarmStart::hottest(&t);
        assert_eq!(warm.layer(0).map(|l| &l[..2]), Some(&[6, 7][..]));
        for name in ReplayPolicy::NAMES {
            let policy = ReplayPolicy::from_name(name).unwrap();
            let c = config(policy, InitialPlacement::Warm);
            let default = replay(&t, &c).unwrap();
            assert_eq!(replay_from(&t, &c, &WarmStart::new()).unwrap(), default, "{name}");
            let hot = replay_from(&t, &c, &warm).unwrap();
            if policy == ReplayPolicy::Uniform {
                assert_eq!(hot, default, "uniform has no placement");
                continue;
            }
            // Experts 6 and 7 resident from the start: they never need to be copied.
            assert_eq!(hot.total.served.pairs(), 24, "{name}");
            assert!(
                hot.total.served.hits >= default.total.served.hits,
                "{name}: {:?} vs {:?}",
                hot.total,
                default.total
            );
            assert!(hot.total.promotions < default.total.promotions, "{name}: {:?} vs {:?}", hot.total, default.total);
            assert!(hot.total.modeled_time_s < default.total.modeled_time_s, "{name}");
        }
    }

    #[test]
    fn a_list_overrides_a_cold_start_for_its_layer_only() {
        let t = trace();
        let mut start = WarmStart::new();
        start.set(1, alloc::vec![7, 6]);
        let c = config(ReplayPolicy::Pool(crate::Policy::Lru), InitialPlacement::Cold);
        let cold = replay(&t, &c).unwrap();
        let r = replay_from(&t, &c, &start).unwrap();
        assert_eq!(r.layers[0], cold.layers[0], "layer 0 has no list: cold as configured");
        // Starting with 7 and 6 saves exactly the two copies the cold start makes in step 0.
        assert_eq!(r.layers[1].1.promotions + 2, cold.layers[1].1.promotions, "{r:?} vs {cold:?}");
        start.set(0, alloc::vec![8]);
        assert_eq!(
            replay_from(&t, &c, &start),
            Err(ReplayError::Start { layer: 0, error: crate::PlanError::ExpertOutOfRange { expert: 8, experts: 8 } })
        );
    }

    #[test]
    fn a_shared_pool_starts_from_the_profile_too() {
        use crate::trace::replay::Sharing;
        let t = trace();
        let lru = config(ReplayPolicy::Pool(crate::Policy::Lru), InitialPlacement::Warm);
        let c = ReplayConfig { sharing: Sharing::Shared, ..lru };
        let default = replay(&t, &c).unwrap();
        let hot = replay_from(&t, &c, &WarmStart::hottest(&t)).unwrap();
        // Both layers' experts 6 and 7 start in the four shared slots: only expert 1 is copied.
        assert!(hot.total.promotions < default.total.promotions, "{hot:?} vs {default:?}");
        assert!(hot.total.modeled_time_s < default.total.modeled_time_s);
        let mut bad = WarmStart::new();
        bad.set(1, alloc::vec![8]);
        assert!(matches!(replay_from(&t, &c, &bad), Err(ReplayError::Start { layer: 1, .. })));
    }
}
