//! The prefetch hook: copies started before a layer's routing is known, on a prediction (see
//! [`crate::prefetch`] for one predictor).

use super::ExpertPool;
use crate::error::PoolError;
use crate::plan::MigrationPlan;
use crate::policy::PolicyState;

impl ExpertPool {
    /// Plans prefetch copies for this pool's next step: each of `experts` (best guess first) that
    /// is not resident goes into a free slot, or replaces the demand policy's demotion candidate
    /// when `score(candidate) < score(expert)`: a prefetch never demotes an expert whose policy
    /// score is at least the predicted one's. `score` must rank experts as the policy does (for
    /// LRU the tick of the last use, for LFU the use count; [`crate::prefetch::Prefetcher::score`]
    /// keeps both). Experts the pool's last step used or admitted stay pinned.
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
        score: impl Fn(usize) -> u64,
        plan: &mut MigrationPlan,
    ) -> Result<usize, PoolError> {
        let PolicyState::Demand(cache) = &mut self.policy else {
            return Err(PoolError::PolicyMismatch);
        };
        plan.reset(self.layer, self.slots_generation, self.table.slots());
        let (expert_slot, slot_expert) = self.table.parts_mut();
        let demoted = cache.prefetch(crate::policy::AdmitState { expert_slot, slot_expert }, experts, &score, plan);
        self.record_demotions(demoted);
        Ok(demoted)
    }
}
