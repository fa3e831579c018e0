//! Decode time per token on the GPU (issue 11's G2, G3 and G4), for the model of
//! `ModelSpec::current_moe(4)` on the locality and near-uniform traces, at 25% and 50% of the
//! experts in slots. Without a CUDA device it prints one line and exits.
//!
//! Rows: (i) every expert resident; (ii) no slots, every routed expert uploaded each step;
//! (iii) no slots, misses read over the bus; (iv) slots under LRU, TIDE, decay and the `tune`
//! pick at that budget, misses by the measured rule, and LRU with speculative copies
//! ([`expertslab_cuda::demo::Prefetch`]). For each (iv) row: the time the core's
//! replay cost model predicts (G3) and the step time against max(copy, compute) (G4).
//! `EXPERTSLAB_REPS` sets the repetitions per row (default 5; medians are reported).
//! `EXPERTSLAB_PERCENTS` (such as `75,0`) takes only those budgets of the `peer` rows.
//! `EXPERTSLAB_HOST_THREADS` sets the host FFN's threads (default: one fewer than the CPUs).
//! A value of these that does not parse (or a percent over 100) stops the run with a message.
//!
//! `EXPERTSLAB_MODEL=FILE.gguf` takes the experts of a GGUF file instead (read in place from its
//! memory map; the traces follow the file's shape). `EXPERTSLAB_ROWS=peer` prints the rows of
//! the side-by-side with llama.cpp instead (`scripts/peer-llamacpp.sh`): on the near-uniform and
//! locality traces, every expert resident, then 75%, 50% and 25% of each layer's experts in
//! slots under the `tune` pick at that budget, then no slots; at each budget below 100% a row
//! for each way of serving misses ([`DemoMiss`]: copied, computed on the host CPU, and copies and
//! the host side by side, `auto`; read over the bus only without slots, since with slots the
//! pool admits those misses and the row is the copy row). One tab-separated line per row: `peer`, trace,
//! percent in VRAM, run, hit rate, µs per token, µs per token over the all-resident row, the
//! bound of that extra time (the bytes the row brought to its pairs, copied or read by the
//! host, over the link's and the host's bandwidth together, per token), the µs per token the
//! core's replay predicts for the run ([`GpuModel::predict`]), and the wall µs per token from
//! the host's pairs started to their upload enqueued ([`RunReport::host_seconds`]), and of that
//! the µs per token the pairs waited for a thread, were computed, and took to reach the driving
//! thread ([`RunReport::host_queued_seconds`], [`RunReport::host_compute_seconds`],
//! [`RunReport::host_handoff_seconds`]), then the µs per token from the host's pairs started to
//! their handing to the pool ([`RunReport::host_input_seconds`]), the µs per token the computed
//! outputs waited for the driving thread to finish enqueueing ([`RunReport::host_late_seconds`])
//! and the µs per token the driving thread waited on the device ([`RunReport::wait_seconds`]).

use std::process::ExitCode;

use expertslab::trace::replay::{FetchCap, Sharing};
use expertslab::trace::synthetic::SyntheticTrace;
use expertslab::{DecayConfig, Policy, Predictor, Schedule};
use expertslab_cuda::demo::{
    open_device, tune_pick, Calibration, DemoMiss, DemoRouting, GpuModel, ModelSpec, Prefetch, RunConfig, RunReport,
};
use expertslab_cuda::{CudaError, MissAction, MissCosts, MissRule};

fn schedule_name(s: Schedule) -> String {
    match s {
        Schedule::EveryForward => "τ=1".into(),
        other => format!("τ={}", other.interval()),
    }
}

fn us(seconds: f64) -> f64 {
    seconds * 1e6
}

fn row(trace: &str, slots: &str, name: &str, r: &RunReport) {
    let tokens = r.decode_tokens.max(1) as f64;
    let copied: u64 = r.step_copy_bytes.iter().sum();
    let bus_reads: u64 = r.step_bus_pairs.iter().sum();
    print!(
        "{trace:<13} {slots:>5} {name:<26} hit {:>5.1}%  copied {:>6.1} MiB/token  bus pairs {:>5.2}/token  {:>8.1} µs/token",
        100.0 * r.hit_rate(),
        copied as f64 / tokens / (1 << 20) as f64,
        bus_reads as f64 / tokens,
        us(r.seconds_per_token())
    );
}

fn bench(model: &GpuModel, calibration: &Calibration, reps: usize) -> Result<(), CudaError> {
    let experts = model.spec().experts;
    let copy = MissRule::Always(MissAction::Copy);
    let measured = MissRule::Measured(calibration.costs);
    let mut goals = Vec::new();
    for (trace_name, settings) in
        [("locality", SyntheticTrace::LOCALITY), ("near-uniform", SyntheticTrace::NEAR_UNIFORM)]
    {
        let trace = DemoRouting::Synthetic(settings).trace(model.spec())?;
        let floor = model.decode_median(&trace, &RunConfig::new(experts, Policy::Tide, copy), reps)?;
        row(trace_name, "100%", "(i) all resident", &floor);
        println!();
        let streaming = model.decode_median(&trace, &RunConfig::new(0, Policy::Lru, copy), reps)?;
        row(trace_name, "0", "(ii) streaming", &streaming);
        println!("  {:.2}× floor", streaming.seconds_per_token() / floor.seconds_per_token());
        let bus_read =
            model.decode_median(&trace, &RunConfig::new(0, Policy::Lru, MissRule::Always(MissAction::Bus)), reps)?;
        row(trace_name, "0", "(iii) bus read", &bus_read);
        println!("  {:.2}× floor", bus_read.seconds_per_token() / floor.seconds_per_token());
        let floor_token = floor.seconds_per_token();
        for share in [4, 2] {
            let slots = experts / share;
            let label = format!("{}%", 100 / share);
            let tuned = tune_pick(&trace, slots, model.expert_bytes() as u64, calibration, measured)?;
            let (tuned_schedule, tuned) = (tuned.schedule, tuned.policy);
            // LRU with speculative copies: the next layer's two best guesses (transitions and the
            // previous step) copied into two staging slots while a layer computes. Two copies
            // take about as long as a layer step here; more would hold the copy stream, which
            // the next layer's own copies queue behind.
            let prefetch = Prefetch { predictor: Predictor::Both, staging: 2, copies: 2 };
            let candidates = [
                ("(iv) lru".to_string(), Policy::Lru, Schedule::EveryForward, None),
                ("(iv) lru, speculative".to_string(), Policy::Lru, Schedule::EveryForward, Some(prefetch)),
                ("(iv) tide".to_string(), Policy::Tide, Schedule::EveryForward, None),
                ("(iv) decay".to_string(), Policy::Decay(DecayConfig::DEFAULT), Schedule::EveryForward, None),
                (format!("(iv) tune: {} {}", tuned.name(), schedule_name(tuned_schedule)), tuned, tuned_schedule, None),
            ];
            let mut best_iv = f64::INFINITY;
            for (name, policy, schedule, prefetch) in candidates {
                let run = RunConfig { schedule, prefetch, ..RunConfig::new(slots, policy, measured) };
                let r = model.decode_median(&trace, &run, reps)?;
                let predicted = model.predict(&trace, &run, calibration)?;
                let bound = model.overlap_bound(&r, floor_token, calibration);
                let t = r.seconds_per_token();
                best_iv = best_iv.min(t);
                row(trace_name, &label, &name, &r);
                println!(
                    "  vs (ii) {:.2}×  vs best(ii,iii) {:.2}×  G3 predicted {:.1} µs ({:+.1}%)  G4 {:.2}",
                    streaming.seconds_per_token() / t,
                    streaming.seconds_per_token().min(bus_read.seconds_per_token()) / t,
                    us(predicted.seconds_per_token),
                    100.0 * (t / predicted.seconds_per_token - 1.0),
                    r.decode_seconds / bound
                );
            }
            if trace_name == "locality" && share == 2 {
                goals.push(format!(
                    "G2 locality 50%: best (iv) {:.2}× faster than (ii) (goal ≥ 3×)",
                    streaming.seconds_per_token() / best_iv
                ));
            }
            if trace_name == "near-uniform" {
                let better = streaming.seconds_per_token().min(bus_read.seconds_per_token());
                goals.push(format!(
                    "G2 near-uniform {label}: best (iv) {:.1} µs against the better of (ii), (iii) {:.1} µs (goal: not slower)",
                    us(best_iv),
                    us(better)
                ));
            }
        }
    }
    for g in goals {
        println!("{g}");
    }
    Ok(())
}

/// The rows of the side-by-side with llama.cpp (see the module docs).
fn peer(model: &GpuModel, calibration: &Calibration, reps: usize, percents: &[usize]) -> Result<(), CudaError> {
    let experts = model.spec().experts;
    let c = &calibration.costs;
    let measured = MissRule::Measured(*c);
    for (trace_name, settings) in
        [("near-uniform", SyntheticTrace::NEAR_UNIFORM), ("locality", SyntheticTrace::LOCALITY)]
    {
        let trace = DemoRouting::Synthetic(settings).trace(model.spec())?;
        let expert = model.expert_bytes() as f64;
        let host_bandwidth = if c.host_pair.is_finite() { expert / c.host_pair } else { 0.0 };
        let line = |percent: usize, name: &str, r: &RunReport, floor: f64, predicted: f64| {
            let tokens = r.decode_tokens.max(1) as f64;
            let copied: u64 = r.step_copy_bytes.iter().sum();
            let read: u64 = r.step_host_pairs.iter().chain(&r.step_bus_pairs).sum();
            // A split pair's down is in the copied bytes; the host reads the rest.
            let split: u64 = r.step_split_pairs.iter().sum();
            let brought = copied as f64 + (read as f64 + split as f64 * (1.0 - c.down_share)) * expert;
            let bound = brought / tokens / (calibration.link_bytes_per_second + host_bandwidth);
            println!(
                "peer\t{trace_name}\t{percent}\t{name}\t{:.4}\t{:.1}\t{:.1}\t{:.1}\t{:.1}\t{:.1}\t{:.1}\t{:.1}\t{:.1}\t{:.1}\t{:.1}\t{:.1}",
                r.hit_rate(),
                us(r.seconds_per_token()),
                us(r.seconds_per_token() - floor),
                us(bound),
                us(predicted),
                us(r.host_seconds / tokens),
                us(r.host_queued_seconds / tokens),
                us(r.host_compute_seconds / tokens),
                us(r.host_handoff_seconds / tokens),
                us(r.host_input_seconds / tokens),
                us(r.host_late_seconds / tokens),
                us(r.wait_seconds / tokens)
            );
        };
        let floor = model.decode_median(&trace, &RunConfig::new(experts, Policy::Lru, measured), reps)?;
        let floor_token = floor.seconds_per_token();
        line(100, "all resident", &floor, floor_token, floor_token);
        for &percent in percents {
            let slots = experts * percent / 100;
            // Each way of serving misses with the pool the tune picks for it; `auto` also with
            // whole experts only (no split), the rule before splits.
            let whole = MissRule::Balanced(MissCosts { down_share: 0.0, ..*c }, FetchCap::Balanced);
            let ways = [DemoMiss::Copy, DemoMiss::Bus, DemoMiss::Host, DemoMiss::Auto, DemoMiss::Auto];
            for (i, way) in ways.into_iter().enumerate() {
                // With slots the pool admits what the bus would read: its row is the copy row.
                if way == DemoMiss::Bus && slots > 0 {
                    continue;
                }
                let (rule, way_name) = if i == 4 { (whole, "auto-whole") } else { (way.rule(*c), way.name()) };
                let run = if slots == 0 {
                    RunConfig::new(0, Policy::Lru, rule)
                } else {
                    tune_pick(&trace, slots, model.expert_bytes() as u64, calibration, rule)?
                };
                let cap = match (way, run.miss) {
                    (_, MissRule::Balanced(_, FetchCap::Uncapped)) => ", uncapped",
                    (_, MissRule::Balanced(..)) => ", capped",
                    (DemoMiss::Auto, MissRule::Always(action)) => match action {
                        MissAction::Copy => ", all copied",
                        MissAction::Bus => ", all over the bus",
                        MissAction::Host => ", all on the host",
                        MissAction::Split => ", all split",
                    },
                    _ => "",
                };
                let shared = if run.sharing == Sharing::Shared { "/shared" } else { "" };
                let name = format!("tune: {}{shared} {}{cap}", run.policy.name(), schedule_name(run.schedule));
                let r = model.decode_median(&trace, &run, reps)?;
                let predicted = model.predict(&trace, &run, calibration)?.seconds_per_token;
                line(percent, &format!("{name}, misses {way_name}"), &r, floor_token, predicted);
            }
        }
    }
    Ok(())
}

/// The environment variable `name` parsed as a comma-separated list (`None` when unset); a
/// value that does not parse is an error naming it, not a silent default.
fn env_list<T: std::str::FromStr>(name: &str) -> Result<Option<Vec<T>>, String> {
    match std::env::var(name) {
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(e) => Err(format!("{name}: {e}")),
        Ok(v) => v
            .split(',')
            .map(|p| p.trim().parse().map_err(|_| format!("{name}={v}: {:?} is not a number", p.trim())))
            .collect::<Result<Vec<T>, String>>()
            .map(Some),
    }
}

/// The one value of `name` (`None` when unset); more than one, or one that does not parse, is
/// an error.
fn env_one<T: std::str::FromStr>(name: &str) -> Result<Option<T>, String> {
    match env_list::<T>(name)? {
        None => Ok(None),
        Some(mut v) if v.len() == 1 => Ok(v.pop()),
        Some(_) => Err(format!("{name}: one number, not a list")),
    }
}

fn main() -> ExitCode {
    // `cargo bench` passes --bench; nothing else is taken. Settings come from the environment,
    // read before the device is opened so a mistyped one stops the run at once.
    let settings = (|| -> Result<_, String> {
        let reps = env_one::<usize>("EXPERTSLAB_REPS")?.unwrap_or(5);
        let threads = env_one::<usize>("EXPERTSLAB_HOST_THREADS")?;
        let percents = env_list::<usize>("EXPERTSLAB_PERCENTS")?.unwrap_or_else(|| vec![75, 50, 25, 0]);
        if let Some(p) = percents.iter().find(|&&p| p > 100) {
            return Err(format!("EXPERTSLAB_PERCENTS: {p} is over 100"));
        }
        Ok((reps, threads, percents))
    })();
    let (reps, threads, percents) = match settings {
        Ok(s) => s,
        Err(e) => {
            eprintln!("decode: {e}");
            return ExitCode::FAILURE;
        }
    };
    match open_device(0) {
        Err(e @ (CudaError::NoDriver | CudaError::NoDevice { .. })) => {
            println!("skipped: no CUDA device ({e}); decode benchmark not run");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("decode: {e}");
            return ExitCode::FAILURE;
        }
        Ok(_) => {}
    }
    let file = std::env::var_os("EXPERTSLAB_MODEL");
    let peer_rows = std::env::var("EXPERTSLAB_ROWS").is_ok_and(|v| v == "peer");
    let model = match &file {
        Some(path) => GpuModel::open_gguf(0, path),
        None => GpuModel::generate(0, ModelSpec::current_moe(4)),
    };
    let result = model.and_then(|mut model| {
        // `EXPERTSLAB_HOST_THREADS=N` runs the host FFN on N threads instead of the default.
        if let Some(threads) = threads {
            model.set_host_threads(threads)?;
        }
        let calibration = model.calibrate(20)?;
        let spec = model.spec();
        println!(
            "{} (driver {}), expert {} bytes, {} repetitions per row",
            model.device_name()?,
            model.driver_version()?,
            model.expert_bytes(),
            reps
        );
        println!(
            "model: {} layers × {} experts, top-{}, hidden {}, FFN {}, {}; weights {}",
            spec.layers,
            spec.experts,
            spec.shape.top_k,
            spec.shape.hidden,
            spec.shape.ffn,
            spec.shape.format.name(),
            model.weights()
        );
        println!("host FFN: {} threads", model.host_threads());
        println!("calibration: {calibration:?}");
        if peer_rows {
            // `EXPERTSLAB_PERCENTS=75,0` takes those budgets only.
            peer(&model, &calibration, reps, &percents)
        } else {
            bench(&model, &calibration, reps)
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("decode: {e}");
            ExitCode::FAILURE
        }
    }
}
