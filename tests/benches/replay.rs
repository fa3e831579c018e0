//! Replay throughput: steps per second of `expertslab::trace::replay::replay` for one layer of E = 256
//! experts with top-8 routing, 1 and 64 tokens per step, 64 slots, for every policy. Beside it,
//! reading the same trace from its text form. Run with
//! `cargo bench -p expertslab-tests --bench replay`.

use divan::Bencher;
use expertslab::trace::replay::{replay, CostModel, ReplayConfig, ReplayPolicy};
use expertslab::trace::synthetic::{RoutingShape, SyntheticRouting};
use expertslab::trace::{Trace, TraceHeader};
use expertslab::{InitialPlacement, Schedule};

const EXPERTS: u32 = 256;
const TOP_K: u32 = 8;
const STEPS: u64 = 1000;

fn trace(tokens: usize) -> Trace {
    let mut trace = Trace::new(TraceHeader { experts: EXPERTS, layers: 1, top_k: TOP_K }).expect("shape");
    let mut routing = SyntheticRouting::new(RoutingShape::new(EXPERTS, TOP_K), 11);
    let mut ids = Vec::new();
    for step in 0..STEPS {
        ids.clear();
        routing.step(tokens, &mut ids);
        trace.push(0, step, false, &ids).expect("valid record");
    }
    trace
}

#[divan::bench(args = ["tide", "decay", "lru", "lfu", "lru2", "belady", "oracle"], consts = [1, 64], sample_count = 20)]
fn policy<const TOKENS: usize>(bencher: Bencher, name: &str) {
    let trace = trace(TOKENS);
    let config = ReplayConfig::new(
        ReplayPolicy::from_name(name).expect("known policy"),
        64,
        Schedule::EveryForward,
        InitialPlacement::Warm,
        CostModel::new(1 << 20, 2e-5, 16e9),
    );
    bencher.counter(divan::counter::ItemsCount::new(STEPS)).bench_local(|| replay(&trace, &config).expect("replays"));
}

#[divan::bench(consts = [1, 64], sample_count = 20)]
fn parse_text<const TOKENS: usize>(bencher: Bencher) {
    let mut text = String::new();
    trace(TOKENS).write(&mut text).expect("writes");
    bencher
        .counter(divan::counter::ItemsCount::new(STEPS))
        .bench_local(|| Trace::parse(divan::black_box(&text)).expect("parses"));
}

fn main() {
    divan::main();
}
