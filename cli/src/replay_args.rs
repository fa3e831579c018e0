//! Arguments shared by `simulate` and `tune`: the trace, the cost model, the schedule and the
//! decay settings, and running replays with a progress bar.

use std::path::{Path, PathBuf};

use clap::Args;
use expertslab_std::trace::replay::{
    replay_from, CostModel, FetchCap, ReplayConfig, ReplayError, ReplayPolicy, ReplayReport, ReplayStats, Sharing,
    TuneJob,
};
use expertslab_std::trace::{Trace, WarmStart};
use expertslab_std::{
    AdmissionConfig, DecayConfig, InitialPlacement, LayeredSource, MissOrder, Policy, Predictor, Projection, Schedule,
};
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;

use crate::error::CliError;
use crate::{limits, units};

/// What every replaying subcommand takes: the trace, the start, the cost model, the decay
/// settings.
#[derive(Debug, Clone, Args)]
pub struct ReplayArgs {
    /// The routing trace (newline-delimited JSON in the expertslab-trace format).
    #[arg(long)]
    pub trace: PathBuf,
    /// Start with no expert resident (default: experts 0..slots, as TIDE starts).
    #[arg(long)]
    pub cold: bool,
    /// Start each layer's slots with the experts this profile trace routed the most pairs to
    /// (ties to the lower id) instead of experts 0..slots; every policy and reference starts so.
    #[arg(long, value_name = "PROFILE.ndjson", conflicts_with = "cold")]
    pub warm_from: Option<PathBuf>,
    #[command(flatten)]
    pub cost: CostArgs,
    #[command(flatten)]
    pub decay: DecayArgs,
    /// Prefetch the next layer's experts while a layer computes, guessed from: transitions
    /// (between consecutive layers), previous (the previous step's choice), or both. LRU and LFU
    /// pools only (a warning names the others); needs --layer-compute-us of at least one copy
    /// time (refused otherwise).
    #[arg(long, value_parser = parse_predictor)]
    pub prefetch: Option<Predictor>,
    /// With --prefetch: slots per layer held for the guesses, out of the slots. The policy keeps
    /// the others, and a guess never takes the slot of one of its residents (without, a guess may
    /// take the slot of a resident it outranks). simulate's default: 0; tune tries 0, 1 and 2.
    #[arg(long, requires = "prefetch")]
    pub staging_slots: Option<usize>,
    #[command(flatten)]
    pub admission: AdmissionArgs,
    /// Refuse a trace with ids at or past its header's expert count (by default they are
    /// counted as invalid, left out of every run, and a warning says how many).
    #[arg(long)]
    pub strict: bool,
}

/// Reads a prefetch predictor name.
pub fn parse_predictor(text: &str) -> Result<Predictor, String> {
    Predictor::from_name(text).map_err(|_| format!("'{text}' is not a predictor ({})", Predictor::NAMES.join(", ")))
}

/// Reads a miss order name.
pub fn parse_miss_order(text: &str) -> Result<MissOrder, String> {
    MissOrder::from_name(text).ok_or_else(|| format!("'{text}' is not a miss order ({})", MissOrder::NAMES.join(", ")))
}

/// Reads a pool sharing name.
pub fn parse_sharing(text: &str) -> Result<Sharing, String> {
    Sharing::from_name(text).map_err(|_| format!("'{text}' is not a sharing ({})", Sharing::NAMES.join(", ")))
}

impl ReplayArgs {
    /// Checks `trace`'s ids against its header: with `--strict`, ids past the expert count are
    /// an error; otherwise a warning on stderr says how many there are (replays count them as
    /// invalid and leave them out).
    ///
    /// # Errors
    /// [`CliError::Usage`] under `--strict` when an id is invalid.
    pub fn check_ids(&self, trace: &Trace) -> Result<(), CliError> {
        let experts = trace.header().experts;
        let (mut invalid, mut total) = (0u64, 0u64);
        for record in trace.records() {
            let ids = trace.ids(record);
            total += ids.len() as u64;
            invalid += ids.iter().filter(|&&id| id >= experts).count() as u64;
        }
        if invalid == 0 {
            return Ok(());
        }
        let what = format!(
            "{}: {invalid} of {total} ids name experts at or past the header's {experts}",
            self.trace.display()
        );
        if self.strict {
            return Err(CliError::Usage(format!("{what} (--strict)")));
        }
        eprintln!("warning: {what}; they are left out of every run (the `invalid` column; --strict refuses)");
        Ok(())
    }

    /// Refuses `--prefetch` where no run would prefetch, and warns where some would not: it needs
    /// `--layer-compute-us` (prefetch copies overlap a layer's compute), of at least one expert's
    /// copy time, and an LRU or LFU pool among `policies` (the others replay without it).
    ///
    /// # Errors
    /// [`CliError::Usage`] naming the reason.
    pub fn check_prefetch(&self, cost: &CostModel, policies: &[ReplayPolicy]) -> Result<(), CliError> {
        if self.prefetch.is_none() {
            return Ok(());
        }
        if cost.layer_compute_seconds <= 0.0 {
            return Err(CliError::Usage(
                "--prefetch needs --layer-compute-us: prefetch copies overlap a layer's compute, and without it \
                 none is made"
                    .into(),
            ));
        }
        if cost.prefetch_copies() == 0 {
            return Err(CliError::Usage(format!(
                "--prefetch: --layer-compute-us {} is shorter than one expert's copy ({:.3} µs for {} at {} GB/s), \
                 so none is made",
                self.cost.layer_compute_us,
                cost.expert_copy_seconds() * 1e6,
                units::format_size(cost.expert_bytes),
                cost.link_bytes_per_second / 1e9
            )));
        }
        let (prefetching, others): (Vec<&ReplayPolicy>, Vec<&ReplayPolicy>) =
            policies.iter().partition(|p| p.prefetches());
        if prefetching.is_empty() {
            return Err(CliError::Usage(
                "--prefetch: only lru and lfu pools prefetch, and --policy names neither".into(),
            ));
        }
        if !others.is_empty() {
            let names: Vec<&str> = others.iter().map(|p| p.name()).collect();
            eprintln!(
                "warning: --prefetch: only lru and lfu pools prefetch; these replay without it: {}",
                names.join(", ")
            );
        }
        Ok(())
    }

    /// Refuses an expert size whose byte counts could pass `u64::MAX` on `trace`: copies a
    /// replay makes × `cost.expert_bytes` must fit. A record (one layer's step) promotes at most
    /// every expert of its layer, and prefetch after it at most as many for the next layer; a
    /// cold start copies at most every expert of each layer in: at most `(2 × records + layers) ×
    /// experts` copies.
    ///
    /// # Errors
    /// [`CliError::Usage`] naming `--expert-bytes` (or `--model`, whose experts gave the size).
    pub fn check_expert_bytes(&self, trace: &Trace, cost: &CostModel) -> Result<(), CliError> {
        let records = limits::wide(trace.records().len());
        let layers = limits::wide(trace.layers().count());
        let experts = u64::from(trace.header().experts);
        let copies = records.checked_mul(2).and_then(|r| r.checked_add(layers)).and_then(|n| n.checked_mul(experts));
        let fits = copies.is_some_and(|c| c.checked_mul(cost.expert_bytes).is_some());
        if fits {
            return Ok(());
        }
        let most = copies.map_or(0, |c| u64::MAX / c.max(1));
        let flag = match (self.cost.expert_bytes, &self.cost.model) {
            (None, Some(path)) => format!("--model {}: its experts' {} bytes", path.display(), cost.expert_bytes),
            _ => format!("--expert-bytes {} ({})", cost.expert_bytes, units::format_size(cost.expert_bytes)),
        };
        let copies = copies.map_or_else(|| format!("more than {}", u64::MAX), |c| c.to_string());
        Err(CliError::Usage(format!(
            "{flag}: the bytes of the copies this trace can cause ({copies}: two per record and one per layer, of \
             up to {experts} experts each) do not fit a 64-bit count; at most {most} bytes an expert ({}) here",
            units::format_size(most)
        )))
    }

    /// The initial placement.
    pub fn initial(&self) -> InitialPlacement {
        if self.cold {
            InitialPlacement::Cold
        } else {
            InitialPlacement::Warm
        }
    }
}

/// The hardware a replay prices.
#[derive(Debug, Clone, Args)]
pub struct CostArgs {
    /// Bytes of one expert, all projections (default 4MiB); or see --model.
    #[arg(long, value_parser = units::parse_size, conflicts_with = "model")]
    pub expert_bytes: Option<u64>,
    /// A GGUF model whose MoE layers give the bytes of one expert (their mean).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Bandwidth from slow memory into slots, in GB/s.
    #[arg(long, default_value_t = 16.0, value_parser = positive)]
    pub link_gbps: f64,
    /// Time to compute one token–expert pair from slow memory, in µs (default: reading the
    /// expert's bytes once at --slow-gbps, which is what one decode token costs).
    #[arg(long, value_parser = non_negative)]
    pub slow_pair_us: Option<f64>,
    /// Bandwidth at which slow memory is read when computing there, in GB/s.
    #[arg(long, default_value_t = 20.0, value_parser = positive, conflicts_with = "slow_pair_us")]
    pub slow_gbps: f64,
    /// Time one layer computes a step, in µs: prefetch copies overlap it (0: no overlap).
    #[arg(long, default_value_t = 0.0, value_parser = non_negative)]
    pub layer_compute_us: f64,
    /// Price each layer step by its slowest resource: copies over the link and pairs computed in
    /// place run at once. Each step's promotions are capped at its share of the misses by
    /// --fetch-cap, and the misses left in place are split between fetching (copying for the
    /// step) and in-place compute. Without it, costs add up and pools are not capped.
    #[arg(long)]
    pub overlap: bool,
    /// With --overlap: time a layer step pays once when it computes any pair in place (starting
    /// the host's threads, fetching the layer's input, returning the outputs), in µs.
    #[arg(long, requires = "overlap", default_value_t = 0.0, value_parser = non_negative)]
    pub slow_step_us: f64,
    /// With --overlap: how many of a step's misses the pool may promote: `balanced` (as many as
    /// make the step cheapest, the default of simulate), `none` (no cap: what the policy admits)
    /// or at most a number per layer step (and at most the balanced share). tune tries `none`
    /// and `balanced` when this is not given.
    #[arg(long, requires = "overlap", value_parser = parse_fetch_cap)]
    pub fetch_cap: Option<FetchCap>,
    /// With --overlap: a miss may also be split, its down projection fetched while its pairs'
    /// gate and up are computed in place (the device computes down from the uploaded
    /// intermediate), weighed with whole fetches and in-place compute. Down's share of an
    /// expert's bytes comes from --model's layers, or is a third (gate, up and down of one
    /// format and size).
    #[arg(long, requires = "overlap")]
    pub split: bool,
}

/// `balanced`, `none` or a count.
fn parse_fetch_cap(text: &str) -> Result<FetchCap, String> {
    match text {
        "balanced" => Ok(FetchCap::Balanced),
        "none" => Ok(FetchCap::Uncapped),
        _ => text.parse().map(FetchCap::AtMost).map_err(|_| format!("'{text}': balanced, none or a number of experts")),
    }
}

/// A fetch cap's name: `balanced`, `none` or the count.
pub fn fetch_cap_name(cap: FetchCap) -> String {
    match cap {
        FetchCap::Uncapped => "none".into(),
        FetchCap::Balanced => "balanced".into(),
        FetchCap::AtMost(n) => n.to_string(),
    }
}

/// The cost of compute in place as summaries print it: `slow pair N µs`, and the cost per step
/// when there is one.
pub fn slow_cost_text(cost: &CostModel) -> String {
    let pair = format!("slow pair {:.1} µs", cost.slow_pair_seconds * 1e6);
    if cost.slow_step_seconds > 0.0 {
        format!("{pair} + {:.1} µs a step", cost.slow_step_seconds * 1e6)
    } else {
        pair
    }
}

/// Bytes of one expert when neither --expert-bytes nor --model is given.
pub const DEFAULT_EXPERT_BYTES: u64 = 4 << 20;

fn positive(text: &str) -> Result<f64, String> {
    let v: f64 = text.parse().map_err(|_| format!("'{text}' is not a number"))?;
    if v.is_finite() && v > 0.0 {
        Ok(v)
    } else {
        Err(format!("'{text}' must be a positive number"))
    }
}

/// A finite number of at least 0.
pub fn non_negative(text: &str) -> Result<f64, String> {
    let v: f64 = text.parse().map_err(|_| format!("'{text}' is not a number"))?;
    if v.is_finite() && v >= 0.0 {
        Ok(v)
    } else {
        Err(format!("'{text}' must be a number of at least 0"))
    }
}

impl CostArgs {
    /// The cost model these arguments describe.
    pub fn cost_model(&self) -> Result<CostModel, CliError> {
        // Down's share of an expert when nothing says otherwise: three projections of one size.
        let mut down_share = 1.0 / 3.0;
        // The file is read for its experts' size unless --expert-bytes gives it, and for
        // down's share under --split.
        let needed = self.expert_bytes.is_none() || self.split;
        let file_bytes = match self.model.as_ref().filter(|_| needed) {
            Some(path) => {
                let model = crate::model::open_model(path)?;
                let layouts: Vec<_> = model.moe_layers().filter_map(|l| model.layer_layout(l)).collect();
                if layouts.is_empty() {
                    return Err(CliError::unusable(path, "the model has no MoE layers"));
                }
                let shares: Vec<f64> = layouts.iter().filter_map(|l| l.share_of(Projection::Down).ok()).collect();
                if !shares.is_empty() {
                    down_share = shares.iter().sum::<f64>() / shares.len() as f64;
                }
                Some(layouts.iter().map(|l| l.expert_bytes() as u64).sum::<u64>() / layouts.len() as u64)
            }
            None => None,
        };
        let expert_bytes = self.expert_bytes.or(file_bytes).unwrap_or(DEFAULT_EXPERT_BYTES);
        let slow_pair_seconds = match self.slow_pair_us {
            Some(us) => us * 1e-6,
            None => expert_bytes as f64 / (self.slow_gbps * 1e9),
        };
        let model = CostModel::new(expert_bytes, slow_pair_seconds, self.link_gbps * 1e9)
            .layer_compute(self.layer_compute_us * 1e-6)
            .slow_step(self.slow_step_us * 1e-6);
        let model = if self.split { model.split(down_share) } else { model };
        Ok(if self.overlap { model.overlapped(self.fetch_cap.unwrap_or(FetchCap::Balanced)) } else { model })
    }
}

/// The decay policy's settings.
#[derive(Debug, Clone, Args)]
pub struct DecayArgs {
    /// Decay: steps for a score to halve.
    #[arg(long, default_value_t = DecayConfig::DEFAULT.half_life())]
    pub half_life: f32,
    /// Decay: a target replaces a resident only when its score is this many times higher.
    #[arg(long, default_value_t = DecayConfig::DEFAULT.margin())]
    pub margin: f32,
    /// Decay: the most experts one refresh promotes.
    #[arg(long)]
    pub max_promotions: Option<u16>,
}

impl DecayArgs {
    /// The decay settings, checked.
    pub fn config(&self) -> Result<DecayConfig, CliError> {
        DecayConfig::new(self.half_life, self.margin, self.max_promotions).map_err(|e| CliError::Usage(e.to_string()))
    }
}

/// The cost-aware admission settings (tinylfu).
#[derive(Debug, Clone, Args)]
pub struct AdmissionArgs {
    /// Tinylfu: steps for an expert's decayed use count to halve.
    #[arg(long, default_value_t = AdmissionConfig::DEFAULT.half_life())]
    pub admit_half_life: f32,
    /// Tinylfu: a miss is copied only when its expert's decayed use count exceeds the displaced
    /// resident's by more than this many uses; otherwise it is served in place.
    #[arg(long, default_value_t = AdmissionConfig::DEFAULT.threshold())]
    pub admit_threshold: f32,
    /// Tinylfu: the steps over which an expert's use rate is credited in its score (its expected
    /// further uses).
    #[arg(long, default_value_t = AdmissionConfig::DEFAULT.horizon())]
    pub admit_horizon: f32,
}

impl AdmissionArgs {
    /// The admission settings, checked.
    pub fn config(&self) -> Result<AdmissionConfig, CliError> {
        AdmissionConfig::new(self.admit_half_life, self.admit_horizon, self.admit_threshold)
            .map_err(|e| CliError::Usage(e.to_string()))
    }
}

/// Reads a policy name.
pub fn parse_policy(text: &str) -> Result<ReplayPolicy, String> {
    ReplayPolicy::from_name(text).map_err(|e| format!("{e} '{text}' (known: {})", ReplayPolicy::NAMES.join(", ")))
}

/// Reads a refresh schedule: `every:N` (every N decode steps) or `forward` (every step).
pub fn parse_schedule(text: &str) -> Result<Schedule, String> {
    if text == "forward" {
        return Ok(Schedule::EveryForward);
    }
    text.strip_prefix("every:")
        .and_then(|n| n.parse().ok())
        .and_then(std::num::NonZeroU32::new)
        .map(Schedule::EveryDecodeSteps)
        .ok_or_else(|| format!("'{text}' is not a schedule (every:N with N at least 1, or forward)"))
}

/// A schedule as the command line spells it.
pub fn schedule_name(schedule: Schedule) -> String {
    format!("every:{}", schedule.interval())
}

/// Reads a trace file. A file of format version 2 or later without its end record is read, with
/// a warning: it may have been cut short at a line boundary (every writer of these versions ends
/// with one; version 1 had none).
pub fn read_trace(path: &Path) -> Result<Trace, CliError> {
    let (trace, file) = expertslab_std::read_trace(path).map_err(|e| CliError::model(path, e))?;
    if file.version >= 2 && !file.sealed {
        eprintln!(
            "warning: {}: no end record, so a file cut short at a line boundary cannot be told from a whole one; \
             read as {} records",
            path.display(),
            trace.records().len()
        );
    }
    Ok(trace)
}

/// The policy with the decay settings applied.
pub fn with_decay(policy: ReplayPolicy, decay: DecayConfig) -> ReplayPolicy {
    match policy {
        ReplayPolicy::Pool(Policy::Decay(_)) => ReplayPolicy::Pool(Policy::Decay(decay)),
        other => other,
    }
}

/// The policy with the admission settings applied.
pub fn with_admission(policy: ReplayPolicy, admission: AdmissionConfig) -> ReplayPolicy {
    match policy {
        ReplayPolicy::Pool(Policy::Tinylfu(_)) => ReplayPolicy::Pool(Policy::Tinylfu(admission)),
        other => other,
    }
}

/// The policy's name with its settings where it has some a search varies (tinylfu's half-life
/// and threshold).
pub fn policy_label(policy: ReplayPolicy) -> String {
    match policy {
        ReplayPolicy::Pool(Policy::Tinylfu(a)) => {
            format!(
                "{} (half-life {}, horizon {}, threshold {})",
                policy.name(),
                a.half_life(),
                a.horizon(),
                a.threshold()
            )
        }
        other => other.name().to_string(),
    }
}

/// One replay to run and its result.
pub struct Run {
    pub policy: ReplayPolicy,
    /// Slots per layer.
    pub slots: usize,
    pub schedule: Schedule,
    pub sharing: Sharing,
    /// The order a demand policy admitted misses in.
    pub miss_order: MissOrder,
    /// Staging slots per layer (used by the runs that prefetch).
    pub staging: usize,
    /// The overlapped model's fetch cap (`None`: the additive model).
    pub fetch_cap: Option<FetchCap>,
    pub report: ReplayReport,
}

/// Replays `trace` for every (policy, slots, schedule, sharing), in parallel, with a progress bar
/// on a terminal (nothing is drawn when stderr is not one).
pub fn run_all(
    trace: &Trace,
    jobs: &[TuneJob],
    initial: InitialPlacement,
    warm: &WarmStart,
    cost: CostModel,
    prefetch: Option<Predictor>,
) -> Result<Vec<Run>, CliError> {
    // Every run's report is kept: one set of counters per layer with records.
    let layers = limits::wide(trace.layers().count());
    let per_run = limits::wide(std::mem::size_of::<Run>())
        .checked_add(layers.saturating_mul(limits::wide(std::mem::size_of::<(u32, ReplayStats)>())));
    let runs = limits::wide(jobs.len());
    limits::memory(
        &format!("{runs} runs (slot counts × --policy × --sharing) of {layers} layers each"),
        per_run.and_then(|b| b.checked_mul(runs)),
    )?;
    let bar = ProgressBar::new(jobs.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{spinner} replaying {bar:30} {pos}/{len} {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let runs: Vec<Result<Run, ReplayError>> = jobs
        .par_iter()
        .map(|&TuneJob { policy, slots, schedule, sharing, miss_order, staging }| {
            let config = ReplayConfig {
                sharing,
                prefetch,
                miss_order,
                staging,
                ..ReplayConfig::new(policy, slots, schedule, initial, cost)
            };
            let run = replay_from(trace, &config, warm).map(|report| Run {
                policy,
                slots,
                schedule,
                sharing,
                miss_order,
                staging,
                fetch_cap: cost.overlap,
                report,
            });
            bar.inc(1);
            run
        })
        .collect();
    bar.finish_and_clear();
    runs.into_iter().collect::<Result<_, _>>().map_err(|e| CliError::Run(format!("replay: {e}")))
}
