//! The prefetch hook: copies started before a layer's routing is known, on a prediction (see
//! [`crate::prefetch`] for one predictor).

use super::ExpertPool;
use crate::error::PoolError;
use crate::plan::MigrationPlan;
use crate::policy::PolicyState;

impl ExpertPool {
    /// Plans at most `limit` prefetch copies for this pool's next step: each of `experts` (best
    /// guess first) that is not resident goes into a free slot, or replaces the demand policy's demotion candidate
    /// when `outranked(candidate, expert)` says the policy scores the candidate strictly below
    /// the guess: a prefetch never demotes an expert whose policy score is at least the predicted
    /// one's. The guess is scored as if its predicted use had happened, as the policy would score
    /// it when admitting it on that use ([`crate::prefetch::Prefetcher::outranked`] keeps LRU's
    /// and LFU's scores). Experts the pool's last step used or admitted stay pinned.
    ///
    /// Fills `plan` with the promotions (demoted slots are freed at once) and returns how many
    /// experts were demoted. Migrate `plan` before planning the next step: a prefetched expert is
    /// then resident for it, pinned through it, and afterwards ranks as never used, so a wrong
    /// guess is the first candidate for demotion. Ids out of range are skipped.
    ///
    /// # Errors
    /// [`PoolError::PolicyMismatch`] for an interval policy (its next refresh decides placement).
    pub fn prefetch(
        &mut self,
        experts: &[u16],
        limit: usize,
        outranked: impl Fn(usize, usize) -> bool,
        plan: &mut MigrationPlan,
    ) -> Result<usize, PoolError> {
        let PolicyState::Demand(cache) = &mut self.policy else {
            return Err(PoolError::PolicyMismatch);
        };
        plan.reset(self.layer, self.slots_generation, self.table.slots());
        let (expert_slot, slot_expert) = self.table.parts_mut();
        let demoted =
            cache.prefetch(crate::policy::AdmitState { expert_slot, slot_expert }, experts, limit, &outranked, plan);
        self.record_demotions(demoted);
        Ok(demoted)
    }
}
