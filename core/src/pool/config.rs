//! How a pool is built: its configuration and initial placement.

use crate::policy::{MissOrder, Policy};
use crate::schedule::Schedule;

/// Which experts are resident when a pool is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum InitialPlacement {
    /// Experts `0..slots` in slots `0..slots`, as the TIDE reference starts. Like every
    /// promotion they become resident only once copied: [`crate::ExpertPool::initial_plan`] gives the
    /// plan, [`crate::migrate()`] fills the slots and commits it.
    #[default]
    Warm,
    /// No expert resident until the first refresh.
    Cold,
}

/// How one pool is built: layer index, expert count, slot count, policy, schedule, initial
/// placement, the order a demand policy admits misses in and its staging slots.
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct PoolConfig {
    pub(super) layer: usize,
    pub(super) experts: usize,
    pub(super) slots: usize,
    pub(super) policy: Policy,
    pub(super) schedule: Schedule,
    pub(super) initial: InitialPlacement,
    pub(super) miss_order: MissOrder,
    pub(super) staging: usize,
}

impl PoolConfig {
    /// A pool of `experts` experts and `slots` slots for layer 0 with TIDE placement, refreshing
    /// every forward pass, starting warm. A slot count above the expert count is clamped to it
    /// ([`PoolConfig::slots`]).
    pub const fn new(experts: usize, slots: usize) -> Self {
        Self {
            layer: 0,
            experts,
            slots,
            policy: Policy::Tide,
            schedule: Schedule::EveryForward,
            initial: InitialPlacement::Warm,
            miss_order: MissOrder::Routing,
            staging: 0,
        }
    }

    /// The placement policy.
    pub const fn policy(self, policy: Policy) -> Self {
        Self { policy, ..self }
    }

    /// The layer index this pool serves (plans and sink writes carry it).
    pub const fn layer(self, layer: usize) -> Self {
        Self { layer, ..self }
    }

    /// The expert count (for building several layers' pools from one configuration).
    pub const fn experts(self, experts: usize) -> Self {
        Self { experts, ..self }
    }

    /// The refresh schedule.
    pub const fn schedule(self, schedule: Schedule) -> Self {
        Self { schedule, ..self }
    }

    /// The initial placement.
    pub const fn initial(self, initial: InitialPlacement) -> Self {
        Self { initial, ..self }
    }

    /// The order a demand policy admits a step's misses in ([`MissOrder::Routing`] unless set;
    /// interval policies ignore it).
    pub const fn miss_order(self, miss_order: MissOrder) -> Self {
        Self { miss_order, ..self }
    }

    /// Holds `staging` of the pool's slots for prefetch (0, the default: none). The policy's own
    /// residents then keep at most the other slots, and [`crate::ExpertPool::prefetch`] places a
    /// guess only into a free slot or a staging slot, never into the slot of one of the
    /// policy's residents: a wrong guess costs its copy, not a resident. A staged expert that a
    /// step uses is a hit and joins the policy's residents; the one the policy then ranks
    /// lowest moves to a staging slot without a copy (resident until a guess or a miss takes
    /// its slot). Only for the policies that prefetch (LRU, LFU, LRU-2, Belady):
    /// [`crate::ExpertPool::new`] refuses it for the others.
    pub const fn staging(self, staging: usize) -> Self {
        Self { staging, ..self }
    }

    /// The slots a pool built from this configuration has: the slot count asked for, clamped to
    /// the expert count. The one place the clamp is made.
    pub const fn slots(&self) -> usize {
        if self.slots < self.experts {
            self.slots
        } else {
            self.experts
        }
    }
}
