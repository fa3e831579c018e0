//! The demand policies against their plain reference (`ReferenceDemand`, which pins before it
//! admits) on the synthetic trace families of BENCHMARKS.md: per-layer pools and one pool shared
//! by the layers, each with and without prefetch. Promotions, demotions, hits and misses served
//! by copy and in place must agree exactly, step by step.
//!
//! The traces are the families' first 300 decode steps after the prefill (Belady's reference
//! scans the stream for every next use, which a debug build pays for).

use expertslab::trace::Trace;
use expertslab::{MigrationPlan, Policy, PoolConfig, SharedSlotPool, Step};
use expertslab_tests::families::{synth, EXPERTS, LAYERS, SLOTS, TOP_K};
use expertslab_tests::{commit_plan, resident_set, started_pool, ReferenceDemand};

/// Decode steps replayed after the prefill.
const STEPS: u64 = 300;
/// Prefetch copies per step.
const PREFETCH_LIMIT: usize = 2;
/// The families: (name, zipf exponent, reuse, phase steps).
const FAMILIES: [(&str, f64, f64, u64); 4] = [
    ("near-uniform", 0.0, 0.0, 0),
    ("stationary", 0.9, 0.5, 0),
    ("heavy reuse", 0.9, 0.9, 256),
    ("locality", 0.9, 0.5, 256),
];
const POLICIES: [Policy; 4] = [Policy::Lru, Policy::Lfu, Policy::Lru2, Policy::Belady];

/// Each layer's steps (the prefill first), from a family's trace.
fn layer_steps(trace: &Trace) -> Vec<Vec<Vec<u32>>> {
    let mut layers = vec![Vec::new(); LAYERS as usize];
    for record in trace.records().iter().filter(|r| r.step <= STEPS) {
        layers[record.layer as usize].push(trace.ids(record).to_vec());
    }
    layers
}

/// Guesses for a step with `ids`: its first expert, one it may not use, and its second; the
/// two sides get the same guesses, right and wrong.
fn guesses(ids: &[u32], modulus: u32) -> Vec<u32> {
    let first = ids.first().copied().unwrap_or(0);
    vec![first, (first + 7) % modulus, ids.get(1).copied().unwrap_or(first)]
}

/// The pool's and the reference's counts for one step, compared.
fn agree(what: &str, served: &expertslab::ServeStats, reference: &ReferenceDemand, before: (u64, u64, u64)) {
    let after = (reference.hits, reference.served_by_copy, reference.served_in_place);
    let want = (after.0 - before.0, after.1 - before.1, after.2 - before.2);
    let got = (served.hits, served.served_by_copy, served.served_in_place);
    assert_eq!(got, want, "{what}: hits, served by copy, served in place");
}

fn counts(reference: &ReferenceDemand) -> (u64, u64, u64) {
    (reference.hits, reference.served_by_copy, reference.served_in_place)
}

/// Per-layer pools with `policy`, warm, prefetching the next step's guesses when `prefetch`.
fn per_layer(family: &str, trace: &Trace, policy: Policy, prefetch: bool) {
    for (layer, steps) in layer_steps(trace).iter().enumerate() {
        let what = format!("{family}, {}, layer {layer}, prefetch {prefetch}", policy.name());
        let config = PoolConfig::new(EXPERTS as usize, SLOTS).policy(policy);
        let (mut pool, mut plan) = started_pool(config);
        let stream: Vec<u32> = steps.concat();
        if policy == Policy::Belady {
            pool.load_future(&stream).unwrap();
        }
        let start = *pool.stats();
        let mut reference = ReferenceDemand::new(policy.name(), EXPERTS, SLOTS, true, stream);
        for (s, ids) in steps.iter().enumerate() {
            let step = if s == 0 { Step::prefill(0) } else { Step::decode(s as u64) };
            pool.plan_step(step, ids, &mut plan).unwrap();
            commit_plan(&mut pool, &plan);
            let before = counts(&reference);
            reference.step(ids);
            agree(&format!("{what}, step {s}"), &pool.serve(ids), &reference, before);
            if let (true, Some(next)) = (prefetch, steps.get(s + 1)) {
                let guessed = guesses(next, EXPERTS);
                let as_u16: Vec<u16> = guessed.iter().map(|&g| g as u16).collect();
                pool.prefetch(&as_u16, PREFETCH_LIMIT, |_, _| true, &mut plan).unwrap();
                commit_plan(&mut pool, &plan);
                reference.prefetch(&guessed, PREFETCH_LIMIT);
            }
            assert_eq!(resident_set(&pool), reference.resident_set(), "{what}, step {s}");
        }
        let stats = pool.stats();
        assert_eq!(stats.promotions - start.promotions, reference.promotions, "{what}");
        assert_eq!(stats.demotions, reference.demotions, "{what}");
        assert_eq!((stats.served.hits, stats.served.misses), (reference.hits, reference.misses), "{what}");
    }
}

/// One pool of `SLOTS × LAYERS` slots shared by the layers, served layer by layer in each step.
fn shared(family: &str, trace: &Trace, policy: Policy, prefetch: bool) {
    let what = format!("{family}, shared {}, prefetch {prefetch}", policy.name());
    let layers = layer_steps(trace);
    let config = PoolConfig::new(EXPERTS as usize, SLOTS * LAYERS as usize).policy(policy);
    let mut pool = SharedSlotPool::new(LAYERS as usize, config, 64 * TOP_K as usize).unwrap();
    // The layers' steps in serving order, and each as keys for the reference.
    let order: Vec<(usize, &Vec<u32>)> =
        (0..layers[0].len()).flat_map(|s| layers.iter().enumerate().map(move |(l, steps)| (l, &steps[s]))).collect();
    let keys = |layer: usize, ids: &[u32]| -> Vec<u32> {
        ids.iter().map(|&id| if id < EXPERTS { layer as u32 * EXPERTS + id } else { u32::MAX }).collect()
    };
    let stream: Vec<u32> = order.iter().flat_map(|&(l, ids)| keys(l, ids)).collect();
    if policy == Policy::Belady {
        pool.load_future(order.iter().map(|&(l, ids)| (l, ids.as_slice()))).unwrap();
    }
    let mut plan = MigrationPlan::new(pool.slots());
    pool.initial_plan(&mut plan);
    let mut reference = ReferenceDemand::new(policy.name(), EXPERTS * LAYERS, pool.slots(), false, stream);
    for &p in plan.promotions() {
        pool.commit(p, 1).unwrap();
        reference.resident.push((u32::from(p.expert), 0, 0));
    }
    let start = *pool.stats();
    let resident = |pool: &SharedSlotPool| -> std::collections::HashSet<u32> {
        (0..pool.slots())
            .filter_map(|slot| pool.expert_in(slot))
            .map(|(l, e)| (l as u32) * EXPERTS + e as u32)
            .collect()
    };
    for (i, &(layer, ids)) in order.iter().enumerate() {
        let s = (i / LAYERS as usize) as u64;
        let step = if s == 0 { Step::prefill(0) } else { Step::decode(s) };
        pool.plan_step(layer, step, ids, &mut plan).unwrap();
        for &p in plan.promotions() {
            pool.commit(p, 1).unwrap();
        }
        let before = counts(&reference);
        reference.step(&keys(layer, ids));
        agree(&format!("{what}, step {s} layer {layer}"), &pool.serve(layer, ids), &reference, before);
        if let (true, Some(&(next_layer, next))) = (prefetch, order.get(i + 1)) {
            let guessed: Vec<u32> = guesses(next, EXPERTS).iter().map(|&g| next_layer as u32 * EXPERTS + g).collect();
            let as_u16: Vec<u16> = guessed.iter().map(|&g| g as u16).collect();
            pool.keyed().prefetch(&as_u16, PREFETCH_LIMIT, |_, _| true, &mut plan).unwrap();
            for &p in plan.promotions() {
                pool.commit(p, 1).unwrap();
            }
            reference.prefetch(&guessed, PREFETCH_LIMIT);
        }
        assert_eq!(resident(&pool), reference.resident_set(), "{what}, step {s} layer {layer}");
    }
    let stats = pool.stats();
    assert_eq!(stats.promotions - start.promotions, reference.promotions, "{what}");
    assert_eq!(stats.demotions - start.demotions, reference.demotions, "{what}");
    assert_eq!(
        (stats.served.hits - start.served.hits, stats.served.misses - start.served.misses),
        (reference.hits, reference.misses),
        "{what}"
    );
}

#[test]
#[cfg_attr(miri, ignore = "hours under Miri; tests/policies.rs checks every policy against the reference there")]
fn per_layer_pools_agree_with_the_reference_on_the_families() {
    for (name, zipf, reuse, phase) in FAMILIES {
        let trace = synth(zipf, reuse, phase, 1);
        for policy in POLICIES {
            per_layer(name, &trace, policy, false);
            per_layer(name, &trace, policy, true);
        }
    }
}

#[test]
#[cfg_attr(miri, ignore = "hours under Miri; tests/policies.rs checks every policy against the reference there")]
fn shared_pools_agree_with_the_reference_on_the_families() {
    for (name, zipf, reuse, phase) in FAMILIES {
        let trace = synth(zipf, reuse, phase, 1);
        for policy in POLICIES {
            shared(name, &trace, policy, false);
            shared(name, &trace, policy, true);
        }
    }
}
