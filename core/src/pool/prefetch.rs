//! The prefetch hook: copies started before a layer's routing is known, on a prediction (see
//! [`crate::predict`] for one predictor).

use super::ExpertPool;
use crate::error::PoolError;
use crate::plan::MigrationPlan;
#[cfg(feature = "demand")]
use crate::policy::{AdmitState, PolicyState};

impl ExpertPool {
    /// Whether [`ExpertPool::prefetch`] places guesses in this pool: a demand policy that decides
    /// without the step's routing (LRU, LFU, LRU-2, Belady; not the cost-aware policy), with the
    /// crate's `demand` feature on. Otherwise `prefetch` answers [`PoolError::PolicyMismatch`].
    pub fn takes_prefetches(&self) -> bool {
        #[cfg(feature = "demand")]
        if let PolicyState::Demand(cache) = &self.policy {
            return !cache.is_cost_aware();
        }
        false
    }

    /// Plans at most `limit` prefetch copies for this pool's next step: each of `experts` (best
    /// guess first) that is not resident goes into a free slot; else, with staging slots
    /// ([`crate::PoolConfig::staging`]), into the staging slot whose occupant the policy ranks
    /// lowest, never into the slot of one of the policy's residents (`outranked` is not asked);
    /// else it replaces the demand policy's demotion candidate when `outranked(candidate,
    /// expert)` says the policy scores the candidate strictly below the guess: a prefetch never
    /// demotes an expert whose policy score is at least the predicted one's. The guess is scored
    /// as if its predicted use had happened, as the policy would score it when admitting it on
    /// that use ([`crate::predict::Prefetcher::outranked`] keeps LRU's
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

    #[test]
    fn with_a_staging_slot_a_guess_never_takes_a_resident_s_slot() {
        let config = PoolConfig::new(8, 3).policy(Policy::Lru).staging(1);
        let mut pool = ExpertPool::new(config).unwrap();
        let mut plan = MigrationPlan::new(3);
        pool.initial_plan(&mut plan);
        for &p in plan.promotions() {
            pool.commit(p, 1).unwrap();
        }
        let never = |_: usize, _: usize| -> bool { unreachable!("a staged prefetch asks no ranking") };
        // 0 used: the policy keeps two slots, so 1 (ranked lowest, never used) becomes the staged one.
        step(&mut pool, 0, &[0], &mut plan);
        assert_eq!(pool.prefetch(&[5], 1, never, &mut plan), Ok(1));
        assert_eq!(plan.promotions(), [Promotion { expert: 5, slot: 1, demoted: Some(1) }]);
        pool.commit(plan.promotions()[0], 1).unwrap();
        // 5 is used: a hit that joins the policy's residents; 2 moves to staging without a copy.
        step(&mut pool, 1, &[5], &mut plan);
        assert!(plan.promotions().is_empty());
        assert_eq!(pool.stats().served.hits, 2);
        assert_eq!(pool.prefetch(&[6], 1, never, &mut plan), Ok(1));
        assert_eq!(plan.promotions(), [Promotion { expert: 6, slot: 2, demoted: Some(2) }]);
        pool.commit(plan.promotions()[0], 1).unwrap();
        // A miss of 3 replaces the policy's own lowest (0), not the unused guess 6.
        step(&mut pool, 2, &[3], &mut plan);
        assert_eq!(plan.promotions(), [Promotion { expert: 3, slot: 0, demoted: Some(0) }]);
        assert_eq!(pool.slot_of(6), Some(2));
        // The next guess replaces the unused one; 3 and 5 are never offered up.
        assert_eq!(pool.prefetch(&[3, 5, 7], 3, never, &mut plan), Ok(1));
        assert_eq!(plan.promotions(), [Promotion { expert: 7, slot: 2, demoted: Some(6) }]);
        // Staging slots are for the policies that prefetch.
        for policy in [Policy::Tide, Policy::Tinylfu(crate::AdmissionConfig::default())] {
            let refused = ExpertPool::new(PoolConfig::new(8, 3).policy(policy).staging(1));
            assert_eq!(refused.err(), Some(PoolError::PolicyMismatch));
        }
    }

    #[test]
    fn below_its_share_the_policy_takes_free_then_staging_slots() {
        let config = PoolConfig::new(8, 3).policy(Policy::Lfu).staging(1).initial(crate::InitialPlacement::Cold);
        let mut pool = ExpertPool::new(config).unwrap();
        let mut plan = MigrationPlan::new(3);
        step(&mut pool, 0, &[4], &mut plan);
        assert_eq!(plan.promotions(), [Promotion { expert: 4, slot: 0, demoted: None }]);
        // A guess takes a free slot and is staged there.
        assert_eq!(pool.prefetch(&[5], 1, |_, _| false, &mut plan), Ok(0));
        assert_eq!(plan.promotions(), [Promotion { expert: 5, slot: 1, demoted: None }]);
        pool.commit(plan.promotions()[0], 1).unwrap();
        // Misses take the free slot, then (the policy still below its two slots) none is left to
        // take but its own: 6 goes free, 7 replaces the policy's lowest, never the staged 5.
        step(&mut pool, 1, &[6], &mut plan);
        assert_eq!(plan.promotions(), [Promotion { expert: 6, slot: 2, demoted: None }]);
        step(&mut pool, 2, &[7], &mut plan);
        assert_eq!(plan.promotions().len(), 1);
        assert_ne!(plan.promotions()[0].slot, 1);
        assert_eq!(pool.slot_of(5), Some(1));
    }
}
