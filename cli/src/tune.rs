//! `expertslab tune`: the policy, slot count and refresh interval with the lowest modeled time for a
//! trace and a cost model, within a slot limit, how much it beats TIDE at τ = 1 and LRU, and how
//! far it is from the optimum (per layer and for one shared pool).

use std::io::{self, Write};
use std::num::NonZeroU32;

use clap::Args as ClapArgs;
use expertslab_std::trace::replay::{
    best_run, markov, slot_counts, FetchCap, ReplayPolicy, Sharing, TuneGrid, TuneJob,
};
use expertslab_std::{slots_per_layer, AdmissionConfig, Policy};
use serde_json::json;

use crate::error::CliError;
use crate::replay_args::{
    parse_policy, parse_sharing, read_trace, run_all, schedule_name, with_decay, ReplayArgs, Run,
};
use crate::simulate::{run_json, run_label, write_table};
use crate::units::{self, format_size};

/// `tune`'s arguments.
#[derive(Debug, ClapArgs)]
// `--link-gbps -5` reaches the value parser, which says why it is refused.
#[command(allow_negative_numbers = true)]
pub struct Args {
    #[command(flatten)]
    replay: ReplayArgs,
    /// The most slots per layer (default: a quarter of the experts); or see --memory.
    #[arg(long, alias = "max-budget", conflicts_with = "memory")]
    max_slots: Option<usize>,
    /// Fast memory for all layers' slots: the slot limit is memory / (layers × expert bytes).
    #[arg(long, value_parser = units::parse_size)]
    memory: Option<u64>,
    /// Policies to consider (deployable ones; the references are shown for comparison).
    #[arg(long, value_delimiter = ',', value_parser = parse_policy, default_value = "tide,decay,lru,lfu,lru2,tinylfu")]
    policy: Vec<ReplayPolicy>,
    /// Refresh intervals τ (decode steps) to consider for interval policies.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8,16,32")]
    intervals: Vec<NonZeroU32>,
    /// Slot pools to consider for the demand policies (lru, lfu, lru2, tinylfu): per-layer (slots
    /// per layer each), shared (one pool of slots × layers for all layers). Interval policies use
    /// per-layer pools.
    #[arg(long, value_delimiter = ',', value_parser = parse_sharing, default_value = "per-layer,shared")]
    sharing: Vec<Sharing>,
    /// Tinylfu frequency half-lives (steps) to consider, besides --admit-half-life.
    #[arg(long, value_delimiter = ',', default_value = "16,32,64,256,1024")]
    admit_half_lives: Vec<f32>,
    /// Tinylfu horizons (steps) to consider, besides --admit-horizon.
    #[arg(long, value_delimiter = ',', default_value = "0.5,2,8,32")]
    admit_horizons: Vec<f32>,
    /// Tinylfu admission thresholds (uses) to consider, besides --admit-threshold; a threshold no
    /// score reaches (1e9) is the miss action "always serve in place", which never moves.
    #[arg(long, value_delimiter = ',', default_value = "0,1,4,1e9")]
    admit_thresholds: Vec<f32>,
    /// A second trace of the same experts, layers and top-k to score the pick on: the best run of
    /// --trace, the baselines and the references replayed on it and reported beside (settings
    /// picked on one capture and scored on another, or on two halves of one).
    #[arg(long)]
    test: Option<std::path::PathBuf>,
    /// Print one JSON document: the best run, the baselines, the references, how many times the
    /// optimum the best takes (`bound_ratio` against the optimum of its own kind of pool,
    /// `optimal_ratio` per layer, `optimal_shared_ratio` for one shared pool), and every candidate
    /// run with its modeled time.
    #[arg(long)]
    json: bool,
}

/// The tinylfu settings tried: the one --admit-* names, and every combination of the grids.
fn admission_grid(args: &Args) -> Result<Vec<AdmissionConfig>, CliError> {
    TuneGrid::admissions(
        args.replay.admission.config()?,
        &args.admit_half_lives,
        &args.admit_horizons,
        &args.admit_thresholds,
    )
    .map_err(|e| CliError::Usage(format!("tinylfu grid: {e}")))
}

pub fn run(args: &Args) -> Result<(), CliError> {
    let trace = read_trace(&args.replay.trace)?;
    args.replay.check_ids(&trace)?;
    let cost = args.replay.cost.cost_model()?;
    args.replay.check_expert_bytes(&trace, &cost)?;
    args.replay.check_prefetch(&cost, &args.policy)?;
    let decay = args.replay.decay.config()?;
    let admissions = admission_grid(args)?;
    let header = trace.header();
    let experts = header.experts as usize;
    let max = match (args.max_slots, args.memory) {
        (Some(slots), _) => slots,
        // A slot holds one expert; experts of no bytes (a made-up cost model) count as one byte.
        (None, Some(memory)) => slots_per_layer(memory, 0, cost.expert_bytes.max(1), header.layers, header.experts)
            .map(|slots| usize::try_from(slots).unwrap_or(usize::MAX))
            .map_err(|e| CliError::Usage(format!("slots within --memory: {e}")))?,
        (None, None) => (experts / 4).max(1),
    }
    .min(experts);
    if max == 0 {
        return Err(CliError::Usage(match (args.max_slots, args.memory) {
            (Some(_), _) => "--max-slots 0: tune needs at least one slot per layer".into(),
            _ => "not one expert per layer fits in --memory".into(),
        }));
    }
    if let Some(reference) = args.policy.iter().find(|p| p.deployable().is_none()) {
        return Err(CliError::Usage(format!(
            "{} is a reference, not a policy a runtime can deploy; tune compares against the references itself",
            reference.name()
        )));
    }
    let grid = TuneGrid {
        policies: args.policy.iter().map(|&p| with_decay(p, decay)).collect(),
        slots: slot_counts(max),
        intervals: args.intervals.clone(),
        sharings: args.sharing.clone(),
        admissions,
        miss_orders: Vec::from(TuneGrid::MISS_ORDERS),
        stagings: match (args.replay.staging_slots, args.replay.prefetch) {
            (Some(n), _) => vec![n],
            (None, Some(_)) => vec![0, 1, 2],
            (None, None) => vec![0],
        },
    };
    let jobs = grid.jobs();
    // The baselines and references at the most slots.
    let baselines = [
        ReplayPolicy::Pool(Policy::Tide),
        ReplayPolicy::Pool(Policy::Lru),
        ReplayPolicy::Pool(Policy::Belady),
        ReplayPolicy::Oracle,
        ReplayPolicy::Uniform,
        ReplayPolicy::Markov,
        ReplayPolicy::Optimal,
        ReplayPolicy::OptimalShared,
    ]
    .map(|policy| TuneJob::new(policy, max));
    let (initial, warm) = (args.replay.initial(), crate::warm_start::load(args.replay.warm_from.as_deref(), &trace)?);
    let prefetch = args.replay.prefetch;
    // Under --overlap without --fetch-cap, each candidate runs uncapped and balanced.
    let costs = match (cost.overlap, args.replay.cost.fetch_cap) {
        (Some(_), None) => vec![cost.overlapped(FetchCap::Uncapped), cost.overlapped(FetchCap::Balanced)],
        _ => vec![cost],
    };
    let mut candidates = Vec::new();
    for &c in &costs {
        candidates.extend(run_all(&trace, &jobs, initial, &warm, c, prefetch)?);
    }
    // Under --overlap, only what is priced by layer step stands beside the candidates.
    // The Markov reference stands only where its model is small enough (few experts per layer).
    let baselines: Vec<_> = baselines
        .into_iter()
        .filter(|j| cost.overlap.is_none() || j.policy.prices_by_step())
        .filter(|j| j.policy != ReplayPolicy::Markov || markov::within_reach(&trace, max))
        .collect();
    let time = |r: &Run| r.report.total.modeled_time_s;
    let best =
        best_run(&candidates, |r| (&r.report, r.slots)).ok_or_else(|| CliError::Usage("no policy to tune".into()))?;
    // The baselines and references priced as the best run is (under its fetch cap).
    let best_cost = best.fetch_cap.map_or(cost, |cap| cost.overlapped(cap));
    let references = run_all(&trace, &baselines, initial, &warm, best_cost, prefetch)?;
    let score = Score::of(best, &references, cost.overlap.is_some());
    // The pick replayed on the test trace, beside the baselines and references there.
    let test = match &args.test {
        None => None,
        Some(path) => {
            let test_trace = read_trace(path)?;
            if test_trace.header() != header {
                let h = test_trace.header();
                return Err(CliError::unusable(
                    path,
                    format!(
                        "a trace of {} experts, {} layers, top-{}; --trace has {} experts, {} layers, top-{}",
                        h.experts, h.layers, h.top_k, header.experts, header.layers, header.top_k
                    ),
                ));
            }
            args.replay.check_ids(&test_trace)?;
            let warm = crate::warm_start::load(args.replay.warm_from.as_deref(), &test_trace)?;
            let pick = [TuneJob {
                schedule: best.schedule,
                sharing: best.sharing,
                miss_order: best.miss_order,
                staging: best.staging,
                ..TuneJob::new(best.policy, best.slots)
            }];
            let mut picked = run_all(&test_trace, &pick, initial, &warm, best_cost, prefetch)?;
            let baselines: Vec<_> = baselines
                .iter()
                .filter(|j| j.policy != ReplayPolicy::Markov || markov::within_reach(&test_trace, max))
                .cloned()
                .collect();
            let references = run_all(&test_trace, &baselines, initial, &warm, best_cost, prefetch)?;
            let run = picked.pop().ok_or_else(|| CliError::Usage("no run on the test trace".into()))?;
            Some((path, run, references))
        }
    };

    let mut out = io::stdout().lock();
    if args.json {
        let mut doc = score.json(best, &references);
        doc["candidates"] = json!(candidates.len());
        doc["candidate_runs"] = json!(candidates.iter().map(run_json).collect::<Vec<_>>());
        if let Some((path, run, references)) = &test {
            let mut scored = Score::of(run, references, cost.overlap.is_some()).json(run, references);
            scored["trace"] = json!(path.display().to_string());
            doc["test"] = scored;
        }
        serde_json::to_writer_pretty(&mut out, &doc)?;
        writeln!(out)?;
        return Ok(());
    }
    writeln!(
        out,
        "{} candidates (slots up to {max}, intervals {:?}), expert {} over {} GB/s, {}",
        candidates.len(),
        args.intervals,
        format_size(cost.expert_bytes),
        cost.link_bytes_per_second / 1e9,
        crate::replay_args::slow_cost_text(&cost)
    )?;
    writeln!(
        out,
        "best: {} with {} slots per layer, {}: modeled time {:.3} s, hit rate {:.1}%",
        run_label(best),
        best.slots,
        schedule_name(best.schedule),
        time(best),
        100.0 * best.report.total.hit_rate()
    )?;
    score.write(&mut out, &references)?;
    writeln!(out, "\nbaselines and references at {max} slots per layer:")?;
    write_table(&mut out, &references)?;
    if let Some((path, run, references)) = &test {
        writeln!(
            out,
            "\non the test trace {}: modeled time {:.3} s, hit rate {:.1}%",
            path.display(),
            time(run),
            100.0 * run.report.total.hit_rate()
        )?;
        Score::of(run, references, cost.overlap.is_some()).write(&mut out, references)?;
        writeln!(out, "\nbaselines and references on the test trace:")?;
        write_table(&mut out, references)?;
    }
    Ok(())
}

/// How a run compares with the baselines and references of its trace: the time it saves
/// against TIDE at τ = 1 and LRU, and how many times the optimum it takes (`None` where there
/// is no bound: under --overlap, or an optimum of 0).
struct Score {
    tide: f64,
    lru: f64,
    optimal: Option<f64>,
    optimal_shared: Option<f64>,
    /// Against the Markov reference (per-layer pools; `None` where it was not computed).
    markov: Option<f64>,
    /// The bound of the run's own kind of pool (the per-layer optimum does not bound a shared
    /// pool), and that kind's name.
    own: Option<f64>,
    kind: &'static str,
    overlap: bool,
}

impl Score {
    /// `run` against `references` (TIDE at τ = 1 first, LRU second, then the others).
    fn of(run: &Run, references: &[Run], overlap: bool) -> Self {
        let time = |r: &Run| r.report.total.modeled_time_s;
        let gain = |base: Option<&Run>| match base {
            Some(b) if time(b) > 0.0 => 1.0 - time(run) / time(b),
            _ => 0.0,
        };
        // The optimum is priced by the additive model: no bound of overlapped times.
        let bound = |policy: ReplayPolicy| references.iter().find(|r| r.policy == policy && !overlap).map(time);
        let (optimal, optimal_shared) =
            (ratio(time(run), bound(ReplayPolicy::Optimal)), ratio(time(run), bound(ReplayPolicy::OptimalShared)));
        let markov = ratio(time(run), bound(ReplayPolicy::Markov));
        let (own, kind) = match run.sharing {
            Sharing::Shared => (optimal_shared, "one shared pool"),
            _ => (optimal, "per-layer pools"),
        };
        Self {
            tide: gain(references.first()),
            lru: gain(references.get(1)),
            optimal,
            optimal_shared,
            markov,
            own,
            kind,
            overlap,
        }
    }

    /// The JSON of `run` and this score.
    fn json(&self, run: &Run, references: &[Run]) -> serde_json::Value {
        json!({
            "best": run_json(run),
            "vs_tide_tau1": { "run": references.first().map(run_json), "time_saved": self.tide },
            "vs_lru": { "run": references.get(1).map(run_json), "time_saved": self.lru },
            "optimal_ratio": self.optimal,
            "optimal_shared_ratio": self.optimal_shared,
            "bound_ratio": self.own,
            "markov_ratio": self.markov,
            "references": references.iter().map(run_json).collect::<Vec<_>>(),
        })
    }

    /// The score's lines under a run's line.
    fn write(&self, out: &mut impl Write, references: &[Run]) -> io::Result<()> {
        let time = |r: Option<&Run>| r.map_or(0.0, |r| r.report.total.modeled_time_s);
        writeln!(out, "  {:.1}% less time than TIDE at τ = 1 ({:.3} s)", 100.0 * self.tide, time(references.first()))?;
        writeln!(out, "  {:.1}% less time than LRU ({:.3} s)", 100.0 * self.lru, time(references.get(1)))?;
        let times = |r: Option<f64>| r.map_or_else(|| "unbounded".to_string(), |r| format!("{r:.2}×"));
        if self.overlap {
            writeln!(out, "  no bound: the optimum prices costs additively, not by layer step (--overlap)")
        } else {
            writeln!(
                out,
                "  {} the optimum of {}, its bound (the optimum per layer: {}, of one shared pool: {})",
                times(self.own),
                self.kind,
                times(self.optimal),
                times(self.optimal_shared)
            )?;
            match self.markov {
                Some(m) => writeln!(
                    out,
                    "  {m:.2}× the Markov reference (per-layer online placement knowing the trace's statistics)"
                ),
                None => Ok(()),
            }
        }
    }
}

/// How many times `bound` a modeled time is: 1 when both are 0, `None` when only the bound is
/// (or there is none).
fn ratio(time: f64, bound: Option<f64>) -> Option<f64> {
    match bound? {
        b if b > 0.0 => Some(time / b),
        _ if time <= 0.0 => Some(1.0),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flags_default_to_the_cores_grid() {
        use clap::Parser;
        #[derive(Parser)]
        struct Command {
            #[command(flatten)]
            args: Args,
        }
        let args = Command::try_parse_from(["tune", "--trace", "t.ndjson"]).unwrap().args;
        let policies: Vec<_> = args.policy.iter().map(|p| p.name()).collect();
        assert_eq!(policies, TuneGrid::POLICIES);
        let intervals: Vec<u32> = args.intervals.iter().map(|n| n.get()).collect();
        assert_eq!(intervals, TuneGrid::INTERVALS);
        assert_eq!(args.sharing, [Sharing::PerLayer, Sharing::Shared]);
        assert_eq!(args.admit_half_lives, TuneGrid::ADMIT_HALF_LIVES);
        assert_eq!(args.admit_horizons, TuneGrid::ADMIT_HORIZONS);
        assert_eq!(args.admit_thresholds, TuneGrid::ADMIT_THRESHOLDS);
        assert_eq!(admission_grid(&args).unwrap(), TuneGrid::new(Vec::new()).admissions);
    }

    #[test]
    fn ratios_to_the_optimum() {
        assert_eq!(ratio(3.0, Some(2.0)), Some(1.5));
        assert_eq!(ratio(0.0, Some(0.0)), Some(1.0));
        assert_eq!(ratio(1.0, Some(0.0)), None);
        assert_eq!(ratio(1.0, None), None);
    }
}
