//! The residency pool of one MoE layer: which experts live in which fast-memory slots.
//!
//! The pool decides; it never copies. A refresh (on the steps its [`Schedule`] names) turns the
//! step's routing ids into a [`MigrationPlan`] and frees the slots of demoted experts at once
//! (demotion copies nothing: slow memory holds every expert). Promotions become resident only
//! through [`ExpertPool::commit`], which [`crate::migrate()`] calls after each copy completed.
//! [`ExpertPool::serve`] then counts the step's hits and misses against the real residency.
//!
//! # State
//! Per expert one `u32`: its slot while resident (a hit-count scratch word during a refresh,
//! rebuilt from the slot table before the refresh returns). Per slot: the expert it holds and the
//! policy's scratch. Nothing is allocated after [`ExpertPool::new`], except when
//! [`ExpertPool::set_budget`] grows the pool past the most slots it has had (and by
//! [`ExpertPool::load_future`], for evaluation).

use alloc::vec;
use alloc::vec::Vec;

use crate::error::{PlanError, PoolError};
use crate::plan::{MigrationPlan, Promotion};
use crate::policy::{AdmitState, Candidates, Policy, PolicyState, RefreshState, COUNT_MASK, RESIDENT};
use crate::schedule::{Mode, Schedule, Step};

/// Slot-table entry of a slot that holds no expert.
pub(crate) const EMPTY_SLOT: u16 = u16::MAX;
/// Per-expert word of an expert that is not resident.
const NOT_RESIDENT: u32 = u32::MAX;
/// Flag on a resident's per-expert word while `serve` counts: its next id is the miss that
/// admitted it (slots stay below this bit).
const ADMITTING_MISS: u32 = 1 << 31;

/// The most experts one pool indexes (ids are 16-bit, one value marks an empty slot).
pub const MAX_EXPERTS: usize = u16::MAX as usize;
/// The most routing ids one step may carry (per-expert counters stay below their flag bits).
pub const MAX_STEP_IDS: usize = COUNT_MASK as usize;

// A step's largest hit count stays clear of every flag bit a per-expert word carries.
const _: () = assert!(COUNT_MASK & (RESIDENT | ADMITTING_MISS) == 0);

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

/// Which experts are resident when a pool is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum InitialPlacement {
    /// Experts `0..budget` in slots `0..budget`, as the TIDE reference starts. Like every
    /// promotion they become resident only once copied: [`ExpertPool::initial_plan`] gives the
    /// plan, [`crate::migrate()`] fills the slots and commits it.
    #[default]
    Warm,
    /// No expert resident until the first refresh.
    Cold,
}

/// How one pool is built: layer index, expert count, budget, policy, schedule and initial
/// placement.
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct PoolConfig {
    layer: usize,
    experts: usize,
    budget: usize,
    policy: Policy,
    schedule: Schedule,
    initial: InitialPlacement,
}

impl PoolConfig {
    /// A pool of `experts` experts and `budget` slots for layer 0 with TIDE placement, refreshing
    /// every forward pass, starting warm. A budget above the expert count is clamped to it.
    pub const fn new(experts: usize, budget: usize) -> Self {
        Self {
            layer: 0,
            experts,
            budget,
            policy: Policy::Tide,
            schedule: Schedule::EveryForward,
            initial: InitialPlacement::Warm,
        }
    }

    /// The placement policy.
    pub const fn policy(self, policy: Policy) -> Self {
        Self { policy, ..self }
    }

    /// The layer index this pool serves (plans and sink writes carry it).
    pub const fn layer(self, layer: usize) -> Self {
        Self { layer, ..self }
    }

    /// The expert count (for building several layers' pools from one configuration).
    pub const fn experts(self, experts: usize) -> Self {
        Self { experts, ..self }
    }

    /// The refresh schedule.
    pub const fn schedule(self, schedule: Schedule) -> Self {
        Self { schedule, ..self }
    }

    /// The initial placement.
    pub const fn initial(self, initial: InitialPlacement) -> Self {
        Self { initial, ..self }
    }
}

/// Counters of one pool since it was built. They saturate rather than wrap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct PoolStats {
    /// Refreshes run (scheduled, prefill or requested).
    pub refreshes: u64,
    /// Promotions committed (copies completed).
    pub promotions: u64,
    /// Demotions (slots freed by refreshes, and by budget changes that drop slots).
    pub demotions: u64,
    /// Valid ids served from a resident expert.
    pub hits: u64,
    /// Valid ids served from slow memory.
    pub misses: u64,
    /// Ids at or past the expert count, ignored.
    pub invalid_ids: u64,
    /// Bytes copied by committed promotions.
    pub bytes_promoted: u64,
}

impl PoolStats {
    /// Hits over valid ids, or 0 with none served.
    pub fn hit_rate(&self) -> f64 {
        let served = self.hits.saturating_add(self.misses);
        if served == 0 {
            0.0
        } else {
            self.hits as f64 / served as f64
        }
    }

    /// Adds `other`'s counters to these.
    pub fn accumulate(&mut self, other: &PoolStats) {
        self.refreshes = self.refreshes.saturating_add(other.refreshes);
        self.promotions = self.promotions.saturating_add(other.promotions);
        self.demotions = self.demotions.saturating_add(other.demotions);
        self.hits = self.hits.saturating_add(other.hits);
        self.misses = self.misses.saturating_add(other.misses);
        self.invalid_ids = self.invalid_ids.saturating_add(other.invalid_ids);
        self.bytes_promoted = self.bytes_promoted.saturating_add(other.bytes_promoted);
    }
}

/// Hits, misses and invalid ids of one served step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct ServeCounts {
    /// Valid ids whose expert was resident. Each count saturates at `u32::MAX`.
    pub hits: u32,
    /// Valid ids whose expert was not resident.
    pub misses: u32,
    /// Ids at or past the expert count.
    pub invalid: u32,
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
    /// Per expert: its slot while resident, `NOT_RESIDENT` otherwise; hit counts during a refresh.
    expert_slot: Vec<u32>,
    /// Per slot: the expert it holds, or `EMPTY_SLOT`.
    slot_expert: Vec<u16>,
    resident: usize,
    policy: PolicyState,
    initial: InitialPlacement,
    stats: PoolStats,
    /// Bumped by every budget change; plans carry the generation they were made at.
    budget_generation: u32,
}

impl ExpertPool {
    /// Builds a pool as `config` says; the budget is clamped to the expert count.
    ///
    /// # Errors
    /// [`PoolError::NoExperts`] for zero experts, [`PoolError::TooManyExperts`] above
    /// [`MAX_EXPERTS`].
    pub fn new(config: PoolConfig) -> Result<Self, PoolError> {
        let PoolConfig { layer, experts, budget, policy, schedule, initial } = config;
        if experts == 0 {
            return Err(PoolError::NoExperts);
        }
        if experts > MAX_EXPERTS {
            return Err(PoolError::TooManyExperts { experts, max: MAX_EXPERTS });
        }
        let slots = budget.min(experts);
        Ok(Self {
            layer,
            schedule,
            expert_slot: vec![NOT_RESIDENT; experts],
            slot_expert: vec![EMPTY_SLOT; slots],
            resident: 0,
            policy: PolicyState::new(policy, experts, slots),
            initial,
            stats: PoolStats::default(),
            budget_generation: 0,
        })
    }

    /// The layer index this pool serves.
    pub const fn layer(&self) -> usize {
        self.layer
    }

    /// Number of experts.
    pub fn experts(&self) -> usize {
        self.expert_slot.len()
    }

    /// Number of slots (the budget, clamped to the expert count).
    pub fn slots(&self) -> usize {
        self.slot_expert.len()
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

    /// Changes the number of slots to `budget` (clamped to the expert count), for fast memory that
    /// grows or shrinks at run time. Returns how many experts were demoted.
    ///
    /// Shrinking demotes the experts in slots `budget..`; once this returns, their memory is the
    /// caller's again. Growing adds free slots, which later refreshes or admissions fill. Every
    /// other resident keeps its slot, and a [`crate::SlotArena`] places slot `s` at the same
    /// offset whatever the slot count, so an arena for the new count over the same bytes still
    /// holds them.
    ///
    /// Plans made before a change are refused ([`PlanError::BudgetChanged`]): plan again. A
    /// custom migrator must not commit a copy it checked before the change either, since the
    /// caller may have reused the slot's memory in between; [`ExpertPool::check_planned`] with
    /// the plan, called again just before committing, catches that.
    ///
    /// Allocates only when growing past the most slots the pool has had.
    pub fn set_budget(&mut self, budget: usize) -> usize {
        let slots = budget.min(self.experts());
        if slots == self.slots() {
            return 0;
        }
        self.budget_generation = self.budget_generation.wrapping_add(1);
        let mut demoted = 0usize;
        for &expert in self.slot_expert.get(slots..).unwrap_or(&[]) {
            if let Some(word) = self.expert_slot.get_mut(usize::from(expert)) {
                *word = NOT_RESIDENT;
                demoted = demoted.saturating_add(1);
            }
        }
        self.slot_expert.resize(slots, EMPTY_SLOT);
        self.policy.set_slots(slots);
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
        match self.expert_slot.get(expert) {
            Some(&slot) if slot != NOT_RESIDENT => Some(slot as usize),
            _ => None,
        }
    }

    /// The expert resident in `slot`, if any.
    pub fn expert_in(&self, slot: usize) -> Option<usize> {
        match self.slot_expert.get(slot) {
            Some(&e) if e != EMPTY_SLOT => Some(usize::from(e)),
            _ => None,
        }
    }

    /// `(slot, expert)` of every occupied slot, in slot order.
    pub fn residents(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        self.slot_expert.iter().enumerate().filter(|(_, &e)| e != EMPTY_SLOT).map(|(s, &e)| (s, usize::from(e)))
    }

    /// Writes whether each expert is resident into `mask[..experts]`, for kernels that choose
    /// between the slot and slow memory per expert.
    ///
    /// # Errors
    /// [`PoolError::BufferTooSmall`] when `mask` is shorter than the expert count.
    pub fn resident_mask(&self, mask: &mut [bool]) -> Result<(), PoolError> {
        let actual = mask.len();
        let out = mask.get_mut(..self.experts()).ok_or(PoolError::BufferTooSmall { needed: self.experts(), actual })?;
        for (m, &slot) in out.iter_mut().zip(&self.expert_slot) {
            *m = slot != NOT_RESIDENT;
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
        for (word, chunk) in bits.iter_mut().zip(self.expert_slot.chunks(32)) {
            for (bit, &slot) in chunk.iter().enumerate() {
                *word |= u32::from(slot != NOT_RESIDENT) << bit;
            }
        }
        Ok(())
    }

    /// The initial placement as a plan: for a warm start, expert `e` into slot `e` for every slot
    /// that is still free and whose expert is not resident elsewhere; for a cold start, nothing.
    /// Migrate it before the first step.
    pub fn initial_plan(&self, plan: &mut MigrationPlan) {
        plan.reset(self.layer, self.budget_generation, self.slots());
        if self.initial == InitialPlacement::Cold {
            return;
        }
        for slot in 0..self.slots() {
            // slot < slots <= experts <= MAX_EXPERTS
            let promotion = Promotion { expert: slot as u16, slot: slot as u16, evicted: None };
            if self.check(promotion) == Ok(PromotionState::Pending) {
                plan.push(promotion);
            }
        }
    }

    /// Plans `step` from its routing `ids`. With an interval policy: refreshes if the schedule
    /// (or a prefill, or the step's mode) calls for it, filling `plan` with the promotions and
    /// freeing the slots of demoted experts; otherwise clears `plan` (a decay policy still folds
    /// the ids into its scores). With a demand policy: serves the ids in order and admits each
    /// miss (every step, unless the step's mode is [`Mode::Reuse`]). Returns whether placement
    /// was decided.
    ///
    /// Then migrate `plan` and call [`ExpertPool::serve`] with the same ids.
    ///
    /// # Errors
    /// [`PoolError::TooManyIds`] when `ids` is longer than [`MAX_STEP_IDS`]; the pool is
    /// unchanged.
    pub fn plan_step(&mut self, step: Step, ids: &[u32], plan: &mut MigrationPlan) -> Result<bool, PoolError> {
        let due = match &self.policy {
            PolicyState::Interval(_) => self.schedule.is_due(step),
            PolicyState::Demand(_) => step.mode != Mode::Reuse,
        };
        if due {
            self.refresh(ids, plan)?;
        } else {
            check_step(ids.len())?;
            plan.reset(self.layer, self.budget_generation, 0);
            match &mut self.policy {
                PolicyState::Interval(placement) => placement.observe(ids),
                PolicyState::Demand(cache) => {
                    // The ids are still uses: recency, frequency and Belady's position follow them.
                    let state = AdmitState {
                        expert_slot: &mut self.expert_slot,
                        slot_expert: &mut self.slot_expert,
                        not_resident: NOT_RESIDENT,
                    };
                    cache.step(state, ids, false, plan);
                }
            }
        }
        Ok(due)
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
        plan.reset(self.layer, self.budget_generation, self.slots());
        self.stats.refreshes = self.stats.refreshes.saturating_add(1);
        let placement = match &mut self.policy {
            PolicyState::Interval(placement) => placement,
            PolicyState::Demand(cache) => {
                let state = AdmitState {
                    expert_slot: &mut self.expert_slot,
                    slot_expert: &mut self.slot_expert,
                    not_resident: NOT_RESIDENT,
                };
                let demoted = cache.step(state, ids, true, plan);
                self.record_demotions(demoted);
                return Ok(());
            }
        };
        placement.observe(ids);
        if self.resident == self.expert_slot.len() {
            return Ok(());
        }
        // The per-expert words become this step's hit counts; the slot table stays the truth.
        // A short step (decode) zeroes and later restores only the words it touches, so its cost
        // follows the ids and the slots rather than the expert count.
        let sparse = ids.len() < self.expert_slot.len() && !placement.scans_all_experts();
        if sparse {
            for &id in ids {
                if let Some(word) = self.expert_slot.get_mut(id as usize) {
                    *word = 0;
                }
            }
        } else {
            self.expert_slot.fill(0);
        }
        for &expert in &self.slot_expert {
            if let Some(word) = self.expert_slot.get_mut(usize::from(expert)) {
                *word = RESIDENT;
            }
        }
        for &id in ids {
            if let Some(count) = self.expert_slot.get_mut(id as usize) {
                #[allow(
                    clippy::arithmetic_side_effects,
                    reason = "at most MAX_STEP_IDS (checked above), below the flag bits"
                )]
                let counted = *count + 1;
                *count = counted;
            }
        }
        let candidates = if sparse { Candidates::Ids(ids) } else { Candidates::All };
        let state = RefreshState {
            counts: &mut self.expert_slot,
            resident: self.resident,
            slot_expert: &mut self.slot_expert,
            candidates,
        };
        let demoted = placement.refresh(state, plan);
        self.record_demotions(demoted);

        // Restore the per-expert words: not resident, then the slot of each resident.
        if sparse {
            let evicted = plan.promotions().iter().filter_map(|p| p.evicted).map(u32::from);
            for id in ids.iter().copied().chain(evicted) {
                if let Some(word) = self.expert_slot.get_mut(id as usize) {
                    *word = NOT_RESIDENT;
                }
            }
        } else {
            self.expert_slot.fill(NOT_RESIDENT);
        }
        self.write_resident_slots();
        Ok(())
    }

    /// Gives a [`Policy::Belady`] pool the layer's whole routing stream in serving order (every
    /// step's ids, concatenated), so it can evict the resident used farthest in the future.
    /// Allocates 4 bytes per id; for evaluation, not for a device.
    ///
    /// # Errors
    /// [`PoolError::PolicyMismatch`] for other policies, [`PoolError::TooManyIds`] for a stream of
    /// `u32::MAX` ids or more.
    pub fn load_future(&mut self, stream: &[u32]) -> Result<(), PoolError> {
        if stream.len() >= u32::MAX as usize {
            return Err(PoolError::TooManyIds { ids: stream.len(), max: MAX_FUTURE_IDS });
        }
        match &mut self.policy {
            PolicyState::Demand(cache) if cache.is_belady() => {
                cache.load_future(self.expert_slot.len(), stream);
                Ok(())
            }
            _ => Err(PoolError::PolicyMismatch),
        }
    }

    /// Counts `ids` (one step's routing, token-major) as hits, misses and invalid ids against the
    /// current residency, adds them to the statistics and returns them. After a demand policy
    /// planned the step, the first id of each expert it admitted (and that is now resident) is the
    /// miss that admitted it; its later ids hit.
    pub fn serve(&mut self, ids: &[u32]) -> ServeCounts {
        // Experts a demand policy admitted in the planned step: their first id here is the miss
        // that admitted them. Marked on their per-expert word for the duration of the count.
        let admissions: &[u16] = match &self.policy {
            PolicyState::Demand(cache) => cache.admissions(),
            PolicyState::Interval(_) => &[],
        };
        for &expert in admissions {
            if let Some(word) = self.expert_slot.get_mut(usize::from(expert)).filter(|w| **w != NOT_RESIDENT) {
                *word |= ADMITTING_MISS;
            }
        }
        let mut counts = ServeCounts::default();
        for &id in ids {
            match self.expert_slot.get_mut(id as usize) {
                None => counts.invalid = counts.invalid.saturating_add(1),
                Some(&mut NOT_RESIDENT) => counts.misses = counts.misses.saturating_add(1),
                Some(word) if *word & ADMITTING_MISS != 0 => {
                    *word &= !ADMITTING_MISS;
                    counts.misses = counts.misses.saturating_add(1);
                }
                Some(_) => counts.hits = counts.hits.saturating_add(1),
            }
        }
        for &expert in admissions {
            if let Some(word) = self.expert_slot.get_mut(usize::from(expert)).filter(|w| **w != NOT_RESIDENT) {
                *word &= !ADMITTING_MISS;
            }
        }
        if let PolicyState::Demand(cache) = &mut self.policy {
            cache.clear_admissions();
        }
        self.stats.hits = self.stats.hits.saturating_add(u64::from(counts.hits));
        self.stats.misses = self.stats.misses.saturating_add(u64::from(counts.misses));
        self.stats.invalid_ids = self.stats.invalid_ids.saturating_add(u64::from(counts.invalid));
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
    /// pool's layer and since its last budget change, then as [`ExpertPool::check`].
    ///
    /// # Errors
    /// [`PlanError::LayerMismatch`] for a plan of another layer, [`PlanError::BudgetChanged`] for
    /// a plan made before a budget change, otherwise as [`ExpertPool::check`].
    pub fn check_planned(&self, plan: &MigrationPlan, promotion: Promotion) -> Result<PromotionState, PlanError> {
        if plan.layer() != self.layer {
            return Err(PlanError::LayerMismatch { plan: plan.layer(), pool: self.layer });
        }
        if plan.budget_generation() != self.budget_generation {
            return Err(PlanError::BudgetChanged { plan: plan.budget_generation(), pool: self.budget_generation });
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
            let slot = usize::from(promotion.slot);
            let expert = usize::from(promotion.expert);
            if let (Some(s), Some(e)) = (self.slot_expert.get_mut(slot), self.expert_slot.get_mut(expert)) {
                *s = promotion.expert;
                *e = slot as u32;
            }
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
        let entry = self.slot_expert.get_mut(slot)?;
        let expert = usize::from(*entry);
        let word = self.expert_slot.get_mut(expert)?;
        *entry = EMPTY_SLOT;
        *word = NOT_RESIDENT;
        self.record_demotions(1);
        Some(expert)
    }

    /// Writes each resident expert's slot into its per-expert word.
    fn write_resident_slots(&mut self) {
        for (slot, &expert) in self.slot_expert.iter().enumerate() {
            if let Some(word) = self.expert_slot.get_mut(usize::from(expert)) {
                *word = slot as u32;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(experts: usize, budget: usize, initial: InitialPlacement) -> ExpertPool {
        let mut pool = ExpertPool::new(PoolConfig::new(experts, budget).initial(initial)).unwrap();
        let mut plan = MigrationPlan::new(budget);
        pool.initial_plan(&mut plan);
        commit_all(&mut pool, &plan);
        pool
    }

    #[test]
    fn the_step_limit_is_inclusive() {
        assert_eq!(check_step(MAX_STEP_IDS), Ok(()));
        assert_eq!(
            check_step(MAX_STEP_IDS + 1),
            Err(PoolError::TooManyIds { ids: MAX_STEP_IDS + 1, max: MAX_STEP_IDS })
        );
    }

    fn commit_all(pool: &mut ExpertPool, plan: &MigrationPlan) {
        for &p in plan.promotions() {
            assert_eq!(pool.commit(p, 10), Ok(PromotionState::Pending));
        }
    }

    #[test]
    fn budget_changes_demote_the_dropped_slots_and_keep_the_rest() {
        for policy in
            [Policy::Tide, Policy::Decay(crate::DecayConfig::default()), Policy::Lru, Policy::Lfu, Policy::Lru2]
        {
            let mut p = ExpertPool::new(PoolConfig::new(8, 4).policy(policy)).unwrap();
            let mut plan = MigrationPlan::new(4);
            p.initial_plan(&mut plan);
            commit_all(&mut p, &plan); // experts 0..4 in slots 0..4

            // Shrink to 2: the experts of slots 2 and 3 are demoted, the others stay put.
            assert_eq!(p.set_budget(2), 2, "{policy:?}");
            assert_eq!(p.residents().collect::<Vec<_>>(), [(0, 0), (1, 1)]);
            assert_eq!((p.slots(), p.resident(), p.stats().demotions), (2, 2, 2));
            assert!(!p.is_resident(2) && !p.is_resident(3));
            assert_eq!(p.set_budget(2), 0, "no change, nothing demoted");

            // Grow past the expert count: clamped; the new slots are free and a refresh fills
            // them around the residents, which keep their slots.
            assert_eq!(p.set_budget(100), 0);
            assert_eq!((p.slots(), p.resident()), (8, 2));
            let mut plan = MigrationPlan::new(p.slots());
            let ids: Vec<u32> = (0..8).collect();
            p.plan_step(Step { index: 1, prefill: true, mode: Mode::Refresh }, &ids, &mut plan).unwrap();
            assert!(plan.promotions().iter().all(|m| m.slot >= 2 && m.evicted.is_none()), "{policy:?}");
            commit_all(&mut p, &plan);
            assert_eq!(p.resident(), 8, "{policy:?}: every expert fits once the budget allows");
            assert_eq!((p.slot_of(0), p.slot_of(1)), (Some(0), Some(1)));
            // A demand policy's admissions are this step's misses; an interval policy's are hits.
            let hits = if policy.is_demand() { 2 } else { 8 };
            assert_eq!(p.serve(&ids).hits as usize, hits, "{policy:?}");

            // Down to nothing: everything from slow memory.
            assert_eq!(p.set_budget(0), 8);
            assert_eq!((p.slots(), p.resident()), (0, 0));
            assert_eq!(p.serve(&ids).misses, 8);
        }
    }

    #[test]
    fn plans_from_before_a_budget_change_are_refused() {
        let mut p = pool(8, 4, InitialPlacement::Cold);
        let mut plan = MigrationPlan::new(4);
        p.refresh(&[4, 5, 6, 7], &mut plan).unwrap();
        let into_slot_3 = *plan.promotions().iter().find(|m| m.slot == 3).unwrap();
        assert_eq!(p.check_planned(&plan, into_slot_3), Ok(PromotionState::Pending));
        // Shrink, then grow back: slot 3 exists again, but its memory may have been reused.
        p.set_budget(2);
        p.set_budget(4);
        let changed = Err(PlanError::BudgetChanged { plan: 0, pool: 2 });
        for &promotion in plan.promotions() {
            assert_eq!(p.check_planned(&plan, promotion), changed);
        }
        // A plan made now is accepted.
        p.refresh(&[4, 5, 6, 7], &mut plan).unwrap();
        assert_eq!(plan.budget_generation(), 2);
        assert!(plan.promotions().iter().all(|&m| p.check_planned(&plan, m) == Ok(PromotionState::Pending)));
    }

    #[test]
    fn construction_checks_and_clamps() {
        assert_eq!(ExpertPool::new(PoolConfig::new(0, 1)).unwrap_err(), PoolError::NoExperts);
        assert!(matches!(ExpertPool::new(PoolConfig::new(MAX_EXPERTS + 1, 1)), Err(PoolError::TooManyExperts { .. })));
        let p = ExpertPool::new(PoolConfig::new(4, 9)).unwrap();
        assert_eq!((p.slots(), p.resident()), (4, 0));
        let p = pool(4, 9, InitialPlacement::Warm);
        assert_eq!((p.slots(), p.resident()), (4, 4));
        let mut plan = MigrationPlan::new(4);
        p.initial_plan(&mut plan);
        assert!(plan.is_empty());
        let p = pool(8, 3, InitialPlacement::Warm);
        assert_eq!(p.residents().collect::<Vec<_>>(), [(0, 0), (1, 1), (2, 2)]);
        assert_eq!(pool(8, 3, InitialPlacement::Cold).resident(), 0);
    }

    #[test]
    fn refresh_promotes_into_free_slots_then_demotes_coldest() {
        let mut p = pool(8, 3, InitialPlacement::Cold);
        let mut plan = MigrationPlan::new(3);
        p.refresh(&[5, 5, 2, 9, 5, 2], &mut plan).unwrap();
        let got: Vec<_> = plan.promotions().iter().map(|m| (m.expert, m.slot, m.evicted)).collect();
        assert_eq!(got, [(5, 0, None), (2, 1, None)]);
        commit_all(&mut p, &plan);
        assert_eq!(p.serve(&[5, 5, 2, 9, 5, 2]), ServeCounts { hits: 5, misses: 0, invalid: 1 });

        // 7 and 6 are new targets; 5 stays; 2 is a target too but only 3 fit: 7(3) 5(2) 6(2) 2(1).
        p.refresh(&[7, 7, 7, 5, 5, 6, 6, 2], &mut plan).unwrap();
        let got: Vec<_> = plan.promotions().iter().map(|m| (m.expert, m.slot, m.evicted)).collect();
        assert_eq!(got, [(7, 2, None), (6, 1, Some(2))]);
        assert_eq!(p.stats().demotions, 1);
        assert!(!p.is_resident(2) && p.expert_in(1).is_none());
        commit_all(&mut p, &plan);
        assert_eq!(p.residents().collect::<Vec<_>>(), [(0, 5), (1, 6), (2, 7)]);
        assert_eq!(p.stats().promotions, 4);
        assert_eq!(p.stats().bytes_promoted, 40);
    }

    #[test]
    fn demotions_only_as_many_as_needed_and_coldest_first() {
        let mut p = pool(10, 4, InitialPlacement::Warm); // residents 0..4
        let mut plan = MigrationPlan::new(4);
        // Targets: 9 (2), 3 (1), 1 (1), 8 (1) → promotions 9, 8; victims among {0, 2}: both count 0 → 0 first.
        p.refresh(&[9, 3, 9, 1, 8], &mut plan).unwrap();
        let got: Vec<_> = plan.promotions().iter().map(|m| (m.expert, m.evicted)).collect();
        assert_eq!(got, [(9, Some(0)), (8, Some(2))]);
        // One target only: nothing demoted beyond the single promotion's need.
        let mut p = pool(10, 4, InitialPlacement::Warm);
        p.refresh(&[7, 7, 7], &mut plan).unwrap();
        assert_eq!(plan.len(), 1);
        assert_eq!(p.resident(), 3);
        assert_eq!(p.stats().demotions, 1);
    }

    #[test]
    fn all_resident_never_moves_and_masks_report_residency() {
        let mut p = pool(5, 5, InitialPlacement::Warm);
        let mut plan = MigrationPlan::new(5);
        p.refresh(&[4, 4, 0, 7], &mut plan).unwrap();
        assert!(plan.is_empty());
        assert_eq!(p.serve(&[4, 4, 0, 7]), ServeCounts { hits: 3, misses: 0, invalid: 1 });
        let mut p = pool(40, 2, InitialPlacement::Warm);
        let mut mask = [true; 41];
        p.resident_mask(&mut mask).unwrap();
        assert_eq!(mask.iter().filter(|&&m| m).count(), 3); // experts 0, 1, plus the untouched tail entry
        let mut bits = [u32::MAX; 3];
        p.resident_bits(&mut bits).unwrap();
        assert_eq!(bits, [0b11, 0, 0]);
        assert!(p.resident_bits(&mut [0; 1]).is_err());
        assert!(p.resident_mask(&mut [false; 39]).is_err());
        p.refresh(&[39, 39], &mut plan).unwrap();
        commit_all(&mut p, &plan);
        p.resident_bits(&mut bits).unwrap();
        assert_eq!(bits, [0b10, 1 << 7, 0]);
    }

    #[test]
    fn commits_are_checked_and_idempotent() {
        let mut p = pool(4, 2, InitialPlacement::Warm);
        let promo = |expert, slot| Promotion { expert, slot, evicted: None };
        assert_eq!(p.commit(promo(0, 0), 1), Ok(PromotionState::Done));
        assert_eq!(p.commit(promo(0, 1), 1), Err(PlanError::AlreadyResident { expert: 0, slot: 0 }));
        assert_eq!(p.commit(promo(2, 1), 1), Err(PlanError::SlotOccupied { slot: 1, expert: 1 }));
        assert_eq!(p.commit(promo(4, 1), 1), Err(PlanError::ExpertOutOfRange { expert: 4, experts: 4 }));
        assert_eq!(p.commit(promo(2, 2), 1), Err(PlanError::SlotOutOfRange { slot: 2, slots: 2 }));
        assert_eq!(p.stats().promotions, 2);
    }

    #[test]
    fn schedule_gates_refreshes() {
        let every2 = Schedule::EveryDecodeSteps(core::num::NonZeroU32::new(2).unwrap());
        let mut p = ExpertPool::new(PoolConfig::new(8, 2).schedule(every2).initial(InitialPlacement::Cold)).unwrap();
        let mut plan = MigrationPlan::new(2);
        assert_eq!(p.plan_step(Step::decode(1), &[3], &mut plan), Ok(false));
        assert!(plan.is_empty());
        assert_eq!(p.plan_step(Step::decode(2), &[3], &mut plan), Ok(true));
        assert_eq!(plan.len(), 1);
        assert_eq!(p.plan_step(Step::prefill(3), &[4], &mut plan), Ok(true));
        assert_eq!(p.stats().refreshes, 2);
    }

    #[test]
    fn zero_budget_serves_everything_from_slow_memory() {
        let mut p = pool(4, 0, InitialPlacement::Warm);
        let mut plan = MigrationPlan::new(0);
        p.refresh(&[1, 2, 3], &mut plan).unwrap();
        assert!(plan.is_empty());
        assert_eq!(p.serve(&[1, 2, 3]).misses, 3);
    }
}
