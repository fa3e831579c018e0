//! `expertslab`: run an offloaded MoE model, look into GGUF models, size their expert slots,
//! and study placement policies on routing traces.
//!
//! One module per subcommand, each with its `Args` (clap) and `run`; shared pieces: [`error`]
//! (the one error every subcommand returns), [`model`] (GGUF files), [`units`] (byte sizes), [`table`] (text output),
//! [`limits`] (sizes checked before they are allocated), [`output`] (files written whole or not at all),
//! [`replay_args`] (trace, cost model and replay runs of `simulate` and `tune`) and [`plot`].
//! The words the options and output use, and the earlier spellings kept as hidden aliases, are
//! in [`WORDS`] (shown under `--help`).

use std::io::{self, Write};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod demo;
mod error;
mod fit;
mod import;
mod inspect;
mod limits;
mod model;
mod output;
mod plot;
mod replay_args;
mod simulate;
mod synth;
mod table;
mod tune;
mod units;
mod warm_start;

use error::CliError;

/// The words of the options and output, and the earlier spellings still accepted.
const WORDS: &str = "Slots: expert slots per layer; budget: bytes; demotion: an expert leaving its slot.
Earlier spellings still work: `plan` for `fit`, `--budget` for `--slots`, `--max-budget` for
`--max-slots`. JSON output repeats `slots` under the earlier key `budget` for this release only.";

/// Mixture-of-Experts expert offloading: run, inspect, fit and simulate.
#[derive(Debug, Parser)]
#[command(name = "expertslab", version, after_help = WORDS)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a built-in MoE model with its experts offloaded and check its output (the main job).
    Demo(demo::Args),
    /// List the MoE layers of a GGUF file: projections, types, dims and bytes per expert.
    Inspect(inspect::Args),
    /// How many experts of each MoE layer fit in a memory size.
    #[command(alias = "plan")]
    Fit(fit::Args),
    /// Replay a routing trace under several policies and slot counts, priced by a cost model.
    Simulate(simulate::Args),
    /// Find the policy, slot count and refresh interval with the lowest modeled time for a trace.
    Tune(tune::Args),
    /// Write a synthetic routing trace (Zipf popularity, reuse, phase changes).
    Synth(synth::Args),
    /// Routing traces: bring in captures from other tools.
    Trace {
        #[command(subcommand)]
        command: TraceCommand,
    },
}

#[derive(Debug, Subcommand)]
enum TraceCommand {
    /// Convert routing captured by another tool (JSON lines, one record per token and layer, or
    /// one JSON document of selections[token][layer]) into an expertslab trace.
    Import(import::Args),
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Inspect(args) => inspect::run(&args),
        Command::Fit(args) => fit::run(&args),
        Command::Demo(args) => demo::run(&args),
        Command::Simulate(args) => simulate::run(&args),
        Command::Tune(args) => tune::run(&args),
        Command::Synth(args) => synth::run(&args),
        Command::Trace { command: TraceCommand::Import(args) } => import::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // The reader went away (`| head`): nothing left to say.
        Err(CliError::Output(e)) if e.kind() == io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(io::stderr(), "error: {e}");
            ExitCode::FAILURE
        }
    }
}
