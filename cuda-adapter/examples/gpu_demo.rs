//! The GPU demo: `cargo run --release -p expertslab-cuda --example gpu_demo -- [options]`.
//!
//! Options: `--trace FILE` (a routing trace of 128 experts, top-8; default: the locality trace
//! generated like `expertslab synth --experts 128 --layers 4 --top-k 8 --steps 512 --zipf 0.9
//! --reuse 0.5`), `--uniform` (the near-uniform trace instead), `--slots N` (per layer, default
//! 64), `--policy NAME` (tide, decay, lru, lfu, lru2; default tide), `--layers N` (default 4),
//! `--reps N` (default 5), `--device N` (default 0).

use std::process::ExitCode;

use expertslab::trace::synthetic::SyntheticTrace;
use expertslab::trace::Trace;
use expertslab::Policy;
use expertslab_cuda::demo::{run_demo, DemoConfig, DemoRouting, ModelSpec};

fn parse(args: &[String]) -> Result<DemoConfig, String> {
    let mut config = DemoConfig::default();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        let number = |v: &String| v.parse::<usize>().map_err(|e| format!("{flag} {v}: {e}"));
        match flag.as_str() {
            "--trace" => {
                let path = value()?;
                let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
                config.routing = DemoRouting::Trace(Trace::parse(&text).map_err(|e| format!("{path}: {e}"))?);
            }
            "--uniform" => config.routing = DemoRouting::Synthetic(SyntheticTrace::NEAR_UNIFORM),
            "--slots" => config.slots = number(value()?)?,
            "--policy" => config.policy = Policy::from_name(value()?).map_err(|e| format!("--policy: {e}"))?,
            "--layers" => config.model = ModelSpec::current_moe(number(value()?)?),
            "--reps" => config.reps = number(value()?)?,
            "--device" => config.device = number(value()?)?,
            other => return Err(format!("unknown option {other}")),
        }
    }
    Ok(config)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let config = match parse(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("gpu_demo: {e}");
            return ExitCode::from(2);
        }
    };
    match run_demo(&config) {
        Ok(report) => {
            print!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("gpu_demo: {e}");
            ExitCode::FAILURE
        }
    }
}
