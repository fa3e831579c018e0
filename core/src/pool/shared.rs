//! [`SharedSlotPool`]: one set of slots for several layers.

use alloc::vec::Vec;

use super::{ExpertPool, InitialPlacement, PoolConfig, PoolStats, PromotionState, ServeStats};
use crate::error::{PlanError, PoolError};
use crate::plan::{MigrationPlan, Promotion};
use crate::schedule::Step;

/// Key of an id past a layer's expert count: past every key, so the pool counts it invalid.
const INVALID_KEY: u32 = u32::MAX;

/// `(layer, expert)` of `key` with `experts` experts per layer (`(0, 0)` for no experts).
pub(crate) fn split_key(key: usize, experts: usize) -> (usize, usize) {
    (key.checked_div(experts).unwrap_or(0), key.checked_rem(experts).unwrap_or(0))
}

/// One set of slots shared by several layers whose experts have the same size, keyed by
/// `(layer, expert)`: a layer that routes to many experts can take slots another layer does not
/// need this step, where per-layer pools give each layer a fixed share.
///
/// The shared pool is an [`ExpertPool`] over *keys*: key `layer × experts + expert` names expert
/// `expert` of layer `layer`. Each call serves one layer's step; the layers of a forward pass are
/// served in order, so one demand policy sees the whole model's routing interleaved as it runs.
/// The experts a layer's step uses or admits are pinned until that layer's step ends (as in any
/// demand step); the next layer's misses may demote them.
///
/// Only the policies [`crate::Policy::drives_shared_pool`] names drive a shared pool: an interval
/// refresh of one layer would see every other layer's residents as cold. The cost-aware policy
/// ([`crate::Policy::Tinylfu`]) keeps its settings in forward steps and measures an expert's run
/// across its layer's consecutive steps, `layers` pool steps apart: each forward step should
/// serve every layer once, in order. Plans carry keys in
/// [`Promotion::expert`](crate::Promotion::expert); [`SharedSlotPool::split`] turns one back into
/// `(layer, expert)` for the copy.
///
/// Nothing is allocated per step: ids are translated into keys in a buffer sized at construction.
/// Built with the crate's `demand` feature (on by default); without it [`SharedSlotPool::new`]
/// refuses every policy.
///
#[cfg_attr(feature = "demand", doc = "```")]
#[cfg_attr(not(feature = "demand"), doc = "```ignore")]
/// use expertslab::{MigrationPlan, Policy, PoolConfig, SharedSlotPool, Step};
///
/// // 2 layers of 8 experts share 4 slots under LRU; steps carry at most 16 ids.
/// let mut pool = SharedSlotPool::new(2, PoolConfig::new(8, 4).policy(Policy::Lru), 16)?;
/// let mut plan = MigrationPlan::new(pool.slots());
/// pool.initial_plan(&mut plan); // warm: experts 0 and 1 of each layer
/// for &p in plan.promotions() {
///     pool.commit(p, 1)?;
/// }
/// assert_eq!(pool.slot_of(1, 1), Some(3));
/// // Layer 0 routes to experts 5, 6 and 7: three admissions, which demote the least recently
/// // used keys (never used since the warm start: the lowest keys first).
/// pool.plan_step(0, Step::decode(0), &[5, 6, 7], &mut plan)?;
/// for &p in plan.promotions() {
///     assert_eq!(pool.split(p.expert).0, 0); // every promotion is layer 0's
///     pool.commit(p, 1)?;
/// }
/// let served = pool.serve(0, &[5, 6, 7]);
/// assert_eq!((served.hits, served.misses), (0, 3));
/// assert!(pool.slot_of(1, 1).is_some()); // layer 1 kept one slot
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct SharedSlotPool {
    layers: usize,
    experts: usize,
    pool: ExpertPool,
    /// The step's ids as keys; its capacity is the most ids a step may carry.
    keys: Vec<u32>,
}

impl SharedSlotPool {
    /// A pool of [`PoolConfig::slots`] slots (clamped to `layers × experts`) shared by `layers`
    /// layers of `config`'s expert count each, with `config`'s demand policy and initial
    /// placement (the layer index and schedule of `config` are not used). Steps carry at most
    /// `max_step_ids` ids.
    ///
    /// # Errors
    /// [`PoolError::NoExperts`] for zero layers or experts, [`PoolError::TooManyExperts`] when
    /// `layers × experts` is above [`crate::MAX_EXPERTS`], [`PoolError::PolicyMismatch`] for a
    /// policy that cannot drive a shared pool ([`crate::Policy::drives_shared_pool`]),
    /// [`PoolError::TooManyIds`] when `max_step_ids` is above [`crate::MAX_STEP_IDS`],
    /// [`PoolError::PolicyNotBuilt`] for a demand policy when the crate's `demand` feature is off.
    pub fn new(layers: usize, config: PoolConfig, max_step_ids: usize) -> Result<Self, PoolError> {
        let experts = config.experts;
        if layers == 0 || experts == 0 {
            return Err(PoolError::NoExperts);
        }
        if !config.policy.drives_shared_pool() {
            return Err(PoolError::PolicyMismatch);
        }
        super::check_step(max_step_ids)?;
        let keys = layers
            .checked_mul(experts)
            .filter(|&k| k <= super::MAX_EXPERTS)
            .ok_or(PoolError::TooManyExperts { experts: layers.saturating_mul(experts), max: super::MAX_EXPERTS })?;
        // The initial placement is this type's own plan (see `initial_plan`); the pool keeps the
        // setting.
        let streams = u32::try_from(layers).unwrap_or(u32::MAX);
        let pool = ExpertPool::new(config.layer(0).experts(keys).policy(config.policy.interleaved(streams)))?;
        Ok(Self { layers, experts, pool, keys: Vec::with_capacity(max_step_ids) })
    }

    /// Layers served.
    pub const fn layers(&self) -> usize {
        self.layers
    }

    /// Experts per layer.
    pub const fn experts(&self) -> usize {
        self.experts
    }

    /// Slots in all.
    pub fn slots(&self) -> usize {
        self.pool.slots()
    }

    /// Caps the admissions of every step from now on (see [`ExpertPool::set_fetch_cap`]).
    pub fn set_fetch_cap(&mut self, cap: Option<u32>) {
        self.pool.set_fetch_cap(cap);
    }

    /// Resident keys.
    pub const fn resident(&self) -> usize {
        self.pool.resident()
    }

    /// The counters since the pool was built (over all layers).
    pub const fn stats(&self) -> &PoolStats {
        self.pool.stats()
    }

    /// The key of `expert` of `layer`, when both are in range.
    pub fn key(&self, layer: usize, expert: usize) -> Option<usize> {
        if layer < self.layers && expert < self.experts {
            // layer × experts + expert < layers × experts <= MAX_EXPERTS
            layer.checked_mul(self.experts).and_then(|k| k.checked_add(expert))
        } else {
            None
        }
    }

    /// `(layer, expert)` of a key, as plans carry it in [`Promotion::expert`].
    pub fn split(&self, key: u16) -> (usize, usize) {
        split_key(usize::from(key), self.experts)
    }

    /// The slot `expert` of `layer` is resident in, if any.
    pub fn slot_of(&self, layer: usize, expert: usize) -> Option<usize> {
        self.key(layer, expert).and_then(|k| self.pool.slot_of(k))
    }

    /// `(layer, expert)` resident in `slot`, if any.
    pub fn expert_in(&self, slot: usize) -> Option<(usize, usize)> {
        self.pool.expert_in(slot).and_then(|k| u16::try_from(k).ok()).map(|k| self.split(k))
    }

    /// The initial placement as a plan: for a warm start, expert 0 of every layer, then expert
    /// 1 of every layer, and so on until the slots are full (with `slots × layers` slots, experts
    /// `0..slots` of each layer, as per-layer pools start); for a cold start, nothing.
    pub fn initial_plan(&self, plan: &mut MigrationPlan) {
        // Without lists no entry can be out of range.
        let _ = self.placement_plan(|_| None, plan);
    }

    /// A given initial placement as a plan, the layers taking turns as in
    /// [`SharedSlotPool::initial_plan`]: the `rank`-th entry of each layer's list (`lists(layer)`),
    /// or for a layer without a list its expert `rank` on a warm start and nothing on a cold one,
    /// placed by [`ExpertPool::placement_plan`]'s rules until the slots are full.
    ///
    /// # Errors
    /// [`PlanError::ExpertOutOfRange`] for any listed expert at or past the expert count; `plan`
    /// is left empty.
    pub fn placement_plan<'a>(
        &self,
        lists: impl Fn(usize) -> Option<&'a [u32]>,
        plan: &mut MigrationPlan,
    ) -> Result<(), PlanError> {
        let warm = self.pool.initial == InitialPlacement::Warm;
        let experts = self.experts;
        for list in (0..self.layers).filter_map(&lists) {
            if let Some(&expert) = list.iter().find(|&&e| e as usize >= experts) {
                plan.reset(self.pool.layer, self.pool.slots_generation, 0);
                return Err(PlanError::ExpertOutOfRange { expert: expert as usize, experts });
            }
        }
        // Rank by rank, layer by layer; every key is below layers × experts <= MAX_EXPERTS.
        let keys = (0..experts).flat_map(|rank| {
            let lists = &lists;
            (0..self.layers).filter_map(move |layer| {
                let expert = match lists(layer) {
                    Some(list) => *list.get(rank)? as usize,
                    None if warm => rank,
                    None => return None,
                };
                self.key(layer, expert).map(|key| key as u32)
            })
        });
        // Rank-major keys without lists cannot repeat: the check for repeats (quadratic in the
        // slots) is for lists only.
        let listed = (0..self.layers).any(|layer| lists(layer).is_some());
        plan.reset(self.pool.layer, self.pool.slots_generation, self.slots());
        self.pool.push_placement(keys, listed, plan)
    }

    /// Translates `layer`'s `ids` into keys in the owned buffer.
    fn translate(&mut self, layer: usize, ids: &[u32]) -> Result<(), PoolError> {
        if layer >= self.layers {
            return Err(PoolError::LayerOutOfRange { layer, layers: self.layers });
        }
        let max = self.keys.capacity();
        if ids.len() > max {
            return Err(PoolError::TooManyIds { ids: ids.len(), max });
        }
        self.keys.clear();
        let base = layer.saturating_mul(self.experts);
        let experts = self.experts;
        // Keys are below MAX_EXPERTS, so below u32::MAX.
        self.keys.extend(ids.iter().map(|&id| {
            let id = id as usize;
            if id < experts {
                base.saturating_add(id) as u32
            } else {
                INVALID_KEY
            }
        }));
        Ok(())
    }

    /// Plans `layer`'s `step` from its routing `ids`: serves them in order and admits each miss
    /// (unless the step's mode is [`crate::Mode::Reuse`]), demoting the policy's candidate among
    /// all layers' keys this step has not pinned. Then migrate `plan` (keys in
    /// [`Promotion::expert`]) and call [`SharedSlotPool::serve`] with the same layer and ids.
    ///
    /// # Errors
    /// [`PoolError::LayerOutOfRange`], or [`PoolError::TooManyIds`] when `ids` is longer than the
    /// pool was built for; the pool is unchanged.
    pub fn plan_step(
        &mut self,
        layer: usize,
        step: Step,
        ids: &[u32],
        plan: &mut MigrationPlan,
    ) -> Result<bool, PoolError> {
        self.translate(layer, ids)?;
        let keys = core::mem::take(&mut self.keys);
        let planned = self.pool.plan_step(step, &keys, plan);
        self.keys = keys;
        planned
    }

    /// Counts `layer`'s `ids` as hits, misses and invalid ids against the current residency (see
    /// [`ExpertPool::serve`]). A layer out of range, or more ids than the pool was built for,
    /// counts every id as invalid.
    pub fn serve(&mut self, layer: usize, ids: &[u32]) -> ServeStats {
        if self.translate(layer, ids).is_err() {
            let invalid = ServeStats { invalid_ids: ids.len() as u64, ..ServeStats::default() };
            self.pool.stats.served.add(&invalid);
            return invalid;
        }
        let keys = core::mem::take(&mut self.keys);
        let served = self.pool.serve(&keys);
        self.keys = keys;
        served
    }

    /// Gives a [`crate::Policy::Belady`] pool the routing of every layer in serving order: `(layer, ids)`
    /// of each served step, in the order the steps will be planned. Allocates; for evaluation.
    ///
    /// # Errors
    /// As [`ExpertPool::load_future`], and [`PoolError::LayerOutOfRange`].
    pub fn load_future<'a>(&mut self, steps: impl IntoIterator<Item = (usize, &'a [u32])>) -> Result<(), PoolError> {
        let mut stream = Vec::new();
        for (layer, ids) in steps {
            if layer >= self.layers {
                return Err(PoolError::LayerOutOfRange { layer, layers: self.layers });
            }
            let base = layer.saturating_mul(self.experts);
            stream.extend(ids.iter().map(|&id| {
                if (id as usize) < self.experts {
                    base.saturating_add(id as usize) as u32
                } else {
                    INVALID_KEY
                }
            }));
        }
        self.pool.load_future(&stream)
    }

    /// Checks a promotion of a plan this pool made (see [`ExpertPool::check_planned`]).
    ///
    /// # Errors
    /// As [`ExpertPool::check_planned`].
    pub fn check_planned(&self, plan: &MigrationPlan, promotion: Promotion) -> Result<PromotionState, PlanError> {
        self.pool.check_planned(plan, promotion)
    }

    /// Marks a promotion's key resident once its bytes are in the slot (see
    /// [`ExpertPool::commit`]).
    ///
    /// # Errors
    /// As [`ExpertPool::check`]; the pool is unchanged.
    pub fn commit(&mut self, promotion: Promotion, bytes: u64) -> Result<PromotionState, PlanError> {
        self.pool.commit(promotion, bytes)
    }

    /// The pool over keys, for what the per-layer API already does (residency masks, slot-count
    /// changes, the prefetch hook).
    pub fn keyed(&mut self) -> &mut ExpertPool {
        &mut self.pool
    }
}

#[cfg(all(test, feature = "demand"))]
mod tests {
    use super::*;
    use crate::policy::Policy;

    /// A small deterministic generator (xorshift64*), so the test needs nothing from the lab.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: u32) -> u32 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            ((self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32) % u64::from(n)) as u32
        }
    }
    use alloc::vec;

    /// The reference: LRU or LFU over `(key, last use, pinned step)`, ties to the lower key; LFU
    /// counts every use of a key, resident or not.
    struct Reference {
        lfu: bool,
        slots: usize,
        residents: Vec<(usize, u64, u64)>,
        uses: Vec<u64>,
        clock: u64,
        step: u64,
    }

    impl Reference {
        /// Serves one layer's step; returns (hits, misses, misses served by copy, admissions).
        fn step(&mut self, keys: &[Option<usize>]) -> (u64, u64, u64, usize) {
            self.step += 1;
            // Pin before admit: every resident key of the step is pinned before the first miss.
            for r in self.residents.iter_mut().filter(|r| keys.contains(&Some(r.0))) {
                r.2 = self.step;
            }
            let (mut hits, mut misses, mut by_copy, mut admitted) = (0, 0, 0, 0);
            let mut copied = Vec::new();
            for &key in keys {
                let Some(key) = key else { continue };
                self.clock += 1;
                self.uses[key] += 1;
                if let Some(r) = self.residents.iter_mut().find(|r| r.0 == key) {
                    // Admitted in this step: every id of it is served by that copy.
                    if copied.contains(&key) {
                        misses += 1;
                        by_copy += 1;
                    } else {
                        hits += 1;
                    }
                    r.1 = self.clock;
                    r.2 = self.step;
                    continue;
                }
                misses += 1;
                let entry = (key, self.clock, self.step);
                if self.residents.len() < self.slots {
                    self.residents.push(entry);
                } else if let Some(victim) = {
                    let (lfu, uses) = (self.lfu, &self.uses);
                    let rank = |r: &&mut (usize, u64, u64)| (if lfu { uses[r.0] } else { r.1 }, r.0);
                    self.residents.iter_mut().filter(|r| r.2 != self.step).min_by_key(rank)
                } {
                    *victim = entry;
                } else {
                    continue;
                }
                admitted += 1;
                by_copy += 1;
                copied.push(key);
            }
            (hits, misses, by_copy, admitted)
        }
    }

    #[test]
    fn lru_and_lfu_over_keys_match_the_reference_model() {
        for (seed, lfu) in (0..40u64).map(|s| (s, s % 2 == 1)) {
            let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
            let (layers, experts) = (1 + rng.below(4) as usize, 2 + rng.below(9) as usize);
            let slots = 1 + rng.below((layers * experts) as u32) as usize;
            let config = PoolConfig::new(experts, slots).policy(if lfu { Policy::Lfu } else { Policy::Lru });
            let mut pool = SharedSlotPool::new(layers, config, 32).unwrap();
            let mut plan = MigrationPlan::new(pool.slots());
            pool.initial_plan(&mut plan);
            let uses = vec![0; layers * experts];
            let mut reference = Reference { lfu, slots: pool.slots(), residents: Vec::new(), uses, clock: 0, step: 0 };
            for &p in plan.promotions() {
                pool.commit(p, 1).unwrap();
                reference.residents.push((usize::from(p.expert), 0, 0));
            }
            for step in 0..60u64 {
                for layer in 0..layers {
                    let n = rng.below(8) as usize;
                    let ids: Vec<u32> = (0..n).map(|_| rng.below(experts as u32 + 1)).collect();
                    pool.plan_step(layer, Step::decode(step), &ids, &mut plan).unwrap();
                    for &p in plan.promotions() {
                        assert_eq!(pool.split(p.expert).0, layer);
                        pool.commit(p, 1).unwrap();
                    }
                    let served = pool.serve(layer, &ids);
                    let keys: Vec<Option<usize>> = ids.iter().map(|&id| pool.key(layer, id as usize)).collect();
                    let (hits, misses, by_copy, admitted) = reference.step(&keys);
                    let counts = (served.hits, served.misses, served.served_by_copy, plan.len());
                    assert_eq!(counts, (hits, misses, by_copy, admitted), "seed {seed}");
                    let mut resident: Vec<usize> = reference.residents.iter().map(|r| r.0).collect();
                    resident.sort_unstable();
                    let mut actual: Vec<usize> =
                        (0..pool.slots()).filter_map(|s| pool.expert_in(s)).map(|(l, e)| l * experts + e).collect();
                    actual.sort_unstable();
                    assert_eq!(actual, resident, "seed {seed}");
                }
            }
        }
    }

    #[test]
    fn bad_layers_policies_and_sizes_are_refused() {
        let lru = PoolConfig::new(8, 4).policy(Policy::Lru);
        assert_eq!(SharedSlotPool::new(2, PoolConfig::new(8, 4), 8).unwrap_err(), PoolError::PolicyMismatch);
        assert_eq!(SharedSlotPool::new(0, lru, 8).unwrap_err(), PoolError::NoExperts);
        assert!(matches!(SharedSlotPool::new(10_000, lru, 8), Err(PoolError::TooManyExperts { .. })));
        let mut pool = SharedSlotPool::new(2, lru, 4).unwrap();
        let mut plan = MigrationPlan::new(4);
        assert_eq!(
            pool.plan_step(2, Step::decode(0), &[1], &mut plan).unwrap_err(),
            PoolError::LayerOutOfRange { layer: 2, layers: 2 }
        );
        assert_eq!(
            pool.plan_step(0, Step::decode(0), &[1; 5], &mut plan).unwrap_err(),
            PoolError::TooManyIds { ids: 5, max: 4 }
        );
        let served = pool.serve(5, &[1, 2]);
        assert_eq!((served.hits, served.misses, served.invalid_ids), (0, 0, 2));
        assert_eq!(pool.stats().served.invalid_ids, 2);
        // Ids past a layer's experts are invalid, not another layer's experts.
        pool.plan_step(0, Step::decode(0), &[8, 1], &mut plan).unwrap();
        assert_eq!(plan.promotions().iter().map(|p| pool.split(p.expert)).collect::<Vec<_>>(), vec![(0, 1)]);
        assert_eq!(pool.split(9), (1, 1));
    }
}
