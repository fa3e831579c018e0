//! What a pool counts: its running statistics and one served step's counts.

/// Counters of one pool since it was built. They saturate rather than wrap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct PoolStats {
    /// Refreshes run (scheduled, prefill or requested).
    pub refreshes: u64,
    /// Promotions committed (copies completed).
    pub promotions: u64,
    /// Demotions (slots freed by refreshes, and by slot-count changes that drop slots).
    pub demotions: u64,
    /// Valid ids served from a resident expert.
    pub hits: u64,
    /// Valid ids served from slow memory.
    pub misses: u64,
    /// Ids at or past the expert count, ignored.
    pub invalid_ids: u64,
    /// Bytes copied by committed promotions.
    pub bytes_promoted: u64,
}

impl PoolStats {
    /// Hits over valid ids, or 0 with none served.
    pub fn hit_rate(&self) -> f64 {
        let served = self.hits.saturating_add(self.misses);
        if served == 0 {
            0.0
        } else {
            self.hits as f64 / served as f64
        }
    }

    /// Adds `other`'s counters to these.
    pub fn add(&mut self, other: &PoolStats) {
        self.refreshes = self.refreshes.saturating_add(other.refreshes);
        self.promotions = self.promotions.saturating_add(other.promotions);
        self.demotions = self.demotions.saturating_add(other.demotions);
        self.hits = self.hits.saturating_add(other.hits);
        self.misses = self.misses.saturating_add(other.misses);
        self.invalid_ids = self.invalid_ids.saturating_add(other.invalid_ids);
        self.bytes_promoted = self.bytes_promoted.saturating_add(other.bytes_promoted);
    }
}

/// Hits, misses and invalid ids of one served step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct ServeStats {
    /// Valid ids whose expert was resident. Each count saturates at `u32::MAX`.
    pub hits: u32,
    /// Valid ids whose expert was not resident.
    pub misses: u32,
    /// Ids at or past the expert count.
    pub invalid: u32,
}
