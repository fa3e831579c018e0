//! The `demo`, `synth`, `simulate` and `tune` subcommands, run as a user runs them.
#![cfg(not(miri))] // runs the binary as a process, which Miri cannot spawn

use std::path::PathBuf;
use std::process::{Command, Output};

use serde_json::Value;

fn expertslab(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_expertslab")).args(args).output().expect("the binary runs")
}

fn temp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("expertslab-cli-{}-{name}", std::process::id()))
}

fn stdout(o: &Output) -> String {
    assert!(o.status.success(), "failed: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn synth(name: &str, steps: &str) -> PathBuf {
    let path = temp(name);
    let p = path.to_str().unwrap();
    stdout(&expertslab(&["synth", "--out", p, "--experts", "16", "--layers", "3", "--top-k", "2", "--steps", steps]));
    path
}

#[test]
fn synth_writes_a_trace_simulate_reads() {
    let trace = synth("synth.ndjson", "50");
    let text = std::fs::read_to_string(&trace).unwrap();
    let parsed = expertslab_std::trace::Trace::parse(&text).unwrap();
    assert_eq!(parsed.records().len(), 3 * 51, "a prefill block and 50 decode steps per layer");
    assert!(parsed.records()[0].prefill && !parsed.records()[3].prefill);
    std::fs::remove_file(trace).unwrap();
}

#[test]
fn synth_finishes_a_steep_popularity_and_refuses_impossible_shapes() {
    let path = temp("steep.ndjson");
    let p = path.to_str().unwrap();
    let steep = ["synth", "--out", p, "--experts", "64", "--layers", "1", "--top-k", "8", "--steps", "100"];
    stdout(&expertslab(&[&steep[..], &["--zipf", "10"]].concat()));
    let parsed = expertslab_std::trace::Trace::parse(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(parsed.records().len(), 101);
    std::fs::remove_file(&path).unwrap();
    for bad in [&["--zipf", "-1"][..], &["--reuse", "1.5"], &["--top-k", "65"]] {
        let out = expertslab(&[&steep[..], bad].concat());
        assert!(!out.status.success(), "{bad:?} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("synth"), "{bad:?}: {err}");
    }
}

#[test]
fn simulate_json_has_every_counter_and_totals_sum_the_layers() {
    let trace = synth("sim.ndjson", "100");
    let plot = temp("sim.svg");
    let out = stdout(&expertslab(&[
        "simulate",
        "--trace",
        trace.to_str().unwrap(),
        "--policy",
        "tide,lru,belady,oracle,uniform",
        "--sweep",
        "2..8",
        "--schedule",
        "every:2",
        "--expert-bytes",
        "1MiB",
        "--json",
        "--plot",
        plot.to_str().unwrap(),
    ]));
    let runs: Vec<Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(runs.len(), 5 * 3, "5 policies × 2, 4 and 8 slots");
    let counters =
        ["pairs", "hits", "misses", "invalid", "hit_rate", "promotions", "demotions", "bytes_moved", "modeled_time_s"];
    for run in &runs {
        assert_eq!(run["schedule"], "every:2");
        assert!(run["policy"].is_string() && run["slots"].is_u64());
        assert_eq!(run["budget"], run["slots"], "the earlier key, kept for one release");
        let layers = run["layers"].as_array().unwrap();
        assert_eq!(layers.len(), 3);
        for key in counters {
            assert!(run["total"][key].is_number(), "{key}");
        }
        for key in ["pairs", "hits", "misses", "promotions", "bytes_moved"] {
            let sum: u64 = layers.iter().map(|l| l[key].as_u64().unwrap()).sum();
            assert_eq!(run["total"][key].as_u64().unwrap(), sum, "{key}");
        }
        assert_eq!(run["total"]["bytes_moved"].as_u64(), run["total"]["promotions"].as_u64().map(|p| p << 20));
    }
    let by = |policy: &str, slots: u64| {
        runs.iter().find(|r| r["policy"] == policy && r["slots"] == slots).unwrap()["total"].clone()
    };
    for slots in [2, 4, 8] {
        assert!(by("belady", slots)["misses"].as_u64() <= by("lru", slots)["misses"].as_u64());
        assert_eq!(by("uniform", slots)["bytes_moved"], 0);
    }
    let svg = std::fs::read_to_string(&plot).unwrap();
    assert!(svg.contains("<svg") && svg.contains("belady") && svg.contains("hit rate by slots per layer"));
    std::fs::remove_file(plot).unwrap();

    let table = stdout(&expertslab(&["simulate", "--trace", trace.to_str().unwrap(), "--slots", "4"]));
    assert!(table.contains("decay") && table.contains("modeled time"), "{table}");
    let header = table.lines().nth(1).unwrap_or_default();
    assert!(header.trim_start().starts_with("slots") && !header.contains("budget"), "{table}");
    std::fs::remove_file(trace).unwrap();
}

#[test]
fn budget_is_the_earlier_name_of_slots() {
    let trace = synth("alias-slots.ndjson", "30");
    let run = |flag: &str| stdout(&expertslab(&["simulate", "--trace", trace.to_str().unwrap(), flag, "3", "--json"]));
    let runs: Vec<Value> = serde_json::from_str(&run("--slots")).unwrap();
    assert!(runs.iter().all(|r| r["slots"] == 3));
    assert_eq!(run("--budget"), run("--slots"));
    std::fs::remove_file(trace).unwrap();
}

#[test]
fn max_budget_is_the_earlier_name_of_max_slots() {
    let trace = synth("alias-max-slots.ndjson", "30");
    let run = |flag: &str| {
        let t = trace.to_str().unwrap();
        stdout(&expertslab(&["tune", "--trace", t, flag, "3", "--intervals", "1,2", "--json"]))
    };
    let doc: Value = serde_json::from_str(&run("--max-slots")).unwrap();
    assert!(doc["best"]["slots"].as_u64().unwrap() <= 3);
    assert_eq!(run("--max-budget"), run("--max-slots"));
    std::fs::remove_file(trace).unwrap();
}

#[test]
fn tune_names_the_best_and_the_gains() {
    let trace = synth("tune.ndjson", "100");
    let out =
        stdout(&expertslab(&["tune", "--trace", trace.to_str().unwrap(), "--max-slots", "6", "--intervals", "1,4"]));
    assert!(out.contains("best:") && out.contains("than TIDE at τ = 1") && out.contains("than LRU"), "{out}");
    assert!(out.contains("the optimum per layer") && out.contains("optimal-shared"), "{out}");
    let json = stdout(&expertslab(&[
        "tune",
        "--trace",
        trace.to_str().unwrap(),
        "--memory",
        "24MiB",
        "--expert-bytes",
        "1MiB",
        "--json",
    ]));
    let doc: Value = serde_json::from_str(&json).unwrap();
    // 24 MiB over 3 layers of 1 MiB experts: at most 8 slots per layer.
    assert!(doc["best"]["slots"].as_u64().unwrap() <= 8);
    // The best is the candidate of least modeled time, the fewest slots among equals.
    let candidates = doc["candidate_runs"].as_array().unwrap();
    assert_eq!(candidates.len() as u64, doc["candidates"].as_u64().unwrap());
    assert!(candidates.len() > 1);
    let time = |run: &Value| run["total"]["modeled_time_s"].as_f64().unwrap();
    let least = candidates.iter().map(time).fold(f64::INFINITY, f64::min);
    assert_eq!(time(&doc["best"]), least);
    let fewest = candidates.iter().filter(|r| time(r) == least).map(|r| r["slots"].as_u64().unwrap()).min();
    assert_eq!(doc["best"]["slots"].as_u64(), fewest);
    let key = |run: &Value| (run["policy"].clone(), run["slots"].clone(), run["schedule"].clone());
    assert!(candidates.iter().any(|r| key(r) == key(&doc["best"]) && time(r) == least), "the best is a candidate");
    assert_eq!(candidates.iter().map(|r| r["slots"].as_u64().unwrap()).max(), Some(8), "the --memory limit");
    assert!(doc["vs_tide_tau1"]["time_saved"].as_f64().unwrap() >= 0.0, "TIDE at τ = 1 is among the candidates");
    // No placement beats the optimum; a shared pool can split itself per layer.
    let (optimal, shared) = (doc["optimal_ratio"].as_f64().unwrap(), doc["optimal_shared_ratio"].as_f64().unwrap());
    assert!(optimal >= 1.0 - 1e-9 && shared >= optimal - 1e-9, "{optimal} {shared}");
    std::fs::remove_file(trace).unwrap();
}

#[test]
fn bad_traces_and_arguments_are_one_line_errors() {
    let bad = temp("bad.ndjson");
    std::fs::write(&bad, "{\"format\":\"expertslab-trace\",\"version\":1,\"experts\":4,\"layers\":1,\"top_k\":1}\n{\"layer\":0,\"step\":0,\"prefill\":false,\"ids\":[1,-1]}\n").unwrap();
    let o = expertslab(&["simulate", "--trace", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.starts_with("error: ") && err.contains("line 2") && err.lines().count() == 1, "{err}");
    std::fs::remove_file(bad).unwrap();
    for args in [
        &["simulate", "--trace", "x", "--policy", "fifo"][..],
        &["simulate", "--trace", "x", "--sweep", "8..4"],
        &["simulate", "--trace", "x", "--schedule", "every:0"],
        &["simulate", "--trace", "x", "--link-gbps", "0"],
        &["simulate", "--trace", "x", "--slots", "4", "--sweep", "2..4"],
    ] {
        assert_eq!(expertslab(args).status.code(), Some(2), "{args:?}");
    }
    let o = expertslab(&["simulate", "--trace", "/nonexistent/t.ndjson"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("/nonexistent/t.ndjson"));
}

#[test]
fn demo_runs_offloaded_and_checks_its_output() {
    let trace = temp("demo.ndjson");
    let small = [
        "--layers",
        "2",
        "--experts",
        "8",
        "--top-k",
        "2",
        "--d-model",
        "16",
        "--d-ff",
        "32",
        "--slots",
        "3",
        "--steps",
        "40",
    ];
    let mut args = vec!["demo"];
    args.extend_from_slice(&small);
    args.extend_from_slice(&["--trace", trace.to_str().unwrap()]);
    let o = expertslab(&args);
    assert_eq!(o.status.code(), Some(0), "the bit-exact comparison decides the exit status");
    let out = stdout(&o);
    // 40 steps × 2 layers, every one compared.
    let line = "  output       identical to the all-resident output at every step and layer (80 compared)";
    assert!(out.lines().any(|l| l == line), "{out}");
    assert!(out.contains("hit rate") && out.contains("promotions") && out.contains("bytes moved"));
    let recorded = expertslab_std::trace::Trace::parse(&std::fs::read_to_string(&trace).unwrap()).unwrap();
    assert_eq!(recorded.records().len(), 2 * 40);
    std::fs::remove_file(trace).unwrap();
    let mut lru = vec!["demo", "--policy", "lru"];
    lru.extend_from_slice(&small);
    assert!(stdout(&expertslab(&lru)).contains("lru"));
    let o = expertslab(&["demo", "--policy", "belady"]);
    assert_eq!(o.status.code(), Some(1), "a reference policy cannot run a model");
}

#[test]
fn demo_on_cuda_runs_or_says_why_not() {
    let out = expertslab(&["demo", "--device", "cuda", "--layers", "1"]);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if out.status.success() {
        assert!(stdout.contains("hit rate"), "{stdout}");
    } else {
        assert!(stderr.contains("demo --device cuda:") && stderr.contains("CUDA"), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    }
}
