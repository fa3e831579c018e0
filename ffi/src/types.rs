//! The value types C fills or reads: layouts, policy and pool settings, steps, statistics.
//!
//! Fields that name an enum's value are `uint32_t` in structs C fills, so that a value outside the
//! enum is an `ES_STATUS_INVALID_ARGUMENT`, not undefined behaviour.

use core::ffi::c_char;
use core::num::NonZeroU32;

use expertslab::trace::replay::ReplayStats;
use expertslab::{
    AdmissionConfig, DecayConfig, InitialPlacement, MigrateStats, MissOrder, Mode, Policy, PoolStats, Projection,
    Schedule, ServeStats, Step, StepStats,
};

use crate::status::EsStatus;
use crate::text::{Reason, Text};

/// A projection of an expert.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EsProjection {
    /// The gate projection.
    Gate = 0,
    /// The up projection.
    Up = 1,
    /// The down projection.
    Down = 2,
    /// Gate and up fused in one matrix, gate rows first.
    GateUp = 3,
}

impl EsProjection {
    /// The projection numbered `value`.
    pub(crate) fn from_u32(value: u32) -> Result<Projection, EsStatus> {
        Ok(match value {
            0 => Projection::Gate,
            1 => Projection::Up,
            2 => Projection::Down,
            3 => Projection::GateUp,
            _ => return Err(EsStatus::InvalidArgument),
        })
    }

    /// The number of `projection`.
    pub(crate) fn to_u32(projection: Projection) -> u32 {
        let es = match projection {
            Projection::Gate => EsProjection::Gate,
            Projection::Up => EsProjection::Up,
            Projection::Down => EsProjection::Down,
            _ => EsProjection::GateUp,
        };
        es as u32
    }
}

/// One projection's `[experts, rows, cols]` stack: the element format by its ggml name (`"f32"`,
/// `"f16"`, `"q4_K"`, …) and the dimensions.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct EsStackLayout {
    /// An [`EsProjection`] value.
    pub projection: u32,
    /// The element format's name, NUL-terminated.
    pub format: *const c_char,
    /// Experts in the stack.
    pub experts: usize,
    /// Rows per expert.
    pub rows: usize,
    /// Columns per row (elements).
    pub cols: usize,
}

/// What placement policy a pool runs.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EsPolicyKind {
    /// TIDE: on refresh steps, the experts with the most hits in that step.
    Tide = 0,
    /// Decayed hit frequency on refresh steps (`half_life`, `margin`, `max_promotions`).
    Decay = 1,
    /// Demand caching, demoting the least recently used.
    Lru = 2,
    /// Demand caching, demoting the least frequently used.
    Lfu = 3,
    /// Demand caching, demoting by the second-to-last use.
    Lru2 = 4,
    /// Cost-aware demand caching (`half_life`, `horizon`, `threshold`).
    Tinylfu = 5,
}

/// A placement policy with its settings. [`es_policy_from_name`](crate::es_policy_from_name)
/// fills one with a policy's defaults.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct EsPolicy {
    /// An [`EsPolicyKind`] value.
    pub kind: u32,
    /// Decay and tinylfu: scores halve every `half_life` steps (positive, finite).
    pub half_life: f32,
    /// Decay: a target replaces a resident only above `margin` times its score (at least 1).
    pub margin: f32,
    /// Decay: the cap on promotions per refresh; 0 for none.
    pub max_promotions: u16,
    /// Tinylfu: the steps over which a use rate is credited (at least 0).
    pub horizon: f32,
    /// Tinylfu: a miss is copied only above the victim's score by more than this (at least 0).
    pub threshold: f32,
}

impl EsPolicy {
    /// The policy `policy` with its settings.
    pub(crate) fn from_policy(policy: Policy) -> Result<Self, EsStatus> {
        let decay = DecayConfig::DEFAULT;
        let admission = AdmissionConfig::DEFAULT;
        let mut out = Self {
            kind: EsPolicyKind::Tide as u32,
            half_life: decay.half_life(),
            margin: decay.margin(),
            max_promotions: 0,
            horizon: admission.horizon(),
            threshold: admission.threshold(),
        };
        out.kind = match policy {
            Policy::Tide => EsPolicyKind::Tide,
            Policy::Decay(config) => {
                out.half_life = config.half_life();
                out.margin = config.margin();
                out.max_promotions = config.max_promotions().unwrap_or(0);
                EsPolicyKind::Decay
            }
            Policy::Lru => EsPolicyKind::Lru,
            Policy::Lfu => EsPolicyKind::Lfu,
            Policy::Lru2 => EsPolicyKind::Lru2,
            Policy::Tinylfu(config) => {
                out.half_life = config.half_life();
                out.horizon = config.horizon();
                out.threshold = config.threshold();
                EsPolicyKind::Tinylfu
            }
            // Belady needs the future: it replays (`es_trace_replay`), it does not deploy.
            _ => return Err(EsStatus::InvalidArgument),
        } as u32;
        Ok(out)
    }

    /// The core's policy, or why the settings are out of range.
    pub(crate) fn to_policy(self) -> Result<Policy, PolicyProblem> {
        let policy = match self.kind {
            0 => Policy::Tide,
            1 => {
                let cap = (self.max_promotions > 0).then_some(self.max_promotions);
                Policy::Decay(DecayConfig::new(self.half_life, self.margin, cap).map_err(PolicyProblem::Setting)?)
            }
            2 => Policy::Lru,
            3 => Policy::Lfu,
            4 => Policy::Lru2,
            5 => Policy::Tinylfu(self.admission()?),
            other => return Err(PolicyProblem::Kind(other)),
        };
        Ok(policy)
    }

    /// The cost-aware policy's settings, checked.
    #[cfg(feature = "demand")]
    fn admission(self) -> Result<AdmissionConfig, PolicyProblem> {
        AdmissionConfig::new(self.half_life, self.horizon, self.threshold).map_err(PolicyProblem::Setting)
    }

    /// The cost-aware policy's settings: a library built without the `demand` feature refuses
    /// the policy when the pool is built (`PoolError::PolicyNotBuilt`), so they are not checked
    /// (which would link the checks for nothing).
    #[cfg(not(feature = "demand"))]
    fn admission(self) -> Result<AdmissionConfig, PolicyProblem> {
        Ok(AdmissionConfig::DEFAULT)
    }
}

/// Why an [`EsPolicy`] names no policy.
#[derive(Debug)]
pub(crate) enum PolicyProblem {
    Kind(u32),
    Setting(expertslab::PolicyError),
}

impl Reason for PolicyProblem {
    fn write(&self, text: &mut Text<'_>) {
        match self {
            Self::Kind(kind) => {
                text.put("policy kind ").num(*kind as usize).put(" is not an EsPolicyKind");
            }
            Self::Setting(error) => error.write(text),
        }
    }
}

/// When a layer refreshes its placement.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EsScheduleKind {
    /// Every forward pass (`interval` unused).
    EveryForward = 0,
    /// Every `interval` decode steps.
    EveryDecodeSteps = 1,
    /// Every `interval` denoising steps.
    EveryDenoiseSteps = 2,
}

/// A refresh schedule.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct EsSchedule {
    /// An [`EsScheduleKind`] value.
    pub kind: u32,
    /// The interval in steps (at least 1) for the counted kinds.
    pub interval: u32,
}

impl EsSchedule {
    /// The core's schedule.
    pub(crate) fn to_schedule(self) -> Result<Schedule, &'static str> {
        let every = || NonZeroU32::new(self.interval).ok_or("a schedule interval must be at least 1");
        match self.kind {
            0 => Ok(Schedule::EveryForward),
            1 => Ok(Schedule::EveryDecodeSteps(every()?)),
            2 => Ok(Schedule::EveryDenoiseSteps(every()?)),
            _ => Err("schedule kind is not an EsScheduleKind"),
        }
    }
}

/// Which experts are resident when a pool is built.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EsInitialPlacement {
    /// Experts `0..slots` planned into slots `0..slots` ([`es_pool_initial_plan`](crate::es_pool_initial_plan)).
    Warm = 0,
    /// No expert resident until the first refresh.
    Cold = 1,
}

/// The order in which a demand policy admits a step's misses (`MissOrder` in Rust).
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EsMissOrder {
    /// As the step routes them, token by token.
    Routing = 0,
    /// On a step of more pairs than slots (a prefill), the slots go to the step's busiest
    /// experts, each copied once.
    Busiest = 1,
}

/// How one pool is built. Zero-initialised fields past `slots` take their defaults (routing
/// order, warm start).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct EsPoolConfig {
    /// The layer index (plans and sink writes carry it).
    pub layer: usize,
    /// Experts in the layer.
    pub experts: usize,
    /// Slots (clamped to the expert count).
    pub slots: usize,
    /// The placement policy.
    pub policy: EsPolicy,
    /// The refresh schedule.
    pub schedule: EsSchedule,
    /// An [`EsInitialPlacement`] value.
    pub initial: u32,
    /// An [`EsMissOrder`] value.
    pub miss_order: u32,
}

impl EsPoolConfig {
    /// The core's miss order.
    pub(crate) fn miss_order(self) -> Result<MissOrder, EsStatus> {
        match self.miss_order {
            0 => Ok(MissOrder::Routing),
            1 => Ok(MissOrder::Busiest),
            _ => Err(EsStatus::InvalidArgument),
        }
    }

    /// The core's initial placement.
    pub(crate) fn initial_placement(self) -> Result<InitialPlacement, EsStatus> {
        match self.initial {
            0 => Ok(InitialPlacement::Warm),
            1 => Ok(InitialPlacement::Cold),
            _ => Err(EsStatus::InvalidArgument),
        }
    }
}

/// What a step asks of placement besides its schedule.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EsMode {
    /// Refresh when the schedule (or a prefill) says so.
    Scheduled = 0,
    /// Keep the current placement.
    Reuse = 1,
    /// Refresh whatever the schedule says.
    Refresh = 2,
}

/// One step of one layer.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct EsStep {
    /// The step index the schedule counts.
    pub index: u64,
    /// A prefill block (always refreshes unless the mode is reuse).
    pub prefill: bool,
    /// An [`EsMode`] value.
    pub mode: u32,
}

impl EsStep {
    /// The core's step.
    pub(crate) fn to_step(self) -> Result<Step, EsStatus> {
        let mode = match self.mode {
            0 => Mode::Scheduled,
            1 => Mode::Reuse,
            2 => Mode::Refresh,
            _ => return Err(EsStatus::InvalidArgument),
        };
        let step = if self.prefill { Step::prefill(self.index) } else { Step::decode(self.index) };
        Ok(step.with_mode(mode))
    }
}

/// A pool's counters since it was built.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct EsPoolStats {
    /// Refresh steps.
    pub refreshes: u64,
    /// Promotions committed.
    pub promotions: u64,
    /// Demotions.
    pub demotions: u64,
    /// How the pool's pairs were served.
    pub served: EsServeStats,
    /// Bytes copied into slots.
    pub bytes_promoted: u64,
}

impl From<&PoolStats> for EsPoolStats {
    fn from(s: &PoolStats) -> Self {
        Self {
            refreshes: s.refreshes,
            promotions: s.promotions,
            demotions: s.demotions,
            served: s.served.into(),
            bytes_promoted: s.bytes_promoted,
        }
    }
}

/// How token–expert pairs were served: one step's, or a pool's or a replay's over many steps
/// (embedded in [`EsStepStats`], [`EsPoolStats`] and [`EsReplayStats`]).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct EsServeStats {
    /// Pairs whose expert was resident before their step.
    pub hits: u64,
    /// Pairs that were not hits (`served_by_copy + served_in_place`).
    pub misses: u64,
    /// Misses served from a slot their step's copy filled.
    pub served_by_copy: u64,
    /// Misses computed from slow memory.
    pub served_in_place: u64,
    /// Ids outside the pool's experts.
    pub invalid_ids: u64,
}

impl From<ServeStats> for EsServeStats {
    fn from(s: ServeStats) -> Self {
        Self {
            hits: s.hits,
            misses: s.misses,
            served_by_copy: s.served_by_copy,
            served_in_place: s.served_in_place,
            invalid_ids: s.invalid_ids,
        }
    }
}

/// What one migration copied.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct EsMigrateStats {
    /// Promotions copied and committed by this call.
    pub copied: usize,
    /// Promotions found committed by an earlier, interrupted call and skipped.
    pub skipped: usize,
    /// Bytes copied by this call.
    pub bytes_promoted: u64,
}

impl From<MigrateStats> for EsMigrateStats {
    fn from(s: MigrateStats) -> Self {
        Self { copied: s.copied, skipped: s.skipped, bytes_promoted: s.bytes_promoted }
    }
}

/// What one step of one layer did.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct EsStepStats {
    /// Whether the layer refreshed (or admitted misses) on this step.
    pub refreshed: bool,
    /// What migration copied (on a failure, what completed before it).
    pub migrated: EsMigrateStats,
    /// The step's pairs, counted against the residency after migration.
    pub served: EsServeStats,
}

impl From<StepStats> for EsStepStats {
    fn from(s: StepStats) -> Self {
        Self { refreshed: s.refreshed, migrated: s.migrated.into(), served: s.served.into() }
    }
}

/// The hardware a replay prices.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct EsCostModel {
    /// Bytes of one expert.
    pub expert_bytes: u64,
    /// Seconds to compute one pair from slow memory.
    pub slow_pair_seconds: f64,
    /// Bytes per second into a slot (0: copies cost nothing).
    pub link_bytes_per_second: f64,
}

/// A replay's counters over all layers.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct EsReplayStats {
    /// How the pairs were served.
    pub served: EsServeStats,
    /// Promotions.
    pub promotions: u64,
    /// Demotions.
    pub demotions: u64,
    /// Bytes copied into slots.
    pub bytes_promoted: u64,
    /// Modeled seconds under the cost model.
    pub modeled_time_s: f64,
    /// Experts copied by prefetch (counted in `promotions` and `bytes_promoted` too).
    pub prefetched: u64,
    /// Prefetched experts the step they were prefetched for used.
    pub prefetch_hits: u64,
    /// Bytes of prefetched experts that step did not use.
    pub prefetch_wasted_bytes: u64,
    /// Under the overlapped cost model: experts fetched for misses served in place.
    pub fetched: u64,
    /// Under the overlapped cost model with split misses: experts whose down was fetched while
    /// their pairs' gate and up were computed in place.
    pub split: u64,
}

impl From<&ReplayStats> for EsReplayStats {
    fn from(s: &ReplayStats) -> Self {
        Self {
            served: s.served.into(),
            promotions: s.promotions,
            demotions: s.demotions,
            bytes_promoted: s.bytes_promoted,
            modeled_time_s: s.modeled_time_s,
            prefetched: s.prefetched,
            prefetch_hits: s.prefetch_hits,
            prefetch_wasted_bytes: s.prefetch_wasted_bytes,
            fetched: s.fetched,
            split: s.split,
        }
    }
}
