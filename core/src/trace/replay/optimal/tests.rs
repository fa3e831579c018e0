use super::*;
use crate::pool::InitialPlacement;
use crate::schedule::Schedule;
use crate::trace::replay::{replay, ReplayPolicy};
#[cfg(feature = "demand")]
use crate::trace::synthetic::{RoutingShape, SyntheticRouting};
use crate::trace::TraceHeader;
use proptest::prelude::*;

/// The per-layer bound through the replay (which gives it the pools' start).
fn optimal(t: &Trace, cfg: &ReplayConfig) -> ReplayReport {
    replay(t, &ReplayConfig { policy: ReplayPolicy::Optimal, ..*cfg }).unwrap()
}

/// The shared bound through the replay.
fn optimal_shared(t: &Trace, cfg: &ReplayConfig) -> ReplayReport {
    replay(t, &ReplayConfig { policy: ReplayPolicy::OptimalShared, ..*cfg }).unwrap()
}

fn config(policy: ReplayPolicy, slots: usize, initial: InitialPlacement, cost: CostModel) -> ReplayConfig {
    ReplayConfig::new(policy, slots, Schedule::EveryForward, initial, cost)
}

fn unit_cost(copy_bytes: u64) -> CostModel {
    CostModel::new(copy_bytes, 1.0, 1.0)
}

/// The least modeled time over every placement sequence: for each time point, every set of at
/// most `capacity` keys (layer × experts + expert) may be the residents, copies priced on what
/// enters, pairs of the others priced in place. Exhaustive, by dynamic programming over the
/// resident sets (every sequence ending in the same set shares its future).
fn brute_force(trace: &Trace, cfg: &ReplayConfig, shared: bool) -> f64 {
    let experts = trace.header().experts as usize;
    let slots = cfg.slots.min(experts);
    let keys = experts * trace.header().layers as usize;
    assert!(keys <= 12, "brute force is for tiny traces");
    let copy = cfg.cost.seconds(0, cfg.cost.expert_bytes);
    let pair = cfg.cost.slow_pair_seconds;
    let key = |layer: u32, id: u32| layer as usize * experts + id as usize;
    let warm: u32 = if cfg.initial == InitialPlacement::Warm {
        trace.layers().flat_map(|l| (0..slots).map(move |e| 1u32 << key(l, e as u32))).fold(0, |a, b| a | b)
    } else {
        0
    };
    // Time lines: one per layer, or one shared.
    let mut lines: Vec<(usize, Vec<&TraceRecord>)> = Vec::new();
    if shared {
        lines.push((slots * trace.layers().count(), crate::trace::interleaved::forward_order(trace)));
    } else {
        for l in trace.layers() {
            lines.push((slots, trace.records().iter().filter(|r| r.layer == l).collect()));
        }
    }
    let mut total = 0.0;
    for (capacity, records) in lines {
        let sets: Vec<u32> = (0..1u32 << keys).filter(|s| s.count_ones() as usize <= capacity).collect();
        // Best time per resident set so far; the start set is the warm residents of this line.
        let start = if shared {
            warm
        } else {
            records.first().map_or(0, |r| warm & (((1u32 << experts) - 1) << key(r.layer, 0)))
        };
        let mut best: Vec<(u32, f64)> = vec![(start, 0.0)];
        for r in &records {
            let mut pairs = [0u64; 32];
            for &id in trace.ids(r) {
                if (id as usize) < experts {
                    pairs[key(r.layer, id)] += 1;
                }
            }
            best = sets
                .iter()
                .map(|&set| {
                    let in_place: u64 = (0..keys).filter(|k| set & (1 << k) == 0).map(|k| pairs[k]).sum();
                    let from = best
                        .iter()
                        .map(|&(prev, t)| t + f64::from((set & !prev).count_ones()) * copy)
                        .fold(f64::INFINITY, f64::min);
                    (set, from + in_place as f64 * pair)
                })
                .collect();
        }
        total += best.iter().map(|&(_, t)| t).fold(f64::INFINITY, f64::min);
    }
    total
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

/// Counters that agree with themselves and with the cost model.
fn check_counters(report: &ReplayReport, cost: &CostModel) {
    let mut sum = ReplayStats::default();
    for (_, c) in &report.layers {
        sum.add(c);
        assert_eq!(c.served.hits + c.served.misses, c.served.pairs());
        assert!(c.served.served_in_place <= c.served.misses);
        assert_eq!(c.bytes_promoted, c.promotions * cost.expert_bytes);
        assert!(c.demotions <= c.promotions);
        assert!(close(c.modeled_time_s, cost.seconds(c.served.served_in_place, c.bytes_promoted)));
    }
    assert_eq!(sum, report.total);
}

fn tiny_trace(experts: u32, layers: u32, steps: &[Vec<u32>]) -> Trace {
    let mut t = Trace::new(TraceHeader { experts, layers, top_k: 1 }).unwrap();
    for (i, ids) in steps.iter().enumerate() {
        let layer = i as u32 % layers;
        t.push(layer, (i as u32 / layers) as u64, i < layers as usize, ids).unwrap();
    }
    t
}

#[test]
#[cfg(feature = "demand")]
fn the_shared_bound_follows_restarted_blocks() {
    // Two layers, one slot each (two shared), cold. Block 1 (steps 0, 1) routes layer 0 to
    // expert 0 and layer 1 to expert 2; block 2 restarts at step 0 and routes to 1 and 3. Ordered
    // by step alone, block 2's records would come before block 1's second step.
    let mut t = Trace::new(TraceHeader { experts: 4, layers: 2, top_k: 1 }).unwrap();
    for (block, (e0, e1)) in [(0u32, 2u32), (1, 3)].into_iter().enumerate() {
        for step in 0..2u64 {
            t.push(0, step, step == 0, &[e0; 10]).unwrap();
            t.push(1, step, step == 0, &[e1; 10]).unwrap();
        }
        assert_eq!(t.records().len(), 4 * (block + 1));
    }
    let cost = CostModel::new(1, 1.0, 1.0);
    let cfg = |policy| ReplayConfig {
        sharing: crate::trace::replay::Sharing::Shared,
        ..config(policy, 1, InitialPlacement::Cold, cost)
    };
    let bound = optimal_shared(&t, &cfg(ReplayPolicy::OptimalShared)).total.modeled_time_s;
    let lru = replay(&t, &cfg(ReplayPolicy::Pool(crate::Policy::Lru))).unwrap().total.modeled_time_s;
    // Four copies serve all 80 pairs.
    assert!((bound - 4.0).abs() < 1e-9 && lru >= bound, "bound {bound}, lru {lru}");
}

#[test]
fn a_hand_worked_trace() {
    // One slot, cold. Expert 1 is used 3 times (2 pairs each), expert 0 twice in between.
    let t = tiny_trace(3, 1, &[vec![1, 1], vec![0], vec![1, 1], vec![0], vec![1, 1, 2]]);
    let cfg = |copy| config(ReplayPolicy::Optimal, 1, InitialPlacement::Cold, unit_cost(copy));
    // A copy of 3: keep expert 1 from the first step: 3 + 1 + 1 + 1 (expert 2) = 6.
    let r = optimal(&t, &cfg(3));
    assert!(close(r.total.modeled_time_s, 6.0), "{:?}", r.total);
    assert_eq!(
        (r.total.promotions, r.total.served.hits, r.total.served.misses, r.total.served.served_in_place),
        (1, 4, 5, 3)
    );
    // A copy of 7: never worth it (6 pairs of expert 1 save 6): everything in place, 9.
    let r = optimal(&t, &cfg(7));
    assert!(close(r.total.modeled_time_s, 9.0));
    assert_eq!((r.total.promotions, r.total.served.hits), (0, 0));
    // Copies free: every pair that can be in the slot is; expert 2 shares a step with 1.
    let r = optimal(&t, &cfg(0));
    assert!(close(r.total.modeled_time_s, 1.0));
    assert_eq!(r.total.served.served_in_place, 1);
    // Warm, expert 0 resident from the start: keeping it throughout costs 6 + 1 = 7; dropping it
    // for expert 1 at a copy of 3 gives 3 + 2 + 1 = 6.
    let warm = optimal(&t, &config(ReplayPolicy::Optimal, 1, InitialPlacement::Warm, unit_cost(3)));
    assert!(close(warm.total.modeled_time_s, 6.0));
    assert_eq!(warm.total.demotions, 1);
    check_counters(&warm, &unit_cost(3));
}

#[test]
fn zero_slots_and_empty_traces() {
    let t = tiny_trace(4, 2, &[vec![0, 1], vec![2, 9], vec![3, 3]]);
    let r = optimal(&t, &config(ReplayPolicy::Optimal, 0, InitialPlacement::Warm, unit_cost(1)));
    assert_eq!(
        (r.total.served.pairs(), r.total.served.invalid_ids, r.total.served.served_in_place, r.total.promotions),
        (5, 1, 5, 0)
    );
    let shared = optimal_shared(&t, &config(ReplayPolicy::OptimalShared, 0, InitialPlacement::Warm, unit_cost(1)));
    assert_eq!(shared, r);
    let empty = Trace::new(TraceHeader { experts: 4, layers: 2, top_k: 1 }).unwrap();
    let r = optimal_shared(&empty, &config(ReplayPolicy::OptimalShared, 2, InitialPlacement::Warm, unit_cost(1)));
    assert_eq!(r, ReplayReport { layers: Vec::new(), total: ReplayStats::default() });
}

#[test]
fn weights_order_schedules_as_the_cost_model_does() {
    let cost = |bytes, pair| CostModel::new(bytes, pair, 1e9);
    // Exact: 4 MiB / 1 GB/s and 10 µs, integers in the ratio of the costs.
    let w = Weights::new(&cost(4 << 20, 1e-5), 1000, 8000);
    assert!(((w.copy as f64 / w.pair as f64) / ((4 << 20) as f64 / 1e9 / 1e-5) - 1.0).abs() < 1e-15);
    // Nothing costs: fewest copies; pairs free: fewest copies; copies free: fewest pairs.
    assert_eq!(Weights::new(&cost(0, 0.0), 10, 20), Weights { copy: 21, pair: 1 });
    assert_eq!(Weights::new(&cost(1, f64::NAN), 10, 20), Weights { copy: 21, pair: 1 });
    assert_eq!(Weights::new(&cost(0, 1.0), 10, 20), Weights { copy: 1, pair: 11 });
    // Scales too far apart for exact integers: one side outweighs everything.
    assert_eq!(Weights::new(&cost(1, 1e-300), 10, 20), Weights { copy: 21, pair: 1 });
    assert_eq!(Weights::new(&cost(1, 1e300), 10, 20), Weights { copy: 1, pair: 11 });
    // Beyond exact integers and without a dominant side (only for astronomically long traces):
    // rounded, still in the ratio of the costs.
    let huge = 1u64 << 62;
    let far = CostModel::new(1 << 20, 0.1, 1.0);
    let w = Weights::new(&far, huge, huge);
    assert!(Weights::exact(1.0 * f64::from(1 << 20), 0.1, huge, huge).is_none());
    assert!(((w.copy as f64 / w.pair as f64) / (f64::from(1 << 20) / 0.1) - 1.0).abs() < 1e-4);
    assert!(w.copy.saturating_mul(huge.into()) < WEIGHT_LIMIT);
    assert_eq!(dyadic(0.75), Some((3, -2)));
    assert_eq!(dyadic(f64::MIN_POSITIVE / 4.0), Some((1, -1024)));
    assert_eq!(dyadic(-1.0), None);
}

#[cfg(feature = "demand")]
fn synthetic(shape: RoutingShape, layers: u32, steps: u64, seed: u64) -> Trace {
    let mut t = Trace::new(TraceHeader { experts: shape.experts, layers, top_k: shape.top_k }).unwrap();
    let mut routers: Vec<_> = (0..layers).map(|l| SyntheticRouting::new(shape, seed + u64::from(l))).collect();
    let mut ids = Vec::new();
    for step in 0..steps {
        for (layer, router) in routers.iter_mut().enumerate() {
            ids.clear();
            router.step(if step == 0 { 16 } else { 1 }, &mut ids);
            t.push(layer as u32, step, step == 0, &ids).unwrap();
        }
    }
    t
}

#[cfg(feature = "demand")]
#[test]
fn no_policy_beats_the_bound_on_synthetic_families() {
    let families = [(0.9, 0.5, 64), (0.9, 0.5, 0), (0.9, 0.9, 64), (0.0, 0.0, 64)];
    let costs = [CostModel::new(4 << 20, (4 << 20) as f64 / 20e9, 16e9), CostModel::new(1000, 1.0, 250.0)];
    let policies = ["tide", "decay", "lru", "lfu", "lru2", "belady", "tinylfu", "oracle"];
    // Under Miri (orders of magnitude slower) one family over fewer steps.
    let (sampled, steps) = if cfg!(miri) { (1, 40) } else { (families.len(), 300) };
    for (f, &(zipf_s, reuse, phase_steps)) in families.iter().enumerate().take(sampled) {
        let shape = RoutingShape { experts: 16, top_k: 4, zipf_s, reuse, phase_steps };
        let t = synthetic(shape, 2, steps, f as u64);
        for cost in &costs {
            for initial in [InitialPlacement::Warm, InitialPlacement::Cold] {
                let bound = optimal(&t, &config(ReplayPolicy::Optimal, 5, initial, *cost));
                let shared = optimal_shared(&t, &config(ReplayPolicy::OptimalShared, 5, initial, *cost));
                check_counters(&bound, cost);
                check_counters(&shared, cost);
                let limit = bound.total.modeled_time_s * (1.0 + 1e-9);
                assert!(shared.total.modeled_time_s <= limit, "a shared pool can split itself per layer");
                for name in policies {
                    for tau in [1, 4] {
                        let mut cfg = config(ReplayPolicy::from_name(name).unwrap(), 5, initial, *cost);
                        cfg.schedule = Schedule::EveryDecodeSteps(core::num::NonZeroU32::new(tau).unwrap());
                        let time = replay(&t, &cfg).unwrap().total.modeled_time_s;
                        assert!(
                            time * (1.0 + 1e-9) >= bound.total.modeled_time_s,
                            "family {f} {name} τ={tau} {initial:?}: {time} < bound {}",
                            bound.total.modeled_time_s
                        );
                    }
                    // The same policy over one shared pool: bounded by the shared optimum.
                    let cfg = ReplayConfig {
                        sharing: crate::trace::replay::Sharing::Shared,
                        ..config(ReplayPolicy::from_name(name).unwrap(), 5, initial, *cost)
                    };
                    if let Ok(r) = replay(&t, &cfg) {
                        let time = r.total.modeled_time_s;
                        assert!(time * (1.0 + 1e-9) >= shared.total.modeled_time_s, "family {f} {name} shared");
                    }
                }
            }
        }
    }
}

fn tiny_traces() -> impl Strategy<Value = (Trace, ReplayConfig)> {
    (1u32..=4, 1u32..=2, 1usize..=5, any::<bool>(), 0u64..=6, 0u32..=4, 0usize..=4, 0usize..=5)
        .prop_flat_map(|(experts, layers, steps, warm, copy, pair, slots, restart)| {
            let records = proptest::collection::vec(
                proptest::collection::vec(0u32..experts + 1, 0..=4),
                (steps * layers as usize)..=(steps * layers as usize),
            );
            (Just((experts, layers, warm, copy, pair, slots, restart)), records)
        })
        .prop_map(|((experts, layers, warm, copy, pair, slots, restart), records)| {
            let mut t = Trace::new(TraceHeader { experts, layers, top_k: 1 }).unwrap();
            for (i, ids) in records.iter().enumerate() {
                // Layers interleave, each at its own pace: layer 1 sometimes repeats a step. From
                // round `restart` on (when there is one) a second block restarts the step counter,
                // as a diffusion model's does.
                let layer = i as u32 % layers;
                let round = i / layers as usize;
                let (first, block) =
                    if restart > 0 && round >= restart { (restart, round - restart) } else { (0, round) };
                let step = block as u64 / (1 + u64::from(layer));
                t.push(layer, step, round == first, ids).unwrap();
            }
            let initial = if warm { InitialPlacement::Warm } else { InitialPlacement::Cold };
            let cost = CostModel::new(copy, f64::from(pair) * 0.5, 2.0);
            (t, config(ReplayPolicy::Optimal, slots, initial, cost))
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: if cfg!(miri) { 4 } else { 400 }, ..ProptestConfig::default() })]

    #[test]
    fn the_flow_finds_the_exhaustive_optimum((t, cfg) in tiny_traces()) {
        let per_layer = optimal(&t, &cfg);
        check_counters(&per_layer, &cfg.cost);
        let expected = brute_force(&t, &cfg, false);
        prop_assert!(close(per_layer.total.modeled_time_s, expected),
            "per layer: flow {} vs exhaustive {expected}", per_layer.total.modeled_time_s);
        let shared = optimal_shared(&t, &cfg);
        check_counters(&shared, &cfg.cost);
        let expected = brute_force(&t, &cfg, true);
        prop_assert!(close(shared.total.modeled_time_s, expected),
            "shared: flow {} vs exhaustive {expected}", shared.total.modeled_time_s);
    }
}
