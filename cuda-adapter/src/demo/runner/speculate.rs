//! Speculative copies ([`RunConfig::prefetch`]): once a record of layer `l` is enqueued, the
//! predictor's guesses for layer `l + 1` of the same step are copied into free or staging slots
//! of that layer's pool while layer `l` computes.
//!
//! Ordering, beside the [runner](super)'s:
//!
//! - The copies go on the sink's copy stream after the record's own copies, after its event is
//!   recorded, and before the host waits for that event, so they overlap the record's kernels.
//!   Each record marks only its own layer's slots as read
//!   ([`crate::sink::CudaSlotSink::after_reads_of`]), so a copy into the next layer's slots
//!   waits for no kernel of this record (a slot the pool frees for a guess was last read by an
//!   earlier record, which the copy stream has waited for).
//! - The pool commits a guess once its copy is enqueued; the next record of that layer treats
//!   the guessed experts as copied for its own step: their pairs run after the compute stream
//!   waited on the copy stream, through the table updated for that step.
//! - A guess never takes a resident's slot: only free slots and the pool's staging slots
//!   (the pool's own demotion candidate is never offered).

use expertslab::trace::replay::Sharing;
use expertslab::trace::{Trace, TraceRecord};
use expertslab::{ExpertPool, Policy, PoolConfig, Prefetcher};

use super::{migrate_error, Kernels, Model, Placement, Runner};
use crate::demo::{RunConfig, RunReport};
use crate::driver::Driver;
use crate::error::{CudaError, ResidencyError};

/// The predictor of `run`'s speculative copies with `slots` slots per layer, or why the run cannot have them: they need one
/// pool per layer with slots (a shared pool's slots are read by every layer) under a policy that
/// takes prefetches ([`expertslab::ExpertPool::takes_prefetches`]).
pub(super) fn speculation(
    run: &RunConfig,
    slots: usize,
    model: &Model<'_>,
    trace: &Trace,
) -> Result<Prefetcher, CudaError> {
    let unsupported = |why: String| CudaError::Unsupported(format!("speculative copies: {why}"));
    if slots == 0 || run.sharing != Sharing::PerLayer {
        return Err(unsupported(
            "they need one pool per layer with slots (a shared pool's slots are read by every layer)".into(),
        ));
    }
    let staging = run.prefetch.map_or(0, |p| p.staging);
    if staging == 0 || staging >= slots {
        return Err(unsupported(format!(
            "{staging} staging slots of {slots}: a guess goes only into a staging slot (or a free one), so at least one \
             is needed, and fewer than the slots"
        )));
    }
    let probe = ExpertPool::new(PoolConfig::new(model.experts, slots).policy(run.policy))
        .map_err(|e| CudaError::Residency(ResidencyError::Pool(e)))?;
    if !probe.takes_prefetches() {
        return Err(unsupported(format!("{} takes no prefetch (lru, lfu, lru2 and belady do)", run.policy.name())));
    }
    let predictor = run.prefetch.map_or(expertslab::Predictor::Transitions, |p| p.predictor);
    let max_ids = trace.records().iter().map(|r| trace.ids(r).len()).max().unwrap_or(0).max(1);
    // The guesses go into free or staging slots only, so the policy's scores are never asked
    // for; recency stands in where the policy has no score the predictor keeps.
    let scores = if run.policy == Policy::Lfu { Policy::Lfu } else { Policy::Lru };
    Prefetcher::new(model.layers, model.experts, model.shape.top_k, predictor, scores, false, max_ids)
        .map_err(|e| CudaError::Residency(ResidencyError::Pool(e)))
}

impl<D: Driver + Clone, K: Kernels<D>> Runner<'_, D, K> {
    /// After `record` (layer `layer`, enqueued): learns its routing, and when `next` is the next
    /// layer of the same step and that layer may miss, copies the predictor's guesses for it
    /// into free or staging slots.
    pub(super) fn speculate(
        &mut self,
        layer: usize,
        record: &TraceRecord,
        next: Option<&TraceRecord>,
        trace: &Trace,
        report: &mut RunReport,
    ) -> Result<(), CudaError> {
        // A record enqueued ahead of the device (its layer holds every expert) has no routing the
        // host could know yet: nothing is learnt or guessed from it.
        if self.ahead {
            return Ok(());
        }
        let Some((prefetch, prefetcher)) = self.prefetch.as_mut() else { return Ok(()) };
        let ids = trace.ids(record);
        prefetcher.observe(layer, ids);
        let target = layer + 1;
        if next.is_none_or(|n| n.step != record.step || n.layer as usize != target)
            || self.placement.holds_all(target, self.model.experts)
        {
            return Ok(());
        }
        let Placement::PerLayer(pools) = &mut self.placement else { return Ok(()) };
        let Some(pool) = pools.get_mut(target) else { return Ok(()) };
        let guesses = prefetcher.predict(layer, ids, self.model.experts);
        pool.prefetch(guesses, prefetch.copies, |_, _| false, &mut self.prefetch_plan)
            .map_err(|e| CudaError::Residency(ResidencyError::Pool(e)))?;
        if self.prefetch_plan.is_empty() {
            return Ok(());
        }
        expertslab::migrate(pool, &self.prefetch_plan, self.model.layout, self.model.store, &mut self.sink)
            .map_err(|f| migrate_error(f.error))?;
        if let Some(fresh) = self.fresh.get_mut(target) {
            fresh.extend(self.prefetch_plan.promotions().iter().map(|p| p.expert));
        }
        report.prefetched += self.prefetch_plan.len() as u64;
        Ok(())
    }
}
