use super::*;
use crate::trace::TraceHeader;

#[cfg(feature = "demand")]
fn trace() -> Trace {
    let mut t = Trace::new(TraceHeader { experts: 8, layers: 2, top_k: 2 }).unwrap();
    let steps: [[u32; 4]; 5] = [[0, 1, 2, 3], [1, 2, 1, 9], [4, 5, 4, 5], [4, 5, 6, 7], [0, 1, 4, 5]];
    for (s, ids) in steps.iter().enumerate() {
        t.push(0, s as u64, s == 0, ids).unwrap();
        t.push(1, s as u64, false, &ids[..2]).unwrap();
    }
    t
}

fn config(policy: ReplayPolicy) -> ReplayConfig {
    ReplayConfig::new(policy, 2, Schedule::EveryForward, InitialPlacement::Cold, CostModel::new(100, 1.0, 100.0))
}

#[cfg(feature = "demand")]
#[test]
fn busiest_first_changes_only_steps_of_more_pairs_than_slots_and_lowers_prompt_heavy_costs() {
    use crate::trace::synthetic::SyntheticTrace;
    let cost = CostModel::new(4 << 20, 200e-6, 16e9);
    let run = |trace: &Trace, policy, slots, sharing, miss_order| {
        let base = ReplayConfig::new(policy, slots, Schedule::EveryForward, InitialPlacement::Warm, cost);
        replay(trace, &ReplayConfig { sharing, miss_order, ..base }).unwrap().total
    };
    let shape = SyntheticTrace { experts: 16, layers: 2, top_k: 2, steps: 60, ..SyntheticTrace::DEFAULT };
    // Decode steps of 2 pairs and no prefill: no step has more pairs than 2 slots.
    let decode = SyntheticTrace { prefill_tokens: 0, ..shape }.trace().unwrap();
    // Four sequences, each a prompt of 32 tokens and 15 decode steps.
    let prompts = SyntheticTrace { sequences: 4, prefill_tokens: 32, steps: 15, ..shape }.trace().unwrap();
    for name in ["lru", "lfu", "lru2", "belady", "tinylfu"] {
        let policy = ReplayPolicy::from_name(name).unwrap();
        for sharing in [Sharing::PerLayer, Sharing::Shared] {
            let (routing, busiest) = (
                run(&decode, policy, 2, sharing, MissOrder::Routing),
                run(&decode, policy, 2, sharing, MissOrder::Busiest),
            );
            assert_eq!(routing, busiest, "{name}");
        }
        let routing = run(&prompts, policy, 4, Sharing::PerLayer, MissOrder::Routing);
        let busiest = run(&prompts, policy, 4, Sharing::PerLayer, MissOrder::Busiest);
        assert_eq!(routing.served.pairs(), busiest.served.pairs());
        if name != "tinylfu" {
            // Its admission filter ranks a step's experts itself.
            assert!(busiest.modeled_time_s < 0.95 * routing.modeled_time_s, "{name}: {busiest:?} {routing:?}");
        }
    }
}

#[cfg(feature = "demand")]
#[test]
fn totals_are_the_sum_of_layers_and_costs_follow_the_model() {
    for name in ReplayPolicy::NAMES {
        let policy = ReplayPolicy::from_name(name).unwrap();
        assert_eq!(policy.name(), name);
        let r = replay(&trace(), &config(policy)).unwrap();
        let mut sum = ReplayStats::default();
        r.layers.iter().for_each(|(_, l)| sum.add(l));
        assert_eq!(sum, r.total, "{name}");
        assert_eq!(r.total.served.pairs(), 29, "{name}");
        assert_eq!(r.total.served.invalid_ids, 1, "{name}");
        assert_eq!(r.total.served.hits + r.total.served.misses, r.total.served.pairs());
        assert_eq!(r.total.served.served_by_copy + r.total.served.served_in_place, r.total.served.misses);
        assert_eq!(r.total.bytes_promoted, r.total.promotions * 100);
        let expected = r.total.served.served_in_place as f64 + r.total.bytes_promoted as f64 / 100.0;
        assert!((r.total.modeled_time_s - expected).abs() < 1e-9, "{name}");
    }
    assert!(ReplayPolicy::from_name("random").is_err());
}

#[cfg(feature = "demand")]
#[test]
fn only_pool_policies_but_belady_are_deployable() {
    let deployable: Vec<&str> = ReplayPolicy::NAMES
        .into_iter()
        .filter(|name| ReplayPolicy::from_name(name).unwrap().deployable().is_some())
        .collect();
    assert_eq!(deployable, ["tide", "decay", "lru", "lfu", "lru2", "tinylfu"]);
    assert_eq!(ReplayPolicy::Pool(Policy::Lru).deployable(), Some(Policy::Lru));
}

#[cfg(feature = "demand")]
#[test]
fn references_bound_the_policies() {
    let hits = |name| replay(&trace(), &config(ReplayPolicy::from_name(name).unwrap())).unwrap().total;
    let (tide, oracle, lru, belady, uniform) =
        (hits("tide"), hits("oracle"), hits("lru"), hits("belady"), hits("uniform"));
    assert!(belady.served.misses <= lru.served.misses);
    // Refreshing every step, the oracle's window is the step itself: TIDE exactly.
    assert_eq!(oracle, tide);
    let every2 = ReplayConfig {
        schedule: Schedule::EveryDecodeSteps(core::num::NonZeroU32::MIN.saturating_add(1)),
        ..config(ReplayPolicy::Oracle)
    };
    let ahead = replay(&trace(), &every2).unwrap().total;
    let tide2 = replay(&trace(), &ReplayConfig { policy: ReplayPolicy::Pool(Policy::Tide), ..every2 }).unwrap().total;
    assert!(
        ahead.served.hits >= tide2.served.hits,
        "knowing the window helps: {} vs {}",
        ahead.served.hits,
        tide2.served.hits
    );
    // The expectation of all 29 pairs at 2 of 8 slots, rounded down once: 7.25.
    assert_eq!(uniform.served.hits, 29 * 2 / 8);
    // Starting cold, each of the two layers copies its two slots in first.
    assert_eq!((uniform.promotions, uniform.bytes_promoted), (4, 400));
    // Demand policies admit their misses: served in place only when every slot was pinned by
    // the step (layer 0: two ids of step 0, two of step 3 and two of step 4).
    assert_eq!(lru.served.served_in_place, 6);
    assert_eq!(lru.served.served_by_copy + lru.served.served_in_place, lru.served.misses);
}

#[cfg(feature = "demand")]
#[test]
fn hits_are_pairs_resident_before_the_step() {
    // One layer, two slots, cold. Step 0 copies 0 and 1 in: four misses served by copy.
    let mut t = Trace::new(TraceHeader { experts: 4, layers: 1, top_k: 2 }).unwrap();
    t.push(0, 0, true, &[0, 1, 0, 1]).unwrap();
    t.push(0, 1, false, &[0, 1, 2, 2]).unwrap();
    let run = |name| replay(&t, &config(ReplayPolicy::from_name(name).unwrap())).unwrap().total;
    // TIDE, step 1: targets 2 (twice) and 0; 2 replaces 1. 0 hits, 1 is computed in place,
    // both pairs of 2 are served by its copy.
    let tide = run("tide");
    let counts = |r: ReplayStats| (r.served.hits, r.served.served_by_copy, r.served.served_in_place, r.promotions);
    assert_eq!(counts(tide), (1, 6, 1, 3));
    // LRU, step 1: 0 and 1 hit and stay pinned, so 2 is computed in place, both times.
    let lru = run("lru");
    assert_eq!(counts(lru), (2, 4, 2, 2));
    // One second per pair in place, one per copy (100 bytes over 100 bytes/s).
    assert!((tide.modeled_time_s - 4.0).abs() < 1e-9 && (lru.modeled_time_s - 4.0).abs() < 1e-9);
    // Cold, the uniform placement of 2 of 4 experts is copied in first: half the 8 pairs hit.
    assert_eq!(counts(run("uniform")), (4, 0, 4, 2));
}

#[test]
fn diffusion_blocks_restart_the_schedule() {
    // One layer, one slot, cold; record j routes 2^j tokens to expert j % 8, so the pairs
    // served by copy (the records that refreshed) spell a bit mask of the refreshing records.
    let records = |steps: [u64; 10]| {
        let mut t = Trace::new(TraceHeader { experts: 8, layers: 1, top_k: 1 }).unwrap();
        for (j, step) in steps.into_iter().enumerate() {
            t.push(0, step, j % 5 == 0, &alloc::vec![j as u32 % 8; 1 << j]).unwrap();
        }
        t
    };
    let every2 = ReplayConfig {
        slots: 1,
        schedule: Schedule::EveryDenoiseSteps(core::num::NonZeroU32::MIN.saturating_add(1)),
        ..config(ReplayPolicy::Pool(Policy::Tide))
    };
    // Two blocks of five denoise steps, the counter restarting at each: refreshes on steps 0,
    // 2 and 4 of each block (records 0, 2, 4, 5, 7, 9).
    let restarting = replay(&records([0, 1, 2, 3, 4, 0, 1, 2, 3, 4]), &every2).unwrap().total;
    assert_eq!(restarting.served.served_by_copy, 0b10_1011_0101);
    assert_eq!((restarting.promotions, restarting.served.hits), (6, 0));
    // The same blocks with a counter that keeps running: records 0, 2, 4, 5 (a prefill), 6 and 8.
    let running = replay(&records([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]), &every2).unwrap().total;
    assert_eq!(running.served.served_by_copy, 0b01_0111_0101);
    // A block that restarts at an odd step: its first step refreshes all the same.
    let odd = replay(&records([0, 1, 2, 3, 4, 3, 4, 5, 6, 7]), &every2).unwrap().total;
    assert_eq!(odd.served.served_by_copy, 0b01_0111_0101);
}

#[cfg(feature = "demand")]
#[test]
fn misses_served_in_place_are_slow_pairs_and_copies_are_paid_by_the_link() {
    let tinylfu = |threshold| {
        let policy = Policy::Tinylfu(crate::AdmissionConfig::new(4.0, 0.0, threshold).unwrap());
        replay(&trace(), &config(ReplayPolicy::Pool(policy))).unwrap().total
    };
    // A threshold no score reaches: every miss is served in place, nothing moves.
    let never = tinylfu(1e9);
    assert_eq!((never.promotions, never.bytes_promoted, never.served.hits), (0, 0, 0));
    assert_eq!((never.served.served_in_place, never.served.served_by_copy), (never.served.misses, 0));
    assert!((never.modeled_time_s - never.served.misses as f64).abs() < 1e-9);
    // Threshold 0: some misses copied (each copy serving at least its own pair), the rest in
    // place; the copies are paid by the link, the pairs in place one second each.
    let eager = tinylfu(0.0);
    assert!(eager.promotions > 0 && eager.served.served_in_place > 0);
    assert!(eager.served.served_by_copy >= eager.promotions);
    assert_eq!(eager.served.served_in_place + eager.served.served_by_copy, eager.served.misses);
    let expected = eager.served.served_in_place as f64 + eager.promotions as f64;
    assert!((eager.modeled_time_s - expected).abs() < 1e-9);
}
