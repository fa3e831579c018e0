//! Pools for every MoE layer of a model, each refreshed from its own routing ids on its own
//! schedule.

use alloc::vec::Vec;

use crate::error::PoolError;
use crate::plan::MigrationPlan;
use crate::pool::{check_step, ExpertPool, PoolConfig, PoolStats};
use crate::schedule::Step;

/// One [`ExpertPool`] per MoE layer. Layer `l` is refreshed only from layer `l`'s ids and only
/// when layer `l`'s schedule says so.
#[derive(Debug, Clone)]
pub struct LayerPools {
    pools: Vec<ExpertPool>,
}

impl LayerPools {
    /// Builds one pool per config; config `l` serves layer `l` (its own `layer` setting is
    /// replaced by its position).
    ///
    /// # Errors
    /// The first pool's [`PoolError`].
    pub fn new(configs: &[PoolConfig]) -> Result<Self, PoolError> {
        let pools = configs
            .iter()
            .enumerate()
            .map(|(layer, config)| ExpertPool::new(config.layer(layer)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { pools })
    }

    /// Builds one pool per config, each serving the layer its config names
    /// ([`PoolConfig::layer`]): for models whose MoE layers are not numbered `0..n` (leading
    /// dense blocks). Position `i` of every per-layer list is the pool of `configs[i]`.
    ///
    /// # Errors
    /// The first pool's [`PoolError`].
    pub fn with_layer_numbers(configs: &[PoolConfig]) -> Result<Self, PoolError> {
        let pools = configs.iter().map(|config| ExpertPool::new(*config)).collect::<Result<Vec<_>, _>>()?;
        Ok(Self { pools })
    }

    /// Number of layers.
    pub fn len(&self) -> usize {
        self.pools.len()
    }

    /// Whether there are no layers.
    pub fn is_empty(&self) -> bool {
        self.pools.is_empty()
    }

    /// The pools, by layer.
    pub fn pools(&self) -> &[ExpertPool] {
        &self.pools
    }

    /// The pools, by layer, to migrate or serve one layer at a time.
    pub fn pools_mut(&mut self) -> &mut [ExpertPool] {
        &mut self.pools
    }

    /// A plan per layer, each with room for its pool's slots (so refreshes never allocate).
    pub fn new_plans(&self) -> Vec<MigrationPlan> {
        self.pools.iter().map(|p| MigrationPlan::new(p.slots())).collect()
    }

    /// Plans `step` for every layer from that layer's ids (`ids[l]`), each on its own schedule.
    /// Returns how many layers refreshed.
    ///
    /// # Errors
    /// [`PoolError::LayerCountMismatch`] when `ids` or `plans` does not have one entry per layer,
    /// or [`PoolError::TooManyIds`] when a layer's ids are more than
    /// [`MAX_STEP_IDS`](crate::MAX_STEP_IDS). Nothing changes on an error.
    pub fn plan_step(&mut self, step: Step, ids: &[&[u32]], plans: &mut [MigrationPlan]) -> Result<usize, PoolError> {
        let layers = self.pools.len();
        for actual in [ids.len(), plans.len()] {
            if actual != layers {
                return Err(PoolError::LayerCountMismatch { layers, actual });
            }
        }
        // Every layer's step is checked before any layer plans, so an error changes nothing.
        for layer_ids in ids {
            check_step(layer_ids.len())?;
        }
        let mut refreshed = 0usize;
        for ((pool, layer_ids), plan) in self.pools.iter_mut().zip(ids).zip(plans.iter_mut()) {
            refreshed = refreshed.saturating_add(usize::from(pool.plan_step(step, layer_ids, plan)?));
        }
        Ok(refreshed)
    }

    /// The counters of all layers added up.
    pub fn total_stats(&self) -> PoolStats {
        let mut total = PoolStats::default();
        for pool in &self.pools {
            total.add(pool.stats());
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::InitialPlacement;
    use crate::schedule::Schedule;
    use core::num::NonZeroU32;

    #[test]
    fn each_layer_refreshes_from_its_own_ids_on_its_own_schedule() {
        let every3 = Schedule::EveryDecodeSteps(NonZeroU32::new(3).unwrap());
        let cold = PoolConfig::new(16, 2).initial(InitialPlacement::Cold);
        let mut pools = LayerPools::new(&[cold, cold.schedule(every3)]).unwrap();
        let mut plans = pools.new_plans();
        let ids: [&[u32]; 2] = [&[1, 1, 2], &[7, 8, 8]];
        assert_eq!(pools.plan_step(Step::decode(1), &ids, &mut plans), Ok(1));
        let promoted = |plan: &MigrationPlan| plan.promotions().iter().map(|p| p.expert).collect::<Vec<_>>();
        assert_eq!(promoted(&plans[0]), [1, 2]);
        assert!(plans[1].is_empty());
        assert_eq!((plans[0].layer(), pools.pools()[1].layer()), (0, 1));
        assert_eq!(pools.plan_step(Step::decode(3), &ids, &mut plans), Ok(2));
        assert_eq!(promoted(&plans[1]), [8, 7]);
        assert_eq!(pools.total_stats().refreshes, 3);
        let short: [&[u32]; 1] = [&[1]];
        assert_eq!(
            pools.plan_step(Step::decode(0), &short, &mut plans),
            Err(PoolError::LayerCountMismatch { layers: 2, actual: 1 })
        );
        assert_eq!((pools.len(), pools.is_empty()), (2, false));
    }

    #[test]
    fn pools_can_keep_their_configured_layer_numbers() {
        let pools =
            LayerPools::with_layer_numbers(&[PoolConfig::new(4, 1).layer(3), PoolConfig::new(4, 1).layer(7)]).unwrap();
        let layers: Vec<usize> = pools.pools().iter().map(ExpertPool::layer).collect();
        assert_eq!(layers, [3, 7]);
        assert_eq!(pools.new_plans().len(), 2);
        assert!(LayerPools::with_layer_numbers(&[PoolConfig::new(0, 1)]).is_err());
    }
}
