//! The host's share of a record: the pairs the miss rule serves on the CPU (step 5 of the
//! [runner](super)).

use expertslab_std::ffn::PairSlabs;

use expertslab::trace::replay::{count_uses, split_misses, FetchCap};

use super::{Kernels, Runner};

/// How long the host's threads spin after a layer step's pairs, waiting for the next step's
/// ([`expertslab_std::ffn::ExpertFfn::keep_warm`]): longer than a decode step of a large model.
pub(crate) const HOST_WARM: std::time::Duration = std::time::Duration::from_millis(5);
use crate::driver::Driver;
use crate::error::CudaError;
use crate::ffn::MissRule;

impl<D: Driver + Clone, K: Kernels<D>> Runner<'_, D, K> {
    /// Under [`MissRule::Balanced`] with a cap, how many of the record's missed experts (not
    /// resident before it, by `self.before`) the pool may promote: the share [`split_misses`]
    /// gives the link, the most used first, the rest left to the host. `None` under the other
    /// rules and [`FetchCap::Uncapped`].
    pub(super) fn fetch_cap(&mut self, ids: &[u32]) -> Option<u32> {
        let MissRule::Balanced(c, cap) = self.rule else { return None };
        if cap == FetchCap::Uncapped {
            return None;
        }
        let missed = ids.iter().zip(&self.before).filter(|(_, before)| before.is_none()).map(|(&id, _)| id);
        count_uses(missed, &mut self.missed);
        self.counts.clear();
        self.counts.extend(self.missed.iter().map(|&(_, n)| n));
        self.counts.sort_unstable_by(|a, b| b.cmp(a));
        let k = split_misses(&self.counts, &c.split(0.0), cap);
        Some(u32::try_from(k).unwrap_or(u32::MAX))
    }

    /// The host's pairs of a record (step 5): the layer's input `x` copied to the host (or the
    /// run's activations for layer 0's input), the pairs computed into `host_parts`.
    pub(super) fn host_step(&mut self, layer: usize, ids: &[u32], x: u64) -> Result<(), CudaError> {
        let (top_k, hidden) = (self.model.shape.top_k, self.model.shape.hidden);
        let tokens = ids.len() / top_k.max(1);
        let len = tokens * hidden;
        let input: Vec<f32> = if x == self.x.ptr {
            self.model.activations.get(..len).ok_or(CudaError::UnknownLayer { layer })?.to_vec()
        } else {
            self.host_x.resize(len * 4, 0);
            // SAFETY: `x` is the previous record's output, `len` f32 long, whose kernels ended
            // (the host waited on their event before this record).
            unsafe { self.driver.copy_to_host(&mut self.host_x, x)? };
            self.host_x.chunks_exact(4).map(|b| b.try_into().map_or(f32::NAN, f32::from_le_bytes)).collect()
        };
        let store = self.model.store;
        let pairs = self
            .host_pairs
            .iter()
            .map(|&pair| {
                let expert = ids.get(pair).copied().unwrap_or(0) as usize;
                PairSlabs::from_source(store, layer, expert, pair / top_k.max(1))
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.host_parts.resize(pairs.len() * hidden, 0.0);
        let ffn = self.model.host.as_ref().ok_or(CudaError::Unsupported("no host FFN".into()))?;
        ffn.parts(&pairs, &input, &mut self.host_parts)
            .map_err(|e| CudaError::Unsupported(format!("host pairs of layer {layer}: {e}")))?;
        // The next layer step's pairs find the threads awake.
        ffn.keep_warm(HOST_WARM);
        Ok(())
    }
}
