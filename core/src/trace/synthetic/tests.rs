use super::*;
use alloc::vec;

#[test]
fn steps_are_distinct_per_token_skewed_and_reproducible() {
    let shape = RoutingShape { experts: 32, top_k: 4, zipf_s: 1.2, reuse: 0.0, phase_steps: 0 };
    let mut a = SyntheticRouting::new(shape, 7);
    let mut b = SyntheticRouting::new(shape, 7);
    let (mut ids_a, mut ids_b) = (Vec::new(), Vec::new());
    for _ in 0..200 {
        a.step(4, &mut ids_a);
        b.step(4, &mut ids_b);
    }
    assert_eq!(ids_a, ids_b);
    assert_eq!(ids_a.len(), 200 * 4 * 4);
    for token in ids_a.chunks(4) {
        for (i, e) in token.iter().enumerate() {
            assert!(*e < 32 && !token[i + 1..].contains(e));
        }
    }
    let mut counts = [0u32; 32];
    ids_a.iter().for_each(|&e| counts[e as usize] += 1);
    counts.sort_unstable();
    assert!(counts[31] > 4 * counts[16], "the head must dominate: {counts:?}");
}

/// FNV-1a over `steps` steps of `tokens` tokens of `shape` seeded with `seed`.
fn stream_hash(shape: RoutingShape, seed: u64, steps: usize, tokens: usize) -> u64 {
    let mut routing = SyntheticRouting::new(shape, seed);
    let mut ids = Vec::new();
    for _ in 0..steps {
        routing.step(tokens, &mut ids);
    }
    ids.iter()
        .flat_map(|id| id.to_le_bytes())
        .fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

#[test]
fn streams_that_finished_before_the_redraw_cap_are_unchanged() {
    // Hashes taken before the cap existed: the default shape, a steep one that redraws often,
    // and the golden vectors' top-2 shape.
    let default = stream_hash(RoutingShape::new(64, 8), 1, 300, 2);
    let steep = stream_hash(RoutingShape { zipf_s: 2.0, ..RoutingShape::new(64, 8) }, 5, 300, 2);
    let small = stream_hash(RoutingShape { phase_steps: 8, ..RoutingShape::new(16, 2) }, 0x60_1e, 300, 3);
    assert_eq!((default, steep, small), (0x1282_12ab_c917_f338, 0x5ce1_5003_02b6_a091, 0x538d_4fb9_bff0_d790));
}

#[test]
fn reuse_repeats_the_previous_token() {
    let shape = RoutingShape { experts: 64, top_k: 2, zipf_s: 0.0, reuse: 1.0, phase_steps: 0 };
    let mut r = SyntheticRouting::new(shape, 1);
    let mut ids = Vec::new();
    r.step(10, &mut ids);
    assert!(ids.chunks(2).all(|t| t == &ids[..2]));
    let tiny = SyntheticRouting::new(RoutingShape { experts: 0, top_k: 3, ..shape }, 1);
    assert_eq!(tiny.shape().top_k, 0);
}

#[test]
fn draw_probabilities_are_the_phase_popularity() {
    let shape = RoutingShape { experts: 16, top_k: 1, zipf_s: 1.0, reuse: 0.0, phase_steps: 5000 };
    let mut r = SyntheticRouting::new(shape, 9);
    let before: Vec<f64> = (0..16).map(|e| r.draw_probability(e)).collect();
    assert!((before.iter().sum::<f64>() - 1.0).abs() < 1e-12);
    let mut sorted = before.clone();
    sorted.sort_by(|a, b| b.total_cmp(a));
    let harmonic: f64 = (1..=16).map(|k| 1.0 / f64::from(k)).sum();
    assert!(sorted.iter().enumerate().all(|(rank, p)| (p - 1.0 / ((rank + 1) as f64 * harmonic)).abs() < 1e-12));
    assert_eq!(r.draw_probability(16), 0.0);
    // One token per step and no reuse: every choice is a fresh draw.
    let mut counts = [0u32; 16];
    let mut ids = Vec::new();
    for _ in 0..5000 {
        ids.clear();
        r.step(1, &mut ids);
        counts[ids[0] as usize] += 1;
    }
    for (e, &count) in counts.iter().enumerate() {
        let expected = before[e] * 5000.0;
        assert!((f64::from(count) - expected).abs() < 5.0 * expected.sqrt() + 5.0, "expert {e}: {count} vs {expected}");
    }
    // The next step starts a new phase and reshuffles the ranking.
    ids.clear();
    r.step(1, &mut ids);
    let after: Vec<f64> = (0..16).map(|e| r.draw_probability(e)).collect();
    assert_ne!(before, after);
    assert!((after.iter().sum::<f64>() - 1.0).abs() < 1e-12);
}

#[test]
fn steep_popularity_finishes_with_distinct_experts() {
    // Zipf 10 leaves the experts past the first few almost no mass: plain redrawing would
    // practically never find a token's eighth expert.
    let shape = RoutingShape { zipf_s: 10.0, ..RoutingShape::new(64, 8) };
    let mut routing = SyntheticRouting::try_new(shape, 3).unwrap();
    let mut ids = Vec::new();
    // Under Miri 20 tokens (each still needs the fallback past the redraw cap).
    let tokens = if cfg!(miri) { 20 } else { 200 };
    for _ in 0..tokens {
        routing.step(1, &mut ids);
    }
    assert_eq!(ids.len(), tokens * 8);
    for token in ids.chunks(8) {
        for (i, e) in token.iter().enumerate() {
            assert!(*e < 64 && !token[i + 1..].contains(e), "{token:?}");
        }
    }
    // Every expert in a token, however steep: still distinct.
    let all = RoutingShape { zipf_s: 1e6, reuse: 0.0, ..RoutingShape::new(6, 6) };
    let mut routing = SyntheticRouting::new(all, 9);
    ids.clear();
    routing.step(3, &mut ids);
    for token in ids.chunks(6) {
        let mut sorted = token.to_vec();
        sorted.sort_unstable();
        assert_eq!(sorted, [0, 1, 2, 3, 4, 5]);
    }
}

#[test]
fn shapes_that_cannot_work_are_refused() {
    let ok = RoutingShape::new(8, 2);
    assert_eq!(ok.check(), Ok(()));
    assert!(SyntheticRouting::try_new(ok, 1).is_ok());
    let refused = [
        (RoutingShape { top_k: 0, ..ok }, ShapeError::TopK { top_k: 0, experts: 8 }),
        (RoutingShape { top_k: 9, ..ok }, ShapeError::TopK { top_k: 9, experts: 8 }),
        (RoutingShape { experts: 0, ..ok }, ShapeError::TopK { top_k: 2, experts: 0 }),
        (RoutingShape { zipf_s: f64::INFINITY, ..ok }, ShapeError::Zipf(f64::INFINITY)),
        (RoutingShape { zipf_s: -1.0, ..ok }, ShapeError::Zipf(-1.0)),
        (RoutingShape { reuse: 1.5, ..ok }, ShapeError::Reuse(1.5)),
        (RoutingShape { reuse: -0.1, ..ok }, ShapeError::Reuse(-0.1)),
    ];
    for (shape, error) in refused {
        assert_eq!(SyntheticRouting::try_new(shape, 1).map(|_| ()), Err(error));
        assert!(!std::format!("{error}").is_empty());
    }
    assert!(matches!(RoutingShape { zipf_s: f64::NAN, ..ok }.check(), Err(ShapeError::Zipf(_))));
    assert!(matches!(RoutingShape { reuse: f64::NAN, ..ok }.check(), Err(ShapeError::Reuse(_))));
}

#[test]
fn synthetic_traces_have_a_prefill_block_and_a_seed_per_layer() {
    let settings = SyntheticTrace { steps: 3, prefill_tokens: 2, ..SyntheticTrace::LOCALITY };
    let trace = settings.trace().unwrap();
    let records = trace.records();
    assert_eq!(records.len(), 4 * 4); // prefill + 3 steps, 4 layers each
    assert!(records.iter().take(4).all(|r| r.prefill && r.step == 0 && trace.ids(r).len() == 16));
    assert!(records.iter().skip(4).all(|r| !r.prefill && trace.ids(r).len() == 8));
    // Layer l draws from SyntheticRouting seeded with seed + l.
    let mut layer1 = SyntheticRouting::new(settings.shape(), settings.seed + 1);
    let mut ids = Vec::new();
    layer1.step(2, &mut ids);
    assert_eq!(trace.ids(&records[1]), &ids[..]);
    // No prefill block: decode steps from 0; shapes no draw can meet are refused.
    let plain = SyntheticTrace { steps: 2, prefill_tokens: 0, tokens: 3, ..SyntheticTrace::DEFAULT };
    let trace = plain.trace().unwrap();
    assert!(trace.records().iter().all(|r| !r.prefill && trace.ids(r).len() == 3 * 8));
    let bad = SyntheticTrace { top_k: 0, ..SyntheticTrace::DEFAULT };
    assert!(matches!(bad.trace(), Err(SyntheticTraceError::Shape(ShapeError::TopK { .. }))));
}

#[test]
fn every_sequence_starts_with_a_prefill_block_and_steps_number_on() {
    let settings = SyntheticTrace { layers: 1, steps: 2, sequences: 3, prefill_tokens: 5, ..SyntheticTrace::DEFAULT };
    let trace = settings.trace().unwrap();
    let shape: Vec<(u64, bool, usize)> =
        trace.records().iter().map(|r| (r.step, r.prefill, trace.ids(r).len() / 8)).collect();
    let sequence = |first: u64| [(first, true, 5), (first + 1, false, 1), (first + 2, false, 1)];
    assert_eq!(shape, [sequence(0), sequence(3), sequence(6)].concat());
    // One sequence is the trace as it was; 0 counts as 1.
    let all = |t: &crate::trace::Trace| -> Vec<(u64, bool, Vec<u32>)> {
        t.records().iter().map(|r| (r.step, r.prefill, t.ids(r).to_vec())).collect()
    };
    let one = all(&SyntheticTrace { sequences: 1, ..settings }.trace().unwrap());
    assert_eq!(all(&SyntheticTrace { sequences: 0, ..settings }.trace().unwrap()), one);
    assert_eq!(one, all(&trace)[..3]);
}

/// Each layer's ids per step, from a trace of `settings` (decode steps only).
fn layer_ids(settings: &SyntheticTrace) -> Vec<Vec<Vec<u32>>> {
    let trace = settings.trace().unwrap();
    let mut layers = vec![Vec::new(); settings.layers as usize];
    for r in trace.records().iter().filter(|r| !r.prefill) {
        layers[r.layer as usize].push(trace.ids(r).to_vec());
    }
    layers
}

/// The share of layer `l`'s choices (l ≥ 1) that are the previous layer's choice in the same
/// position through the map that choice most often goes to.
fn followed(layers: &[Vec<Vec<u32>>], l: usize, experts: usize) -> f64 {
    let mut counts = vec![vec![0u32; experts]; experts];
    let pairs = || layers[l - 1].iter().zip(&layers[l]).flat_map(|(a, b)| a.iter().zip(b));
    pairs().for_each(|(&a, &b)| counts[a as usize][b as usize] += 1);
    let map: Vec<u32> = counts.iter().map(|c| (0..experts as u32).max_by_key(|&e| c[e as usize]).unwrap()).collect();
    let (hits, total) = pairs().fold((0u32, 0u32), |(h, t), (&a, &b)| (h + u32::from(map[a as usize] == b), t + 1));
    f64::from(hits) / f64::from(total)
}

#[test]
fn layers_follow_each_other_by_their_correlation() {
    let base =
        SyntheticTrace { experts: 16, layers: 3, top_k: 1, steps: 3000, prefill_tokens: 0, ..SyntheticTrace::DEFAULT };
    // Fully correlated, top-1: each layer's choice is a one-to-one function of the one before.
    let full = layer_ids(&SyntheticTrace { correlation: 1.0, ..base });
    for l in 1..3 {
        assert_eq!(followed(&full, l, 16), 1.0, "layer {l}");
        let mut seen = std::collections::HashMap::new();
        for (a, b) in full[l - 1].iter().zip(&full[l]) {
            assert_eq!(*seen.entry(a[0]).or_insert(b[0]), b[0], "layer {l}: {} maps to one expert", a[0]);
        }
        let mut images: Vec<u32> = seen.values().copied().collect();
        images.sort_unstable();
        images.dedup();
        assert_eq!(images.len(), seen.len(), "layer {l}: the map is one-to-one");
    }
    // Half: about half the choices follow (and 1 in 16 of the rest by chance, about 53% in all);
    // independent layers follow only by chance and their most common pairs.
    let half = followed(&layer_ids(&SyntheticTrace { correlation: 0.5, ..base }), 2, 16);
    assert!((0.45..0.62).contains(&half), "{half}");
    let none = followed(&layer_ids(&base), 2, 16);
    assert!(none < 0.3, "{none}");
    // Top-8: a token's experts stay distinct; the first layer is the independent trace's.
    let wide = SyntheticTrace { experts: 32, top_k: 8, steps: 200, ..base };
    let correlated = layer_ids(&SyntheticTrace { correlation: 0.9, ..wide });
    for token in correlated.iter().flatten() {
        let mut t = token.clone();
        t.sort_unstable();
        t.dedup();
        assert_eq!(t.len(), 8, "{token:?}");
    }
    assert_eq!(correlated[0], layer_ids(&wide)[0]);
    assert_ne!(correlated[1], layer_ids(&wide)[1]);
    // A probability outside 0 ..= 1 is refused.
    for bad in [-0.1, 1.5, f64::NAN] {
        let e = SyntheticTrace { correlation: bad, ..base }.trace().unwrap_err();
        assert!(matches!(e, SyntheticTraceError::Shape(ShapeError::Correlation(_))), "{e}");
    }
}
