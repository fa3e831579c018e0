//! Placement policies: how observed routing becomes the resident set. Two families drive the same
//! pool, slot table and migration plans:
//!
//! - **Interval placement** ([`Policy::Tide`], [`Policy::Decay`]): the
//!   resident set is re-decided on refresh steps of the pool's [`crate::Schedule`]; between
//!   refreshes misses are served from slow memory. The refreshed placement serves the step that
//!   triggered it.
//! - **Demand caching** ([`Policy::Lru`], [`Policy::Lfu`], [`Policy::Lru2`],
//!   [`Policy::Belady`]): every step, ids are served in order and each miss is admitted at once,
//!   demoting the policy's demotion candidate when the slots are full. The schedule does not apply.
//! - **Cost-aware demand caching** ([`Policy::Tinylfu`]): as demand caching, but each miss gets a
//!   [`Admission`]: copied only when the expert's expected reuse outweighs the resident it would
//!   displace by a threshold, otherwise served in place (see [`admission`]).
//!
//! Every policy is deterministic (ties go to the lower expert id) and allocates nothing per step.
//!
//! The demand policies (plain and cost-aware) are built only with the crate's `demand` feature (on
//! by default). Without it the [`Policy`] values stay, but a pool refuses them with
//! [`PoolError::PolicyNotBuilt`](crate::PoolError::PolicyNotBuilt), and a firmware that places
//! by TIDE or decay links none of their code.

pub mod admission;
#[cfg(feature = "demand")]
mod demand;
mod interval;
pub(crate) mod select;

use core::fmt;

pub use admission::{Admission, AdmissionConfig};

#[cfg(feature = "demand")]
pub(crate) use demand::{AdmitState, DemandCache, DemandKind};
pub(crate) use interval::{Candidates, IntervalPlacement, RefreshState};

/// Settings of the decayed-frequency policy.
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct DecayConfig {
    half_life: f32,
    margin: f32,
    max_promotions: Option<u16>,
}

/// A decay setting outside its range.
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum PolicyError {
    /// A half-life that is not a positive finite number of steps.
    HalfLife(f32),
    /// A swap margin below 1 or not finite.
    Margin(f32),
    /// A policy name this crate does not know.
    UnknownName,
    /// An admission threshold below 0 or not finite.
    Threshold(f32),
    /// An admission horizon below 0 or not finite.
    Horizon(f32),
}

impl PolicyError {
    /// A short static text naming what went wrong, without the value (for error texts written
    /// without `core::fmt`, which would otherwise link float formatting, as the C interface does
    /// on firmware); [`Display`](fmt::Display) gives the full text.
    pub const fn summary(&self) -> &'static str {
        match self {
            Self::HalfLife(_) => "the decay half-life is not a positive number of steps",
            Self::Margin(_) => "the swap margin is not a finite factor of at least 1",
            Self::UnknownName => "unknown policy name",
            Self::Threshold(_) => "the admission threshold is not a finite number of uses of at least 0",
            Self::Horizon(_) => "the admission horizon is not a finite number of steps of at least 0",
        }
    }
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::HalfLife(v) => write!(f, "decay half-life {v} is not a positive number of steps"),
            Self::Margin(v) => write!(f, "swap margin {v} is not a finite factor of at least 1"),
            Self::UnknownName => f.write_str(self.summary()),
            Self::Threshold(v) => write!(f, "admission threshold {v} is not a finite number of uses of at least 0"),
            Self::Horizon(v) => write!(f, "admission horizon {v} is not a finite number of steps of at least 0"),
        }
    }
}

impl core::error::Error for PolicyError {}

impl DecayConfig {
    /// The default: a half-life of 8 steps, a swap margin of 1.25, no cap.
    pub const DEFAULT: Self = Self { half_life: 8.0, margin: 1.25, max_promotions: None };

    /// Scores halve every `half_life` steps; a target replaces a resident only when its score is
    /// more than `margin` times the resident's; a refresh promotes at most `max_promotions`
    /// experts (the cap on bytes one refresh moves, divided by the bytes of one expert).
    ///
    /// # Errors
    /// [`PolicyError::HalfLife`] unless `half_life` is positive and finite,
    /// [`PolicyError::Margin`] unless `margin` is finite and at least 1.
    pub fn new(half_life: f32, margin: f32, max_promotions: Option<u16>) -> Result<Self, PolicyError> {
        if !(half_life.is_finite() && half_life > 0.0) {
            return Err(PolicyError::HalfLife(half_life));
        }
        if !(margin.is_finite() && margin >= 1.0) {
            return Err(PolicyError::Margin(margin));
        }
        Ok(Self { half_life, margin, max_promotions })
    }

    /// The half-life in steps.
    pub const fn half_life(&self) -> f32 {
        self.half_life
    }

    /// The swap margin.
    pub const fn margin(&self) -> f32 {
        self.margin
    }

    /// The cap on promotions per refresh.
    pub const fn max_promotions(&self) -> Option<u16> {
        self.max_promotions
    }

    /// The per-step decay factor, `0.5^(1 / half_life)`.
    pub fn alpha(&self) -> f32 {
        libm::powf(0.5, 1.0 / self.half_life)
    }
}

impl Default for DecayConfig {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// The order in which a demand policy admits a step's misses ([`crate::PoolConfig::miss_order`]).
/// Interval policies rank a refresh's experts by their counts whatever this says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum MissOrder {
    /// As the step routes them, token by token (the default): each miss is admitted when it is
    /// served, so the experts routed first take the free and demotable slots.
    #[default]
    Routing,
    /// Expert-major on a step of more pairs than slots (a prefill): the step's slots go to its
    /// busiest experts, as many as there are slots, ranked by their pairs in the step (ties to a
    /// resident, then to the one routed first). Those that are resident are pinned; the step's
    /// other residents are not, so they may give up their slots (their pairs then miss, served
    /// in place). After the step's ids are served, the ranked experts that are not resident are
    /// admitted one each, the busiest first, as the policy demotes; their slots' last use is the
    /// step's last id. A step of at most as many pairs as slots is served in routing order.
    Busiest,
}

impl MissOrder {
    /// The orders' names, as [`MissOrder::name`] gives them.
    pub const NAMES: [&'static str; 2] = ["routing", "busiest"];

    /// The order's name.
    pub const fn name(&self) -> &'static str {
        match self {
            Self::Routing => "routing",
            Self::Busiest => "busiest",
        }
    }

    /// The order named `name` (one of [`MissOrder::NAMES`]), or `None`.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "routing" => Some(Self::Routing),
            "busiest" => Some(Self::Busiest),
            _ => None,
        }
    }
}

/// How a pool chooses its resident experts. See the [module docs](self).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum Policy {
    /// TIDE: on refresh steps, the experts with the most hits in that step.
    #[default]
    Tide,
    /// On refresh steps, the experts with the highest decayed hit frequency, with a swap margin
    /// and an optional cap on promotions.
    Decay(DecayConfig),
    /// Demand caching, demoting the least recently used.
    Lru,
    /// Demand caching, demoting the least frequently used.
    Lfu,
    /// Demand caching, demoting by the second-to-last use (LRU-2).
    Lru2,
    /// Demand caching, demoting the resident used farthest in the future (offline optimum; needs
    /// [`crate::ExpertPool::load_future`]).
    Belady,
    /// Cost-aware demand caching: decayed use counts decide, per miss, between a copy (demoting
    /// the lowest-scoring resident) and serving in place. See [`admission`].
    Tinylfu(AdmissionConfig),
}

impl Policy {
    /// Every policy name [`Policy::from_name`] knows.
    pub const NAMES: [&'static str; 7] = ["tide", "decay", "lru", "lfu", "lru2", "belady", "tinylfu"];

    /// The policy's name.
    pub const fn name(&self) -> &'static str {
        match self {
            Self::Tide => "tide",
            Self::Decay(_) => "decay",
            Self::Lru => "lru",
            Self::Lfu => "lfu",
            Self::Lru2 => "lru2",
            Self::Belady => "belady",
            Self::Tinylfu(_) => "tinylfu",
        }
    }

    /// The policy named `name` (decay with [`DecayConfig::DEFAULT`], tinylfu with
    /// [`AdmissionConfig::DEFAULT`]).
    ///
    /// # Errors
    /// [`PolicyError::UnknownName`].
    pub fn from_name(name: &str) -> Result<Self, PolicyError> {
        Ok(match name {
            "tide" => Self::Tide,
            "decay" => Self::Decay(DecayConfig::DEFAULT),
            "lru" => Self::Lru,
            "lfu" => Self::Lfu,
            "lru2" => Self::Lru2,
            "belady" => Self::Belady,
            "tinylfu" => Self::Tinylfu(AdmissionConfig::DEFAULT),
            _ => return Err(PolicyError::UnknownName),
        })
    }

    /// Whether the policy decides on each miss (demand caching, cost-aware or not) rather than
    /// placing on refresh steps.
    pub const fn is_demand(&self) -> bool {
        matches!(self, Self::Lru | Self::Lfu | Self::Lru2 | Self::Belady | Self::Tinylfu(_))
    }

    /// Whether the policy can drive a slot pool shared by several layers
    /// ([`crate::SharedSlotPool`]): every demand policy ([`Policy::is_demand`]), whose state is
    /// per expert; interval policies refresh one layer at a time. The cost-aware policy measures
    /// runs between a layer's consecutive steps, so in a shared pool the layers take turns, one
    /// step each per forward step.
    pub const fn drives_shared_pool(&self) -> bool {
        self.is_demand()
    }

    /// This policy for a shared pool of `layers` layers taking turns: the cost-aware policy's
    /// settings stretched to pool steps (`AdmissionConfig::interleaved`); the others as they
    /// are. Without the `demand` feature no pool builds a demand policy, and nothing changes
    /// (nor links the power function a firmware's decay policy does not call).
    #[cfg_attr(not(feature = "demand"), allow(clippy::unused_self, unused_variables))]
    pub(crate) fn interleaved(self, layers: u32) -> Self {
        match self {
            #[cfg(feature = "demand")]
            Self::Tinylfu(config) => Self::Tinylfu(config.interleaved(layers)),
            other => other,
        }
    }
}

/// A policy this build of the crate leaves out (a demand policy without the `demand` feature).
/// With the feature it has no values, so building a policy's state has no failure path to pay for.
#[cfg(feature = "demand")]
pub(crate) enum NotBuilt {}

/// A policy this build of the crate leaves out (a demand policy without the `demand` feature).
#[cfg(not(feature = "demand"))]
pub(crate) struct NotBuilt;

/// A pool's policy with its state.
#[derive(Debug, Clone)]
pub(crate) enum PolicyState {
    Interval(IntervalPlacement),
    #[cfg(feature = "demand")]
    Demand(DemandCache),
}

impl PolicyState {
    /// The state of `policy` for `experts` experts and `slots` slots.
    ///
    /// # Errors
    /// [`NotBuilt`] for a demand policy when the `demand` feature is off.
    pub(crate) fn new(policy: Policy, experts: usize, slots: usize) -> Result<Self, NotBuilt> {
        #[cfg(feature = "demand")]
        let demand = |kind| Self::Demand(DemandCache::new(kind, experts, slots));
        Ok(match policy {
            Policy::Tide => Self::Interval(IntervalPlacement::hit_count(slots)),
            Policy::Decay(config) => Self::Interval(IntervalPlacement::decay(slots, experts, config)),
            #[cfg(feature = "demand")]
            Policy::Lru => demand(DemandKind::Lru),
            #[cfg(feature = "demand")]
            Policy::Lfu => demand(DemandKind::Lfu),
            #[cfg(feature = "demand")]
            Policy::Lru2 => demand(DemandKind::Lru2),
            #[cfg(feature = "demand")]
            Policy::Belady => demand(DemandKind::Belady),
            #[cfg(feature = "demand")]
            Policy::Tinylfu(config) => Self::Demand(DemandCache::cost_aware(config, experts, slots)),
            #[cfg(not(feature = "demand"))]
            Policy::Lru | Policy::Lfu | Policy::Lru2 | Policy::Belady | Policy::Tinylfu(_) => return Err(NotBuilt),
        })
    }

    /// Sizes the per-slot state for `slots` slots (after the pool emptied the slots it drops).
    pub(crate) fn set_slots(&mut self, slots: usize) {
        match self {
            Self::Interval(placement) => placement.set_slots(slots),
            #[cfg(feature = "demand")]
            Self::Demand(cache) => cache.set_slots(slots),
        }
    }
}
