//! Demand caching: a step's ids are served in order; a resident id is a hit and updates the
//! policy's state; a non-resident id is a miss and is admitted at once (one promotion), demoting
//! the policy's demotion candidate when every slot is taken (one demotion), so later ids of the same step are
//! served from its slot too (all of them misses served by copy: the expert was not resident before the step). Demotion candidates (ties always to the lower expert id):
//!
//! - LRU: the least recently used; residents never used since a warm start count as used at
//!   time 0.
//! - LFU: the least frequently used, counting every access to the expert since the pool was built
//!   (resident or not).
//! - LRU-2 (O'Neil, O'Neil and Weikum, 1993): the resident whose second-to-last use is oldest;
//!   residents used once since admission count as oldest, ordered among themselves by last use.
//!   Resists scans, which plain LRU does not. History is kept while the expert is resident.
//! - Belady's offline optimum: the resident whose next use in this layer's id stream is farthest
//!   (never used again is farthest). Needs the stream in advance
//!   ([`crate::ExpertPool::load_future`]); for evaluation only.
//!
//! - Cost-aware (TinyLFU-style, see [`super::admission`]): the resident with the lowest decayed
//!   use count, ties to the least recently used; and a miss is admitted only when the admission
//!   filter's [`Admission`] says copy, otherwise it is served in place and nothing moves. In a
//!   step of more experts than slots, a resident the step uses but the filter ranks below the
//!   step's cutoff is not pinned: it may give its slot up, and its ids are served in place.
//!
//! A step's ids are served together once its plan is migrated, so the experts a step uses or
//! admits are pinned until the step ends: a demotion candidate is never one of them. Pinning
//! comes before admission: before the step's first miss is admitted, every resident that any id
//! of the step routes is pinned (not only those whose ids were served before the miss), so a
//! miss never demotes an expert a later id of the same step uses. When every slot holds a
//! pinned expert, a miss is served from slow memory without being admitted. With this rule the residency
//! decided id by id is exactly the one serving sees after migration: a resident's ids hit, every
//! id of an admitted expert is a miss served by copy, every other id a miss served in place.
//!
//! Under [`MissOrder::Busiest`], a step of more pairs than slots pins only its busiest experts
//! (as many as there are slots, ranked by their pairs in the step, ties to a resident, then to
//! the one routed first) and admits those that are not resident after serving its ids, the
//! busiest first; its other residents are not pinned and may be demoted for them. The same
//! serving rule holds: a demoted resident's ids are misses served in place.

use alloc::boxed::Box;
use alloc::vec;
use alloc::vec::Vec;

use super::admission::{Admission, AdmissionConfig, AdmissionFilter};
use super::select::{heapify, pop_worst};
use super::MissOrder;
use crate::plan::{MigrationPlan, Promotion};
use crate::slot_table::{admitted, slot_in, EMPTY_SLOT, NOT_RESIDENT};

mod prefetch;

/// Which demand policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DemandKind {
    Lru,
    Lfu,
    Lru2,
    Belady,
    CostAware,
}

/// The last two uses of a slot's occupant (clock ticks; 0 = never), and the last step that used
/// or admitted it (pinned for that step).
#[derive(Debug, Clone, Copy, Default)]
struct Uses {
    last: u64,
    prev: u64,
    step: u64,
}

/// A demotion candidate in a step's order: the policy's key of its occupant, the occupant, the
/// slot.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    key: (u64, u64),
    expert: u16,
    slot: u16,
}

impl Candidate {
    /// Demoted before `other`: a lower key, or as low and a lower expert id.
    fn before(&self, other: &Candidate) -> bool {
        (self.key, self.expert) < (other.key, other.expert)
    }
}

/// The search of a step from which demotion candidates come from a heap rather than a scan of
/// every slot (building the heap costs about two scans; a step of 64 tokens searches hundreds of
/// times).
const HEAP_FROM_SEARCH: u32 = 4;

/// Position in the stream meaning "never again".
const NEVER: u32 = u32::MAX;

/// Belady's knowledge of the future: for every position of the layer's id stream, the position
/// of the next id naming the same expert.
#[derive(Debug, Clone, Default)]
struct Future {
    next: Vec<u32>,
    /// Per expert: the position of its next use from the cursor on.
    next_use: Vec<u32>,
    cursor: usize,
}

/// A demand cache's state: per slot use history, and per expert frequencies (LFU) or next uses
/// (Belady).
#[derive(Debug, Clone)]
pub(crate) struct DemandCache {
    kind: DemandKind,
    clock: u64,
    /// Steps served so far (the current one included).
    step: u64,
    uses: Vec<Uses>,
    /// Per slot: the expert admitted into it during the current step, or `EMPTY_SLOT`.
    admitted: Vec<u16>,
    frequency: Vec<u32>,
    future: Future,
    /// The cost-aware admission filter (cost-aware kind only; boxed, so the other kinds stay
    /// small).
    filter: Option<Box<AdmissionFilter>>,
    /// Demotion searches in the current step.
    searches: u32,
    /// From the step's [`HEAP_FROM_SEARCH`]th search on: the slots not pinned at that point, in a
    /// heap with the next demotion candidate at the root. A slot's key does not change while it
    /// is not pinned (any use pins it), so later searches pop it, skipping slots pinned since.
    order: Vec<Candidate>,
    /// The order a step's misses are admitted in.
    miss_order: MissOrder,
    /// [`MissOrder::Busiest`]: per expert, its pairs in the step being ranked (experts long, 0
    /// between steps).
    step_pairs: Vec<u32>,
    /// [`MissOrder::Busiest`]: the current step's busiest experts, as many as there are slots,
    /// most pairs first, each with its rank in routing order.
    routed: Vec<(u16, u16)>,
    /// Slots held for prefetch ([`crate::PoolConfig::staging`]): the policy's own residents keep
    /// at most the other slots.
    staging: usize,
    /// Per slot: whether it is a staging slot (a guess not used yet, or a resident moved out of
    /// the policy's share without a copy). All false without staging.
    staged: Vec<bool>,
}

/// A step's admissions so far.
struct Admitting {
    /// Slots holding an expert, committed or admitted.
    occupied: usize,
    /// Slots the step has pinned (see [`DemandCache::step`]).
    pinned: usize,
    /// Experts demoted.
    demotions: usize,
    /// Slots holding the policy's own residents (not staging slots), committed or admitted.
    regular: usize,
}

/// What an admission step reads and changes in the pool.
pub(crate) struct AdmitState<'a> {
    /// Per expert: its word in the demand-step phase (see [`crate::slot_table`]).
    pub expert_slot: &'a mut [u32],
    /// Per slot: the expert it holds, or `EMPTY_SLOT`.
    pub slot_expert: &'a mut [u16],
}

impl DemandCache {
    pub(crate) fn new(kind: DemandKind, experts: usize, slots: usize) -> Self {
        Self {
            kind,
            clock: 0,
            step: 0,
            uses: vec![Uses::default(); slots],
            admitted: vec![EMPTY_SLOT; slots],
            frequency: if kind == DemandKind::Lfu { vec![0; experts] } else { Vec::new() },
            future: Future::default(),
            filter: None,
            searches: 0,
            order: Vec::with_capacity(slots),
            miss_order: MissOrder::Routing,
            step_pairs: Vec::new(),
            routed: Vec::new(),
            staging: 0,
            staged: vec![false; slots],
        }
    }

    /// Admits misses in `order` from the next step on (allocates per expert for
    /// [`MissOrder::Busiest`], once).
    pub(crate) fn set_miss_order(&mut self, order: MissOrder, experts: usize) {
        self.miss_order = order;
        if order == MissOrder::Busiest {
            self.step_pairs.resize(experts, 0);
            self.routed.reserve(experts);
        }
    }

    /// A cost-aware cache: TinyLFU-style admission with `config`.
    pub(crate) fn cost_aware(config: AdmissionConfig, experts: usize, slots: usize) -> Self {
        let filter = Some(Box::new(AdmissionFilter::new(config, experts, slots)));
        Self { filter, ..Self::new(DemandKind::CostAware, experts, slots) }
    }

    /// Sizes the per-slot history for `slots` slots: dropped slots forget theirs, new slots start
    /// empty.
    pub(crate) fn set_slots(&mut self, slots: usize) {
        self.uses.resize(slots, Uses::default());
        self.admitted.resize(slots, EMPTY_SLOT);
        self.staged.resize(slots, false);
        if let Some(filter) = self.filter.as_mut() {
            filter.set_slots(slots);
        }
        self.order.reserve(slots.saturating_sub(self.order.len()));
    }

    /// Whether this is Belady's policy.
    pub(crate) fn is_belady(&self) -> bool {
        self.kind == DemandKind::Belady
    }

    /// Whether this is the cost-aware policy (its admission filter decides per step, with the
    /// step's routing known: nothing to prefetch by).
    pub(crate) fn is_cost_aware(&self) -> bool {
        self.kind == DemandKind::CostAware
    }

    /// Gives Belady the layer's whole id stream, in serving order.
    pub(crate) fn load_future(&mut self, experts: usize, stream: &[u32]) {
        let mut next_use = vec![NEVER; experts];
        let mut next = vec![NEVER; stream.len()];
        for (position, &id) in stream.iter().enumerate().rev() {
            if let (Some(slot), Some(n)) = (next_use.get_mut(id as usize), next.get_mut(position)) {
                *n = *slot;
                // Streams longer than u32::MAX positions are cut there by the pool.
                *slot = position as u32;
            }
        }
        self.future = Future { next, next_use, cursor: 0 };
    }

    /// Serves `ids` in order, updating the policy's state. With `admit`, each miss is admitted,
    /// up to `limit` admissions (later misses are served in place): `plan` gets a promotion into
    /// a free slot or the demotion candidate's, whose expert is demoted. Returns the number of
    /// demotions.
    pub(crate) fn step(
        &mut self,
        state: AdmitState<'_>,
        ids: &[u32],
        admit: bool,
        limit: usize,
        plan: &mut MigrationPlan,
    ) -> usize {
        let AdmitState { expert_slot, slot_expert } = state;
        self.step = self.step.saturating_add(1);
        self.searches = 0;
        // Slots holding an expert, committed or admitted: while every slot does, no search for a
        // free one is needed.
        let occupied = slot_expert.iter().filter(|&&e| e != EMPTY_SLOT).count();
        if let Some(filter) = self.filter.as_mut() {
            filter.begin_step(ids, slot_expert.len());
        }
        // Slots this step has pinned: once every slot is, a miss needs no search for a demotion
        // candidate (there is none). Before the first miss is admitted, every committed resident
        // that any id of the step routes is pinned, so no admission of this step demotes an
        // expert the step uses.
        // Expert-major: the step's busiest experts (as many as there are slots) are pinned if
        // resident and admitted after the ids if not; the step's other residents are not pinned.
        let busiest = admit && self.miss_order == MissOrder::Busiest && ids.len() > slot_expert.len();
        let pinned = if busiest {
            self.pin_busiest(expert_slot, ids, slot_expert.len())
        } else {
            self.pin_routed(expert_slot, ids)
        };
        // Without staging slots every occupied slot is the policy's own: no second scan.
        let regular = if self.staging == 0 {
            occupied
        } else {
            slot_expert.iter().zip(&self.staged).filter(|&(&e, &staged)| e != EMPTY_SLOT && !staged).count()
        };
        let mut admitting = Admitting { occupied, pinned, demotions: 0, regular };
        for &id in ids {
            let position = self.future.cursor;
            self.future.cursor = position.saturating_add(1);
            let expert = id as usize;
            let Some(&word) = expert_slot.get(expert) else {
                continue; // invalid: counted by serve
            };
            self.clock = self.clock.saturating_add(1);
            if let Some(f) = self.frequency.get_mut(expert) {
                *f = f.saturating_add(1);
            }
            let next = self.future.next.get(position).copied().unwrap_or(NEVER);
            if let Some(n) = self.future.next_use.get_mut(expert) {
                *n = next;
            }
            if word != NOT_RESIDENT {
                if let Some(staged) = self.staged.get_mut(slot_in(word)).filter(|s| **s) {
                    // A staged expert used: a prefetch hit, now one of the policy's residents.
                    *staged = false;
                    admitting.regular = admitting.regular.saturating_add(1);
                }
                if let Some(u) = self.uses.get_mut(slot_in(word)) {
                    // Pinned already (by `pin_routed`, `pin_busiest` or as admitted by this step),
                    // or, in a step that pins only its busiest experts, left unpinned.
                    (u.prev, u.last) = (u.last, self.clock);
                }
                continue;
            }
            if busiest {
                continue; // admitted after the ids, the busiest first
            }
            if !admit || plan.len() >= limit {
                continue;
            }
            let clock = self.clock;
            self.admit(expert, clock, &mut admitting, AdmitState { expert_slot, slot_expert }, plan);
        }
        if busiest {
            self.admit_busiest(limit, &mut admitting, AdmitState { expert_slot, slot_expert }, plan);
        }
        self.rebalance(slot_expert, admitting.regular);
        // Admitted experts become resident only when their copy is committed.
        for a in self.admitted.iter_mut() {
            if let Some(w) = expert_slot.get_mut(usize::from(*a)) {
                *w = NOT_RESIDENT;
            }
            *a = EMPTY_SLOT;
        }
        admitting.demotions
    }

    /// Admits a miss of `expert` (not resident): a promotion into a free slot or the demotion
    /// candidate's, whose expert is demoted, unless every slot is pinned or the admission filter
    /// serves it in place. The admitted slot is pinned for the step, its last use `clock`.
    fn admit(
        &mut self,
        expert: usize,
        clock: u64,
        admitting: &mut Admitting,
        state: AdmitState<'_>,
        plan: &mut MigrationPlan,
    ) {
        let AdmitState { expert_slot, slot_expert } = state;
        let free = if admitting.occupied < slot_expert.len() { self.free_slot(slot_expert) } else { None };
        // Below the policy's share, a staging slot is as good as a free one.
        let below_share = admitting.regular < self.share();
        let open = free.or_else(|| if below_share { self.coldest_staged(slot_expert) } else { None });
        let slot = match open {
            Some(slot) => Some(slot),
            // A used resident may still yield its slot to the admission filter.
            None if admitting.pinned < slot_expert.len() || self.filter.is_some() => self.demotable(slot_expert),
            None => None,
        };
        let Some(slot) = slot else {
            return; // every slot pinned by this step (or none at all): slow memory
        };
        if self.admission(expert, slot, slot_expert) == Admission::InPlace {
            return; // served in place: nothing moves
        }
        // A free slot or a demotion candidate is not pinned yet; the admission pins it.
        admitting.pinned = admitting.pinned.saturating_add(1);
        admitting.occupied = admitting.occupied.saturating_add(usize::from(free.is_some()));
        admitting.regular = admitting.regular.saturating_add(usize::from(open.is_some()));
        if let Some(staged) = self.staged.get_mut(slot) {
            *staged = false;
        }
        // A demotion candidate is a committed resident this step has not used: demote it.
        let demoted = slot_expert.get(slot).copied().filter(|&e| e != EMPTY_SLOT);
        if let Some(demotable) = demoted {
            if let Some(w) = expert_slot.get_mut(usize::from(demotable)) {
                *w = NOT_RESIDENT;
            }
            if let Some(s) = slot_expert.get_mut(slot) {
                *s = EMPTY_SLOT;
            }
            admitting.demotions = admitting.demotions.saturating_add(1);
        }
        // slot < slots <= u16::MAX and expert < experts <= u16::MAX, checked at build time.
        plan.push(Promotion { expert: expert as u16, slot: slot as u16, demoted });
        if let Some(a) = self.admitted.get_mut(slot) {
            *a = expert as u16;
        }
        if let Some(u) = self.uses.get_mut(slot) {
            *u = Uses { prev: 0, last: clock, step: self.step };
        }
        if let Some(w) = expert_slot.get_mut(expert) {
            *w = admitted(slot);
        }
    }

    /// Ranks the experts `ids` route by their pairs in the step (most first; ties to a resident,
    /// then to the one routed first) into `routed`, keeps the first `slots` of them there and pins those that
    /// are resident. Returns the number of slots it pinned.
    fn pin_busiest(&mut self, expert_slot: &[u32], ids: &[u32], slots: usize) -> usize {
        let mut routed = core::mem::take(&mut self.routed);
        routed.clear();
        for &id in ids {
            let Some(pairs) = self.step_pairs.get_mut(id as usize) else { continue };
            if *pairs == 0 {
                // At most one entry per expert: never past the capacity reserved at build time
                // (experts <= u16::MAX, checked at build time).
                routed.push((routed.len() as u16, id as u16));
            }
            *pairs = pairs.saturating_add(1);
        }
        let step_pairs = &self.step_pairs;
        let pairs = |e: u16| step_pairs.get(usize::from(e)).copied().unwrap_or(0);
        let missing = |e: u16| expert_slot.get(usize::from(e)) == Some(&NOT_RESIDENT);
        routed.sort_unstable_by_key(|&(first, e)| (core::cmp::Reverse(pairs(e)), missing(e), first));
        for &(_, e) in &routed {
            if let Some(p) = self.step_pairs.get_mut(usize::from(e)) {
                *p = 0;
            }
        }
        routed.truncate(slots);
        let mut pinned = 0usize;
        for &(_, e) in &routed {
            pinned = pinned.saturating_add(usize::from(self.pin(expert_slot, u32::from(e))));
        }
        self.routed = routed;
        pinned
    }

    /// Admits the experts [`DemandCache::pin_busiest`] kept that are not resident, the busiest
    /// first, up to `limit` admissions; each admitted slot's last use is the step's last.
    fn admit_busiest(
        &mut self,
        limit: usize,
        admitting: &mut Admitting,
        state: AdmitState<'_>,
        plan: &mut MigrationPlan,
    ) {
        let AdmitState { expert_slot, slot_expert } = state;
        let routed = core::mem::take(&mut self.routed);
        let clock = self.clock;
        for &(_, expert) in &routed {
            if plan.len() >= limit {
                break;
            }
            if expert_slot.get(usize::from(expert)) == Some(&NOT_RESIDENT) {
                self.admit(usize::from(expert), clock, admitting, AdmitState { expert_slot, slot_expert }, plan);
            }
        }
        self.routed = routed;
    }

    /// Pins, for the current step, the slot of every committed resident that a valid id of `ids`
    /// routes, leaving its use history as it is (the ids update it in order as they are served).
    /// Returns the number of slots it pinned (slots a prefetch pinned through this step are not
    /// counted: the count only spares searches that cannot succeed).
    fn pin_routed(&mut self, expert_slot: &[u32], ids: &[u32]) -> usize {
        ids.iter().map(|&id| usize::from(self.pin(expert_slot, id))).sum()
    }

    /// Pins the slot of `expert` for the current step if it is a committed resident (leaving its
    /// use history as it is). Returns whether it was not pinned before.
    fn pin(&mut self, expert_slot: &[u32], expert: u32) -> bool {
        let Some(&word) = expert_slot.get(expert as usize) else { return false };
        if word == NOT_RESIDENT {
            return false;
        }
        let Some(u) = self.uses.get_mut(slot_in(word)) else { return false };
        let newly = u.step != self.step;
        u.step = self.step;
        newly
    }

    /// What the admission filter does with a miss of `expert` that would take `slot` (always a
    /// copy without a filter).
    fn admission(&self, expert: usize, slot: usize, slot_expert: &[u16]) -> Admission {
        let Some(filter) = &self.filter else { return Admission::Copy };
        let victim = slot_expert.get(slot).copied().filter(|&e| e != EMPTY_SLOT).map(usize::from);
        filter.admission(expert, victim)
    }

    /// Whether the committed resident of `slot`, though used by this step, gives its slot up:
    /// the admission filter ranks it below the step's cutoff (a step of more experts than slots).
    /// Its ids are then served in place.
    fn yields(&self, slot_expert: &[u16], slot: usize) -> bool {
        let Some(filter) = &self.filter else { return false };
        let committed = self.admitted.get(slot).is_some_and(|&a| a == EMPTY_SLOT);
        let expert = slot_expert.get(slot).copied().unwrap_or(EMPTY_SLOT);
        committed && expert != EMPTY_SLOT && filter.below_cutoff(usize::from(expert))
    }

    /// The first slot holding no expert, committed or admitted.
    fn free_slot(&self, slot_expert: &[u16]) -> Option<usize> {
        slot_expert.iter().zip(&self.admitted).position(|(&c, &a)| c == EMPTY_SLOT && a == EMPTY_SLOT)
    }

    /// The slot of the policy's demotion candidate among the occupied slots this step has not pinned.
    fn demotable(&mut self, slot_expert: &[u16]) -> Option<usize> {
        self.searches = self.searches.saturating_add(1);
        if self.searches < HEAP_FROM_SEARCH || self.filter.is_some() {
            // Steps of a few tokens search a few times: one scan each. The admission filter's
            // keys change within a step (a yielding resident's use), so it always scans.
            return self.coldest(slot_expert);
        }
        // Later searches after the first few: the slots not pinned yet, in a heap with the next
        // demotion candidate at the root.
        let after = |a: &Candidate, b: &Candidate| b.before(a);
        if self.searches == HEAP_FROM_SEARCH {
            let mut order = core::mem::take(&mut self.order);
            order.clear();
            order.extend(self.unpinned(slot_expert));
            heapify(&mut order, &after);
            self.order = order;
        }
        while let Some(c) = pop_worst(&mut self.order, &after) {
            if self.is_unpinned(usize::from(c.slot), slot_expert) {
                return Some(usize::from(c.slot));
            }
        }
        None
    }

    /// The demotion candidate with the lowest key among the slots not pinned.
    fn coldest(&self, slot_expert: &[u16]) -> Option<usize> {
        let mut best: Option<Candidate> = None;
        for c in self.unpinned(slot_expert) {
            if best.is_none_or(|b| c.before(&b)) {
                best = Some(c);
            }
        }
        best.map(|c| usize::from(c.slot))
    }

    /// Whether `slot` may give up its expert in this step: not used or admitted into by it, and
    /// not being filled by a prefetch; or a used resident the admission filter ranks below the
    /// step's cutoff.
    fn is_unpinned(&self, slot: usize, slot_expert: &[u16]) -> bool {
        (self.uses.get(slot).is_some_and(|u| u.step != self.step)
            && self.admitted.get(slot).is_some_and(|&a| a == EMPTY_SLOT))
            || self.yields(slot_expert, slot)
    }

    /// The slots this step has not pinned, with their occupants and keys.
    fn unpinned<'s>(&'s self, slot_expert: &'s [u16]) -> impl Iterator<Item = Candidate> + 's {
        self.unpinned_in(slot_expert, false)
    }

    /// The slots this step has not pinned among the staging slots (`staged`) or the others.
    fn unpinned_in<'s>(&'s self, slot_expert: &'s [u16], staged: bool) -> impl Iterator<Item = Candidate> + 's {
        let slots = self.uses.iter().zip(slot_expert).enumerate();
        let in_area = move |slot: usize| self.staged.get(slot).copied().unwrap_or(false) == staged;
        slots.filter(move |&(slot, _)| in_area(slot) && self.is_unpinned(slot, slot_expert)).map(
            |(slot, (uses, &expert))| {
                // slot < slots <= u16::MAX, checked when the pool is built.
                Candidate { key: self.key(uses, expert), expert, slot: slot as u16 }
            },
        )
    }

    /// The policy's demotion key of `expert` with the use history `uses` (lowest goes first).
    fn key(&self, uses: &Uses, expert: u16) -> (u64, u64) {
        match self.kind {
            DemandKind::Lru => (uses.last, 0),
            DemandKind::Lru2 => (uses.prev, uses.last),
            DemandKind::Lfu => (u64::from(self.frequency.get(usize::from(expert)).copied().unwrap_or(0)), 0),
            DemandKind::Belady => {
                let next = self.future.next_use.get(usize::from(expert)).copied().unwrap_or(NEVER);
                (u64::from(NEVER.saturating_sub(next)), 0) // NEVER is u32::MAX: never saturates
            }
            DemandKind::CostAware => (self.filter.as_ref().map_or(0, |f| f.key(usize::from(expert))), uses.last),
        }
    }
}
