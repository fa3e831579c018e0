//! Sizes and flags a new user can get wrong: each is refused up front with one line naming the
//! flag (no abort, no file left behind), or runs as what it can mean and shows what ran.
#![cfg(not(miri))] // runs the binary as a process, which Miri cannot spawn

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;
use common::{expertslab, stdout, temp};

/// The address-space limit the size tests run under: 4 GiB.
const ADDRESS_SPACE: &str = "--as=4294967296";

/// Whether util-linux `prlimit` is here to run the binary under a limit.
fn has_prlimit() -> bool {
    Command::new("prlimit").arg("--version").output().is_ok_and(|o| o.status.success())
}

/// Runs the binary with `args` under a 4 GiB address space.
fn limited(args: &[&str]) -> Output {
    Command::new("prlimit")
        .arg(ADDRESS_SPACE)
        .arg(env!("CARGO_BIN_EXE_expertslab"))
        .args(args)
        .output()
        .expect("prlimit runs the binary")
}

/// A failure that is one `error:` line containing `expected`.
fn assert_refused(o: &Output, args: &[&str], expected: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
    assert!(err.starts_with("error: ") && err.lines().count() == 1, "{args:?}: {err}");
    assert!(err.contains(expected), "{args:?}: no '{expected}' in {err}");
}

/// A trace of `layers` layers, each with one record of `ids`, `experts` experts, top-`ids.len()`.
fn trace_of(name: &str, experts: u32, layers: u32, ids: &[u32]) -> PathBuf {
    let path = temp(name);
    let mut text = format!(
        "{{\"format\":\"expertslab-trace\",\"version\":1,\"experts\":{experts},\"layers\":{layers},\"top_k\":{}}}\n",
        ids.len()
    );
    let list: Vec<String> = ids.iter().map(u32::to_string).collect();
    for layer in 0..layers {
        text.push_str(&format!("{{\"layer\":{layer},\"step\":0,\"prefill\":false,\"ids\":[{}]}}\n", list.join(",")));
    }
    std::fs::write(&path, text).unwrap();
    path
}

fn synth(name: &str) -> PathBuf {
    let path = temp(name);
    let p = path.to_str().unwrap();
    stdout(&expertslab(&["synth", "--out", p, "--experts", "16", "--layers", "3", "--top-k", "2", "--steps", "50"]));
    path
}

fn json(args: &[&str]) -> Value {
    serde_json::from_str(&stdout(&expertslab(args))).unwrap()
}

#[test]
fn sizes_past_the_limits_are_refused_in_seconds_and_leave_no_file() {
    if !has_prlimit() {
        println!("skipped: no prlimit (util-linux) to limit the address space");
        return;
    }
    let out = temp("refused.ndjson");
    let o = out.to_str().unwrap();
    let prefill_max = usize::MAX.to_string();
    let cases: [(&[&str], &str); 8] = [
        (&["synth", "--out", o, "--experts", "4294967295", "--top-k", "1", "--steps", "1"], "--experts 4294967295"),
        (&["synth", "--out", o, "--experts", "1000000000"], "--experts 1000000000"),
        (&["synth", "--out", o, "--tokens", "1000000000"], "--tokens 1000000000"),
        (&["synth", "--out", o, "--prefill-tokens", &prefill_max], "--prefill-tokens"),
        (&["synth", "--out", o, "--layers", "4294967295"], "--layers 4294967295"),
        (&["demo", "--experts", "100000", "--steps", "1", "--trace", o], "--experts 100000"),
        (&["demo", "--d-ff", "100000000", "--trace", o], "--d-ff 100000000"),
        (&["demo", "--layers", "1000000", "--trace", o], "--layers 1000000"),
    ];
    for (args, expected) in cases {
        let start = Instant::now();
        let result = limited(args);
        assert!(start.elapsed() < Duration::from_secs(10), "{args:?} took {:?}", start.elapsed());
        assert_refused(&result, args, expected);
        assert!(!out.exists(), "{args:?} left {}", out.display());
    }
}

#[test]
fn a_sweep_stops_at_the_expert_count() {
    let trace = synth("sweep.ndjson");
    let t = trace.to_str().unwrap();
    let plot = temp("sweep.svg");
    let args = ["simulate", "--trace", t, "--sweep", "1..100000000:1", "--policy", "lru", "--json"];
    let start = Instant::now();
    let o = if has_prlimit() { limited(&args) } else { expertslab(&args) };
    assert!(start.elapsed() < Duration::from_secs(10), "took {:?}", start.elapsed());
    let runs: Vec<Value> = serde_json::from_str(&stdout(&o)).unwrap();
    let slots: Vec<u64> = runs.iter().map(|r| r["slots"].as_u64().unwrap()).collect();
    assert_eq!(slots, (1..=16).collect::<Vec<_>>(), "one run per slot count up to the 16 experts");
    // Doubling past the expert count ends on it, once; the plot is written whole.
    let p = plot.to_str().unwrap();
    let runs = json(&["simulate", "--trace", t, "--sweep", "4..100", "--policy", "lru", "--json", "--plot", p]);
    let slots: Vec<u64> = runs.as_array().unwrap().iter().map(|r| r["slots"].as_u64().unwrap()).collect();
    assert_eq!(slots, [4, 8, 16]);
    assert!(std::fs::read_to_string(&plot).unwrap().trim_end().ends_with("</svg>"));
    std::fs::remove_file(plot).unwrap();
    std::fs::remove_file(trace).unwrap();
}

#[test]
fn slot_counts_past_the_expert_count_show_what_ran() {
    let trace = synth("slots.ndjson");
    let t = trace.to_str().unwrap();
    let out = stdout(&expertslab(&["simulate", "--trace", t, "--slots", "100", "--policy", "lru"]));
    let row = out.lines().nth(2).unwrap_or_else(|| panic!("{out}"));
    assert!(row.split_whitespace().next() == Some("16"), "{out}");
    let runs = json(&["simulate", "--trace", t, "--slots", "100", "--policy", "lru", "--json"]);
    assert_eq!(runs[0]["slots"], 16);
    let tune = json(&["tune", "--trace", t, "--max-slots", "100", "--policy", "lru", "--json"]);
    assert!(tune["best"]["slots"].as_u64().unwrap() <= 16, "{}", tune["best"]);
    let demo = stdout(&expertslab(&[
        "demo",
        "--layers",
        "1",
        "--experts",
        "8",
        "--top-k",
        "2",
        "--d-model",
        "16",
        "--d-ff",
        "16",
        "--slots",
        "30",
        "--steps",
        "3",
    ]));
    // The asked-for count appears nowhere as a slot count (the timing line may hold any digits).
    assert!(demo.contains("8 slots per layer") && !demo.contains("30 slots"), "{demo}");
    std::fs::remove_file(trace).unwrap();
}

#[test]
fn prefetch_that_cannot_happen_is_refused_and_policies_without_it_are_named() {
    let trace = synth("prefetch.ndjson");
    let t = trace.to_str().unwrap();
    let base = ["simulate", "--trace", t, "--slots", "4", "--prefetch", "both"];
    for (extra, expected) in [
        (&["--policy", "lru"][..], "--prefetch needs --layer-compute-us"),
        (&["--policy", "lru", "--layer-compute-us", "0"], "--prefetch needs --layer-compute-us"),
        // 4 MiB over 16 GB/s: one copy is 262.144 µs.
        (&["--policy", "lru", "--layer-compute-us", "100"], "shorter than one expert's copy (262.144 µs"),
        (&["--policy", "tide,decay,oracle", "--layer-compute-us", "1000"], "only lru and lfu pools prefetch"),
    ] {
        let args = [&base[..], extra].concat();
        assert_refused(&expertslab(&args), &args, expected);
    }
    let tune = ["tune", "--trace", t, "--max-slots", "4", "--prefetch", "both", "--policy", "tide"];
    assert_refused(&expertslab(&tune), &tune, "--prefetch needs --layer-compute-us");
    // Some policies prefetch: the others are named on stderr, and the run goes on.
    let args = [&base[..], &["--policy", "tide,lru", "--layer-compute-us", "1000", "--json"]].concat();
    let o = expertslab(&args);
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    let runs: Vec<Value> = serde_json::from_str(&stdout(&o)).unwrap();
    assert!(err.starts_with("warning: --prefetch") && err.trim_end().ends_with("without it: tide"), "{err}");
    assert!(runs[1]["total"]["prefetched"].as_u64().unwrap() > 0);
    let quiet = [&base[..], &["--policy", "lru,lfu", "--layer-compute-us", "1000"]].concat();
    assert!(expertslab(&quiet).stderr.is_empty());
    std::fs::remove_file(trace).unwrap();
}

#[test]
fn the_uniform_reference_counts_every_layer_and_pays_a_cold_start() {
    // 8 layers of 3 pairs, 1 slot of 4 experts: a quarter of the 24 pairs hit.
    let trace = trace_of("uniform.ndjson", 4, 8, &[0, 1, 2]);
    let t = trace.to_str().unwrap();
    let run = |extra: &[&str]| -> Vec<Value> {
        let args = [&["simulate", "--trace", t, "--policy", "uniform,optimal", "--json"][..], extra].concat();
        serde_json::from_str(&stdout(&expertslab(&args))).unwrap()
    };
    let warm = run(&["--slots", "1"]);
    assert_eq!((warm[0]["total"]["hits"].as_u64(), warm[0]["total"]["pairs"].as_u64()), (Some(6), Some(24)));
    assert_eq!(warm[0]["total"]["hit_rate"], 0.25);
    assert_eq!(warm[0]["total"]["bytes_promoted"], 0);
    let text = stdout(&expertslab(&["simulate", "--trace", t, "--policy", "uniform", "--slots", "1"]));
    assert!(text.contains("25.0%"), "{text}");
    // Cold, every layer first copies its placement in, and the reference costs no less than the
    // optimum that starts as cold.
    for slots in ["1", "4"] {
        let cold = run(&["--slots", slots, "--cold"]);
        let (uniform, optimal) = (&cold[0]["total"], &cold[1]["total"]);
        let per_layer: u64 = slots.parse().unwrap();
        assert_eq!(uniform["promotions"].as_u64(), Some(8 * per_layer), "{uniform}");
        assert_eq!(uniform["bytes_promoted"].as_u64(), Some(8 * per_layer * (4 << 20)), "{uniform}");
        let time = |v: &Value| v["modeled_time_s"].as_f64().unwrap();
        assert!(time(uniform) >= time(optimal), "{uniform} vs {optimal}");
        assert!(time(uniform) > 0.0);
    }
    std::fs::remove_file(trace).unwrap();
}

#[test]
fn expert_sizes_whose_byte_counts_cannot_be_exact_are_refused() {
    let trace = synth("expert-bytes.ndjson");
    let t = trace.to_str().unwrap();
    for command in ["simulate", "tune"] {
        let args = [command, "--trace", t, "--expert-bytes", "16777215TiB"];
        assert_refused(&expertslab(&args), &args, "--expert-bytes 18446742974197923840");
    }
    // Large, but every count exact: bytes moved are promotions × expert bytes.
    let runs = json(&[
        "simulate",
        "--trace",
        t,
        "--slots",
        "4",
        "--policy",
        "lru,optimal",
        "--expert-bytes",
        "1024TiB",
        "--json",
    ]);
    for run in runs.as_array().unwrap() {
        let total = &run["total"];
        let promotions = total["promotions"].as_u64().unwrap();
        assert_eq!(total["bytes_promoted"].as_u64(), Some(promotions << 50), "{total}");
    }
    std::fs::remove_file(trace).unwrap();
}

#[test]
fn a_failed_import_leaves_no_file_and_an_earlier_file_stays() {
    let out = temp("import-out.ndjson");
    std::fs::write(&out, "earlier\n").unwrap();
    let input = temp("import-in.json");
    std::fs::write(&input, "{\"selections\": [[[0, 1]], [[2, \"x\"]]]}").unwrap();
    let args =
        ["trace", "import", input.to_str().unwrap(), "--selections-key", "selections", "--out", out.to_str().unwrap()];
    let o = expertslab(&args);
    assert!(!o.status.success(), "{o:?}");
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "earlier\n");
    let folder = out.parent().unwrap_or(Path::new("."));
    let name = out.file_name().unwrap().to_string_lossy().to_string();
    let leftovers = std::fs::read_dir(folder)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with(&format!(".{name}.")))
        .count();
    assert_eq!(leftovers, 0, "a temporary file was left beside {}", out.display());
    std::fs::remove_file(out).unwrap();
    std::fs::remove_file(input).unwrap();
}

#[test]
fn a_record_too_large_to_parse_within_memory_is_refused_by_line() {
    if !has_prlimit() {
        println!("skipped: no prlimit (util-linux) to limit the address space");
        return;
    }
    // One JSON-lines record of 10^7 ids (20 MB), under a 1 GiB address space: its parse could
    // take up to 32 bytes a byte, more than the half of the limit a command plans for.
    let input = temp("huge-record.jsonl");
    let mut text = String::from("{\"layer\":0,\"token\":0,\"ids\":[");
    text.push_str(&"1,".repeat(10_000_000));
    text.push_str("1]}\n");
    std::fs::write(&input, text).unwrap();
    let out = temp("huge-record.ndjson");
    let (i, o) = (input.to_str().unwrap(), out.to_str().unwrap());
    let args = ["trace", "import", i, "--out", o, "--layer-key", "layer", "--token-key", "token", "--ids-key", "ids"];
    let start = Instant::now();
    let result = Command::new("prlimit")
        .arg("--as=1073741824")
        .arg(env!("CARGO_BIN_EXE_expertslab"))
        .args(args)
        .output()
        .expect("prlimit runs the binary");
    assert!(start.elapsed() < Duration::from_secs(10), "took {:?}", start.elapsed());
    assert_refused(&result, &args, "line 1: a record of");
    assert!(!out.exists());
    std::fs::remove_file(input).unwrap();
}
