//! Parallel migration: the promotions of a plan copied into their (disjoint) slots at once with
//! rayon, each committed only after its copy completed.

use expertslab::{
    expert_slabs, migrate, ArenaSink, ExpertLayout, ExpertPool, ExpertSource, LayoutError, MigrateError,
    MigrateFailure, MigrateStats, MigrationPlan, Promotion, PromotionState, SlotArena,
};
use rayon::prelude::*;

/// Copies plans into a slot arena, in parallel when the plan moves enough bytes to pay for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParallelMigrator {
    threshold: usize,
}

impl Default for ParallelMigrator {
    fn default() -> Self {
        Self { threshold: Self::DEFAULT_THRESHOLD }
    }
}

type Failure<E> = MigrateFailure<E, LayoutError>;

impl ParallelMigrator {
    /// Plans moving fewer bytes than this are copied sequentially: below it, waking rayon's
    /// threads and splitting the work cost as much as the copies save (measured in
    /// BENCHMARKS.md: 4 × 1 MiB is slower in parallel, 16 × 1 MiB is 1.7× faster).
    pub const DEFAULT_THRESHOLD: usize = 16 * 1024 * 1024;

    /// A migrator that copies in parallel from `threshold` bytes per plan on.
    pub const fn with_threshold(threshold: usize) -> Self {
        Self { threshold }
    }

    /// The threshold in bytes.
    pub const fn threshold(&self) -> usize {
        self.threshold
    }

    /// Copies `plan`'s promotions from `source` into `buffer`, laid out by `arena`, and commits
    /// each to `pool` once its copy completed: the semantics of the core's [`migrate()`], with the
    /// copies of one plan running at once when they move at least the threshold.
    ///
    /// Promotions already committed are skipped. The promotions before the first one that does
    /// not fit the pool (a stale plan) are copied; on copy failures every promotion whose copy
    /// completed is committed, failed slots stay free, and the first failure in plan order is
    /// returned; migrating the same plan again retries what is left.
    ///
    /// # Errors
    /// [`MigrateFailure`] as [`migrate()`]; the sink errors are the arena's [`LayoutError`]s.
    pub fn migrate<S>(
        &self,
        pool: &mut ExpertPool,
        plan: &MigrationPlan,
        layout: &ExpertLayout,
        source: &S,
        arena: &SlotArena,
        buffer: &mut [u8],
    ) -> Result<MigrateStats, Failure<S::Error>>
    where
        S: ExpertSource + Sync + ?Sized,
        S::Error: Send,
    {
        let Pending { promotions: pending, skipped, misfit: stop } = pending_prefix(pool, plan);
        let bytes = pending.len().saturating_mul(layout.expert_bytes());
        let first = match pending.first() {
            Some(&first) if pending.len() >= 2 && bytes >= self.threshold => first,
            _ => {
                // Too little to split: the core's migration through an arena sink.
                let mut sink = match ArenaSink::new(arena.clone(), pool.layer(), buffer) {
                    Ok(sink) => sink,
                    Err(e) => {
                        return match plan.promotions().first() {
                            Some(&failed) => Err(Failure {
                                error: MigrateError::Sink(e),
                                failed,
                                completed: MigrateStats::default(),
                            }),
                            None => Ok(MigrateStats::default()),
                        }
                    }
                };
                return migrate(pool, plan, layout, source, &mut sink);
            }
        };
        let mut report = MigrateStats { skipped, ..MigrateStats::default() };
        if let Err(e) = arena.check_buffer(buffer) {
            return Err(Failure { error: MigrateError::Sink(e), failed: first, completed: report });
        }

        // One disjoint chunk per slot; each pending promotion takes its slot's chunk.
        let mut chunks: Vec<Option<&mut [u8]>> =
            buffer.chunks_mut(arena.slot_stride()).take(arena.slots()).map(Some).collect();
        let jobs: Vec<(Promotion, Option<&mut [u8]>)> =
            pending.iter().map(|&p| (p, chunks.get_mut(usize::from(p.slot)).and_then(Option::take))).collect();
        let layer = pool.layer();
        let results: Vec<Result<u64, MigrateError<S::Error, LayoutError>>> = jobs
            .into_par_iter()
            .map(|(p, chunk)| {
                let slots = arena.slots();
                let chunk =
                    chunk.ok_or(MigrateError::Sink(LayoutError::SlotOutOfRange { slot: p.slot.into(), slots }))?;
                copy_into_slot(source, layer, p, layout, arena, chunk)
            })
            .collect();

        let mut first_failure = None;
        for (&promotion, result) in pending.iter().zip(results) {
            match result.and_then(|bytes| pool.commit(promotion, bytes).map(|_| bytes).map_err(MigrateError::Plan)) {
                Ok(bytes) => {
                    report.copied = report.copied.saturating_add(1);
                    report.bytes_promoted = report.bytes_promoted.saturating_add(bytes);
                }
                Err(error) => {
                    first_failure.get_or_insert((promotion, error));
                }
            }
        }
        match first_failure.or(stop) {
            Some((failed, error)) => Err(Failure { error, failed, completed: report }),
            None => Ok(report),
        }
    }
}

/// What of a plan is left to copy.
struct Pending<E> {
    /// The promotions to copy, before the first misfit.
    promotions: Vec<Promotion>,
    /// Promotions already committed.
    skipped: usize,
    /// The first promotion that does not fit the pool (a stale or foreign plan), and why.
    misfit: Option<(Promotion, MigrateError<E, LayoutError>)>,
}

fn pending_prefix<E>(pool: &ExpertPool, plan: &MigrationPlan) -> Pending<E> {
    let mut pending = Pending { promotions: Vec::with_capacity(plan.len()), skipped: 0, misfit: None };
    for &p in plan.promotions() {
        match pool.check_planned(plan, p) {
            Ok(PromotionState::Done) => pending.skipped = pending.skipped.saturating_add(1),
            // A pool's plan names distinct experts and slots, so pending promotions never clash.
            Ok(PromotionState::Pending) => pending.promotions.push(p),
            Err(e) => {
                pending.misfit = Some((p, MigrateError::Plan(e)));
                break;
            }
        }
    }
    pending
}

/// Copies one expert's slabs into its slot's chunk of the arena buffer.
fn copy_into_slot<S>(
    source: &S,
    layer: usize,
    promotion: Promotion,
    layout: &ExpertLayout,
    arena: &SlotArena,
    chunk: &mut [u8],
) -> Result<u64, MigrateError<S::Error, LayoutError>>
where
    S: ExpertSource + ?Sized,
{
    let mut bytes = 0u64;
    for slab in expert_slabs(source, layer, usize::from(promotion.expert), layout) {
        let slab = slab?;
        arena.write_projection(chunk, slab.index, slab.bytes).map_err(MigrateError::Sink)?;
        bytes = bytes.saturating_add(slab.bytes.len() as u64);
    }
    Ok(bytes)
}
