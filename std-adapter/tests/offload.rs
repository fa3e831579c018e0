//! The offloader over an owned store and over GGUF files: every expert read through it equals
//! the source's bytes, whichever memory it comes from, and full stacks are pushed by GGUF name.

use std::path::PathBuf;

use expertslab_std::trace::synthetic::{RoutingShape, SyntheticRouting};
use expertslab_std::{
    open_gguf, ExpertSource, ExpertStore, InitialPlacement, LayerStacks, LayeredSource, OffloadStats, Offloader,
    ParallelMigrator, PoolConfig, Projection, RoutingCapture, Schedule, SharedBytes, StackSink, StackSource, Step,
};
use expertslab_tests::synthetic_layer;

fn store(layers: &[usize], experts: usize) -> ExpertStore {
    let mut store = ExpertStore::new();
    for &layer in layers {
        let (layout, stacks) = synthetic_layer(experts, 8, 16);
        let shared: Vec<_> = stacks.iter().map(|s| SharedBytes::copy_from(s)).collect();
        store.insert(layer, LayerStacks::new(layout, &shared).unwrap()).unwrap();
    }
    store
}

/// Every routed expert of every layer read through the offloader equals the source's bytes.
fn check_reads<S: LayeredSource<Error = expertslab_std::LayoutError> + Sync>(
    model: &Offloader<S>,
    capture: &RoutingCapture,
) -> (usize, usize) {
    let (mut from_slots, mut from_source) = (0, 0);
    for layer in model.source().moe_layers().collect::<Vec<_>>() {
        let layout = model.source().layer_layout(layer).unwrap().clone();
        for &id in capture.ids(layer) {
            for &(projection, _) in layout.projections() {
                let (bytes, resident) = model.expert_slab(layer, projection, id as usize).unwrap();
                assert_eq!(bytes, model.source().expert(layer, projection, id as usize).unwrap());
                if resident {
                    from_slots += 1;
                } else {
                    from_source += 1;
                }
            }
        }
    }
    (from_slots, from_source)
}

#[test]
fn each_layer_steps_on_its_own_ids_and_reads_match_the_source() {
    let every2 = Schedule::EveryDecodeSteps(std::num::NonZeroU32::new(2).unwrap());
    let config = PoolConfig::new(0, 4).schedule(every2);
    let mut model =
        Offloader::new(store(&[1, 3, 4], 32), config, 64).unwrap().with_migrator(ParallelMigrator::with_threshold(0));
    model.warm_up().unwrap();
    let layers: Vec<usize> = model.pools().pools().iter().map(|p| p.layer()).collect();
    assert_eq!(layers, [1, 3, 4]);
    let shape = RoutingShape { phase_steps: 5, ..RoutingShape::new(32, 2) };
    let mut routings: Vec<SyntheticRouting> = (0..3).map(|l| SyntheticRouting::new(shape, 7 + l)).collect();
    let mut capture = RoutingCapture::new();
    let (mut from_slots, mut from_source) = (0, 0);
    let mut steps = OffloadStats::default();
    for step in 0..40u64 {
        capture.clear();
        for (&layer, routing) in layers.iter().zip(routings.iter_mut()) {
            let mut ids = Vec::new();
            routing.step(2, &mut ids);
            capture.record(layer, &ids);
        }
        let report = model.step(Step::decode(step), &capture).unwrap();
        steps.add(&report);
        assert_eq!(report.refreshed, if step % 2 == 0 { 3 } else { 0 });
        let (s, o) = check_reads(&model, &capture);
        from_slots += s;
        from_source += o;
    }
    assert!(from_slots > 0 && from_source > 0, "both memories must serve reads: {from_slots} / {from_source}");
    let stats = model.stats();
    assert_eq!(stats.served.hits + stats.served.misses, 40 * 3 * 4);
    assert_eq!(stats.served.served_by_copy + stats.served.served_in_place, stats.served.misses);
    assert!(stats.served.served_by_copy > 0 && stats.served.served_in_place > 0 && stats.served.hits > 0);
    // The steps' reports add up to the pools' counters.
    let counts = |s: &OffloadStats| (s.served.hits, s.served.misses, s.served.served_by_copy, s.served.served_in_place);
    assert_eq!(
        counts(&steps),
        (stats.served.hits, stats.served.misses, stats.served.served_by_copy, stats.served.served_in_place)
    );
}

#[derive(Default)]
struct Names(Vec<(String, usize)>);

impl StackSink for Names {
    type Error = ();

    fn write_stack(&mut self, name: &str, _layer: usize, _p: Projection, bytes: &[u8]) -> Result<(), ()> {
        self.0.push((name.to_string(), bytes.len()));
        Ok(())
    }
}

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/gguf").join(name)
}

#[test]
#[cfg_attr(miri, ignore = "Miri cannot map files")]
fn gguf_files_offload_through_a_memory_map() {
    for file in ["moe_types.gguf", "moe_fused.gguf", "moe_align64.gguf", "moe_legacy.gguf"] {
        let mapped = open_gguf(fixture(file)).unwrap();
        let store = ExpertStore::from_gguf(&mapped).unwrap();
        // Stacked tensors are shared with the map, not copied; slabs are the file's bytes.
        for layer in store.moe_layers() {
            for &(projection, _) in store.layer_layout(layer).unwrap().projections() {
                assert_eq!(store.expert(layer, projection, 1).unwrap(), mapped.expert(layer, projection, 1).unwrap());
            }
        }
        let experts = mapped.moe().layers()[0].layout().experts();
        let config = PoolConfig::new(experts, 2).initial(InitialPlacement::Cold);
        let mut model = Offloader::new(store, config, 32).unwrap().with_migrator(ParallelMigrator::with_threshold(0));
        let mut capture = RoutingCapture::new();
        for step in 0..6u64 {
            capture.clear();
            for layer in mapped.moe_layers() {
                capture.record(layer, &[(step % experts as u64) as u32, ((step + 1) % experts as u64) as u32]);
            }
            model.step(Step::decode(step), &capture).unwrap();
            check_reads(&model, &capture);
        }
        let mut names = Names::default();
        // Every layer's stacks, legacy per-expert layers included (gathered into one stack each).
        let pushed = model.push_full(&mut names).unwrap();
        assert_eq!(pushed, names.0.iter().map(|(_, len)| *len as u64).sum::<u64>());
        assert!(names.0.iter().all(|(n, _)| n.starts_with("blk.") && n.ends_with("_exps.weight")), "{file}");
    }
}

#[test]
#[cfg_attr(miri, ignore = "Miri cannot map files")]
fn legacy_per_expert_slabs_are_served_from_the_map_and_gathered_only_on_request() {
    let mapped = open_gguf(fixture("moe_legacy.gguf")).unwrap();
    let file = mapped.data().as_bytes().as_ptr_range();
    let store = ExpertStore::from_gguf(&mapped).unwrap();
    let mut per_expert = 0;
    for layer in store.moe_layers() {
        let stacks = store.layer(layer).unwrap();
        for &(projection, stack_layout) in stacks.layout().projections() {
            let stored = stacks.stack_bytes(projection).unwrap();
            let legacy = !stored.is_whole();
            per_expert += usize::from(legacy);
            let mut gathered = Vec::new();
            for expert in 0..stack_layout.experts() {
                let slab = store.expert(layer, projection, expert).unwrap();
                assert!(file.contains(&slab.as_ptr()), "layer {layer} {projection:?} expert {expert} is a copy");
                gathered.extend_from_slice(slab);
            }
            assert_eq!(stored.is_whole(), !legacy, "a slab request gathers nothing");
            assert_eq!(store.stack(layer, projection).unwrap(), &gathered[..]);
            assert!(stored.is_whole(), "a whole-stack request gathers the stack once");
        }
    }
    assert!(per_expert > 0, "the legacy fixture keeps experts apart");
    assert!(matches!(
        store.expert(usize::MAX, Projection::Down, 0),
        Err(expertslab_std::LayoutError::LayerOutOfRange { layer: usize::MAX, .. })
    ));
}

#[test]
fn a_layer_keyed_usize_max_is_stored_and_missing_layers_are_errors() {
    let store = store(&[usize::MAX], 4);
    assert!(store.expert(usize::MAX, Projection::Down, 3).is_ok());
    assert_eq!(
        store.expert(0, Projection::Down, 0),
        Err(expertslab_std::LayoutError::LayerOutOfRange { layer: 0, layers: 1 })
    );
}

#[test]
fn a_missing_file_names_its_path() {
    let err = open_gguf("/nonexistent/model.gguf").unwrap_err();
    assert!(err.to_string().starts_with("/nonexistent/model.gguf"), "{err}");
}

/// A one-layer model of F32 experts shaped as an FFN (gate and up `ffn × hidden`, down
/// `hidden × ffn`), small random values.
fn ffn_store(experts: usize, hidden: usize, ffn: usize) -> ExpertStore {
    use expertslab_std::{ExpertLayout, Format, StackLayout};
    let gate = StackLayout::new(Format::F32, experts, ffn, hidden).unwrap();
    let down = StackLayout::new(Format::F32, experts, hidden, ffn).unwrap();
    let layout = ExpertLayout::gate_up_down(gate, gate, down).unwrap();
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    let mut values = |n: usize| -> SharedBytes {
        let v: std::sync::Arc<[f32]> = (0..n)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                ((seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.5
            })
            .collect();
        SharedBytes::from_typed(v)
    };
    let n = experts * hidden * ffn;
    let mut store = ExpertStore::new();
    store.insert(0, LayerStacks::new(layout, &[values(n), values(n), values(n)]).unwrap()).unwrap();
    store
}

#[test]
fn the_host_decodes_a_layer_from_its_slots_with_the_bits_of_every_expert_read_in_place() {
    use expertslab_std::ffn::ExpertFfn;
    use expertslab_std::Policy;
    let (experts, hidden, ffn_width, top_k, tokens) = (6, 16, 8, 2, 2);
    let mut model =
        Offloader::new(ffn_store(experts, hidden, ffn_width), PoolConfig::new(experts, 2).policy(Policy::Lru), 64)
            .unwrap();
    model.warm_up().unwrap();
    let ffn = ExpertFfn::new(hidden, ffn_width, expertslab_std::Format::F32).unwrap();
    let mut routing = SyntheticRouting::new(RoutingShape::new(experts as u32, top_k as u32), 3);
    let mut served = OffloadStats::default();
    for step in 0..30u64 {
        let mut ids = Vec::new();
        routing.step(tokens, &mut ids);
        let weights: Vec<f32> = (0..ids.len()).map(|i| 0.25 + 0.5 * (i % 2) as f32).collect();
        let x: Vec<f32> = (0..tokens * hidden).map(|i| ((i as u64 * 37 + step) % 23) as f32 / 23.0 - 0.5).collect();
        let (mut offloaded, mut reference) = (vec![0f32; x.len()], vec![0f32; x.len()]);
        served.add(&model.decode_layer(&ffn, 0, Step::decode(step), &ids, &weights, &x, &mut offloaded).unwrap());
        model.reference_layer(&ffn, 0, &ids, &weights, &x, &mut reference).unwrap();
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&offloaded), bits(&reference), "step {step}");
        assert!(offloaded.iter().any(|&v| v != 0.0));
    }
    assert!(served.served.hits > 0 && served.served.served_by_copy > 0, "{served:?}");
    // Lengths that do not match are refused before the pool steps.
    let before = model.stats();
    let x = vec![0.0f32; tokens * hidden];
    let mut y = vec![0.0f32; tokens * hidden];
    for (ids, weights, y_len) in [
        (vec![1u32, 2, 3, 4], vec![0.5f32; 3], tokens * hidden),
        (vec![1, 2, 3], vec![0.5; 3], tokens * hidden),
        (vec![1, 2, 3, 4], vec![0.5; 4], tokens * hidden - 1),
    ] {
        let mut y = vec![0.0f32; y_len];
        assert!(model.decode_layer(&ffn, 0, Step::decode(99), &ids, &weights, &x, &mut y).is_err());
    }
    assert_eq!(model.stats(), before, "a refused step changes nothing");
    assert!(model.decode_layer(&ffn, 0, Step::decode(99), &[1, 2, 3, 4], &[0.5; 4], &x, &mut y).is_ok());
}
