//! The uniform reference ([`ReplayPolicy::Uniform`]): every expert equally likely resident.

use super::{ReplayConfig, ReplayReport, ReplayStats};
use crate::pool::{InitialPlacement, PoolConfig};
use crate::trace::{Trace, TraceRecord};

/// The uniform reference over `by_layer` (records sorted by layer): every layer's slots hold a
/// uniformly random placement, so a pair hits with probability `slots / experts`, and nothing
/// moves after the start. Starting cold, each layer with records first copies its placement in
/// (`slots` promotions, paid over the link); otherwise the placement is the free start every
/// policy has.
///
/// Expected hits are rounded down on the running total over the layers, not layer by layer: each
/// layer gets the hits that bring the total to the expectation of the pairs so far, so the total
/// is the expectation of all pairs rounded down (never above it, so the reference is never cheaper
/// than its exact cost), and many small layers do not each lose their fraction.
pub(super) fn uniform(trace: &Trace, by_layer: &[&TraceRecord], config: &ReplayConfig, report: &mut ReplayReport) {
    let experts = trace.header().experts as usize;
    let slots = PoolConfig::new(experts, config.slots).slots();
    let copies = if config.initial == InitialPlacement::Cold { slots as u64 } else { 0 };
    let (mut pairs_so_far, mut hits_so_far) = (0u64, 0u64);
    for records in by_layer.chunk_by(|a, b| a.layer == b.layer) {
        let Some(layer) = records.first().map(|r| r.layer) else { continue };
        let mut c = ReplayStats::default();
        let mut pairs = 0u64;
        for r in records {
            let ids = trace.ids(r);
            let valid = ids.iter().filter(|&&id| (id as usize) < experts).count() as u64;
            pairs = pairs.saturating_add(valid);
            // valid <= len
            c.served.invalid_ids = c.served.invalid_ids.saturating_add((ids.len() as u64).saturating_sub(valid));
        }
        pairs_so_far = pairs_so_far.saturating_add(pairs);
        let expected = uniform_hits(pairs_so_far, slots, experts);
        // The running expectation never falls, and rises by at most the layer's pairs.
        c.served.hits = expected.saturating_sub(hits_so_far).min(pairs);
        hits_so_far = hits_so_far.saturating_add(c.served.hits);
        c.served.misses = pairs.saturating_sub(c.served.hits);
        c.served.served_in_place = c.served.misses;
        c.promotions = copies;
        c.bytes_promoted = copies.saturating_mul(config.cost.expert_bytes);
        c.modeled_time_s = config.cost.seconds(c.served.served_in_place, c.bytes_promoted);
        report.total.add(&c);
        report.layers.push((layer, c));
    }
}

/// The hits a uniformly random placement of `slots` of `experts` (at least 1) experts expects
/// over `pairs` pairs, rounded down.
fn uniform_hits(pairs: u64, slots: usize, experts: usize) -> u64 {
    #[allow(
        clippy::arithmetic_side_effects,
        reason = "a product of two 64-bit values fits 128 bits; a trace has at least one expert"
    )]
    let hits = u128::from(pairs) * slots as u128 / (experts as u128).max(1);
    // slots <= experts, so hits <= pairs.
    u64::try_from(hits).unwrap_or(pairs)
}

#[cfg(test)]
mod tests {
    use super::super::{replay, ReplayPolicy};
    use super::*;
    use crate::schedule::Schedule;
    use crate::trace::replay::CostModel;
    use crate::trace::TraceHeader;

    fn config(policy: ReplayPolicy) -> ReplayConfig {
        ReplayConfig::new(policy, 2, Schedule::EveryForward, InitialPlacement::Cold, CostModel::new(100, 1.0, 100.0))
    }

    #[test]
    fn the_uniform_reference_rounds_the_total_and_pays_a_cold_start() {
        // 8 layers of 3 pairs each, 1 slot of 4: a quarter of 24 pairs, although no layer alone
        // expects a whole hit.
        let mut t = Trace::new(TraceHeader { experts: 4, layers: 8, top_k: 3 }).unwrap();
        for layer in 0..8 {
            t.push(layer, 0, false, &[0, 1, 2]).unwrap();
        }
        let run = |policy, initial| {
            let config = ReplayConfig { slots: 1, initial, ..config(policy) };
            replay(&t, &config).unwrap()
        };
        let warm = run(ReplayPolicy::Uniform, InitialPlacement::Warm);
        assert_eq!((warm.total.served.pairs(), warm.total.served.hits, warm.total.promotions), (24, 6, 0));
        let mut sum = ReplayStats::default();
        warm.layers.iter().for_each(|(_, l)| sum.add(l));
        assert_eq!(sum, warm.total);
        assert!(warm.layers.iter().all(|(_, l)| l.served.hits <= 1), "{warm:?}");
        // 18 pairs in place at one second each, nothing copied.
        assert!((warm.total.modeled_time_s - 18.0).abs() < 1e-9);
        // Cold, every layer first copies its slot in (one second each): 8 more seconds.
        let cold = run(ReplayPolicy::Uniform, InitialPlacement::Cold);
        assert_eq!((cold.total.served.hits, cold.total.promotions, cold.total.bytes_promoted), (6, 8, 800));
        assert!((cold.total.modeled_time_s - 26.0).abs() < 1e-9);
        // All experts resident: cold, the uniform placement still has to be copied in, and no
        // cheaper than the optimum that starts as cold.
        let all = |policy| {
            let config = ReplayConfig { slots: 4, ..config(policy) };
            replay(&t, &config).unwrap().total
        };
        let (uniform, optimal) = (all(ReplayPolicy::Uniform), all(ReplayPolicy::Optimal));
        assert_eq!((uniform.served.hits, uniform.promotions), (24, 32));
        assert!(uniform.modeled_time_s >= optimal.modeled_time_s, "{uniform:?} vs {optimal:?}");
    }
}
