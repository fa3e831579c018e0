//! Step 3 of the [runner](super): each pair's source, the step's misses planned together by
//! the miss rule (scratch copies, bus reads, the host, splits).

use expertslab::Projection;

use super::{Kernels, RunReport, Runner};
use crate::driver::Driver;
use crate::error::CudaError;
use crate::ffn::{MissAction, PairSource};

impl<D: Driver + Clone, K: Kernels<D>> Runner<'_, D, K> {
    /// Fills `sources` with each pair of `ids` (layer `layer`, after the pool's step, which
    /// copied `promotions` experts), plans the misses the pool left by the rule and enqueues
    /// their scratch copies; returns the bytes those copies move.
    pub(super) fn pair_sources(
        &mut self,
        layer: usize,
        ids: &[u32],
        promotions: usize,
        report: &mut RunReport,
    ) -> Result<u64, CudaError> {
        let (layout, store) = (self.model.layout, self.model.store);
        let expert_bytes = self.model.expert_bytes as u64;
        let down_bytes = layout.find(Projection::Down)?.1.expert_bytes() as u64;
        let mut copied = 0u64;
        self.sources.clear();
        self.scratch_of.clear();
        self.host_pairs.clear();
        self.split_pairs.clear();
        let placement = &self.placement;
        self.missed.count(ids.iter().copied().filter(|&id| placement.slot_of(layer, id as usize).is_none()));
        self.rule.plan(self.missed.counts(), promotions, &mut self.actions);
        if self.model.host.is_none() && self.actions.iter().any(|a| matches!(a, MissAction::Host | MissAction::Split)) {
            return Err(CudaError::Unsupported(format!(
                "misses on the host: the host FFN does not read {} experts",
                self.model.shape.format.name()
            )));
        }
        let mut next_scratch = 0usize;
        for (pair, (&id, &before)) in ids.iter().zip(&self.before).enumerate() {
            let expert = id as usize;
            let action = || {
                let at = self.missed.uses().iter().position(|&(m, _)| m == id).unwrap_or(0);
                self.actions.get(at).copied().unwrap_or(MissAction::Copy)
            };
            let source = match self.placement.slot_of(layer, expert) {
                Some(slot) if before == Some(slot) => PairSource::Resident,
                Some(_) => PairSource::Promoted,
                None => match action() {
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
                        let split = action() == MissAction::Split;
                        let slot = match self.scratch_of.get(&id) {
                            Some(&slot) => slot,
                            None => {
                                let (slot, bytes) = if split {
                                    let slot = self.sink.write_scratch_down(
                                        layer,
                                        next_scratch,
                                        layout,
                                        store,
                                        layer,
                                        expert,
                                    )?;
                                    (slot, down_bytes)
                                } else {
                                    let slot =
                                        self.sink.write_scratch(layer, next_scratch, layout, store, layer, expert)?;
                                    (slot, expert_bytes)
                                };
                                next_scratch += 1;
                                report.bytes_scratch += bytes;
                                copied += bytes;
                                self.scratch_of.insert(id, slot);
                                slot
                            }
                        };
                        if split {
                            report.split_pairs += 1;
                            self.split_pairs.push(pair);
                            PairSource::split(&self.sink, layout, slot)?
                        } else {
                            report.scratch_pairs += 1;
                            PairSource::scratch(&self.sink, layout, slot)?
                        }
                    }
                },
            };
            self.sources.push(source);
        }
        Ok(copied)
    }
}
