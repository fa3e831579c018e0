//! `expertslab synth`: write a synthetic routing trace (Zipf popularity, reuse between
//! consecutive tokens, phase changes; see `expertslab_std::trace::synthetic`).

use std::fs::File;
use std::io::BufWriter;
use std::path::PathBuf;

use clap::Args as ClapArgs;
use expertslab_std::trace::synthetic::{RoutingShape, SyntheticRouting};
use expertslab_std::trace::TraceHeader;
use expertslab_std::{RoutingCapture, TraceRecorder};

use crate::error::CliError;

/// `synth`'s arguments.
#[derive(Debug, ClapArgs)]
// `--zipf -1` reaches the value parser, which says why it is refused.
#[command(allow_negative_numbers = true)]
pub struct Args {
    /// Where to write the trace.
    #[arg(long)]
    out: PathBuf,
    /// Experts per layer.
    #[arg(long, default_value_t = 64)]
    experts: u32,
    /// MoE layers.
    #[arg(long, default_value_t = 4)]
    layers: u32,
    /// Experts per token.
    #[arg(long, default_value_t = 8)]
    top_k: u32,
    /// Decode steps after the prefill block.
    #[arg(long, default_value_t = 1000)]
    steps: u64,
    /// Tokens per decode step.
    #[arg(long, default_value_t = 1)]
    tokens: usize,
    /// Tokens of the prefill block (step 0); 0 for none.
    #[arg(long, default_value_t = 64)]
    prefill_tokens: usize,
    /// Zipf exponent of expert popularity (0 = uniform).
    #[arg(long, default_value_t = 0.9, value_parser = parse_zipf)]
    zipf: f64,
    /// Probability that a token repeats the previous token's choice in the same position.
    #[arg(long, default_value_t = 0.5, value_parser = parse_probability)]
    reuse: f64,
    /// Steps between reshuffles of the popularity (0 = never).
    #[arg(long, default_value_t = 256)]
    phase: u64,
    /// Seed; layer `l` uses `seed + l`.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// A Zipf exponent: a finite number of at least 0.
fn parse_zipf(text: &str) -> Result<f64, String> {
    let s: f64 = text.parse().map_err(|_| format!("'{text}' is not a number"))?;
    if s.is_finite() && s >= 0.0 {
        Ok(s)
    } else {
        Err(format!("'{text}': the Zipf exponent must be a number of at least 0 (0 is uniform popularity)"))
    }
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

pub fn run(args: &Args) -> Result<(), CliError> {
    if args.layers == 0 {
        return Err(CliError::Usage("need layers >= 1".into()));
    }
    let shape = RoutingShape {
        experts: args.experts,
        top_k: args.top_k,
        zipf_s: args.zipf,
        reuse: args.reuse,
        phase_steps: args.phase,
    };
    let mut layers = (0..args.layers)
        .map(|l| SyntheticRouting::try_new(shape, args.seed.wrapping_add(u64::from(l))))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CliError::Usage(format!("synth: {e}")))?;
    let io = |e| CliError::io(&args.out, e);
    let file = File::create(&args.out).map_err(io)?;
    let header = TraceHeader { experts: args.experts, layers: args.layers, top_k: args.top_k };
    let mut recorder = TraceRecorder::new(BufWriter::new(file), header).map_err(io)?;
    let mut capture = RoutingCapture::new();
    let mut ids = Vec::new();
    let prefill = args.prefill_tokens > 0;
    for step in 0..args.steps.saturating_add(u64::from(prefill)) {
        let (tokens, is_prefill) =
            if prefill && step == 0 { (args.prefill_tokens, true) } else { (args.tokens, false) };
        capture.clear();
        for (layer, routing) in layers.iter_mut().enumerate() {
            ids.clear();
            routing.step(tokens, &mut ids);
            capture.record(layer, &ids);
        }
        recorder.record(step, is_prefill, &capture).map_err(io)?;
    }
    recorder.finish().map_err(io)?;
    Ok(())
}
