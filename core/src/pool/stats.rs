//! What a pool counts: its running statistics and one served step's counts.
//!
//! A valid id is one token–expert pair: a **hit** when its expert was resident before the step's
//! routing was known, otherwise a **miss**, either **served by copy** (its expert was copied in
//! for this step) or **served in place** (computed where the weights are). So
//! `misses = served_by_copy + served_in_place`.

use crate::slot_table::Served;

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
    /// How the pool's pairs were served.
    pub served: ServeStats,
    /// Bytes copied by committed promotions.
    pub bytes_promoted: u64,
}

impl PoolStats {
    /// Hits over valid ids, or 0 with none served.
    pub fn hit_rate(&self) -> f64 {
        self.served.hit_rate()
    }

    /// Adds `other`'s counters to these.
    pub fn add(&mut self, other: &PoolStats) {
        self.refreshes = self.refreshes.saturating_add(other.refreshes);
        self.promotions = self.promotions.saturating_add(other.promotions);
        self.demotions = self.demotions.saturating_add(other.demotions);
        self.served.add(&other.served);
        self.bytes_promoted = self.bytes_promoted.saturating_add(other.bytes_promoted);
    }
}

/// How token–expert pairs were served: one step's, or a pool's, a replay's or a run's over many
/// steps. The one set of pair counters every report embeds. Each count saturates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct ServeStats {
    /// Valid ids whose expert was resident before their step was planned.
    pub hits: u64,
    /// Valid ids that were not hits: `served_by_copy + served_in_place`.
    pub misses: u64,
    /// Misses whose expert was copied in for their step and served them from its slot.
    pub served_by_copy: u64,
    /// Misses computed from slow memory (their expert not resident).
    pub served_in_place: u64,
    /// Ids at or past the expert count, ignored.
    pub invalid_ids: u64,
}

impl ServeStats {
    /// Valid pairs: hits and misses.
    pub const fn pairs(&self) -> u64 {
        self.hits.saturating_add(self.misses)
    }

    /// Hits over valid pairs, or 0 with none.
    pub fn hit_rate(&self) -> f64 {
        match self.pairs() {
            0 => 0.0,
            pairs => self.hits as f64 / pairs as f64,
        }
    }

    /// Adds `other`'s counts to these.
    pub fn add(&mut self, other: &ServeStats) {
        self.hits = self.hits.saturating_add(other.hits);
        self.misses = self.misses.saturating_add(other.misses);
        self.served_by_copy = self.served_by_copy.saturating_add(other.served_by_copy);
        self.served_in_place = self.served_in_place.saturating_add(other.served_in_place);
        self.invalid_ids = self.invalid_ids.saturating_add(other.invalid_ids);
    }

    /// Counts one classified id.
    pub(crate) fn count(&mut self, served: Served) {
        let counter = match served {
            Served::Invalid => &mut self.invalid_ids,
            Served::Hit => &mut self.hits,
            Served::ByCopy => {
                self.misses = self.misses.saturating_add(1);
                &mut self.served_by_copy
            }
            Served::InPlace => {
                self.misses = self.misses.saturating_add(1);
                &mut self.served_in_place
            }
        };
        *counter = counter.saturating_add(1);
    }
}
