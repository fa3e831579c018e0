//! `expertslab simulate`: replay a routing trace under several policies and slot counts, and price
//! each with the cost model.

use std::io::{self, Write};
use std::path::PathBuf;

use clap::Args as ClapArgs;
use expertslab_std::trace::replay::{ReplayPolicy, ReplayStats, Sharing, TuneJob};
use expertslab_std::{MissOrder, Policy, Schedule};
use serde_json::{json, Value};

use crate::error::CliError;
use crate::output::OutputFile;
use crate::plot;
use crate::replay_args::{
    parse_miss_order, parse_policy, parse_schedule, parse_sharing, policy_label, read_trace, run_all, schedule_name,
    with_admission, with_decay, ReplayArgs, Run,
};
use crate::table::{Align, Table};
use crate::units::format_size;

/// `simulate`'s arguments.
#[derive(Debug, ClapArgs)]
// `--link-gbps -5` reaches the value parser, which says why it is refused.
#[command(allow_negative_numbers = true)]
pub struct Args {
    #[command(flatten)]
    replay: ReplayArgs,
    /// Policies, comma-separated: tide, decay, lru, lfu, lru2, belady, tinylfu, oracle, uniform,
    /// markov (the least time a placement seeing only the present step reaches, knowing the
    /// trace's step-to-step statistics; for few experts per layer), optimal (the least time any
    /// per-layer placement reaches), optimal-shared (the same for one pool of slots × layers
    /// shared by the layers).
    #[arg(long, value_delimiter = ',', value_parser = parse_policy,
          default_value = "tide,decay,lru,lfu,lru2,belady,tinylfu,oracle,uniform,optimal,optimal-shared")]
    policy: Vec<ReplayPolicy>,
    /// The order demand policies admit a step's misses in: routing (token by token) or busiest
    /// (on a step of more pairs than slots, such as a prefill, the slots go to the step's
    /// busiest experts, each copied once).
    #[arg(long, default_value = "routing", value_parser = parse_miss_order)]
    miss_order: MissOrder,
    /// Slots per layer (default: a quarter of the experts; at most the expert count, as runs and
    /// output show).
    #[arg(long, alias = "budget", conflicts_with = "sweep")]
    slots: Option<usize>,
    /// Slots per layer to sweep: A..B doubles from A up to B (B included); A..B:S steps by S. The
    /// sweep ends at the expert count.
    #[arg(long, value_parser = parse_sweep)]
    sweep: Option<Sweep>,
    /// Refresh schedule of interval policies: every:N (every N decode steps) or forward.
    #[arg(long, default_value = "every:1", value_parser = parse_schedule)]
    schedule: Schedule,
    /// Slot pools, comma-separated: per-layer (slots per layer each), shared (one pool of slots ×
    /// layers for all layers; the demand policies lru, lfu, lru2, belady and tinylfu only, others are skipped).
    #[arg(long, value_delimiter = ',', value_parser = parse_sharing, default_value = "per-layer")]
    sharing: Vec<Sharing>,
    /// Print one JSON document instead of tables.
    #[arg(long)]
    json: bool,
    /// Draw hit rate and modeled time against slots per layer, one line per policy and sharing
    /// (shared pools labelled policy/shared), as SVG.
    #[arg(long)]
    plot: Option<PathBuf>,
}

/// A sweep of slot counts: from `from` up to `to` (both included), doubling or by `step`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sweep {
    from: usize,
    to: usize,
    /// `None`: doubling.
    step: Option<usize>,
}

impl Sweep {
    /// The slot counts of the sweep up to `experts`: a count past it runs as `experts` (a pool
    /// holds at most every expert), once.
    pub fn slots(&self, experts: usize) -> Vec<usize> {
        let end = self.to.min(experts);
        let mut slots = Vec::new();
        let mut x = self.from;
        while x < end {
            slots.push(x);
            x = match self.step {
                Some(s) => x.saturating_add(s),
                None => x.saturating_mul(2),
            };
        }
        slots.push(end);
        slots
    }
}

/// Reads `A..B` (doubling) or `A..B:S` (steps of S) into the sweep it names.
pub fn parse_sweep(text: &str) -> Result<Sweep, String> {
    let bad = || format!("'{text}' is not a sweep (A..B or A..B:STEP, with 1 <= A <= B)");
    let (range, step) = match text.split_once(':') {
        Some((range, step)) => (range, Some(step.parse::<usize>().map_err(|_| bad())?)),
        None => (text, None),
    };
    let (a, b) = range.split_once("..").ok_or_else(bad)?;
    let (from, to): (usize, usize) = (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
    if from == 0 || from > to || step == Some(0) {
        return Err(bad());
    }
    Ok(Sweep { from, to, step })
}

/// The counters of one layer or of the total as JSON.
pub fn counters_json(c: &ReplayStats) -> Value {
    json!({
        "pairs": c.served.pairs(),
        "hits": c.served.hits,
        "misses": c.served.misses,
        "served_by_copy": c.served.served_by_copy,
        "served_in_place": c.served.served_in_place,
        "invalid_ids": c.served.invalid_ids,
        "hit_rate": c.hit_rate(),
        "promotions": c.promotions,
        "demotions": c.demotions,
        "bytes_promoted": c.bytes_promoted,
        "modeled_time_s": c.modeled_time_s,
        "prefetched": c.prefetched,
        "prefetch_hits": c.prefetch_hits,
        "prefetch_wasted_bytes": c.prefetch_wasted_bytes,
        "fetched": c.fetched,
        "split": c.split,
    })
}

/// One run as JSON: policy, slots, schedule, layers and total (and a tinylfu policy's
/// `admission` settings). `budget` repeats `slots` under its earlier name, for one release.
pub fn run_json(run: &Run) -> Value {
    let mut object = json!({
        "policy": run.policy.name(),
        "slots": run.slots,
        "budget": run.slots,
        "schedule": schedule_name(run.schedule),
        "sharing": run.sharing.name(),
        "miss_order": run.miss_order.name(),
        "staging": run.staging,
        "fetch_cap": run.fetch_cap.map(crate::replay_args::fetch_cap_name),
        "layers": run
            .report
            .layers
            .iter()
            .map(|(layer, c)| {
                let mut object = counters_json(c);
                object["layer"] = json!(layer);
                object
            })
            .collect::<Vec<_>>(),
        "total": counters_json(&run.report.total),
    });
    if let ReplayPolicy::Pool(Policy::Tinylfu(a)) = run.policy {
        object["admission"] = json!({ "half_life": a.half_life(), "horizon": a.horizon(), "threshold": a.threshold() });
    }
    object
}

pub fn run(args: &Args) -> Result<(), CliError> {
    let trace = read_trace(&args.replay.trace)?;
    args.replay.check_ids(&trace)?;
    let cost = args.replay.cost.cost_model()?;
    let decay = args.replay.decay.config()?;
    let admission = args.replay.admission.config()?;
    let experts = trace.header().experts as usize;
    if cost.overlap.is_some() {
        if let Some(reference) = args.policy.iter().find(|p| !p.prices_by_step()) {
            return Err(CliError::Usage(format!(
                "{} is priced by adding its costs; --overlap prices layer steps (drop one of them)",
                reference.name()
            )));
        }
    }
    args.replay.check_expert_bytes(&trace, &cost)?;
    args.replay.check_prefetch(&cost, &args.policy)?;
    // Counts past the expert count run, and are shown, as the expert count.
    let slot_counts = match (&args.sweep, args.slots) {
        (Some(sweep), _) => sweep.slots(experts),
        (None, Some(slots)) => vec![slots.min(experts)],
        (None, None) => vec![(experts / 4).max(1)],
    };
    let jobs: Vec<_> = slot_counts
        .iter()
        .flat_map(|&s| {
            args.sharing.iter().flat_map(move |&sharing| {
                args.policy.iter().filter(move |&&p| sharing.supports(p)).map(move |&p| TuneJob {
                    policy: with_admission(with_decay(p, decay), admission),
                    slots: s,
                    schedule: args.schedule,
                    sharing,
                    miss_order: args.miss_order,
                    // Only the runs that prefetch hold staging slots.
                    staging: if p.prefetches() { args.replay.staging_slots.unwrap_or(0) } else { 0 },
                })
            })
        })
        .collect();
    if jobs.is_empty() {
        return Err(CliError::Usage(
            "no policy given can drive a shared pool (lru, lfu, lru2, belady and tinylfu can)".into(),
        ));
    }
    let warm = crate::warm_start::load(args.replay.warm_from.as_deref(), &trace)?;
    let runs = run_all(&trace, &jobs, args.replay.initial(), &warm, cost, args.replay.prefetch)?;

    if let Some(path) = &args.plot {
        let svg = plot::draw(&runs).map_err(|e| CliError::unusable(path, e))?;
        let mut file = OutputFile::create(path)?;
        file.write_all(svg.as_bytes()).map_err(|e| CliError::io(path, e))?;
        file.commit()?;
    }
    let mut out = io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &runs.iter().map(run_json).collect::<Vec<_>>())?;
        writeln!(out)?;
        return Ok(());
    }
    let header = trace.header();
    writeln!(
        out,
        "{} layers × {} experts, top-{}, {} records; {}; expert {} over {} GB/s, {}",
        header.layers,
        header.experts,
        header.top_k,
        trace.records().len(),
        schedule_name(args.schedule),
        format_size(cost.expert_bytes),
        cost.link_bytes_per_second / 1e9,
        crate::replay_args::slow_cost_text(&cost)
    )?;
    write_table(&mut out, &runs)?;
    Ok(())
}

/// A run's policy as tables show it: the name, with "/shared" for a shared pool.
pub fn run_label(run: &Run) -> String {
    let label = match run.sharing {
        Sharing::PerLayer => policy_label(run.policy),
        Sharing::Shared => format!("{}/shared", policy_label(run.policy)),
    };
    let label = match run.miss_order {
        MissOrder::Routing => label,
        MissOrder::Busiest => format!("{label}, busiest first"),
    };
    let label = match run.staging {
        0 => label,
        n => format!("{label}, {n} staging"),
    };
    use expertslab_std::trace::replay::FetchCap;
    match run.fetch_cap {
        Some(cap @ FetchCap::AtMost(_)) => format!("{label}, fetch ≤ {}", crate::replay_args::fetch_cap_name(cap)),
        Some(FetchCap::Uncapped) => format!("{label}, uncapped"),
        _ => label,
    }
}

/// The runs as a text table, one row per run.
pub fn write_table(out: &mut impl Write, runs: &[Run]) -> io::Result<()> {
    let mut table = Table::new(&[
        ("slots", Align::Right),
        ("policy", Align::Left),
        ("hit rate", Align::Right),
        ("misses", Align::Right),
        ("by copy", Align::Right),
        ("in place", Align::Right),
        ("promotions", Align::Right),
        ("bytes moved", Align::Right),
        ("modeled time", Align::Right),
    ]);
    // Ids past the expert count are left out of the runs: shown when there are any.
    let invalid = runs.iter().any(|r| r.report.total.served.invalid_ids > 0);
    if invalid {
        table.column("invalid ids", Align::Right);
    }
    for run in runs {
        let t = &run.report.total;
        let mut row = vec![
            run.slots.to_string(),
            run_label(run),
            format!("{:.1}%", 100.0 * t.hit_rate()),
            t.served.misses.to_string(),
            t.served.served_by_copy.to_string(),
            t.served.served_in_place.to_string(),
            t.promotions.to_string(),
            format_size(t.bytes_promoted),
            format!("{:.3} s", t.modeled_time_s),
        ];
        if invalid {
            row.push(t.served.invalid_ids.to_string());
        }
        table.row(row);
    }
    table.write(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweeps_double_or_step_and_include_the_end() {
        let all = usize::MAX;
        assert_eq!(parse_sweep("4..64").unwrap().slots(all), [4, 8, 16, 32, 64]);
        assert_eq!(parse_sweep("3..20").unwrap().slots(all), [3, 6, 12, 20]);
        assert_eq!(parse_sweep("4..16:4").unwrap().slots(all), [4, 8, 12, 16]);
        assert_eq!(parse_sweep("5..5").unwrap().slots(all), [5]);
        // 1, 2, 4, ..., 2^63 and the end.
        assert_eq!(parse_sweep("1..18446744073709551615").unwrap().slots(all).len(), 65);
        for bad in ["0..4", "8..4", "4..16:0", "4-16", "a..b", "4..16:x"] {
            assert!(parse_sweep(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sweeps_stop_at_the_expert_count() {
        assert_eq!(parse_sweep("1..100000000:1").unwrap().slots(4), [1, 2, 3, 4]);
        assert_eq!(parse_sweep("3..20").unwrap().slots(16), [3, 6, 12, 16]);
        assert_eq!(parse_sweep("4..64").unwrap().slots(16), [4, 8, 16]);
        assert_eq!(parse_sweep("32..64").unwrap().slots(16), [16]);
    }
}
