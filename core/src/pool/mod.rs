//! The residency pool of one MoE layer: which experts live in which fast-memory slots.
//!
//! The pool decides; it never copies. A refresh (on the steps its [`Schedule`] names) turns the
//! step's routing ids into a [`MigrationPlan`] and frees the slots of demoted experts at once
//! (demotion copies nothing: slow memory holds every expert). Promotions become resident only
//! through [`ExpertPool::commit`], which [`crate::migrate()`] calls after each copy completed.
//! [`ExpertPool::serve`] then counts the step's hits and misses against the real residency: a
//! hit is a pair whose expert was resident before the step's routing was known; a miss is
//! served by copy (its expert was promoted by the step's plan and its copy committed) or in place
//! (its expert is not resident).
//!
//! # State
//! A slot table (per expert a `u32` word, per slot the expert it holds), the policy's state, the
//! experts the last planned step promoted (at most one per slot) and the counters. Nothing is
//! allocated after [`ExpertPool::new`], except when [`ExpertPool::set_slots`] grows the pool past
//! the most slots it has had (and by [`ExpertPool::load_future`], for evaluation).

mod config;
mod prefetch;
mod shared;
mod stats;

pub use config::{InitialPlacement, PoolConfig};
pub(crate) use shared::split_key;
pub use shared::SharedSlotPool;
pub use stats::{PoolStats, ServeStats};

pub use crate::slot_table::MAX_EXPERTS;

use alloc::vec::Vec;

use crate::error::{PlanError, PoolError};
use crate::plan::{MigrationPlan, Promotion};
#[cfg(feature = "demand")]
use crate::policy::AdmitState;
use crate::policy::{Candidates, PolicyState, RefreshState};
#[cfg(feature = "demand")]
use crate::schedule::Mode;
use crate::schedule::{Schedule, Step};
use crate::slot_table::{SlotTable, COUNT_MASK};

/// The most routing ids one step may carry (per-expert counters stay below their flag bits).
pub const MAX_STEP_IDS: usize = COUNT_MASK as usize;

/// The longest routing stream [`ExpertPool::load_future`] takes: positions are `u32`, and
/// `u32::MAX` marks "never used again".
const MAX_FUTURE_IDS: usize = u32::MAX as usize - 1;

/// Refuses steps of `ids` ids whose hit counts could reach the policy's flag bits.
pub(crate) fn check_step(ids: usize) -> Result<(), PoolError> {
    if ids > MAX_STEP_IDS {
        return Err(PoolError::TooManyIds { ids, max: MAX_STEP_IDS });
    }
    Ok(())
}

/// Whether a promotion still has to be copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum PromotionState {
    /// The slot is free and the expert not resident: copy, then commit.
    Pending,
    /// The expert is already resident in that slot (committed earlier, for example by a retry).
    Done,
}

/// The residency pool of one MoE layer. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct ExpertPool {
    layer: usize,
    schedule: Schedule,
    /// Which expert is in which slot.
    table: SlotTable,
    resident: usize,
    policy: PolicyState,
    initial: InitialPlacement,
    stats: PoolStats,
    /// The experts the last planned step promoted, for the serve that follows it: their pairs are
    /// misses served by copy. At most one per slot.
    copied: Vec<u16>,
    /// Bumped by every slot-count change; plans carry the generation they were made at.
    slots_generation: u32,
    /// At most this many promotions per planned step ([`ExpertPool::set_fetch_cap`]).
    fetch_cap: Option<u32>,
}

impl ExpertPool {
    /// Builds a pool as `config` says, with [`PoolConfig::slots`] slots.
    ///
    /// # Errors
    /// [`PoolError::NoExperts`] for zero experts, [`PoolError::TooManyExperts`] above
    /// [`MAX_EXPERTS`], [`PoolError::PolicyMismatch`] for staging slots
    /// ([`PoolConfig::staging`]) under a policy that does not prefetch,
    /// [`PoolError::PolicyNotBuilt`] for a demand policy
    /// ([`crate::Policy::is_demand`]) when the crate's `demand` feature is off.
    pub fn new(config: PoolConfig) -> Result<Self, PoolError> {
        let slots = config.slots();
        let PoolConfig { layer, experts, policy, schedule, initial, miss_order, staging, .. } = config;
        if experts == 0 {
            return Err(PoolError::NoExperts);
        }
        if experts > MAX_EXPERTS {
            return Err(PoolError::TooManyExperts { experts, max: MAX_EXPERTS });
        }
        // With every policy built, `NotBuilt` has no values and the build cannot fail.
        #[cfg(feature = "demand")]
        let Ok(mut state) = PolicyState::new(policy, experts, slots);
        #[cfg(not(feature = "demand"))]
        let state = PolicyState::new(policy, experts, slots)
            .map_err(|crate::policy::NotBuilt| PoolError::PolicyNotBuilt { policy: policy.name() })?;
        #[cfg(feature = "demand")]
        if let PolicyState::Demand(cache) = &mut state {
            cache.set_miss_order(miss_order, experts);
            if staging > 0 && cache.is_cost_aware() {
                return Err(PoolError::PolicyMismatch);
            }
            cache.set_staging(staging);
        }
        if staging > 0 && !policy.is_demand() {
            return Err(PoolError::PolicyMismatch);
        }
        #[cfg(not(feature = "demand"))]
        let _interval_policies_rank_by_counts = miss_order;
        Ok(Self {
            layer,
            schedule,
            table: SlotTable::new(experts, slots),
            resident: 0,
            policy: state,
            initial,
            stats: PoolStats::default(),
            copied: Vec::with_capacity(slots),
            slots_generation: 0,
            fetch_cap: None,
        })
    }

    /// The layer index this pool serves.
    pub const fn layer(&self) -> usize {
        self.layer
    }

    /// Number of experts.
    pub fn experts(&self) -> usize {
        self.table.experts()
    }

    /// Number of slots (the slot count asked for, clamped to the expert count).
    pub fn slots(&self) -> usize {
        self.table.slots()
    }

    /// Number of resident experts.
    pub const fn resident(&self) -> usize {
        self.resident
    }

    /// The refresh schedule.
    pub const fn schedule(&self) -> Schedule {
        self.schedule
    }

    /// Changes the refresh schedule from the next step on.
    pub fn set_schedule(&mut self, schedule: Schedule) {
        self.schedule = schedule;
    }

    /// Changes the number of slots to `slots` (clamped to the expert count), for fast memory that
    /// grows or shrinks at run time. Returns how many experts were demoted.
    ///
    /// Shrinking demotes the experts in slots `slots..`; once this returns, their memory is the
    /// caller's again. Growing adds free slots, which later refreshes or admissions fill. Every
    /// other resident keeps its slot, and a [`crate::SlotArena`] places slot `s` at the same
    /// offset whatever the slot count, so an arena for the new count over the same bytes still
    /// holds them.
    ///
    /// Plans made before a change are refused ([`PlanError::SlotsChanged`]): plan again. A
    /// custom migrator must not commit a copy it checked before the change either, since the
    /// caller may have reused the slot's memory in between; [`ExpertPool::check_planned`] with
    /// the plan, called again just before committing, catches that.
    ///
    /// Allocates only when growing past the most slots the pool has had.
    pub fn set_slots(&mut self, slots: usize) -> usize {
        let slots = slots.min(self.experts());
        if slots == self.slots() {
            return 0;
        }
        self.slots_generation = self.slots_generation.wrapping_add(1);
        let demoted = self.table.set_slots(slots);
        self.policy.set_slots(slots);
        self.copied.reserve(slots.saturating_sub(self.copied.len()));
        self.record_demotions(demoted);
        demoted
    }

    /// The counters since the pool was built.
    pub const fn stats(&self) -> &PoolStats {
        &self.stats
    }

    /// Whether `expert` is resident (false for ids out of range).
    pub fn is_resident(&self, expert: usize) -> bool {
        self.slot_of(expert).is_some()
    }

    /// The slot `expert` is resident in, if any.
    pub fn slot_of(&self, expert: usize) -> Option<usize> {
        self.table.slot_of(expert)
    }

    /// The expert resident in `slot`, if any.
    pub fn expert_in(&self, slot: usize) -> Option<usize> {
        self.table.expert_in(slot)
    }

    /// `(slot, expert)` of every occupied slot, in slot order.
    pub fn residents(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        self.table.residents()
    }

    /// Writes whether each expert is resident into `mask[..experts]`, for kernels that choose
    /// between the slot and slow memory per expert.
    ///
    /// # Errors
    /// [`PoolError::BufferTooSmall`] when `mask` is shorter than the expert count.
    pub fn resident_mask(&self, mask: &mut [bool]) -> Result<(), PoolError> {
        let actual = mask.len();
        let out = mask.get_mut(..self.experts()).ok_or(PoolError::BufferTooSmall { needed: self.experts(), actual })?;
        for (m, resident) in out.iter_mut().zip(self.table.residency()) {
            *m = resident;
        }
        Ok(())
    }

    /// Writes the resident set as a bit mask: bit `e % 32` of word `e / 32` is set when expert `e`
    /// is resident. Words past the expert count are cleared.
    ///
    /// # Errors
    /// [`PoolError::BufferTooSmall`] when `bits` has fewer than `experts.div_ceil(32)` words.
    pub fn resident_bits(&self, bits: &mut [u32]) -> Result<(), PoolError> {
        let needed = self.experts().div_ceil(32);
        if bits.len() < needed {
            return Err(PoolError::BufferTooSmall { needed, actual: bits.len() });
        }
        bits.fill(0);
        for (expert, resident) in self.table.residency().enumerate() {
            if let Some(word) = bits.get_mut(expert / 32) {
                *word |= u32::from(resident) << (expert % 32);
            }
        }
        Ok(())
    }

    /// The initial placement as a plan: for a warm start, expert `e` into slot `e` for every slot
    /// that is still free and whose expert is not resident elsewhere; for a cold start, nothing.
    /// Migrate it before the first step.
    pub fn initial_plan(&self, plan: &mut MigrationPlan) {
        plan.reset(self.layer, self.slots_generation, self.slots());
        if self.initial == InitialPlacement::Warm {
            // slot < slots <= experts <= MAX_EXPERTS, so every id is in range and this cannot fail.
            let _ = self.push_placement((0..self.slots()).map(|slot| slot as u32), false, plan);
        }
    }

    /// A given initial placement as a plan: `experts[i]` into slot `i` for the first
    /// [`ExpertPool::slots`] entries (later entries are ignored), skipping an entry whose slot is
    /// taken, whose expert is resident elsewhere or whose expert an earlier entry already placed.
    /// [`ExpertPool::initial_plan`] of a warm start is this with `0..slots`. Migrate it before the
    /// first step, in place of the initial plan; a profile's hottest experts
    /// ([`crate::trace::WarmStart`]) are one such list.
    ///
    /// Checking for repeated entries makes this quadratic in the slot count; it runs once.
    ///
    /// # Errors
    /// [`PlanError::ExpertOutOfRange`] for an entry at or past the expert count; `plan` is left
    /// empty.
    pub fn placement_plan(&self, experts: &[u32], plan: &mut MigrationPlan) -> Result<(), PlanError> {
        plan.reset(self.layer, self.slots_generation, self.slots());
        self.push_placement(experts.iter().copied(), true, plan)
            .inspect_err(|_| plan.reset(self.layer, self.slots_generation, 0))
    }

    /// Pushes `experts[i]` into slot `i` where that is a pending promotion; `repeats` says whether
    /// the list may name an expert twice (warm starts' `0..slots` cannot).
    fn push_placement(
        &self,
        experts: impl Iterator<Item = u32>,
        repeats: bool,
        plan: &mut MigrationPlan,
    ) -> Result<(), PlanError> {
        for (slot, expert) in experts.take(self.slots()).enumerate() {
            let out_of_range = PlanError::ExpertOutOfRange { expert: expert as usize, experts: self.experts() };
            let expert = u16::try_from(expert).map_err(|_| out_of_range)?;
            // slot < slots <= experts <= MAX_EXPERTS
            let promotion = Promotion { expert, slot: slot as u16, demoted: None };
            match self.check(promotion) {
                Err(PlanError::ExpertOutOfRange { .. }) => return Err(out_of_range),
                Ok(PromotionState::Pending) if !(repeats && plan.promotions().iter().any(|p| p.expert == expert)) => {
                    plan.push(promotion);
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Plans `step` from its routing `ids`. With an interval policy: refreshes if the schedule
    /// (or a prefill, or the step's mode) calls for it, filling `plan` with the promotions and
    /// freeing the slots of demoted experts; otherwise clears `plan` (a decay policy still folds
    /// the ids into its scores). With a demand policy: serves the ids in order and admits each
    /// miss (every step, unless the step's mode is [`crate::Mode::Reuse`]). Returns
    /// whether placement was decided.
    ///
    /// Then migrate `plan` and call [`ExpertPool::serve`] with the same ids.
    ///
    /// # Errors
    /// [`PoolError::TooManyIds`] when `ids` is longer than [`MAX_STEP_IDS`]; the pool is
    /// unchanged.
    pub fn plan_step(&mut self, step: Step, ids: &[u32], plan: &mut MigrationPlan) -> Result<bool, PoolError> {
        let due = match &self.policy {
            PolicyState::Interval(_) => self.schedule.is_due(step),
            #[cfg(feature = "demand")]
            PolicyState::Demand(_) => step.mode != Mode::Reuse,
        };
        if due {
            self.refresh(ids, plan)?;
        } else {
            check_step(ids.len())?;
            plan.reset(self.layer, self.slots_generation, 0);
            match &mut self.policy {
                PolicyState::Interval(placement) => placement.observe(ids),
                #[cfg(feature = "demand")]
                PolicyState::Demand(cache) => {
                    // The ids are still uses: recency, frequency and Belady's position follow them.
                    let (expert_slot, slot_expert) = self.table.parts_mut();
                    cache.step(AdmitState { expert_slot, slot_expert }, ids, false, usize::MAX, plan);
                }
            }
            self.note_copies(plan);
        }
        Ok(due)
    }

    /// Caps the promotions of every step planned from now on at `cap` (`None`: no cap, the
    /// default): a refresh promotes at most `cap` of its targets, hottest first; a demand step
    /// admits at most `cap` misses, in serving order, and serves the others in place. A runtime
    /// that computes misses where the weights are (on the host) sets the step's
    /// bandwidth-matched share here (see [`crate::trace::replay::split_misses`]) so the copies
    /// and that compute take about as long.
    pub fn set_fetch_cap(&mut self, cap: Option<u32>) {
        self.fetch_cap = cap;
    }

    /// The cap [`ExpertPool::set_fetch_cap`] set.
    pub const fn fetch_cap(&self) -> Option<u32> {
        self.fetch_cap
    }

    /// Decides placement now from `ids`, whatever the schedule: an interval policy refreshes (see
    /// [`crate::policy`]), a demand policy serves the ids in order and admits each miss. Fills
    /// `plan` with the promotions and frees the slots of demoted experts. Ids at or past the
    /// expert count are ignored (and counted as invalid by [`ExpertPool::serve`]). With every
    /// expert resident, nothing moves.
    ///
    /// # Errors
    /// [`PoolError::TooManyIds`] when `ids` is longer than [`MAX_STEP_IDS`]; the pool is
    /// unchanged.
    pub fn refresh(&mut self, ids: &[u32], plan: &mut MigrationPlan) -> Result<(), PoolError> {
        check_step(ids.len())?;
        self.decide(ids, plan);
        self.note_copies(plan);
        Ok(())
    }

    /// [`ExpertPool::refresh`] of a step of at most [`MAX_STEP_IDS`] ids.
    fn decide(&mut self, ids: &[u32], plan: &mut MigrationPlan) {
        plan.reset(self.layer, self.slots_generation, self.slots());
        let limit = self.fetch_cap.map_or(usize::MAX, |cap| cap as usize);
        self.stats.refreshes = self.stats.refreshes.saturating_add(1);
        #[cfg_attr(
            not(feature = "demand"),
            allow(clippy::infallible_destructuring_match, reason = "the demand arm is compiled out")
        )]
        let placement = match &mut self.policy {
            PolicyState::Interval(placement) => placement,
            #[cfg(feature = "demand")]
            PolicyState::Demand(cache) => {
                let (expert_slot, slot_expert) = self.table.parts_mut();
                let demoted = cache.step(AdmitState { expert_slot, slot_expert }, ids, true, limit, plan);
                self.record_demotions(demoted);
                return;
            }
        };
        placement.observe(ids);
        if self.resident == self.table.experts() {
            return;
        }
        // The per-expert words become this step's hit counts; the slot table stays the truth.
        // A short step (decode) writes only the words it touches, so its cost follows the ids
        // and the slots rather than the expert count.
        let sparse = ids.len() < self.table.experts() && !placement.scans_all_experts();
        self.table.begin_counts(ids, sparse, plan.banks());
        let candidates = if sparse { Candidates::Ids(ids) } else { Candidates::All };
        let (counts, slot_expert) = self.table.parts_mut();
        let state = RefreshState { counts, resident: self.resident, slot_expert, candidates };
        let demoted = placement.refresh(state, limit, plan);
        self.record_demotions(demoted);
        self.table.end_counts(ids, plan.promotions().iter().filter_map(|p| p.demoted), sparse);
    }

    /// Remembers the experts `plan` promotes: the serve that follows counts their pairs as served
    /// by copy once their copies are committed. A plan holds at most one promotion per slot, so
    /// this never outgrows the capacity reserved for the slots.
    fn note_copies(&mut self, plan: &MigrationPlan) {
        self.copied.clear();
        self.copied.extend(plan.promotions().iter().map(|p| p.expert));
    }

    /// Gives a [`Policy::Belady`](crate::Policy::Belady) pool the layer's whole routing stream in serving order (every
    /// step's ids, concatenated), so it can demote the resident used farthest in the future.
    /// Allocates 4 bytes per id; for evaluation, not for a device.
    ///
    /// # Errors
    /// [`PoolError::PolicyMismatch`] for other policies, [`PoolError::TooManyIds`] for a stream of
    /// `u32::MAX` ids or more.
    pub fn load_future(&mut self, stream: &[u32]) -> Result<(), PoolError> {
        if stream.len() >= u32::MAX as usize {
            return Err(PoolError::TooManyIds { ids: stream.len(), max: MAX_FUTURE_IDS });
        }
        #[cfg(feature = "demand")]
        if let PolicyState::Demand(cache) = &mut self.policy {
            if cache.is_belady() {
                cache.load_future(self.table.experts(), stream);
                return Ok(());
            }
        }
        Err(PoolError::PolicyMismatch)
    }

    /// Counts `ids` (one step's routing, token-major) against the current residency, adds the
    /// counts to the statistics and returns them. A valid id is a hit when its expert was resident
    /// before the step was planned; a miss served by copy when the planned step promoted its
    /// expert (a refresh, or a demand admission: every id of that expert, not only the one that
    /// admitted it) and the copy was committed; otherwise a miss served in place. Serving again
    /// without planning a step counts every resident's ids as hits.
    pub fn serve(&mut self, ids: &[u32]) -> ServeStats {
        self.table.mark_copied(&self.copied, true);
        let mut counts = ServeStats::default();
        for &id in ids {
            counts.count(self.table.serve_id(id));
        }
        self.table.mark_copied(&self.copied, false);
        self.copied.clear();
        self.stats.served.add(&counts);
        counts
    }

    /// Accounts for `demoted` residents a refresh demoted.
    fn record_demotions(&mut self, demoted: usize) {
        #[allow(clippy::arithmetic_side_effects, reason = "a policy demotes only residents, each once")]
        let resident = self.resident - demoted;
        self.resident = resident;
        self.stats.demotions = self.stats.demotions.saturating_add(demoted as u64);
    }

    /// Checks `promotion` against the current state.
    ///
    /// # Errors
    /// [`PlanError`] when the expert or slot is out of range, the expert is resident elsewhere, or
    /// the slot holds another expert.
    pub fn check(&self, promotion: Promotion) -> Result<PromotionState, PlanError> {
        let expert = usize::from(promotion.expert);
        let slot = usize::from(promotion.slot);
        if expert >= self.experts() {
            return Err(PlanError::ExpertOutOfRange { expert, experts: self.experts() });
        }
        if slot >= self.slots() {
            return Err(PlanError::SlotOutOfRange { slot, slots: self.slots() });
        }
        match (self.slot_of(expert), self.expert_in(slot)) {
            (Some(s), _) if s == slot => Ok(PromotionState::Done),
            (Some(s), _) => Err(PlanError::AlreadyResident { expert, slot: s }),
            (None, Some(other)) => Err(PlanError::SlotOccupied { slot, expert: other }),
            (None, None) => Ok(PromotionState::Pending),
        }
    }

    /// Checks one promotion of `plan`, as a migrator walks it: first that `plan` was made for this
    /// pool's layer and since its last slot-count change, then as [`ExpertPool::check`].
    ///
    /// # Errors
    /// [`PlanError::LayerMismatch`] for a plan of another layer, [`PlanError::SlotsChanged`] for
    /// a plan made before a slot-count change, otherwise as [`ExpertPool::check`].
    pub fn check_planned(&self, plan: &MigrationPlan, promotion: Promotion) -> Result<PromotionState, PlanError> {
        if plan.layer() != self.layer {
            return Err(PlanError::LayerMismatch { plan: plan.layer(), pool: self.layer });
        }
        if plan.slots_generation() != self.slots_generation {
            return Err(PlanError::SlotsChanged { plan: plan.slots_generation(), pool: self.slots_generation });
        }
        self.check(promotion)
    }

    /// Marks `promotion.expert` resident in `promotion.slot` and counts `bytes` as promoted.
    ///
    /// Call it only after the expert's bytes are completely in the slot: [`crate::migrate()`] does;
    /// a custom migrator (parallel copies, a DMA engine) must too. Committing a promotion that is
    /// already [`PromotionState::Done`] changes nothing and counts nothing.
    ///
    /// # Errors
    /// As [`ExpertPool::check`]; the pool is unchanged.
    pub fn commit(&mut self, promotion: Promotion, bytes: u64) -> Result<PromotionState, PlanError> {
        let state = self.check(promotion)?;
        if state == PromotionState::Pending {
            self.table.place(promotion.expert, promotion.slot);
            #[allow(
                clippy::arithmetic_side_effects,
                reason = "a pending promotion's slot was free, so resident < slots"
            )]
            let resident = self.resident + 1;
            self.resident = resident;
            self.stats.promotions = self.stats.promotions.saturating_add(1);
            self.stats.bytes_promoted = self.stats.bytes_promoted.saturating_add(bytes);
        }
        Ok(state)
    }

    /// Frees `slot` and demotes the expert it holds, counted in [`PoolStats::demotions`]; returns
    /// that expert, or `None` when the slot was free or out of range (nothing changes).
    ///
    /// For asynchronous sinks (see [`crate::SlotSink`]): a copy that the sink reports failed at a
    /// later sync point, after its promotion was committed, is repaired by freeing its slot, so
    /// every resident expert is again known to be in its slot. The next plan promotes the expert
    /// again if it is still wanted.
    ///
    /// ```
    /// use expertslab::{ExpertPool, MigrationPlan, PoolConfig, PromotionState};
    ///
    /// let mut pool = ExpertPool::new(PoolConfig::new(4, 2))?;
    /// let mut plan = MigrationPlan::new(2);
    /// pool.initial_plan(&mut plan); // experts 0 and 1 into slots 0 and 1
    /// for &p in plan.promotions() {
    ///     pool.commit(p, 8)?;
    /// }
    /// // The sink reports later that the copy into slot 1 failed.
    /// assert_eq!(pool.demote_slot(1), Some(1));
    /// assert_eq!((pool.resident(), pool.slot_of(1), pool.expert_in(1)), (1, None, None));
    /// assert_eq!(pool.stats().demotions, 1);
    /// assert_eq!(pool.demote_slot(1), None); // already free
    /// assert_eq!(pool.demote_slot(7), None); // no such slot
    /// assert_eq!(pool.stats().demotions, 1);
    /// // Planning again brings expert 1 back into the free slot; expert 0 stays.
    /// pool.initial_plan(&mut plan);
    /// assert_eq!(plan.len(), 1);
    /// assert_eq!(pool.commit(plan.promotions()[0], 8)?, PromotionState::Pending);
    /// assert_eq!((pool.slot_of(0), pool.slot_of(1), pool.resident()), (Some(0), Some(1), 2));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn demote_slot(&mut self, slot: usize) -> Option<usize> {
        let expert = self.table.vacate(slot)?;
        self.record_demotions(1);
        Some(expert)
    }
}

#[cfg(test)]
mod tests;
