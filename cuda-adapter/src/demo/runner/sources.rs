//! Step 3 of the [runner](super): each pair's source, the step's misses planned together by
//! the miss rule (scratch copies, bus reads, the host, splits).

use expertslab::Projection;

use super::{Kernels, RunReport, Runner};
use crate::driver::Driver;
use crate::error::CudaError;
use crate::ffn::{MissAction, PairSource};

impl<D: Driver + Clone, K: Kernels<D>> Runner<'_, D, K> {
    /// Fills `sources` with each pair of `ids` (layer `layer`, after the pool's step, which
    /// copied `promotions` experts) and plans the misses the pool left by the rule: the host's
    /// pairs, the bus reads, and the scratch copies, which [`Runner::scratch_copies`] enqueues
    /// (after the host's pairs started: the host need not wait for the copies' enqueues).
    pub(super) fn pair_sources(
        &mut self,
        layer: usize,
        ids: &[u32],
        promotions: usize,
        report: &mut RunReport,
    ) -> Result<(), CudaError> {
        let store = self.model.store;
        self.sources.clear();
        self.scratch_of.clear();
        self.host_pairs.clear();
        self.split_pairs.clear();
        self.scratch_pairs.clear();
        let placement = &self.placement;
        self.missed.count(ids.iter().copied().filter(|&id| placement.slot_of(layer, id as usize).is_none()));
        self.rule.plan(self.missed.counts(), promotions, &mut self.actions);
        if self.model.host.is_none() && self.actions.iter().any(|a| matches!(a, MissAction::Host | MissAction::Split)) {
            return Err(CudaError::Unsupported(format!(
                "misses on the host: the host FFN does not read {} experts",
                self.model.shape.format.name()
            )));
        }
        for (pair, (&id, &before)) in ids.iter().zip(&self.before).enumerate() {
            let expert = id as usize;
            let at = self.missed.uses().iter().position(|&(m, _)| m == id).unwrap_or(0);
            let action = self.actions.get(at).copied().unwrap_or(MissAction::Copy);
            let source = match self.placement.slot_of(layer, expert) {
                Some(slot) if before == Some(slot) => PairSource::Resident,
                Some(_) => PairSource::Promoted,
                None => match action {
                    MissAction::Host => {
                        report.host_pairs += 1;
                        self.host_pairs.push(pair);
                        PairSource::Host
                    }
                    MissAction::Bus => {
                        report.bus_pairs += 1;
                        PairSource::mapped(self.sink.host(), store, layer, expert)?
                    }
                    MissAction::Copy | MissAction::Split => {
                        let split = action == MissAction::Split;
                        if split {
                            self.split_pairs.push(pair);
                        }
                        self.scratch_pairs.push((pair, split));
                        // Replaced by the scratch slot's source in `scratch_copies`.
                        PairSource::Host
                    }
                },
            };
            self.sources.push(source);
        }
        Ok(())
    }

    /// Enqueues the scratch copies [`Runner::pair_sources`] planned for `ids` (layer `layer`),
    /// one per missed expert (down only for a split), and sets their pairs' sources; returns the
    /// bytes they move.
    pub(super) fn scratch_copies(
        &mut self,
        layer: usize,
        ids: &[u32],
        report: &mut RunReport,
    ) -> Result<u64, CudaError> {
        let (layout, store) = (self.model.layout, self.model.store);
        let expert_bytes = self.model.expert_bytes as u64;
        let down_bytes = layout.find(Projection::Down)?.1.expert_bytes() as u64;
        let (mut copied, mut next_scratch) = (0u64, 0usize);
        for i in 0..self.scratch_pairs.len() {
            let Some(&(pair, split)) = self.scratch_pairs.get(i) else { break };
            let id = ids.get(pair).copied().ok_or(CudaError::UnknownLayer { layer })?;
            let expert = id as usize;
            let slot = match self.scratch_of.get(&id) {
                Some(&slot) => slot,
                None => {
                    let (slot, bytes) = if split {
                        let slot = self.sink.write_scratch_down(layer, next_scratch, layout, store, layer, expert)?;
                        (slot, down_bytes)
                    } else {
                        (self.sink.write_scratch(layer, next_scratch, layout, store, layer, expert)?, expert_bytes)
                    };
                    next_scratch += 1;
                    report.bytes_scratch += bytes;
                    copied += bytes;
                    self.scratch_of.insert(id, slot);
                    slot
                }
            };
            let source = if split {
                report.split_pairs += 1;
                PairSource::split(&self.sink, layout, slot)?
            } else {
                report.scratch_pairs += 1;
                PairSource::scratch(&self.sink, layout, slot)?
            };
            if let Some(s) = self.sources.get_mut(pair) {
                *s = source;
            }
        }
        Ok(copied)
    }
}
