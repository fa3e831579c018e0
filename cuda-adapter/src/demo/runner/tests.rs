//! The runner on the mock driver: the order of a chained run's work.

use std::sync::Arc;

use expertslab::trace::replay::FetchCap;
use expertslab::{Format, Policy, StackLayout};
use expertslab_std::{LayerStacks, SharedBytes};

use super::*;
use crate::driver::{MockDriver, MockOp, MockStream};
use crate::ffn::MissCosts;
use crate::host::RingConfig;
use expertslab::trace::synthetic::SyntheticTrace;
use expertslab_std::ffn::ExpertFfn;

const EXPERTS: usize = 8;
const LAYERS: usize = 3;
const SHAPE: FfnShape = FfnShape::new(64, 32, 2, Format::F32);
/// The tests' routing: the model's experts and layers, top-2.
const ROUTING: SyntheticTrace =
    SyntheticTrace { experts: EXPERTS as u32, layers: LAYERS as u32, top_k: 2, ..SyntheticTrace::DEFAULT };

/// Kernels that only log their launches, tagged with their layer, and count the pairs staged as
/// copied for their step ([`PairSource::Promoted`]).
struct MockKernels(Arc<MockDriver>, u64);

impl Kernels<Arc<MockDriver>> for MockKernels {
    fn stage(
        &mut self,
        layer: usize,
        _: u64,
        _: &[u32],
        sources: &[PairSource],
        s: &MockStream,
    ) -> Result<(), CudaError> {
        self.1 += sources.iter().filter(|p| matches!(p, PairSource::Promoted)).count() as u64;
        self.0.launch(s, layer as u32);
        Ok(())
    }
    unsafe fn pairs(
        &mut self,
        layer: usize,
        _: Phase,
        _: &SlotView,
        _: u64,
        _: u64,
        s: &MockStream,
    ) -> Result<(), CudaError> {
        self.0.launch(s, layer as u32);
        Ok(())
    }
    fn upload_parts(&mut self, layer: usize, _: &[usize], _: &[f32], s: &MockStream) -> Result<(), CudaError> {
        self.0.launch(s, layer as u32);
        Ok(())
    }
    fn upload_h(&mut self, layer: usize, _: &[usize], _: &[f32], s: &MockStream) -> Result<(), CudaError> {
        self.0.launch(s, layer as u32);
        Ok(())
    }
    unsafe fn combine(&mut self, layer: usize, _: u64, s: &MockStream) -> Result<(), CudaError> {
        self.0.launch(s, layer as u32);
        Ok(())
    }
    fn check(&mut self, _: &MockStream) -> Result<(), CudaError> {
        Ok(())
    }
}

fn store() -> (ExpertStore, ExpertLayout) {
    let gate = StackLayout::new(SHAPE.format, EXPERTS, SHAPE.ffn, SHAPE.hidden).unwrap();
    let down = StackLayout::new(SHAPE.down_format, EXPERTS, SHAPE.hidden, SHAPE.ffn).unwrap();
    let layout = ExpertLayout::gate_up_down(gate, gate, down).unwrap();
    let mut store = ExpertStore::new();
    for layer in 0..LAYERS {
        let stack = |p: usize| {
            let len = gate.total_bytes();
            SharedBytes::copy_from(&(0..len).map(|i| (i + 7 * p + 31 * layer) as u8).collect::<Vec<_>>())
        };
        store.insert(layer, LayerStacks::new(layout.clone(), &[stack(0), stack(1), stack(2)]).unwrap()).unwrap();
    }
    (store, layout)
}

/// A mock driver and a runner on it.
type Mock<'m> = (Arc<MockDriver>, Runner<'m, Arc<MockDriver>, MockKernels>);

/// A runner on the mock driver over `store` (the host FFN on, input for up to 3 tokens), with
/// `slots` and `scratch` slots per layer for `trace` under `run`, and its driver.
fn runner<'m>(
    store: &'m ExpertStore,
    layout: &'m ExpertLayout,
    run: &RunConfig,
    slots: usize,
    scratch: usize,
    trace: &expertslab::trace::Trace,
) -> Mock<'m> {
    try_runner(store, layout, run, slots, scratch, trace).unwrap()
}

/// [`runner`], or the runner's refusal.
fn try_runner<'m>(
    store: &'m ExpertStore,
    layout: &'m ExpertLayout,
    run: &RunConfig,
    slots: usize,
    scratch: usize,
    trace: &expertslab::trace::Trace,
) -> Result<Mock<'m>, CudaError> {
    let driver = Arc::new(MockDriver::new(1 << 26));
    let mut sink = CudaSlotSink::new(Arc::clone(&driver), [], RingConfig::default()).unwrap();
    sink.host_mut().register_store(store);
    let compute = driver.new_stream().unwrap();
    let model = Model {
        store,
        layout,
        shape: SHAPE,
        experts: EXPERTS,
        layers: LAYERS,
        expert_bytes: layout.expert_bytes(),
        activations: vec![0.5; 3 * SHAPE.hidden],
        host: Some(ExpertFfn::new(SHAPE.hidden, SHAPE.ffn, SHAPE.format).unwrap()),
    };
    let runner = Runner::new(model, sink, compute, MockKernels(Arc::clone(&driver), 0), run, slots, scratch, trace)?;
    Ok((driver, runner))
}

/// The device ranges of layer `layer`'s own memory: its slot arena (per-layer pools only),
/// its scratch region and its table's buffers.
fn ranges(runner: &Runner<'_, Arc<MockDriver>, MockKernels>, layer: usize, shared: bool) -> Vec<std::ops::Range<u64>> {
    let mut own = Vec::new();
    let arena =
        |v: &crate::arena::VramArena<Arc<MockDriver>>| v.device_ptr()..v.device_ptr() + v.arena().total_bytes() as u64;
    if !shared {
        own.extend(runner.sink().vram(layer).map(arena));
    }
    own.extend(runner.sink().scratch(layer).map(arena));
    for ptr in runner.tables()[layer].buffer_ptrs() {
        own.push(ptr..ptr + 4 * EXPERTS as u64);
    }
    own
}

/// Checks that record `i`'s work (its copies into its layer's memory, its launches) comes
/// after the host waited for record `i − 1`'s event and before its own event is recorded. With
/// `speculative`, a record's event may be followed by copies into the next record's layer (and
/// their ready events), with no stream made to wait: the speculative copies.
fn chained(
    ops: &[MockOp],
    done: MockEvent,
    layers: &[usize],
    own: &[Vec<std::ops::Range<u64>>],
    speculative: bool,
) -> Result<(), String> {
    let mut segments = vec![Vec::new()];
    for op in ops {
        if *op == (MockOp::SyncEvent { event: done }) {
            segments.push(Vec::new());
        } else if let Some(last) = segments.last_mut() {
            last.push(*op);
        }
    }
    if segments.len() != layers.len() {
        return Err(format!("{} host waits for {} records", segments.len() - 1, layers.len()));
    }
    for (i, (segment, &layer)) in segments.iter().zip(layers).enumerate() {
        let event = segment.iter().position(|op| matches!(op, MockOp::Record { event, .. } if *event == done));
        let (segment, tail) = segment.split_at(event.map_or(segment.len(), |e| e + 1));
        let next = layers.get(i + 1).copied();
        for op in tail {
            match *op {
                MockOp::Copy { dst, .. }
                    if speculative && next.is_some_and(|n| own[n].iter().any(|r| r.contains(&dst))) => {}
                MockOp::Record { .. } if speculative => {}
                MockOp::SyncStream { .. } | MockOp::SyncDevice => {}
                other => return Err(format!("record {i} (layer {layer}): {other:?} after its event")),
            }
        }
        for op in segment {
            match *op {
                MockOp::Launch { tag, .. } if tag as usize != layer => {
                    return Err(format!("record {i} (layer {layer}): a launch of layer {tag} in its turn"));
                }
                MockOp::Copy { dst, .. } => {
                    if let Some(other) = (0..own.len()).find(|&l| l != layer && own[l].iter().any(|r| r.contains(&dst)))
                    {
                        return Err(format!("record {i} (layer {layer}): a copy into layer {other}'s memory"));
                    }
                }
                _ => {}
            }
        }
        if !segment.iter().any(|op| matches!(op, MockOp::Launch { .. })) {
            return Err(format!("record {i}: no launch"));
        }
        if event.is_none() {
            return Err(format!("record {i}: no event"));
        }
    }
    Ok(())
}

use crate::driver::MockEvent;

#[test]
fn a_layer_s_work_is_enqueued_only_after_the_previous_layer_s_event() {
    let (store, layout) = store();
    let settings = SyntheticTrace {
        steps: 10,
        prefill_tokens: 3,
        phase: 4,
        ..SyntheticTrace { steps: 10, zipf: 0.5, reuse: 0.3, ..ROUTING }
    };
    let trace = settings.trace().unwrap();
    let layers: Vec<usize> = trace.records().iter().map(|r| r.layer as usize).collect();
    let mixed = MissRule::Measured(MissCosts {
        copy: 1.5,
        resident_pair: 0.0,
        bus_pair: 1.0,
        host_pair: f64::INFINITY,
        host_step: 0.0,
        down_share: 0.0,
    });
    // Copies and host compute side by side: a host pair costs two copies, so a step's two misses
    // split between the two (tinylfu that never admits serves every miss in place).
    let balanced = MissRule::Balanced(
        MissCosts { copy: 1.0, resident_pair: 0.0, bus_pair: 9.0, host_pair: 2.0, host_step: 0.0, down_share: 0.0 },
        FetchCap::Balanced,
    );
    // Splits beside copies and the host: a copy costs 3, a host pair 4 and down a third, so two
    // misses of a step are one copied and one split, or both split (the core's split).
    let split = MissRule::Balanced(
        MissCosts { copy: 3.0, resident_pair: 0.0, bus_pair: 9.0, host_pair: 4.0, host_step: 0.0, down_share: 0.5 },
        FetchCap::Balanced,
    );
    let never_admits = Policy::Tinylfu(expertslab::AdmissionConfig::new(4.0, 0.0, 1e9).unwrap());
    for (sharing, policy, miss) in [
        (Sharing::PerLayer, Policy::Lru, MissRule::Always(MissAction::Copy)),
        (Sharing::PerLayer, Policy::Tide, mixed),
        (Sharing::Shared, Policy::Lru, mixed),
        (Sharing::PerLayer, Policy::Lru, MissRule::Always(MissAction::Bus)),
        (Sharing::PerLayer, never_admits, balanced),
        // LRU under the balanced rule: the pool promotes the step's share, the host the rest.
        (Sharing::PerLayer, Policy::Lru, balanced),
        (Sharing::Shared, Policy::Lru, balanced),
        (Sharing::PerLayer, Policy::Tide, MissRule::Always(MissAction::Host)),
        (Sharing::PerLayer, Policy::Lru, MissRule::Always(MissAction::Split)),
        (Sharing::PerLayer, never_admits, split),
        (Sharing::Shared, Policy::Lru, split),
    ] {
        let run = RunConfig { sharing, ..RunConfig::new(3, policy, miss) };
        let (driver, mut runner) = runner(&store, &layout, &run, 3, 6, &trace);
        driver.clear_ops();
        let report = runner.run(&trace).unwrap();
        assert!(report.promotions + report.scratch_pairs + report.bus_pairs > 0, "{sharing:?}: nothing moved");
        // The host's input: copied on the compute stream after the previous record (never read
        // back synchronously: each record ends with the copy when its next layer may miss).
        let read_backs = driver.ops().iter().filter(|op| matches!(op, MockOp::ReadBackAsync { .. })).count();
        assert!(!driver.ops().iter().any(|op| matches!(op, MockOp::ReadBack { .. })), "{miss:?}: a synchronous read");
        let down = layout.find(expertslab::Projection::Down).unwrap().1.expert_bytes() as u64;
        if miss == MissRule::Always(MissAction::Split) {
            // Only down is copied for a split: every scratch copy is down's bytes.
            assert!(report.split_pairs > 0 && read_backs > 0, "split: {report:?}");
            assert_eq!((report.host_pairs, report.scratch_pairs), (0, 0), "{report:?}");
            assert!(report.bytes_scratch > 0 && report.bytes_scratch.is_multiple_of(down), "{report:?}");
        } else if miss == split {
            assert!(report.split_pairs > 0, "balanced with a share of down: splits ({report:?})");
        } else if matches!(miss, MissRule::Balanced(..) | MissRule::Always(MissAction::Host)) {
            assert_eq!(report.split_pairs, 0, "{miss:?}: no share of down, no split");
            assert!(report.host_pairs > 0 && read_backs > 0, "{miss:?}: no host pair ({report:?})");
            if miss == balanced && policy == never_admits {
                assert!(report.scratch_pairs > 0, "balanced: copies beside the host's pairs: {report:?}");
            }
            if miss == balanced && policy == Policy::Lru {
                assert!(report.promotions > 0, "balanced LRU: promotions beside the host's pairs: {report:?}");
            }
        } else {
            assert_eq!((report.host_pairs, read_backs), (0, 0), "{miss:?}: the host is never used");
        }
        if read_backs > 0 {
            // Every record of a layer before the last copies its output back after its launches.
            let ops = driver.ops();
            let done = *runner.done_event();
            let records: Vec<usize> = ops
                .iter()
                .enumerate()
                .filter(|(_, op)| matches!(op, MockOp::Record { event, .. } if *event == done))
                .map(|(i, _)| i)
                .collect();
            assert_eq!(records.len(), layers.len());
            for (i, (&at, &layer)) in records.iter().zip(&layers).enumerate() {
                let from = if i == 0 { 0 } else { records[i - 1] };
                let copies = ops[from..at].iter().filter(|op| matches!(op, MockOp::ReadBackAsync { .. })).count();
                let expected = usize::from(layer + 1 < LAYERS);
                assert_eq!(copies, expected, "{miss:?}: record {i} (layer {layer}) read back {copies} times");
                // After the record's last launch (its output final on the stream).
                let launch = ops[from..at].iter().rposition(|op| matches!(op, MockOp::Launch { .. }));
                let copy = ops[from..at].iter().rposition(|op| matches!(op, MockOp::ReadBackAsync { .. }));
                assert!(expected == 0 || copy > launch, "record {i}: read back before its last launch");
            }
        }
        let ops = driver.ops();
        let shared = sharing == Sharing::Shared;
        let own: Vec<_> = (0..LAYERS).map(|l| ranges(&runner, l, shared)).collect();
        let done = *runner.done_event();
        // The run's own work ends with syncs past the last record: drop what follows its event.
        let last = ops.iter().rposition(|op| matches!(op, MockOp::Record { event, .. } if *event == done)).unwrap();
        let ops = &ops[..=last];
        chained(ops, done, &layers, &own, false).unwrap_or_else(|e| panic!("{sharing:?} {policy:?} {miss:?}: {e}"));
        // The check catches a launch of a layer enqueued before the previous layer's event.
        let second_wait =
            ops.iter().enumerate().filter(|(_, op)| **op == MockOp::SyncEvent { event: done }).nth(1).unwrap().0;
        let launch =
            ops.iter().skip(second_wait).position(|op| matches!(op, MockOp::Launch { .. })).unwrap() + second_wait;
        let mut early = ops.to_vec();
        let moved = early.remove(launch);
        early.insert(second_wait, moved);
        assert!(chained(&early, done, &layers, &own, false).is_err(), "a launch before the wait must be caught");
    }
}

/// Under a rule that may use the host but finds it too dear (a host pair costs a million copies),
/// every miss is copied, no record computes on the host, and records stop copying their output
/// back once the next layer's records have gone without the host for a while; with no slots
/// and every miss on the host, every record with a next layer copies back.
#[test]
fn records_copy_their_output_back_only_for_layers_that_use_the_host() {
    let (store, layout) = store();
    let trace = SyntheticTrace { steps: 40, prefill_tokens: 0, ..ROUTING }.trace().unwrap();
    let dear =
        MissCosts { copy: 1.0, resident_pair: 0.0, bus_pair: 9.0, host_pair: 1e6, host_step: 0.0, down_share: 0.0 };
    for (slots, miss, host) in
        [(3, MissRule::Balanced(dear, FetchCap::Uncapped), false), (0, MissRule::Always(MissAction::Host), true)]
    {
        let (driver, mut runner) = runner(&store, &layout, &RunConfig::new(slots, Policy::Lru, miss), slots, 6, &trace);
        driver.clear_ops();
        let report = runner.run(&trace).unwrap();
        assert_eq!(report.host_pairs > 0, host, "{miss:?}: {report:?}");
        let ops = driver.ops();
        let done = *runner.done_event();
        // Each record's ops end with its event; a record copies back at most once.
        let mut from = 0;
        let mut copied = Vec::new();
        for (at, _) in
            ops.iter().enumerate().filter(|(_, op)| matches!(op, MockOp::Record { event, .. } if *event == done))
        {
            copied.push(ops[from..at].iter().filter(|op| matches!(op, MockOp::ReadBackAsync { .. })).count());
            from = at;
        }
        let layers: Vec<usize> = trace.records().iter().map(|r| r.layer as usize).collect();
        assert_eq!(copied.len(), layers.len());
        let with_next = |i: &usize| layers[*i] + 1 < LAYERS;
        if host {
            // Every record with a next layer copies back, and no host pair copies its input itself.
            assert!((0..copied.len()).filter(with_next).all(|i| copied[i] == 1), "{copied:?}");
            assert!(!ops.iter().any(|op| matches!(op, MockOp::ReadBack { .. })), "a synchronous read");
        } else {
            // The first records copy back (no history yet); the last steps' records do not.
            let first: usize = copied.iter().take(LAYERS).sum();
            let last: usize = copied.iter().rev().take(10 * LAYERS).sum();
            assert_eq!(first, LAYERS - 1, "{copied:?}");
            assert_eq!(last, 0, "{copied:?}");
        }
    }
}

/// Work handed to the host FFN's pool comes back whether it ends while the waiter still checks
/// without sleeping or after it went to sleep, on the pool's own threads.
#[test]
fn work_handed_to_the_pool_comes_back_before_and_after_the_waiter_sleeps() {
    let ffn = ExpertFfn::new(SHAPE.hidden, SHAPE.ffn, SHAPE.format).unwrap().with_threads(2).unwrap();
    let quick = spawn_on(&ffn, |ffn| ffn.threads());
    assert_eq!(quick.wait(), Some(2));
    let slow = spawn_on(&ffn, |_| {
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::thread::current().name().map(str::to_owned)
    });
    let name = slow.wait().flatten().unwrap_or_default();
    assert!(name.starts_with("expertslab-ffn-"), "{name}");
}

/// A layer whose every expert is resident is enqueued without waiting for the previous record:
/// no step of it can miss, so the host runs ahead and the compute stream's order chains the
/// records (each record's launches still come in record order, its event after them). With one
/// slot fewer than the experts, the host waits for every record again.
#[test]
fn layers_holding_every_expert_are_enqueued_without_waiting() {
    let (store, layout) = store();
    let trace = SyntheticTrace { steps: 6, prefill_tokens: 2, ..ROUTING }.trace().unwrap();
    let layers: Vec<usize> = trace.records().iter().map(|r| r.layer as usize).collect();
    for (sharing, slots) in [(Sharing::PerLayer, EXPERTS), (Sharing::Shared, EXPERTS), (Sharing::PerLayer, EXPERTS - 1)]
    {
        let run = RunConfig { sharing, ..RunConfig::new(slots, Policy::Lru, MissRule::Always(MissAction::Copy)) };
        let (driver, mut runner) = runner(&store, &layout, &run, slots, 0, &trace);
        driver.clear_ops();
        let report = runner.run(&trace).unwrap();
        let done = *runner.done_event();
        let ops = driver.ops();
        let last = ops.iter().rposition(|op| matches!(op, MockOp::Record { event, .. } if *event == done)).unwrap();
        let ops = &ops[..=last];
        let waits = ops.iter().filter(|op| **op == MockOp::SyncEvent { event: done }).count();
        let records = ops.iter().filter(|op| matches!(op, MockOp::Record { event, .. } if *event == done)).count();
        assert_eq!(records, layers.len(), "{sharing:?} {slots}");
        // The launches' layers, one run of them per record, in record order.
        let mut order: Vec<usize> = Vec::new();
        for op in ops {
            if let MockOp::Launch { tag, .. } = op {
                if order.last() != Some(&(*tag as usize)) {
                    order.push(*tag as usize);
                }
            }
        }
        let mut expected = layers.clone();
        expected.dedup();
        assert_eq!(order, expected, "{sharing:?} {slots}: launches out of record order");
        if slots == EXPERTS {
            assert_eq!(waits, 0, "{sharing:?}: a host wait where every expert is resident");
            assert_eq!((report.served.misses, report.promotions), (0, 0), "{sharing:?}: {report:?}");
        } else {
            assert_eq!(waits, layers.len() - 1, "one slot short: the host waits for every record");
        }
    }
}

/// Speculative copies for the next layer go on the copy stream after a record's event and before
/// the host waits for it, without making any stream wait (they overlap the record's kernels),
/// only into the next layer's memory; the next record reads a guessed expert only with its step's
/// own copies (after the compute stream waited on the copy stream). Layers that follow each other
/// (each choice a fixed map of the previous layer's) are guessed right once learnt.
#[test]
fn speculative_copies_overlap_the_record_and_are_read_after_their_copies() {
    let (store, layout) = store();
    let settings = SyntheticTrace { steps: 40, prefill_tokens: 1, zipf: 0.5, reuse: 0.0, correlation: 1.0, ..ROUTING };
    let trace = settings.trace().unwrap();
    let layers: Vec<usize> = trace.records().iter().map(|r| r.layer as usize).collect();
    let prefetch = Prefetch { predictor: expertslab::Predictor::Transitions, staging: 2, copies: 2 };
    let base = RunConfig::new(4, Policy::Lru, MissRule::Always(MissAction::Copy));
    let run = RunConfig { prefetch: Some(prefetch), ..base };
    let (driver, mut speculating) = runner(&store, &layout, &run, 4, 2, &trace);
    driver.clear_ops();
    let report = speculating.run(&trace).unwrap();
    assert!(report.prefetched > 0 && report.prefetch_hits > 0, "{report:?}");
    assert!(report.prefetch_hits <= report.prefetched);
    // One token a record, two experts: a guessed expert used is one pair, staged as copied for
    // its step, beside the pairs the step's own promotions serve.
    assert_eq!(speculating.kernels.1, report.served.served_by_copy + report.prefetch_hits, "{report:?}");
    let ops = driver.ops();
    let done = *speculating.done_event();
    let last = ops.iter().rposition(|op| matches!(op, MockOp::Record { event, .. } if *event == done)).unwrap();
    let ops = &ops[..=last];
    let own: Vec<_> = (0..LAYERS).map(|l| ranges(&speculating, l, false)).collect();
    chained(ops, done, &layers, &own, true).unwrap();
    assert!(chained(ops, done, &layers, &own, false).is_err(), "copies after a record's event, before its wait");
    // Without speculation the same run moves more on demand.
    let (_, mut plain) = runner(&store, &layout, &base, 4, 2, &trace);
    let plain = plain.run(&trace).unwrap();
    assert!(plain.served.served_by_copy > report.served.served_by_copy, "{plain:?} vs {report:?}");
    assert_eq!(plain.served.pairs(), report.served.pairs());
    // Refused where a guess could not be kept off the layer computing, or the policy takes none.
    let shared = RunConfig { sharing: Sharing::Shared, ..run };
    let tinylfu = Policy::Tinylfu(expertslab::AdmissionConfig::new(4.0, 0.0, 1.0).unwrap());
    let no_staging = RunConfig { prefetch: Some(Prefetch { staging: 0, ..prefetch }), ..run };
    for refused in [shared, RunConfig { policy: tinylfu, ..run }, RunConfig { slots: 0, ..run }, no_staging] {
        let slots = refused.slots;
        let err = try_runner(&store, &layout, &refused, slots, 2, &trace).err().map(|e| e.to_string());
        assert!(err.as_deref().is_some_and(|e| e.contains("speculative copies") || e.contains("staging")), "{err:?}");
    }
}
