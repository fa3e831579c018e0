//! What a sink reports when copies fail on the device after their writes returned.

use std::fmt;

use expertslab::ExpertPool;

use crate::error::CudaError;

/// One slot of one layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SlotRef {
    /// The layer.
    pub layer: usize,
    /// The slot.
    pub slot: usize,
}

/// Copies that failed on the device, reported at a sync point.
#[derive(Debug, Clone, PartialEq)]
pub struct LateFailure {
    /// What the driver reported.
    pub error: CudaError,
    /// Every slot written since the last confirmed sync: any of them may hold wrong bytes.
    pub suspects: Vec<SlotRef>,
}

impl LateFailure {
    /// Frees every suspect slot in the pool of its layer ([`ExpertPool::demote_slot`], counted
    /// as a demotion); returns how many experts were demoted. Afterwards every resident expert
    /// of these pools is known to be in its slot, and migrating again converges. Refresh the
    /// device slot tables next (after [`crate::DeviceSlotTable::invalidate`]).
    pub fn repair(&self, pools: &mut [ExpertPool]) -> usize {
        let mut demoted = 0usize;
        for suspect in &self.suspects {
            for pool in pools.iter_mut().filter(|p| p.layer() == suspect.layer) {
                if pool.demote_slot(suspect.slot).is_some() {
                    demoted = demoted.saturating_add(1);
                }
            }
        }
        demoted
    }
}

impl fmt::Display for LateFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "slot copies failed ({}); {} slots written since the last sync are suspect",
            self.error,
            self.suspects.len()
        )
    }
}

impl std::error::Error for LateFailure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}
