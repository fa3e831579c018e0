//! The prefetch hook: copies started before a layer's routing is known, on a prediction (see
//! [`crate::predict`] for one predictor).

use super::ExpertPool;
use crate::error::PoolError;
use crate::plan::MigrationPlan;
#[cfg(feature = "demand")]
use crate::policy::{AdmitState, PolicyState};

impl ExpertPool {
    /// Plans at most `limit` prefetch copies for this pool's next step: each of `experts` (best
    /// guess first) that is not resident goes into a free slot, or replaces the demand policy's demotion candidate
    /// when `outranked(candidate, expert)` says the policy scores the candidate strictly below
    /// the guess: a prefetch never demotes an expert whose policy score is at least the predicted
    /// one's. The guess is scored as if its predicted use had happened, as the policy would score
    /// it when admitting it on that use ([`crate::predict::Prefetcher::outranked`] keeps LRU's
    /// and LFU's scores). Experts the pool's last step used or admitted stay pinned.
    ///
    /// Fills `plan` with the promotions (demoted slots are freed at once) and returns how many
    /// experts were demoted. Migrate `plan` before planning the next step: a prefetched expert is
    /// then resident for it and pinned through it; afterwards LRU and LRU-2 rank it as never
    /// used, so a wrong guess is their first candidate for demotion (LFU and Belady rank it by
    /// its uses and its next use, as any resident). Ids out of range are skipped.
    ///
    /// # Errors
    /// [`PoolError::PolicyMismatch`] for an interval policy (its next refresh decides placement)
    /// and for the cost-aware policy (it decides with the step's routing known), and so for every
    /// pool when the crate's `demand` feature is off (it builds no demand policy); `plan` is then
    /// unchanged.
    pub fn prefetch(
        &mut self,
        experts: &[u16],
        limit: usize,
        outranked: impl Fn(usize, usize) -> bool,
        plan: &mut MigrationPlan,
    ) -> Result<usize, PoolError> {
        #[cfg(feature = "demand")]
        if let PolicyState::Demand(cache) = &mut self.policy {
            if cache.is_cost_aware() {
                return Err(PoolError::PolicyMismatch);
            }
            plan.reset(self.layer, self.slots_generation, self.table.slots());
            let (expert_slot, slot_expert) = self.table.parts_mut();
            let demoted = cache.prefetch(AdmitState { expert_slot, slot_expert }, experts, limit, &outranked, plan);
            self.record_demotions(demoted);
            return Ok(demoted);
        }
        #[cfg(not(feature = "demand"))]
        let _unused_without_demand_policies = (experts, limit, outranked, plan);
        Err(PoolError::PolicyMismatch)
    }
}

#[cfg(all(test, feature = "demand"))]
mod tests {
    use crate::error::PoolError;
    use crate::plan::{MigrationPlan, Promotion};
    use crate::policy::Policy;
    use crate::pool::{ExpertPool, PoolConfig};
    use crate::schedule::Step;

    fn step(pool: &mut ExpertPool, index: u64, ids: &[u32], plan: &mut MigrationPlan) {
        pool.plan_step(Step::decode(index), ids, plan).unwrap();
        for &p in plan.promotions() {
            pool.commit(p, 1).unwrap();
        }
        pool.serve(ids);
    }

    #[test]
    fn a_prefetch_demotes_only_lower_scores_and_a_wrong_guess_goes_first() {
        let mut pool = ExpertPool::new(PoolConfig::new(6, 2).policy(Policy::Lru)).unwrap();
        let mut plan = MigrationPlan::new(2);
        pool.initial_plan(&mut plan);
        for &p in plan.promotions() {
            pool.commit(p, 1).unwrap();
        }
        step(&mut pool, 0, &[1], &mut plan); // 1 pinned until the next step begins
        let scores = [5u64, 7, 3, 9, 0, 0];
        let outranked = |v: usize, g: usize| scores[v] < scores[g];
        // Guess 2 scores below the candidate (expert 0): refused. Guess 3 outranks it: placed.
        // Guess 7 is out of range; the limit stops the rest.
        assert_eq!(pool.prefetch(&[2, 7, 3, 4], 1, outranked, &mut plan), Ok(1));
        assert_eq!(plan.promotions(), [Promotion { expert: 3, slot: 0, demoted: Some(0) }]);
        pool.commit(plan.promotions()[0], 1).unwrap();
        // The next step misses on 5: the prefetched 3 is pinned through it, so 1 goes.
        step(&mut pool, 1, &[5], &mut plan);
        assert_eq!((pool.slot_of(3), pool.slot_of(5), pool.slot_of(1)), (Some(0), Some(1), None));
        // 3 was never used: it ranks as never used and is the next candidate.
        step(&mut pool, 2, &[5, 2], &mut plan);
        assert_eq!((pool.slot_of(3), pool.slot_of(2)), (None, Some(0)));
        // Free slots take guesses without a comparison; resident guesses are skipped.
        pool.set_slots(3);
        assert_eq!(pool.prefetch(&[2, 4], 3, |_, _| false, &mut plan), Ok(0));
        assert_eq!(plan.promotions(), [Promotion { expert: 4, slot: 2, demoted: None }]);
        let mut tide = ExpertPool::new(PoolConfig::new(6, 2)).unwrap();
        assert_eq!(tide.prefetch(&[1], 1, |_, _| true, &mut plan), Err(PoolError::PolicyMismatch));
        let admission = crate::Policy::Tinylfu(crate::AdmissionConfig::default());
        let mut tinylfu = ExpertPool::new(PoolConfig::new(6, 2).policy(admission)).unwrap();
        assert_eq!(tinylfu.prefetch(&[1], 1, |_, _| true, &mut plan), Err(PoolError::PolicyMismatch));
    }
}
