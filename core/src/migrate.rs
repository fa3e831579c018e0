//! Migration: copying a plan's promotions from slow memory into slots, committing each one only
//! after its copy completed.

use crate::error::MigrateError;
use crate::layout::{ExpertLayout, Projection};
use crate::name::stack_name;
use crate::plan::{MigrationPlan, Promotion};
use crate::pool::{ExpertPool, PromotionState};
use crate::sink::{SlotSink, SlotWrite, StackSink};
use crate::source::{ExpertSource, StackSource};

/// What a migration did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct MigrateStats {
    /// Promotions copied and committed by this call.
    pub copied: usize,
    /// Promotions found already committed (by an earlier, interrupted call), skipped.
    pub skipped: usize,
    /// Bytes copied by this call (its committed promotions' bytes).
    pub bytes_promoted: u64,
}

impl MigrateStats {
    /// Adds `other`'s counts to these.
    pub fn add(&mut self, other: &MigrateStats) {
        self.copied = self.copied.saturating_add(other.copied);
        self.skipped = self.skipped.saturating_add(other.skipped);
        self.bytes_promoted = self.bytes_promoted.saturating_add(other.bytes_promoted);
    }
}

/// A migration that stopped at a failed promotion.
///
/// `failed` was not committed and its slot is free; every promotion before it was committed
/// (`completed` tells what all committed promotions moved). [`migrate`] attempts nothing after
/// `failed`; a parallel migrator may have committed later promotions whose copies completed, and
/// `completed` counts them too. Migrating the same plan again skips what completed and retries the
/// rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct MigrateFailure<S, K> {
    /// Why the promotion failed.
    pub error: MigrateError<S, K>,
    /// The promotion that failed.
    pub failed: Promotion,
    /// What completed before it.
    pub completed: MigrateStats,
}

impl<S: core::fmt::Display, K: core::fmt::Display> core::fmt::Display for MigrateFailure<S, K> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "promoting expert {} into slot {} failed after {} completed promotions: {}",
            self.failed.expert, self.failed.slot, self.completed.copied, self.error
        )
    }
}

impl<S, K> core::error::Error for MigrateFailure<S, K>
where
    S: core::fmt::Debug + core::fmt::Display,
    K: core::fmt::Debug + core::fmt::Display,
{
}

/// Copies each promotion of `plan` from `source` into `sink`, in plan order, and commits it to
/// `pool` once its slabs are written and the sink has finished the slot. `layout` is the layer's
/// expert layout: one slab per projection, each checked against its length.
///
/// Promotions already committed (a retry after a failure) are skipped. On the first failure the
/// migration stops: the failed promotion's slot stays free, nothing after it is attempted, and the
/// pool still holds exactly the experts whose bytes are in their slots.
///
/// # Errors
/// [`MigrateFailure`] naming the promotion and the cause: a stale plan ([`MigrateError::Plan`]),
/// the source, a slab of the wrong length, or the sink.
pub fn migrate<S, K>(
    pool: &mut ExpertPool,
    plan: &MigrationPlan,
    layout: &ExpertLayout,
    source: &S,
    sink: &mut K,
) -> Result<MigrateStats, MigrateFailure<S::Error, K::Error>>
where
    S: ExpertSource + ?Sized,
    K: SlotSink + ?Sized,
{
    let mut report = MigrateStats::default();
    let fail = |error, failed, completed| MigrateFailure { error, failed, completed };
    for &promotion in plan.promotions() {
        match pool.check_planned(plan, promotion) {
            Ok(PromotionState::Done) => {
                report.skipped = report.skipped.saturating_add(1);
                continue;
            }
            Ok(PromotionState::Pending) => {}
            Err(e) => return Err(fail(MigrateError::Plan(e), promotion, report)),
        }
        let bytes =
            copy_expert(pool.layer(), promotion, layout, source, sink).map_err(|e| fail(e, promotion, report))?;
        pool.commit(promotion, bytes).map_err(|e| fail(MigrateError::Plan(e), promotion, report))?;
        report.copied = report.copied.saturating_add(1);
        report.bytes_promoted = report.bytes_promoted.saturating_add(bytes);
    }
    Ok(report)
}

/// Copies every projection of one promotion and finishes the slot; returns the bytes copied.
fn copy_expert<S, K>(
    layer: usize,
    promotion: Promotion,
    layout: &ExpertLayout,
    source: &S,
    sink: &mut K,
) -> Result<u64, MigrateError<S::Error, K::Error>>
where
    S: ExpertSource + ?Sized,
    K: SlotSink + ?Sized,
{
    let slot = usize::from(promotion.slot);
    let mut bytes = 0u64;
    for slab in expert_slabs(source, layer, usize::from(promotion.expert), layout) {
        let ExpertSlab { index, projection, bytes: slab } = slab?;
        sink.write(SlotWrite { layer, slot, projection, index }, slab).map_err(MigrateError::Sink)?;
        bytes = bytes.saturating_add(slab.len() as u64);
    }
    sink.finish(layer, slot).map_err(MigrateError::Sink)?;
    Ok(bytes)
}

/// One projection's slab of one expert, as [`expert_slabs`] gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExpertSlab<'a> {
    /// The projection's position in the layout.
    pub index: usize,
    /// The projection.
    pub projection: Projection,
    /// The slab, checked to be as long as the layout says.
    pub bytes: &'a [u8],
}

/// The slabs of `expert` in every projection of `layout`, from `source`, each checked against
/// the layout's length: what a promotion copies. For custom migrators (parallel, DMA) that place
/// the bytes themselves; [`migrate`] uses it too. `K` is the migrator's sink error type.
///
/// # Errors
/// Each item: [`MigrateError::Source`] when the source fails, [`MigrateError::SlabLength`] when a
/// slab's length is not the layout's.
pub fn expert_slabs<'a, S, K>(
    source: &'a S,
    layer: usize,
    expert: usize,
    layout: &'a ExpertLayout,
) -> impl Iterator<Item = Result<ExpertSlab<'a>, MigrateError<S::Error, K>>> + 'a
where
    S: ExpertSource + ?Sized,
{
    layout.projections().iter().enumerate().map(move |(index, &(projection, stack))| {
        let bytes = source.expert(layer, projection, expert).map_err(MigrateError::Source)?;
        if bytes.len() != stack.expert_bytes() {
            return Err(MigrateError::SlabLength { projection, expected: stack.expert_bytes(), actual: bytes.len() });
        }
        Ok(ExpertSlab { index, projection, bytes })
    })
}

/// Why pushing full stacks failed: the source (`S`) or the sink (`K`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum PushError<S, K> {
    /// The source could not give a stack.
    Source(S),
    /// The sink refused a stack.
    Sink(K),
}

impl<S: core::fmt::Display, K: core::fmt::Display> core::fmt::Display for PushError<S, K> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Source(e) => write!(f, "source: {e}"),
            Self::Sink(e) => write!(f, "sink: {e}"),
        }
    }
}

impl<S, K> core::error::Error for PushError<S, K>
where
    S: core::fmt::Debug + core::fmt::Display,
    K: core::fmt::Debug + core::fmt::Display,
{
}

/// Pushes every projection stack of layer `layer` (as `layout` lists them) to `sink` under its
/// GGUF name: the full, lossless refresh for runtimes that take whole parameters. Returns the
/// bytes pushed.
///
/// # Errors
/// [`PushError`] from the first stack that failed; stacks before it were pushed.
pub fn push_stacks<S, K>(
    layer: usize,
    layout: &ExpertLayout,
    source: &S,
    sink: &mut K,
) -> Result<u64, PushError<S::Error, K::Error>>
where
    S: StackSource + ?Sized,
    K: StackSink + ?Sized,
{
    let mut bytes = 0u64;
    for &(projection, _) in layout.projections() {
        let stack = source.stack(layer, projection).map_err(PushError::Source)?;
        sink.write_stack(&stack_name(layer, projection), layer, projection, stack).map_err(PushError::Sink)?;
        bytes = bytes.saturating_add(stack.len() as u64);
    }
    Ok(bytes)
}
