//! An offloaded MoE model: a source of expert weights, one pool per MoE layer with its own
//! schedule, and one slot arena per layer in memory the offloader owns, stepped from the routing
//! ids a runtime captures.

use expertslab::{
    push_stacks, ExpertLayout, ExpertPool, LayerPools, LayeredSource, LayoutError, MigrateStats, MigrationPlan,
    PoolConfig, PoolStats, Projection, PushError, ServeStats, SlotArena, StackSink, StackSource, Step, StepError,
    StepStats,
};

use crate::capture::RoutingCapture;
use crate::error::Error;
use crate::ffn::{combine, ExpertFfn, FfnError, PairSlabs};
use crate::parallel::ParallelMigrator;

/// One layer's fast memory: its arena and the buffer it lays slots out in.
#[derive(Debug)]
struct HostLayerMemory {
    layout: ExpertLayout,
    arena: SlotArena,
    buffer: Vec<u8>,
}

/// What one step did, over all layers. Counts saturate rather than wrap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OffloadStats {
    /// Layers that refreshed.
    pub refreshed: usize,
    /// What migration copied.
    pub migrated: MigrateStats,
    /// How the step's pairs were served.
    pub served: ServeStats,
}

impl OffloadStats {
    /// Adds `other`'s counts to these.
    pub fn add(&mut self, other: &OffloadStats) {
        self.refreshed = self.refreshed.saturating_add(other.refreshed);
        self.migrated.add(&other.migrated);
        self.served.add(&other.served);
    }
}

impl From<StepStats> for OffloadStats {
    fn from(stats: StepStats) -> Self {
        Self { refreshed: usize::from(stats.refreshed), migrated: stats.migrated, served: stats.served }
    }
}

/// A model whose experts live in `source` and whose fast memory is one slot arena per MoE layer.
///
/// Each layer refreshes from its own captured ids on its own schedule; promotions are copied by a
/// [`ParallelMigrator`] and committed after their copy; [`Offloader::expert_slab`] serves each
/// expert from its slot when resident and from the source otherwise, so results never depend on
/// placement.
#[derive(Debug)]
pub struct Offloader<S> {
    source: S,
    pools: LayerPools,
    plans: Vec<MigrationPlan>,
    slots: Vec<HostLayerMemory>,
    migrator: ParallelMigrator,
}

impl<S> Offloader<S>
where
    S: LayeredSource<Error = LayoutError> + Sync,
{
    /// One pool per MoE layer of `source`, built from `config` with the layer's index and expert
    /// count (slots, schedule and initial placement as `config` says), and an arena of
    /// `align`-aligned slots per layer.
    ///
    /// # Errors
    /// [`Error::Pool`] or [`Error::Layout`] from building the pools and arenas.
    pub fn new(source: S, config: PoolConfig, align: usize) -> Result<Self, Error> {
        let mut configs = Vec::new();
        let mut slots = Vec::new();
        for layer in source.moe_layers() {
            let missing = LayoutError::LayerOutOfRange { layer, layers: layer };
            let layout = source.layer_layout(layer).ok_or(missing)?.clone();
            let config = config.layer(layer).experts(layout.experts());
            let arena = SlotArena::new(&layout, config.slots(), align)?;
            // Room to align the arena's start inside the buffer.
            let bytes = arena.total_bytes().checked_add(align.saturating_sub(1)).ok_or(LayoutError::Overflow)?;
            let mut buffer = Vec::new();
            buffer.try_reserve_exact(bytes).map_err(|_| Error::Allocation { bytes })?;
            buffer.resize(bytes, 0);
            configs.push(config);
            slots.push(HostLayerMemory { layout, arena, buffer });
        }
        let pools = LayerPools::with_layer_numbers(&configs)?;
        let plans = pools.new_plans();
        Ok(Self { source, pools, plans, slots, migrator: ParallelMigrator::default() })
    }

    /// Uses `migrator` for copies.
    pub fn with_migrator(mut self, migrator: ParallelMigrator) -> Self {
        self.migrator = migrator;
        self
    }

    /// Copies the initial placement (warm starts) of every layer into its slots.
    ///
    /// # Errors
    /// [`Error::Migrate`] naming the layer.
    pub fn warm_up(&mut self) -> Result<MigrateStats, Error> {
        for (pool, plan) in self.pools.pools_mut().iter_mut().zip(self.plans.iter_mut()) {
            pool.initial_plan(plan);
        }
        self.migrate_plans()
    }

    /// One step of every layer, each from its captured ids (see [`Offloader::step_layer`]).
    ///
    /// # Errors
    /// As [`Offloader::step_layer`]; layers before a failing one have stepped.
    pub fn step(&mut self, step: Step, capture: &RoutingCapture) -> Result<OffloadStats, Error> {
        let mut report = OffloadStats::default();
        for position in 0..self.pools.len() {
            let Some(layer) = self.pools.pools().get(position).map(ExpertPool::layer) else { break };
            report.add(&self.step_layer(layer, step, capture.ids(layer))?);
        }
        Ok(report)
    }

    /// One step of layer `layer`, as a runtime calls it when the layer's router has chosen:
    /// the layer plans from `ids` on its own schedule, copies what it promotes, and serves the
    /// ids. Afterwards [`Offloader::expert_slab`] gives each routed expert's weights.
    ///
    /// # Errors
    /// [`Error::Layout`] for a layer without experts, [`Error::Pool`] for a step with too many
    /// ids, [`Error::Migrate`] when a copy failed: the ids were served all the same (the pool's
    /// statistics count them, the failed promotions' pairs as misses) and the pool stays
    /// consistent.
    pub fn step_layer(&mut self, layer: usize, step: Step, ids: &[u32]) -> Result<OffloadStats, Error> {
        let position = self.position(layer)?;
        let (Some(pool), Some(plan), Some(slots)) =
            (self.pools.pools_mut().get_mut(position), self.plans.get_mut(position), self.slots.get_mut(position))
        else {
            return Err(LayoutError::LayerOutOfRange { layer, layers: position }.into());
        };
        let (migrator, source) = (&self.migrator, &self.source);
        let HostLayerMemory { layout, arena, buffer } = slots;
        let buffer = arena.fit(buffer)?;
        let stats = pool
            .step_with(step, ids, plan, |pool, plan| migrator.migrate(pool, plan, layout, source, arena, buffer))
            .map_err(|error| match error {
                StepError::Migrate { failure, .. } => Error::Migrate { layer, failure },
                StepError::Pool(error) => Error::Pool(error),
            })?;
        Ok(OffloadStats::from(stats))
    }

    fn migrate_plans(&mut self) -> Result<MigrateStats, Error> {
        let mut total = MigrateStats::default();
        let layers = self.pools.pools_mut().iter_mut().zip(&self.plans).zip(self.slots.iter_mut());
        for ((pool, plan), slots) in layers {
            total.add(&Self::migrate_layer(&self.migrator, &self.source, pool, plan, slots)?);
        }
        Ok(total)
    }

    fn migrate_layer(
        migrator: &ParallelMigrator,
        source: &S,
        pool: &mut ExpertPool,
        plan: &MigrationPlan,
        slots: &mut HostLayerMemory,
    ) -> Result<MigrateStats, Error> {
        let buffer = slots.arena.fit(&mut slots.buffer)?;
        migrator
            .migrate(pool, plan, &slots.layout, source, &slots.arena, buffer)
            .map_err(|failure| Error::Migrate { layer: pool.layer(), failure })
    }

    /// Expert `expert`'s slab of `projection` in layer `layer`: from its slot when resident
    /// (`true`), from the source otherwise (`false`).
    ///
    /// # Errors
    /// [`LayoutError`] for a layer, projection or expert that does not exist.
    pub fn expert_slab(
        &self,
        layer: usize,
        projection: Projection,
        expert: usize,
    ) -> Result<(&[u8], bool), LayoutError> {
        let position = self.position(layer)?;
        let missing = LayoutError::LayerOutOfRange { layer, layers: self.pools.len() };
        let (Some(pool), Some(slots)) = (self.pools.pools().get(position), self.slots.get(position)) else {
            return Err(missing);
        };
        match pool.slot_of(expert) {
            Some(slot) => {
                let (index, _) = slots.layout.find(projection)?;
                let buffer = slots.arena.fit_ref(&slots.buffer)?;
                Ok((slots.arena.projection_bytes(buffer, slot, index)?, true))
            }
            None => Ok((self.source.expert(layer, projection, expert)?, false)),
        }
    }

    /// The host's decode of layer `layer` for one step, through the library's path: the layer's
    /// pool steps on `ids` ([`Offloader::step_layer`]: its copies land in the layer's slots),
    /// then `ffn` computes every pair from its expert's slot when resident and in place from the
    /// source otherwise, and each token's pairs are combined with its router weights into `y`.
    /// `x` and `y` hold the step's tokens (`tokens × hidden`); `ids` and `weights` are
    /// token-major, `top_k` per token. What a GPU-less runtime, or an edge board with slots in
    /// fast RAM and experts in flash, runs per layer; the output's bits do not depend on
    /// placement ([`Offloader::reference_layer`] gives them with every expert read in place).
    ///
    /// # Errors
    /// As [`Offloader::step_layer`]; [`Error::Ffn`] when `ffn` refuses the pairs (slabs of
    /// another format) or `x` and `y` are not whole tokens of its width; [`Error::Layout`] when
    /// `ids` and `weights` differ in length or are not a whole number per token. The pool steps
    /// only once the lengths are found right.
    #[allow(clippy::too_many_arguments, reason = "one layer step's operands")]
    pub fn decode_layer(
        &mut self,
        ffn: &ExpertFfn,
        layer: usize,
        step: Step,
        ids: &[u32],
        weights: &[f32],
        x: &[f32],
        y: &mut [f32],
    ) -> Result<OffloadStats, Error> {
        // Checked before the pool steps: a refused call changes nothing.
        let (_, top_k) = Self::tokens(ffn, ids, weights, x, y)?;
        let report = self.step_layer(layer, step, ids)?;
        self.compute(ffn, layer, ids, weights, top_k, x, y, true)?;
        Ok(report)
    }

    /// Layer `layer`'s output for `ids` with every expert read in place from the source, the
    /// pools untouched: the output [`Offloader::decode_layer`] must equal bit for bit.
    ///
    /// # Errors
    /// As [`Offloader::decode_layer`], without the pool's.
    pub fn reference_layer(
        &self,
        ffn: &ExpertFfn,
        layer: usize,
        ids: &[u32],
        weights: &[f32],
        x: &[f32],
        y: &mut [f32],
    ) -> Result<(), Error> {
        let (_, top_k) = Self::tokens(ffn, ids, weights, x, y)?;
        self.compute(ffn, layer, ids, weights, top_k, x, y, false)
    }

    /// The step's tokens and top-k: `y` (and `x`) whole tokens of `ffn`'s width, `ids` and
    /// `weights` the same whole number per token.
    #[allow(
        clippy::arithmetic_side_effects,
        reason = "divisors checked non-zero: a width of 0 is refused when the FFN is built"
    )]
    fn tokens(ffn: &ExpertFfn, ids: &[u32], weights: &[f32], x: &[f32], y: &[f32]) -> Result<(usize, usize), Error> {
        let hidden = ffn.hidden();
        let mismatch = |expected: usize, actual: usize| Error::Layout(LayoutError::LengthMismatch { expected, actual });
        if x.len() != y.len() || y.is_empty() || !y.len().is_multiple_of(hidden) {
            return Err(Error::Ffn(FfnError::Length {
                what: "outputs",
                expected: x.len().max(hidden),
                actual: y.len(),
            }));
        }
        let tokens = y.len() / hidden;
        if ids.len() != weights.len() {
            return Err(mismatch(ids.len(), weights.len()));
        }
        if ids.is_empty() || !ids.len().is_multiple_of(tokens) {
            return Err(mismatch(tokens, ids.len()));
        }
        Ok((tokens, ids.len() / tokens))
    }

    /// Every pair of `ids` (`top_k` per token, lengths checked by [`Offloader::tokens`]) by
    /// `ffn`, from slots when `slots` and the expert is resident, else from the source; combined
    /// per token into `y`.
    #[allow(clippy::too_many_arguments, clippy::arithmetic_side_effects, reason = "lengths checked by the callers")]
    fn compute(
        &self,
        ffn: &ExpertFfn,
        layer: usize,
        ids: &[u32],
        weights: &[f32],
        top_k: usize,
        x: &[f32],
        y: &mut [f32],
        slots: bool,
    ) -> Result<(), Error> {
        let hidden = ffn.hidden();
        let slab = |projection: Projection, expert: usize| -> Result<&[u8], LayoutError> {
            if slots {
                self.expert_slab(layer, projection, expert).map(|(slab, _)| slab)
            } else {
                self.source.expert(layer, projection, expert)
            }
        };
        let pairs = ids
            .iter()
            .enumerate()
            .map(|(i, &id)| {
                let expert = id as usize;
                Ok(PairSlabs {
                    gate: slab(Projection::Gate, expert)?,
                    up: slab(Projection::Up, expert)?,
                    down: slab(Projection::Down, expert)?,
                    token: i / top_k,
                })
            })
            .collect::<Result<Vec<_>, LayoutError>>()?;
        let mut parts = vec![0.0f32; pairs.len() * hidden];
        ffn.parts(&pairs, x, &mut parts)?;
        for ((out, w), p) in y.chunks_exact_mut(hidden).zip(weights.chunks(top_k)).zip(parts.chunks(top_k * hidden)) {
            combine(w, p, out);
        }
        Ok(())
    }

    fn position(&self, layer: usize) -> Result<usize, LayoutError> {
        let layers = self.pools.len();
        self.pools.pools().iter().position(|p| p.layer() == layer).ok_or(LayoutError::LayerOutOfRange { layer, layers })
    }

    /// The pools, one per MoE layer in ascending layer order.
    pub fn pools(&self) -> &LayerPools {
        &self.pools
    }

    /// Counters of every layer added up.
    pub fn stats(&self) -> PoolStats {
        self.pools.total_stats()
    }

    /// The source.
    pub fn source(&self) -> &S {
        &self.source
    }
}

impl<S> Offloader<S>
where
    S: LayeredSource<Error = LayoutError> + StackSource<Error = LayoutError> + Sync,
{
    /// Pushes every full stack of every MoE layer to `sink` under its GGUF name: the lossless
    /// full refresh for runtimes that take whole parameters. Returns the bytes pushed.
    ///
    /// # Errors
    /// [`PushError`] from the first stack that failed.
    pub fn push_full<K: StackSink>(&self, sink: &mut K) -> Result<u64, PushError<LayoutError, K::Error>> {
        let mut bytes = 0;
        for (pool, slots) in self.pools.pools().iter().zip(&self.slots) {
            bytes = push_stacks(pool.layer(), &slots.layout, &self.source, sink)?.saturating_add(bytes);
        }
        Ok(bytes)
    }
}
