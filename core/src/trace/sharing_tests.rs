//! Tests of the interleaved replay (a shared pool, prefetch) through the public entry point,
//! against the per-layer replay.

use alloc::vec::Vec;

use super::interleaved::replay;
use super::replay::{replay as replay_any, CostModel, ReplayConfig, ReplayError, ReplayPolicy, ReplayStats, Sharing};
use super::{Trace, TraceHeader, WarmStart};
use crate::policy::Policy;
use crate::pool::InitialPlacement;
use crate::predict::Predictor;
use crate::schedule::Schedule;
use crate::trace::synthetic::{RoutingShape, SyntheticRouting};

/// `expertslab synth --experts 64 --layers 4 --top-k 8 --steps 1000` with these shape flags (40
/// decode steps under Miri, which replays them thousands of times slower).
fn synth(zipf_s: f64, reuse: f64, phase_steps: u64, seed: u64) -> Trace {
    let header = TraceHeader { experts: 64, layers: 4, top_k: 8 };
    let shape = RoutingShape { experts: 64, top_k: 8, zipf_s, reuse, phase_steps };
    let mut layers: Vec<SyntheticRouting> =
        (0..4u64).map(|l| SyntheticRouting::new(shape, seed.wrapping_add(l))).collect();
    let mut trace = Trace::new(header).unwrap();
    let mut ids = Vec::new();
    let steps: u64 = if cfg!(miri) { 41 } else { 1001 };
    for step in 0..steps {
        let tokens = if step == 0 { 64 } else { 1 };
        for (layer, routing) in layers.iter_mut().enumerate() {
            ids.clear();
            routing.step(tokens, &mut ids);
            trace.push(layer as u32, step, step == 0, &ids).unwrap();
        }
    }
    trace
}

fn config(policy: Policy) -> ReplayConfig {
    let cost = CostModel::new(4 << 20, (4 << 20) as f64 / 20e9, 16e9);
    ReplayConfig::new(ReplayPolicy::Pool(policy), 16, Schedule::EveryForward, InitialPlacement::Warm, cost)
}

#[test]
fn interleaving_per_layer_pools_changes_nothing() {
    let trace = synth(0.9, 0.5, 256, 1);
    for policy in [Policy::Tide, Policy::Decay(crate::DecayConfig::DEFAULT), Policy::Lru, Policy::Lfu, Policy::Lru2] {
        let config = config(policy);
        assert_eq!(
            replay(&trace, &config, &WarmStart::new()).unwrap(),
            replay_any(&trace, &config).unwrap(),
            "{}",
            policy.name()
        );
    }
}

/// Modeled time with prefetch (both predictors) at a layer compute time of one copy, over
/// the time without, for the policy and sharing.
fn prefetch_ratio(trace: &Trace, policy: Policy, sharing: Sharing) -> f64 {
    let base = ReplayConfig { sharing, ..config(policy) };
    let copy = base.cost.copy_seconds(base.cost.expert_bytes);
    let with = ReplayConfig { prefetch: Some(Predictor::Both), cost: base.cost.layer_compute(copy), ..base };
    let (without, with) = (replay_any(trace, &base).unwrap().total, replay_any(trace, &with).unwrap().total);
    assert!(with.prefetched > 0 && with.prefetch_hits > 0 && with.prefetch_hits <= with.prefetched);
    assert_eq!(with.prefetch_wasted_bytes, (with.prefetched - with.prefetch_hits) * base.cost.expert_bytes);
    with.modeled_time_s / without.modeled_time_s
}

#[test]
#[cfg_attr(miri, ignore = "modeled gains over 1000-step replays are the test")]
fn prefetch_helps_on_locality_and_costs_little_on_near_uniform_routing() {
    for seed in 1..=3 {
        // The figures of BENCHMARKS.md ("Prefetch"): LRU gains 2-5 %, far from the 10 %.
        let locality = synth(0.9, 0.5, 256, seed);
        assert!(prefetch_ratio(&locality, Policy::Lru, Sharing::PerLayer) < 0.98, "seed {seed}");
        assert!(prefetch_ratio(&locality, Policy::Lru, Sharing::Shared) < 0.96, "seed {seed}");
        let uniform = synth(0.0, 0.0, 256, seed);
        for policy in [Policy::Lru, Policy::Lfu] {
            for sharing in [Sharing::PerLayer, Sharing::Shared] {
                let ratio = prefetch_ratio(&uniform, policy, sharing);
                assert!(ratio <= 1.02, "seed {seed} {} {}: {ratio}", policy.name(), sharing.name());
            }
        }
    }
}

#[test]
#[cfg_attr(miri, ignore = "modeled gains over 1000-step replays are the test")]
fn staging_slots_cost_little_on_near_uniform_routing_and_are_ignored_without_prefetch() {
    let uniform = synth(0.0, 0.0, 256, 1);
    for policy in [Policy::Lru, Policy::Lfu] {
        for sharing in [Sharing::PerLayer, Sharing::Shared] {
            let base = ReplayConfig { sharing, ..config(policy) };
            let copy = base.cost.copy_seconds(base.cost.expert_bytes);
            let cost = base.cost.layer_compute(2.0 * copy);
            let staged = ReplayConfig { prefetch: Some(Predictor::Transitions), staging: 1, cost, ..base };
            let (without, with) =
                (replay_any(&uniform, &base).unwrap().total, replay_any(&uniform, &staged).unwrap().total);
            assert!(with.prefetched > 0);
            assert!(
                with.modeled_time_s <= 1.02 * without.modeled_time_s,
                "{} {} {} {}",
                policy.name(),
                sharing.name(),
                with.modeled_time_s,
                without.modeled_time_s
            );
            let outranking = replay_any(&uniform, &ReplayConfig { staging: 0, ..staged }).unwrap().total;
            assert_ne!(with, outranking, "the staging slots change what is prefetched");
        }
    }
    // A policy that does not prefetch replays as if no staging slot were asked for.
    let tinylfu = ReplayConfig {
        prefetch: Some(Predictor::Both),
        staging: 2,
        ..config(Policy::Tinylfu(crate::AdmissionConfig::DEFAULT))
    };
    assert_eq!(
        replay_any(&uniform, &tinylfu).unwrap(),
        replay_any(&uniform, &ReplayConfig { staging: 0, ..tinylfu }).unwrap()
    );
}

#[test]
fn without_room_for_a_copy_nothing_is_prefetched() {
    let trace = synth(0.9, 0.5, 256, 1);
    let base = config(Policy::Lru);
    let copy = base.cost.copy_seconds(base.cost.expert_bytes);
    let short = ReplayConfig { prefetch: Some(Predictor::Both), cost: base.cost.layer_compute(copy * 0.99), ..base };
    assert_eq!(replay_any(&trace, &short).unwrap(), replay_any(&trace, &base).unwrap());
    assert_eq!(base.cost.layer_compute(copy).prefetch_copies(), 1);
    assert_eq!(base.cost.layer_compute(copy * 2.5).prefetch_copies(), 2);
    assert_eq!(CostModel::new(1, 0.0, 0.0).layer_compute(1.0).prefetch_copies(), usize::MAX);
    // Interval policies and the references cannot drive a shared pool.
    for policy in [ReplayPolicy::Pool(Policy::Tide), ReplayPolicy::Oracle, ReplayPolicy::Uniform] {
        let shared = ReplayConfig { policy, sharing: Sharing::Shared, ..base };
        assert!(matches!(replay_any(&trace, &shared), Err(ReplayError::NotShareable(_))));
    }
}

#[test]
fn a_shared_pool_has_the_slots_of_every_layer() {
    let trace = synth(0.9, 0.9, 256, 1);
    let per_layer = replay_any(&trace, &config(Policy::Lru)).unwrap();
    let shared = replay_any(&trace, &ReplayConfig { sharing: Sharing::Shared, ..config(Policy::Lru) }).unwrap();
    assert_eq!(shared.total.served.pairs(), per_layer.total.served.pairs());
    let mut sum = ReplayStats::default();
    shared.layers.iter().for_each(|(_, l)| sum.add(l));
    assert_eq!(sum, shared.total);
    // With all 64 experts of 4 layers in 256 slots, nothing misses after the warm start.
    let all = ReplayConfig { slots: 64, sharing: Sharing::Shared, ..config(Policy::Lru) };
    let r = replay_any(&trace, &all).unwrap().total;
    assert_eq!(r.served.misses, r.promotions);
    assert_eq!(r.promotions, 0);
}
