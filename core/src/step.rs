//! One step of one layer in one call: plan, migrate, serve.
//!
//! [`ExpertPool::plan_step`], [`crate::migrate()`] and [`ExpertPool::serve`] must see the same
//! ids in that order; [`ExpertPool::step`] takes the ids once and runs all three. The primitives
//! stay public for custom migrators, and [`ExpertPool::step_with`] runs a step around one.

// A failed step's error carries the step's counts by value, so a caller without a heap reads
// them: a few hundred bytes on the stack once per layer step, which is not worth a box.
#![allow(clippy::result_large_err)]

use core::fmt;

use crate::error::PoolError;
use crate::layout::{ExpertLayout, Projection};
use crate::migrate::{migrate, MigrateFailure, MigrateStats};
use crate::plan::MigrationPlan;
use crate::pool::{split_key, ExpertPool, ServeStats, SharedSlotPool};
use crate::schedule::Step;
use crate::sink::SlotSink;
use crate::source::ExpertSource;

/// What one step of one layer did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct StepStats {
    /// Whether the layer refreshed (or, under demand caching, admitted misses) on this step.
    pub refreshed: bool,
    /// What migration copied (on a failure, what completed before it).
    pub migrated: MigrateStats,
    /// The step's hits, misses (served by copy or in place) and invalid ids, counted against the
    /// residency after migration: the experts this step's plan copied in serve it by copy.
    pub served: ServeStats,
}

/// Why a step did not complete. Exhaustive by construction: a step is refused before anything
/// moves, or fails while migrating.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum StepError<S, K> {
    /// The pool refused the step's ids ([`PoolError::TooManyIds`]): nothing was planned, moved
    /// or served.
    Pool(PoolError),
    /// A promotion failed to migrate. The step's ids were served all the same: `stats` counts
    /// them, and the failed promotions' pairs as misses served in place (their slots stay free). Stepping again
    /// retries what the next plan still wants.
    Migrate {
        /// What the step did, with the failure.
        stats: StepStats,
        /// The failed promotion and why.
        failure: MigrateFailure<S, K>,
    },
}

impl<S, K> StepError<S, K> {
    /// The step's counts, when its ids were served.
    pub const fn stats(&self) -> Option<&StepStats> {
        match self {
            Self::Pool(_) => None,
            Self::Migrate { stats, .. } => Some(stats),
        }
    }
}

impl<S: fmt::Display, K: fmt::Display> fmt::Display for StepError<S, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Pool(error) => write!(f, "step refused: {error}"),
            Self::Migrate { failure, .. } => write!(f, "step served from slow memory where {failure}"),
        }
    }
}

impl<S, K> core::error::Error for StepError<S, K>
where
    S: fmt::Debug + fmt::Display,
    K: fmt::Debug + fmt::Display,
{
}

impl ExpertPool {
    /// One step of this layer: plans from `ids` ([`ExpertPool::plan_step`]), copies the plan's
    /// promotions from `source` into `sink` ([`crate::migrate()`]), and serves `ids`
    /// ([`ExpertPool::serve`]). `plan` is the layer's reusable plan; `layout` its expert layout.
    /// Allocates nothing.
    ///
    /// # Errors
    /// [`StepError::Pool`] for a step with too many ids; [`StepError::Migrate`] when a copy
    /// failed, with the step's counts (its ids were served).
    pub fn step<S, K>(
        &mut self,
        step: Step,
        ids: &[u32],
        plan: &mut MigrationPlan,
        layout: &ExpertLayout,
        source: &S,
        sink: &mut K,
    ) -> Result<StepStats, StepError<S::Error, K::Error>>
    where
        S: ExpertSource + ?Sized,
        K: SlotSink + ?Sized,
    {
        self.step_with(step, ids, plan, |pool, plan| migrate(pool, plan, layout, source, sink))
    }

    /// [`ExpertPool::step`] with a migrator of the caller's: `migrate` copies and commits the
    /// plan's promotions as [`crate::migrate()`] does (a parallel migrator, a DMA engine).
    ///
    /// # Errors
    /// As [`ExpertPool::step`].
    pub fn step_with<S, K>(
        &mut self,
        step: Step,
        ids: &[u32],
        plan: &mut MigrationPlan,
        migrate: impl FnOnce(&mut ExpertPool, &MigrationPlan) -> Result<MigrateStats, MigrateFailure<S, K>>,
    ) -> Result<StepStats, StepError<S, K>> {
        let refreshed = self.plan_step(step, ids, plan).map_err(StepError::Pool)?;
        let migrated = migrate(self, plan);
        finish(refreshed, migrated, self.serve(ids))
    }
}

impl SharedSlotPool {
    /// One step of `layer` over the shared slots, as [`ExpertPool::step`] for a layer's own
    /// pool: plans from `ids` ([`SharedSlotPool::plan_step`]), copies the plan's promotions from
    /// `source` into `sink`, and serves `ids` ([`SharedSlotPool::serve`]). Promotions carry keys;
    /// each copy reads the slabs of the key's `(layer, expert)` from `source` and writes them to
    /// the shared slot in `sink` (its [`crate::SlotWrite::layer`] is always 0: the shared
    /// pool's one arena). `layout` is the
    /// expert layout every layer shares. Allocates nothing.
    ///
    /// # Errors
    /// [`StepError::Pool`] for a layer out of range or a step with too many ids (nothing was
    /// planned, moved or served); [`StepError::Migrate`] when a copy failed, with the step's
    /// counts (its ids were served).
    #[allow(clippy::too_many_arguments)]
    pub fn step<S, K>(
        &mut self,
        layer: usize,
        step: Step,
        ids: &[u32],
        plan: &mut MigrationPlan,
        layout: &ExpertLayout,
        source: &S,
        sink: &mut K,
    ) -> Result<StepStats, StepError<S::Error, K::Error>>
    where
        S: ExpertSource + ?Sized,
        K: SlotSink + ?Sized,
    {
        let experts = self.experts();
        let keyed = KeyedSource { source, experts };
        self.step_with(layer, step, ids, plan, |pool, plan| migrate(pool, plan, layout, &keyed, sink))
    }

    /// Copies `plan`'s promotions (a plan of this pool: a step's, or
    /// [`SharedSlotPool::initial_plan`]'s) from `source` into `sink` and commits each, as
    /// [`crate::migrate()`] does for a layer's pool: each key's `(layer, expert)` is read from
    /// `source` and written to the shared slot (see [`SharedSlotPool::step`]).
    ///
    /// # Errors
    /// As [`crate::migrate()`].
    pub fn migrate<S, K>(
        &mut self,
        plan: &MigrationPlan,
        layout: &ExpertLayout,
        source: &S,
        sink: &mut K,
    ) -> Result<MigrateStats, MigrateFailure<S::Error, K::Error>>
    where
        S: ExpertSource + ?Sized,
        K: SlotSink + ?Sized,
    {
        let keyed = KeyedSource { source, experts: self.experts() };
        migrate(self.keyed(), plan, layout, &keyed, sink)
    }

    /// [`SharedSlotPool::step`] with a migrator of the caller's, which copies and commits the
    /// plan's promotions in the pool over keys it is given (keys in
    /// [`crate::Promotion::expert`]; [`SharedSlotPool::split`] names their layer and expert).
    ///
    /// # Errors
    /// As [`SharedSlotPool::step`].
    pub fn step_with<S, K>(
        &mut self,
        layer: usize,
        step: Step,
        ids: &[u32],
        plan: &mut MigrationPlan,
        migrate: impl FnOnce(&mut ExpertPool, &MigrationPlan) -> Result<MigrateStats, MigrateFailure<S, K>>,
    ) -> Result<StepStats, StepError<S, K>> {
        let refreshed = self.plan_step(layer, step, ids, plan).map_err(StepError::Pool)?;
        let migrated = migrate(self.keyed(), plan);
        finish(refreshed, migrated, self.serve(layer, ids))
    }
}

/// A step's stats from whether it refreshed, what its migration did and how its ids were served.
fn finish<S, K>(
    refreshed: bool,
    migrated: Result<MigrateStats, MigrateFailure<S, K>>,
    served: ServeStats,
) -> Result<StepStats, StepError<S, K>> {
    match migrated {
        Ok(migrated) => Ok(StepStats { refreshed, migrated, served }),
        Err(failure) => {
            let stats = StepStats { refreshed, migrated: failure.completed, served };
            Err(StepError::Migrate { stats, failure })
        }
    }
}

/// A source read by key: key `layer × experts + expert` of any requested layer names `expert` of
/// `layer` in the wrapped source (the shared pool's copies).
struct KeyedSource<'a, S: ?Sized> {
    source: &'a S,
    experts: usize,
}

impl<S: ExpertSource + ?Sized> ExpertSource for KeyedSource<'_, S> {
    type Error = S::Error;

    fn expert(&self, _shared_layer: usize, projection: Projection, key: usize) -> Result<&[u8], Self::Error> {
        let (layer, expert) = split_key(key, self.experts);
        self.source.expert(layer, projection, expert)
    }
}

#[cfg(test)]
mod tests {
    use alloc::vec;
    use alloc::vec::Vec;

    use super::*;
    use crate::error::MigrateError;
    use crate::format::Format;
    use crate::layout::StackLayout;
    use crate::pool::{InitialPlacement, PoolConfig};
    use crate::sink::SlotWrite;
    use crate::source::LayerStacks;

    /// Slots of 4 bytes; fails every write into `fail_slot` while it is set.
    struct Slots {
        bytes: Vec<[u8; 4]>,
        fail_slot: Option<usize>,
    }

    impl SlotSink for Slots {
        type Error = &'static str;

        fn write(&mut self, dest: SlotWrite, bytes: &[u8]) -> Result<(), Self::Error> {
            if self.fail_slot == Some(dest.slot) {
                return Err("refused");
            }
            let slot = self.bytes.get_mut(dest.slot).ok_or("no slot")?;
            slot.copy_from_slice(bytes.get(..4).ok_or("short")?);
            Ok(())
        }
    }

    fn layer() -> (ExpertLayout, Vec<u8>) {
        let stack = StackLayout::new(Format::I8, 8, 1, 4).unwrap();
        let layout = ExpertLayout::new(&[(Projection::Down, stack)]).unwrap();
        (layout, (0..8u8).flat_map(|e| [e; 4]).collect())
    }

    #[test]
    fn a_step_plans_migrates_and_serves_the_same_ids() {
        let (layout, bytes) = layer();
        let model = [LayerStacks::new(layout.clone(), &[&bytes[..]]).unwrap()];
        let mut sink = Slots { bytes: vec![[0xff; 4]; 2], fail_slot: None };
        let mut pool = ExpertPool::new(PoolConfig::new(8, 2).initial(InitialPlacement::Cold)).unwrap();
        let mut plan = MigrationPlan::new(2);
        let stats = pool.step(Step::decode(0), &[5, 6, 5, 9], &mut plan, &layout, &model[..], &mut sink).unwrap();
        assert!(stats.refreshed);
        assert_eq!((stats.migrated.copied, stats.migrated.bytes_promoted), (2, 8));
        // Both experts were copied in for this step: their pairs are misses served by copy.
        assert_eq!(
            stats.served,
            ServeStats { hits: 0, misses: 3, served_by_copy: 3, served_in_place: 0, invalid_ids: 1 }
        );
        for expert in [5, 6] {
            let slot = pool.slot_of(expert).unwrap();
            assert_eq!(sink.bytes[slot], [expert as u8; 4]);
        }
    }

    #[test]
    fn a_failed_copy_still_serves_the_ids_and_a_later_step_converges() {
        let (layout, bytes) = layer();
        let model = [LayerStacks::new(layout.clone(), &[&bytes[..]]).unwrap()];
        let mut sink = Slots { bytes: vec![[0xff; 4]; 2], fail_slot: Some(1) };
        let mut pool = ExpertPool::new(PoolConfig::new(8, 2).initial(InitialPlacement::Cold)).unwrap();
        let mut plan = MigrationPlan::new(2);
        let ids = [5, 6, 5];
        let err = pool.step(Step::decode(0), &ids, &mut plan, &layout, &model[..], &mut sink).unwrap_err();
        let StepError::Migrate { stats, failure } = err else { panic!("{err:?}") };
        assert_eq!(failure.error, MigrateError::Sink("refused"));
        assert_eq!(usize::from(failure.failed.slot), 1);
        assert_eq!(stats.migrated.copied, 1);
        // Expert 5 reached slot 0 (served by copy); expert 6's copy failed, so its pair is
        // computed in place.
        assert_eq!(
            stats.served,
            ServeStats { hits: 0, misses: 3, served_by_copy: 2, served_in_place: 1, invalid_ids: 0 }
        );
        assert_eq!((pool.slot_of(5), pool.slot_of(6)), (Some(0), None));
        assert_eq!(err.stats(), Some(&stats));

        sink.fail_slot = None;
        let stats = pool.step(Step::decode(1), &ids, &mut plan, &layout, &model[..], &mut sink).unwrap();
        // Expert 5 was resident before this step; expert 6 is copied in for it.
        assert_eq!(
            stats.served,
            ServeStats { hits: 2, misses: 1, served_by_copy: 1, served_in_place: 0, invalid_ids: 0 }
        );
        assert_eq!(sink.bytes[pool.slot_of(6).unwrap()], [6; 4]);
    }

    #[test]
    #[cfg(feature = "demand")]
    fn a_shared_step_copies_each_key_s_own_layer_and_expert() {
        // Two layers of 8 one-row experts (layer 1's bytes are its experts' ids plus 100) over
        // three shared slots under LRU, cold.
        let (layout, bytes) = layer();
        let other: Vec<u8> = bytes.iter().map(|b| b + 100).collect();
        let model = [
            LayerStacks::new(layout.clone(), &[&bytes[..]]).unwrap(),
            LayerStacks::new(layout.clone(), &[&other[..]]).unwrap(),
        ];
        let mut sink = Slots { bytes: vec![[0xff; 4]; 3], fail_slot: None };
        let config = PoolConfig::new(8, 3).policy(crate::Policy::Lru).initial(InitialPlacement::Cold);
        let mut pool = SharedSlotPool::new(2, config, 8).unwrap();
        let mut plan = MigrationPlan::new(3);
        let stats = pool.step(0, Step::decode(0), &[5, 6], &mut plan, &layout, &model[..], &mut sink).unwrap();
        assert_eq!((stats.migrated.copied, stats.served.served_by_copy), (2, 2));
        let stats = pool.step(1, Step::decode(0), &[5, 9], &mut plan, &layout, &model[..], &mut sink).unwrap();
        assert_eq!((stats.migrated.copied, stats.served.invalid_ids), (1, 1));
        assert_eq!(sink.bytes[pool.slot_of(0, 5).unwrap()], [5; 4]);
        assert_eq!(sink.bytes[pool.slot_of(0, 6).unwrap()], [6; 4]);
        assert_eq!(sink.bytes[pool.slot_of(1, 5).unwrap()], [105; 4]);
        // Layer 0 again: 5 and 6 hit and are pinned before 7 is admitted, so 7 demotes the only
        // key this step does not route: layer 1's 5.
        let stats = pool.step(0, Step::decode(1), &[7, 5, 6], &mut plan, &layout, &model[..], &mut sink).unwrap();
        assert_eq!((stats.served.hits, stats.served.served_by_copy), (2, 1));
        assert_eq!(pool.slot_of(1, 5), None);
        assert_eq!(sink.bytes[pool.slot_of(0, 7).unwrap()], [7; 4]);
        // A layer out of range is refused before anything moves.
        let err = pool.step(2, Step::decode(1), &[1], &mut plan, &layout, &model[..], &mut sink).unwrap_err();
        assert!(matches!(err, StepError::Pool(PoolError::LayerOutOfRange { layer: 2, layers: 2 })));
    }

    #[test]
    fn a_refused_step_serves_nothing() {
        let (layout, bytes) = layer();
        let model = [LayerStacks::new(layout.clone(), &[&bytes[..]]).unwrap()];
        let mut sink = Slots { bytes: vec![[0; 4]; 2], fail_slot: None };
        let mut pool = ExpertPool::new(PoolConfig::new(8, 2)).unwrap();
        let mut plan = MigrationPlan::new(2);
        let ids = vec![0u32; crate::MAX_STEP_IDS + 1];
        let err = pool.step(Step::decode(0), &ids, &mut plan, &layout, &model[..], &mut sink).unwrap_err();
        assert!(matches!(err, StepError::Pool(PoolError::TooManyIds { .. })));
        assert_eq!(err.stats(), None);
        assert_eq!(pool.stats().served.hits + pool.stats().served.misses, 0);
    }
}
