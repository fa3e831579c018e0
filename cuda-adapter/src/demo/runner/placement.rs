//! Where a run's residency is decided: no slots, one pool per layer, or one pool shared by the
//! layers (the [runner](super)'s placement).

use expertslab::{ExpertPool, PoolStats, SharedSlotPool};

/// The sink's key of the one arena a shared pool's slots live in (the pool's own layer index).
pub(super) const SHARED_ARENA: usize = 0;

/// Where the run's residency is decided.
pub(super) enum Placement {
    /// No slots: every routed expert is a miss.
    None,
    /// One pool per layer (pool `l` is layer `l`'s, its arena the sink's layer `l`).
    PerLayer(Vec<ExpertPool>),
    /// One pool of `slots × layers` slots for every layer, in the sink's arena
    /// [`SHARED_ARENA`].
    Shared(Box<SharedSlotPool>),
}

impl Placement {
    /// The slot of `expert` of `layer`, if resident.
    pub(super) fn slot_of(&self, layer: usize, expert: usize) -> Option<usize> {
        match self {
            Self::None => None,
            Self::PerLayer(pools) => pools.get(layer).and_then(|p| p.slot_of(expert)),
            Self::Shared(pool) => pool.slot_of(layer, expert),
        }
    }

    /// The sink's arena key layer `layer` reads its slots from.
    pub(super) fn arena(&self, layer: usize) -> usize {
        match self {
            Self::Shared(_) => SHARED_ARENA,
            _ => layer,
        }
    }

    /// Whether every one of a layer's `experts` is resident in `layer`'s slots: then a step of
    /// the layer cannot miss, whatever its routing.
    pub(super) fn holds_all(&self, layer: usize, experts: usize) -> bool {
        match self {
            Self::None => false,
            Self::PerLayer(pools) => {
                pools.get(layer).is_some_and(|p| p.experts() == experts && p.resident() == experts)
            }
            Self::Shared(pool) => (0..experts).all(|e| pool.slot_of(layer, e).is_some()),
        }
    }

    /// The pools' counters, summed.
    pub(super) fn stats(&self) -> PoolStats {
        let mut total = PoolStats::default();
        match self {
            Self::None => {}
            Self::PerLayer(pools) => pools.iter().for_each(|p| total.add(p.stats())),
            Self::Shared(pool) => total.add(pool.stats()),
        }
        total
    }
}
