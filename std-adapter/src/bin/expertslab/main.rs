//! `expertslab`: look into GGUF Mixture-of-Experts models and size their expert slots.
//!
//! One module per subcommand, each with its `Args` (clap) and `run`; shared pieces: [`error`]
//! (the one error every subcommand returns), [`units`] (byte sizes) and [`table`] (text output).

use std::io::{self, Write};
use std::path::Path;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use expertslab_std::gguf::GgufModel;
use expertslab_std::SharedBytes;

mod error;
mod inspect;
mod plan;
mod table;
mod units;

use error::CliError;

/// Mixture-of-Experts expert offloading: inspect models and plan fast-memory slots.
#[derive(Debug, Parser)]
#[command(name = "expertslab", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List the MoE layers of a GGUF file: projections, types, dims and bytes per expert.
    Inspect(inspect::Args),
    /// How many experts of each MoE layer fit in a memory size.
    Plan(plan::Args),
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Inspect(args) => inspect::run(&args),
        Command::Plan(args) => plan::run(&args),
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

/// Opens a GGUF model through a memory map; errors name the path.
fn open_model(path: &Path) -> Result<GgufModel<SharedBytes>, CliError> {
    expertslab_std::open_gguf(path).map_err(|e| CliError::model(path, e))
}
