//! `expertslab synth`: write a synthetic routing trace (Zipf popularity, reuse between
//! consecutive tokens, phase changes, layers that follow each other; see
//! `expertslab_std::trace::synthetic`).

use std::path::PathBuf;

use clap::Args as ClapArgs;
use expertslab_std::trace::synthetic::SyntheticTrace;
use expertslab_std::trace::TraceHeader;
use expertslab_std::{RoutingCapture, TraceRecorder};

use crate::error::CliError;
use crate::limits;
use crate::output::OutputFile;

/// `synth`'s arguments. The trace appears at `--out` only once it is complete.
#[derive(Debug, ClapArgs)]
// `--zipf -1` reaches the value parser, which says why it is refused.
#[command(allow_negative_numbers = true)]
pub struct Args {
    /// Where to write the trace.
    #[arg(long)]
    out: PathBuf,
    /// Experts per layer.
    #[arg(long, default_value_t = SyntheticTrace::DEFAULT.experts)]
    experts: u32,
    /// MoE layers.
    #[arg(long, default_value_t = SyntheticTrace::DEFAULT.layers)]
    layers: u32,
    /// Experts per token.
    #[arg(long, default_value_t = SyntheticTrace::DEFAULT.top_k)]
    top_k: u32,
    /// Decode steps after each prefill block.
    #[arg(long, default_value_t = SyntheticTrace::DEFAULT.steps)]
    steps: u64,
    /// Sequences, each a prefill block and then --steps decode steps (a prompt-heavy trace has
    /// many).
    #[arg(long, default_value_t = SyntheticTrace::DEFAULT.sequences, value_parser = clap::value_parser!(u32).range(1..))]
    sequences: u32,
    /// Tokens per decode step.
    #[arg(long, default_value_t = SyntheticTrace::DEFAULT.tokens)]
    tokens: usize,
    /// Tokens of each prefill block (a sequence's first step); 0 for none.
    #[arg(long, default_value_t = SyntheticTrace::DEFAULT.prefill_tokens)]
    prefill_tokens: usize,
    /// Zipf exponent of expert popularity (0 = uniform).
    #[arg(long, default_value_t = SyntheticTrace::DEFAULT.zipf, value_parser = parse_zipf)]
    zipf: f64,
    /// Probability that a token repeats the previous token's choice in the same position.
    #[arg(long, default_value_t = SyntheticTrace::DEFAULT.reuse, value_parser = parse_probability)]
    reuse: f64,
    /// Steps between reshuffles of the popularity (0 = never).
    #[arg(long, default_value_t = SyntheticTrace::DEFAULT.phase)]
    phase: u64,
    /// Seed; layer `l` uses `seed + l`.
    #[arg(long, default_value_t = SyntheticTrace::DEFAULT.seed)]
    seed: u64,
    /// Probability that each choice of a layer follows the previous layer's choice in the same
    /// position, through a fixed one-to-one map of the experts per pair of layers (0 =
    /// independent layers).
    #[arg(long, default_value_t = SyntheticTrace::DEFAULT.correlation, value_parser = parse_probability)]
    layer_correlation: f64,
}

/// A Zipf exponent: a finite number of at least 0.
fn parse_zipf(text: &str) -> Result<f64, String> {
    crate::replay_args::non_negative(text)
        .map_err(|_| format!("'{text}': the Zipf exponent must be a number of at least 0 (0 is uniform popularity)"))
}

/// A probability: a number from 0 to 1.
fn parse_probability(text: &str) -> Result<f64, String> {
    let p: f64 = text.parse().map_err(|_| format!("'{text}' is not a number"))?;
    if (0.0..=1.0).contains(&p) {
        Ok(p)
    } else {
        Err(format!("'{text}': a probability must be a number from 0 to 1"))
    }
}

/// Bytes of memory `synth` holds per expert of a layer: the popularity's cumulative weights
/// (`f64`) and ranking (`u32`).
const BYTES_PER_EXPERT: u64 = 12;

/// Bytes `synth` holds per id of a step: the step's ids, the previous token's choices and the
/// captured ids (`u32` each), and the record's text (at most 6 bytes an id below 65,536, with
/// room to spare).
const BYTES_PER_STEP_ID: u64 = 12 + 8;

/// Checks the sizes against the library's limits and the memory `synth` may plan for, naming the
/// flags, before anything is allocated or written.
fn check_sizes(args: &Args) -> Result<(), CliError> {
    limits::experts("--experts", u64::from(args.experts))?;
    let top_k = u64::from(args.top_k);
    let decode = limits::product(&[limits::wide(args.tokens), top_k]);
    limits::step_ids(&format!("--tokens {} × --top-k {}", args.tokens, args.top_k), decode)?;
    let prefill = limits::product(&[limits::wide(args.prefill_tokens), top_k]);
    limits::step_ids(&format!("--prefill-tokens {} × --top-k {}", args.prefill_tokens, args.top_k), prefill)?;
    // Both fit MAX_STEP_IDS now.
    let (ids, flag, tokens) = match (decode, prefill) {
        (Some(d), Some(p)) if p > d => (p, "--prefill-tokens", args.prefill_tokens),
        (Some(d), _) => (d, "--tokens", args.tokens),
        _ => (u64::MAX, "--tokens", args.tokens),
    };
    let layers = u64::from(args.layers);
    let per_layer = limits::sum(&[
        limits::product(&[u64::from(args.experts), BYTES_PER_EXPERT]),
        limits::product(&[ids, BYTES_PER_STEP_ID]),
    ]);
    let bytes = per_layer.and_then(|b| b.checked_mul(layers));
    let what = format!(
        "synth: --layers {} of --experts {} with {ids} ids a step ({flag} {tokens} × --top-k {})",
        args.layers, args.experts, args.top_k
    );
    limits::memory(&what, bytes)
}

pub fn run(args: &Args) -> Result<(), CliError> {
    if args.layers == 0 {
        return Err(CliError::Usage("need layers >= 1".into()));
    }
    let settings = SyntheticTrace {
        experts: args.experts,
        layers: args.layers,
        top_k: args.top_k,
        steps: args.steps,
        sequences: args.sequences,
        tokens: args.tokens,
        prefill_tokens: args.prefill_tokens,
        zipf: args.zipf,
        reuse: args.reuse,
        phase: args.phase,
        seed: args.seed,
        correlation: args.layer_correlation,
    };
    settings.shape().check().map_err(|e| CliError::Usage(format!("synth: {e}")))?;
    check_sizes(args)?;
    let mut steps = settings.steps().map_err(|e| CliError::Usage(format!("synth: {e}")))?;
    let io = |e| CliError::io(&args.out, e);
    let file = OutputFile::create(&args.out)?;
    let header = TraceHeader { experts: args.experts, layers: args.layers, top_k: args.top_k };
    let mut recorder = TraceRecorder::new(file, header).map_err(io)?;
    let mut capture = RoutingCapture::new();
    while let Some((step, prefill, layers)) = steps.next_step() {
        capture.clear();
        for (layer, ids) in layers.iter().enumerate() {
            capture.record(layer, ids);
        }
        recorder.record(step, prefill, &capture).map_err(io)?;
    }
    recorder.finish().map_err(io)?.commit()
}
