use super::*;
use crate::pool::InitialPlacement;
use crate::schedule::Schedule;
use crate::trace::replay::{replay, ReplayPolicy};
use crate::trace::TraceHeader;

fn config(policy: ReplayPolicy, slots: usize, initial: InitialPlacement, cost: CostModel) -> ReplayConfig {
    ReplayConfig::new(policy, slots, Schedule::EveryForward, initial, cost)
}

fn time(t: &Trace, policy: ReplayPolicy, slots: usize, initial: InitialPlacement, cost: CostModel) -> ReplayReport {
    replay(t, &config(policy, slots, initial, cost)).unwrap()
}

/// One layer's records in order.
fn one_layer(experts: u32, records: &[&[u32]]) -> Trace {
    let mut t = Trace::new(TraceHeader { experts, layers: 1, top_k: 1 }).unwrap();
    for (step, ids) in records.iter().enumerate() {
        t.push(0, step as u64, false, ids).unwrap();
    }
    t
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

#[test]
fn predictable_cycles_cost_what_the_optimum_pays_in_the_long_run() {
    // Experts 0 (two pairs) and 1 (one pair) take turns; three experts take turns, one or two
    // pairs each. One slot, cold; a pair costs 1. The reference weighs the long run, so its first
    // and last records may differ from the optimum's; what a further stretch of records costs
    // does not (a deterministic chain hides nothing of the future).
    let cycles: [(&str, &[&[u32]]); 3] =
        [("turns", &[&[0, 0], &[1]]), ("one pair", &[&[0], &[1], &[2]]), ("two pairs", &[&[0, 0], &[1, 1], &[2, 2]])];
    let repeat =
        |cycle: &[&'static [u32]], n: usize| -> Vec<&'static [u32]> { cycle.iter().copied().cycle().take(n).collect() };
    for (name, records) in cycles {
        for copy in [0.5, 1.5, 7.0, 40.0] {
            let cost = CostModel::new(1, 1.0, 1.0 / copy);
            let run =
                |policy, n| time(&one_layer(3, &repeat(records, n)), policy, 1, InitialPlacement::Cold, cost).total;
            let markov = run(ReplayPolicy::Markov, 300).modeled_time_s - run(ReplayPolicy::Markov, 150).modeled_time_s;
            let optimal =
                run(ReplayPolicy::Optimal, 300).modeled_time_s - run(ReplayPolicy::Optimal, 150).modeled_time_s;
            assert!(
                close(markov, optimal),
                "{name}, copy {copy}: 150 more records cost {markov}, the optimum's {optimal}"
            );
            assert!(run(ReplayPolicy::Markov, 150).modeled_time_s >= run(ReplayPolicy::Optimal, 150).modeled_time_s);
        }
    }
    // By hand, 20 records of turns: a copy of 1.5 keeps expert 0 from the start, expert 1 in
    // place: 1.5 + 10. A copy of 40 is not repaid in 20 records (the optimum: 20 + 10 pairs in
    // place), but it is in the long run the chain weighs: 40 + 10. LRU (with the demand
    // policies built) copies every miss.
    let t = one_layer(3, &repeat(cycles[0].1, 20));
    let run = |policy, copy: f64| time(&t, policy, 1, InitialPlacement::Cold, CostModel::new(1, 1.0, 1.0 / copy)).total;
    assert!(close(run(ReplayPolicy::Markov, 1.5).modeled_time_s, 11.5));
    assert!(close(run(ReplayPolicy::Optimal, 40.0).modeled_time_s, 30.0));
    assert!(close(run(ReplayPolicy::Markov, 40.0).modeled_time_s, 50.0));
    #[cfg(feature = "demand")]
    assert_eq!(run(ReplayPolicy::Pool(crate::Policy::Lru), 1.5).promotions, 20);
}

#[test]
fn a_warm_start_and_invalid_ids_count_as_the_other_references_do() {
    // Experts 0 and 1 are resident from the start (warm: slots 0..2); the layer never uses expert
    // 1 (a free slot for the reference); expert 9 is out of range.
    let t = one_layer(4, &[&[0, 9], &[2], &[0], &[2]]);
    let cost = CostModel::new(1, 1.0, 0.5);
    let warm = time(&t, ReplayPolicy::Markov, 2, InitialPlacement::Warm, cost);
    assert_eq!(warm.total.served.invalid_ids, 1);
    assert_eq!(warm.total.served.pairs(), 4);
    // Expert 0 is warm (two hits); expert 2 costs a copy (2) or two pairs in place (2).
    assert!(warm.total.served.hits >= 2, "{:?}", warm.total);
    assert!(close(warm.total.modeled_time_s, 2.0), "{:?}", warm.total);
    let optimal = time(&t, ReplayPolicy::Optimal, 2, InitialPlacement::Warm, cost);
    assert!(close(optimal.total.modeled_time_s, 2.0));
    let empty = Trace::new(TraceHeader { experts: 4, layers: 2, top_k: 1 }).unwrap();
    let r = time(&empty, ReplayPolicy::Markov, 2, InitialPlacement::Warm, cost);
    assert_eq!(r, ReplayReport { layers: Vec::new(), total: ReplayStats::default() });
}

#[cfg(feature = "demand")]
#[test]
fn never_below_the_optimum_on_synthetic_families() {
    use crate::trace::synthetic::{RoutingShape, SyntheticRouting};
    let cost = CostModel::new(4 << 20, 209.7e-6, 16e9);
    let steps = if cfg!(miri) { 30 } else { 200 };
    for (f, (zipf_s, reuse)) in [(0.5, 0.3), (0.9, 0.5), (0.0, 0.0)].into_iter().enumerate() {
        let shape = RoutingShape { experts: 8, top_k: 2, zipf_s, reuse, phase_steps: 0 };
        let mut t = Trace::new(TraceHeader { experts: 8, layers: 2, top_k: 2 }).unwrap();
        let mut routers: Vec<_> = (0..2).map(|l| SyntheticRouting::new(shape, f as u64 * 10 + l)).collect();
        let mut ids = Vec::new();
        for step in 0..steps {
            for (layer, router) in routers.iter_mut().enumerate() {
                ids.clear();
                router.step(1, &mut ids);
                t.push(layer as u32, step, false, &ids).unwrap();
            }
        }
        for initial in [InitialPlacement::Warm, InitialPlacement::Cold] {
            for slots in [0, 2, 4, 8] {
                let markov = time(&t, ReplayPolicy::Markov, slots, initial, cost);
                let optimal = time(&t, ReplayPolicy::Optimal, slots, initial, cost);
                let (m, o) = (markov.total.modeled_time_s, optimal.total.modeled_time_s);
                assert!(m >= o * (1.0 - 1e-12), "family {f}, {slots} slots: {m} below the optimum {o}");
                let mut sum = ReplayStats::default();
                for (_, c) in &markov.layers {
                    sum.add(c);
                    assert_eq!(c.served.hits + c.served.misses, c.served.pairs());
                    assert_eq!(c.served.served_by_copy + c.served.served_in_place, c.served.misses);
                    assert_eq!(c.bytes_promoted, c.promotions * cost.expert_bytes);
                    assert!(c.demotions <= c.promotions);
                }
                assert_eq!(sum, markov.total);
                assert_eq!(markov.total.served.pairs(), 2 * 2 * steps);
                if slots >= 8 {
                    // Every expert fits: only the copies in (none when warm and all resident).
                    assert_eq!(markov.total.served.served_in_place, optimal.total.served.served_in_place);
                }
            }
        }
    }
}

#[test]
fn past_its_limits_it_says_so() {
    let wide = one_layer(64, &[&(0..32).collect::<Vec<u32>>(), &(32..64).collect::<Vec<u32>>()]);
    assert!(!within_reach(&wide, 32));
    let err = replay(&wide, &config(ReplayPolicy::Markov, 32, InitialPlacement::Cold, CostModel::new(1, 1.0, 1.0)));
    assert!(matches!(err, Err(ReplayError::TooLarge { layer: 0, .. })), "{err:?}");
    let text = alloc::format!("{}", err.unwrap_err());
    assert!(text.contains("markov reference is past its limits"), "{text}");
    // Few enough resident sets (2,510 of 12 experts over 6 slots) but too many demand sets beside
    // them (every pair of the 12): past the states' limit, said with the count.
    let pairs: Vec<[u32; 2]> = (0..12).flat_map(|a| (a + 1..12).map(move |b| [a, b])).collect();
    let busy = one_layer(12, &pairs.iter().map(|p| &p[..]).collect::<Vec<_>>());
    let err = replay(&busy, &config(ReplayPolicy::Markov, 6, InitialPlacement::Cold, CostModel::new(1, 1.0, 1.0)));
    assert!(matches!(err, Err(ReplayError::TooLarge { states: 165_660, .. })), "{err:?}");
    assert!(alloc::format!("{}", err.unwrap_err()).contains("165660 states against at most 32768"));
    assert!(!within_reach(&busy, 6) && within_reach(&busy, 1));
    // Few experts: within reach, whatever the slots.
    let narrow = one_layer(8, &[&[0, 1], &[2, 3]]);
    assert!((0..=9).all(|slots| within_reach(&narrow, slots)));
}

#[test]
fn resident_sets_and_ways_to_serve_a_step() {
    let sets = sets_of_at_most(8, 4, MAX_STATES).unwrap();
    assert_eq!(sets.len(), 1 + 8 + 28 + 56 + 70);
    assert!(sets.windows(2).all(|w| w[0] < w[1]) && sets.iter().all(|s| s.count_ones() <= 4 && *s < 1 << 8));
    assert_eq!(sets_of_at_most(3, 3, MAX_STATES).unwrap(), (0..8).collect::<Vec<u64>>());
    assert_eq!(sets_of_at_most(40, 20, MAX_STATES), None);
    assert_eq!(sets_of_at_most(0, 0, 1), Some(alloc::vec![0]));
    // Residents {0, 1}, demand {1, 2}, two slots: keep (nothing copied), or copy 2 evicting 0 (1
    // is used by the step and stays).
    let mut w: Vec<u64> = ways(0b011, 0b110, 2).collect();
    w.sort_unstable();
    assert_eq!(w, [0b011, 0b110]);
    // Three slots: copying 2 needs no room.
    let mut w: Vec<u64> = ways(0b011, 0b110, 3).collect();
    w.sort_unstable();
    assert_eq!(w, [0b011, 0b111]);
    // Both residents used: nothing can be evicted, so nothing can be copied.
    assert_eq!(ways(0b011, 0b111, 2).collect::<Vec<_>>(), [0b011]);
    assert_eq!(subsets(0b101).collect::<Vec<_>>(), [0b101, 0b100, 0b001, 0]);
}

#[cfg(feature = "demand")]
#[test]
fn the_values_settle_on_a_mixtral_shaped_layer() {
    use crate::trace::synthetic::{RoutingShape, SyntheticRouting};
    let shape = RoutingShape { experts: 8, top_k: 2, zipf_s: 0.5, reuse: 0.3, phase_steps: 256 };
    let mut t = Trace::new(TraceHeader { experts: 8, layers: 1, top_k: 2 }).unwrap();
    let mut router = SyntheticRouting::new(shape, 1);
    let mut ids = Vec::new();
    for step in 0..if cfg!(miri) { 40 } else { 500 } {
        ids.clear();
        router.step(1, &mut ids);
        t.push(0, step, false, &ids).unwrap();
    }
    let records: Vec<&TraceRecord> = t.records().iter().collect();
    for slots in [2, 4, 6] {
        let mut layer = Layer::new(&t, &records, slots).unwrap();
        let iterations = layer.solve(&CostModel::new(4 << 20, 209.7e-6, 16e9));
        assert!(iterations < MAX_ITERATIONS, "{slots} slots: the values did not settle");
    }
}

#[test]
fn copies_that_never_end_are_never_made() {
    // A link of almost nothing: a copy takes forever, so everything is served in place, as the
    // optimum serves it (no 0 × ∞ in a choice that copies nothing).
    let records: Vec<&[u32]> = (0..12).map(|i| [&[0u32, 0][..], &[1]][i % 2]).collect();
    let t = one_layer(3, &records);
    let cost = CostModel::new(u64::MAX, 1.0, 1e-300);
    let markov = time(&t, ReplayPolicy::Markov, 1, InitialPlacement::Cold, cost).total;
    let optimal = time(&t, ReplayPolicy::Optimal, 1, InitialPlacement::Cold, cost).total;
    assert_eq!((markov.promotions, markov.served.served_in_place), (0, 18), "{markov:?}");
    assert!(close(markov.modeled_time_s, 18.0) && close(optimal.modeled_time_s, 18.0), "{markov:?} {optimal:?}");
}
