//! The `demo`, `synth`, `simulate` and `tune` subcommands, run as a user runs them.
#![cfg(not(miri))] // runs the binary as a process, which Miri cannot spawn

use std::path::PathBuf;

use serde_json::Value;

mod common;
use common::{expertslab, stdout, temp};

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
fn a_trace_cut_short_is_read_with_a_warning_and_one_cut_inside_is_refused() {
    let trace = synth("cut.ndjson", "20");
    let text = std::fs::read_to_string(&trace).unwrap();
    let (parsed, file) = expertslab_std::trace::Trace::read(&text).unwrap();
    assert!(file.sealed, "synth ends its trace with the end record");
    let lines: Vec<&str> = text.lines().collect();
    let simulate = |text: String| {
        std::fs::write(&trace, text).unwrap();
        expertslab(&["simulate", "--trace", trace.to_str().unwrap(), "--slots", "4"])
    };
    let join = |lines: &[&str]| lines.iter().map(|l| format!("{l}\n")).collect::<String>();
    // Whole: no warning.
    let out = simulate(text.clone());
    assert!(out.status.success() && out.stderr.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
    // Cut at a line boundary: read, with a warning naming what is missing.
    let out = simulate(join(&lines[..lines.len() - 4]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let records = parsed.records().len() - 3;
    assert_eq!(
        stderr.trim(),
        format!(
            "warning: {}: no end record, so a file cut short at a line boundary cannot be told from a whole one; read \
             as {records} records",
            trace.display()
        )
    );
    // A line lost before the end record: refused, naming the end record's line.
    let mut lost = lines.clone();
    lost.remove(5);
    let out = simulate(join(&lost));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("the end record counts"), "{stderr}");
    // Version 1 had no end record: no warning.
    let old = join(&lines[..lines.len() - 1]).replacen("\"version\":2", "\"version\":1", 1);
    let out = simulate(old);
    assert!(out.status.success() && out.stderr.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
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
    for (bad, named) in
        [(&["--zipf", "-1"][..], "--zipf"), (&["--reuse", "1.5"], "--reuse"), (&["--top-k", "65"], "synth")]
    {
        let out = expertslab(&[&steep[..], bad].concat());
        assert!(!out.status.success(), "{bad:?} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(named), "{bad:?}: {err}");
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
    let counters = [
        "pairs",
        "hits",
        "misses",
        "served_by_copy",
        "served_in_place",
        "invalid_ids",
        "hit_rate",
        "promotions",
        "demotions",
        "bytes_promoted",
        "modeled_time_s",
    ];
    for run in &runs {
        assert_eq!(run["schedule"], "every:2");
        assert!(run["policy"].is_string() && run["slots"].is_u64());
        assert_eq!(run["budget"], run["slots"], "the earlier key, kept for one release");
        let layers = run["layers"].as_array().unwrap();
        assert_eq!(layers.len(), 3);
        for key in counters {
            assert!(run["total"][key].is_number(), "{key}");
        }
        for key in ["pairs", "hits", "misses", "served_by_copy", "served_in_place", "promotions", "bytes_promoted"] {
            let sum: u64 = layers.iter().map(|l| l[key].as_u64().unwrap()).sum();
            assert_eq!(run["total"][key].as_u64().unwrap(), sum, "{key}");
        }
        assert_eq!(run["total"]["bytes_promoted"].as_u64(), run["total"]["promotions"].as_u64().map(|p| p << 20));
        let total = |key: &str| run["total"][key].as_u64().unwrap();
        assert_eq!(total("served_by_copy") + total("served_in_place"), total("misses"));
        assert_eq!(total("hits") + total("misses"), total("pairs"));
    }
    let by = |policy: &str, slots: u64| {
        runs.iter().find(|r| r["policy"] == policy && r["slots"] == slots).unwrap()["total"].clone()
    };
    for slots in [2, 4, 8] {
        // Belady admits the fewest misses: its admissions plus the misses it serves in place.
        let faults = |t: Value| t["promotions"].as_u64().unwrap() + t["served_in_place"].as_u64().unwrap();
        assert!(faults(by("belady", slots)) <= faults(by("lru", slots)));
        assert_eq!(by("uniform", slots)["bytes_promoted"], 0);
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
    assert!(out.contains("its bound (the optimum per layer") && out.contains("optimal-shared"), "{out}");
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
    // No placement beats the optimum of its kind of pool; a shared pool can split itself per layer.
    let (optimal, shared) = (doc["optimal_ratio"].as_f64().unwrap(), doc["optimal_shared_ratio"].as_f64().unwrap());
    let own = doc["bound_ratio"].as_f64().unwrap();
    let expected = if doc["best"]["sharing"] == "shared" { shared } else { optimal };
    assert!(own == expected && own >= 1.0 - 1e-9 && shared >= optimal - 1e-9, "{own} {optimal} {shared}");
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
    // "  pairs        H hits, M misses (C served by copy, P in place)": the two kinds make up the misses.
    let pairs = out.lines().find(|l| l.starts_with("  pairs ")).unwrap_or_else(|| panic!("{out}"));
    let numbers: Vec<u64> =
        pairs.split(|c: char| !c.is_ascii_digit()).filter(|w| !w.is_empty()).map(|w| w.parse().unwrap()).collect();
    assert_eq!(numbers.len(), 4, "{pairs}");
    assert_eq!(numbers[2] + numbers[3], numbers[1], "{pairs}");
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

#[test]
fn demo_flags_that_do_not_apply_are_refused() {
    // A routing trace drives the GPU demo only.
    let o = expertslab(&["demo", "--routing", "no-such-file.ndjson"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--routing needs --device cuda"), "{o:?}");
    // The GPU demo's shape is checked before any device is looked for.
    let o = expertslab(&["demo", "--device", "cuda", "--top-k", "9", "--experts", "8"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("experts >= top_k"), "{o:?}");
    let o = expertslab(&["demo", "--device", "cuda", "--d-model", "0"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--d-model 0"), "{o:?}");
    // --steps shapes synthetic routing; a trace has its own.
    let trace = synth("demo-routing.ndjson", "4");
    let o = expertslab(&["demo", "--device", "cuda", "--routing", trace.to_str().unwrap(), "--steps", "3"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--steps sets synthetic routing"), "{o:?}");
    std::fs::remove_file(trace).unwrap();
    // A model file feeds the GPU demo only, sets its own shape, and is checked before any device
    // is looked for.
    let fused = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/gguf/moe_fused.gguf");
    for (args, expected) in [
        (vec!["demo", "--model", fused], "a fused gate_up stack is not read"),
        (vec!["demo", "--miss", "host"], "--miss needs --device cuda"),
        (vec!["demo", "--prefetch", "both"], "--prefetch needs --device cuda"),
        (
            vec!["demo", "--device", "cuda", "--model", fused, "--layers", "2"],
            "--layers sets a generated model's shape",
        ),
        (vec!["demo", "--device", "cuda", "--model", "no-such-model.gguf"], "no-such-model.gguf"),
        (vec!["demo", "--device", "cuda", "--model", fused], "a fused gate_up stack is not read"),
    ] {
        let o = expertslab(&args);
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(stderr.contains(expected) && stderr.lines().count() == 1, "{args:?}: {stderr}");
    }
}

#[test]
fn shared_pools_and_prefetch_from_the_command_line() {
    let trace = synth("shared.ndjson", "100");
    let t = trace.to_str().unwrap();
    let json = |extra: &[&str]| -> Value {
        let mut args = vec!["simulate", "--trace", t, "--slots", "4", "--json", "--policy", "tide,lru,lfu"];
        args.extend_from_slice(extra);
        serde_json::from_str(&stdout(&expertslab(&args))).unwrap()
    };
    // Interval policies have no shared pool: tide is skipped there.
    let runs = json(&["--sharing", "per-layer,shared"]);
    let names: Vec<String> =
        runs.as_array().unwrap().iter().map(|r| format!("{}/{}", r["policy"], r["sharing"])).collect();
    assert_eq!(
        names,
        [
            r#""tide"/"per-layer""#,
            r#""lru"/"per-layer""#,
            r#""lfu"/"per-layer""#,
            r#""lru"/"shared""#,
            r#""lfu"/"shared""#
        ]
    );
    // 64 MiB experts over 16 GB/s: one copy is 4194.304 µs; a layer compute time of one copy
    // prefetches (without it, --prefetch is refused: see cli_sizes).
    let cost = ["--expert-bytes", "64MiB", "--prefetch", "both"];
    let off = json(&cost[..2]);
    let on = json(&[&cost[..], &["--layer-compute-us", "4194.304"]].concat());
    assert_eq!(off[1]["total"]["prefetched"], 0);
    assert!(on[1]["total"]["prefetched"].as_u64().unwrap() > 0);
    assert_eq!(on[0], off[0], "tide does not prefetch");
    assert!(on[1]["total"]["prefetch_hits"].as_u64().unwrap() <= on[1]["total"]["prefetched"].as_u64().unwrap());
    let out = stdout(&expertslab(&["tune", "--trace", t, "--max-slots", "4", "--policy", "lru"]));
    assert!(out.contains("best: lru"), "{out}");
    let err = expertslab(&["simulate", "--trace", t, "--policy", "tide", "--sharing", "shared"]);
    assert!(!err.status.success() && String::from_utf8_lossy(&err.stderr).contains("shared pool"));
    std::fs::remove_file(trace).unwrap();
}

#[test]
fn the_overlapped_model_prices_steps_by_their_slowest_resource() {
    let trace = synth("overlap.ndjson", "100");
    let t = trace.to_str().unwrap();
    let run = |extra: &[&str]| -> Value {
        let mut args =
            vec!["simulate", "--trace", t, "--slots", "4", "--json", "--policy", "tide,lru", "--slow-pair-us", "200"];
        args.extend_from_slice(extra);
        serde_json::from_str(&stdout(&expertslab(&args))).unwrap()
    };
    let additive = run(&[]);
    let overlapped = run(&["--overlap"]);
    let none = run(&["--overlap", "--fetch-cap", "0"]);
    let uncapped = run(&["--overlap", "--fetch-cap", "none"]);
    for i in 0..2 {
        let total = |v: &Value, key: &str| v[i]["total"][key].as_u64().unwrap();
        // The cap is the pool's: with 0 nothing is promoted; balanced promotes no more than the
        // additive run, whose pool is not capped.
        assert_eq!((total(&none, "promotions"), total(&none, "fetched")), (0, 0));
        assert!(total(&overlapped, "promotions") <= total(&additive, "promotions"));
        assert_eq!(total(&overlapped, "pairs"), total(&additive, "pairs"));
        assert_eq!(overlapped[i]["fetch_cap"], "balanced");
        assert_eq!(none[i]["fetch_cap"], "0");
        assert!(additive[i]["fetch_cap"].is_null());
        // Uncapped, the pool promotes as in the additive run.
        assert_eq!(total(&uncapped, "promotions"), total(&additive, "promotions"));
        assert_eq!(uncapped[i]["fetch_cap"], "none");
    }
    assert!(overlapped[0]["total"]["fetched"].as_u64().unwrap() > 0, "TIDE serves misses in place; some are fetched");
    // Split misses (down a third of an expert): counted, and none without --split.
    let split = run(&["--overlap", "--split"]);
    assert!(split[0]["total"]["split"].as_u64().unwrap() > 0, "{}", split[0]["total"]);
    assert_eq!(overlapped[0]["total"]["split"], 0);
    let o = expertslab(&["simulate", "--trace", t, "--slots", "4", "--split"]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("--overlap"), "{o:?}");
    let o = expertslab(&["simulate", "--trace", t, "--slots", "4", "--fetch-cap", "2"]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("--overlap"), "{o:?}");
    // The optimum is priced additively: not beside overlapped runs.
    let o = expertslab(&["simulate", "--trace", t, "--slots", "4", "--policy", "lru,optimal", "--overlap"]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("optimal is priced by adding"), "{o:?}");
    let tune = expertslab(&["tune", "--trace", t, "--max-slots", "4", "--overlap", "--json"]);
    let doc: Value = serde_json::from_str(&stdout(&tune)).unwrap();
    let names: Vec<&str> =
        doc["references"].as_array().unwrap().iter().map(|r| r["policy"].as_str().unwrap()).collect();
    assert!(!names.contains(&"optimal") && !names.contains(&"uniform") && names.contains(&"oracle"), "{names:?}");
    assert!(doc["optimal_ratio"].is_null());
    // tune tries each candidate uncapped and balanced.
    let caps: Vec<&str> =
        doc["candidate_runs"].as_array().unwrap().iter().map(|r| r["fetch_cap"].as_str().unwrap()).collect();
    assert!(caps.contains(&"none") && caps.contains(&"balanced"), "{caps:?}");
    std::fs::remove_file(trace).unwrap();
}

#[test]
fn the_cpu_demo_runs_a_gguf_file_with_its_own_routers() {
    // 2 MoE layers of 16 experts, top-2, after a dense block: in BF16 and Q8_0 (hidden 64, FFN
    // 32), and as a Q4_K_M file mixes them (Q4_K gate and up, Q6_K down; hidden and FFN 256).
    let experts = 16usize;
    let unit = |i: usize, seed: usize| ((i * 7919 + seed * 104_729) % 2001) as f32 / 1000.0 - 1.0;
    // A stack of `elems` weights per expert in ggml type `t`.
    let stack = |t: u32, elems: usize, cols: usize, seed: usize| -> Vec<u8> {
        let n = experts * elems;
        match t {
            30 => {
                let scale = (3.0 / cols as f32).sqrt();
                (0..n).flat_map(|i| (((unit(i, seed) * scale).to_bits() >> 16) as u16).to_le_bytes()).collect()
            }
            8 => (0..n / 32)
                .flat_map(|b| {
                    // Scales near 2^-10, values in ±127.
                    let scale = 0x1400u16 | (b * 37 % 1024) as u16;
                    let values = (0..32).map(move |e| ((unit(b * 32 + e, seed) * 127.0).round() as i8) as u8);
                    scale.to_le_bytes().into_iter().chain(values)
                })
                .collect(),
            // Q4_K (144 bytes) and Q6_K (210 bytes) super-blocks of 256: random codes, small
            // f16 scales (Q4_K's d and dmin at bytes 0 and 2, Q6_K's d at 208).
            _ => {
                let (bytes, at): (usize, &[usize]) = if t == 12 { (144, &[0, 2]) } else { (210, &[208]) };
                let mut out: Vec<u8> = (0..n / 256 * bytes).map(|i| ((unit(i, seed) + 1.0) * 127.9) as u8).collect();
                for block in out.chunks_exact_mut(bytes) {
                    for &a in at {
                        block[a..a + 2].copy_from_slice(&0x0200u16.to_le_bytes());
                    }
                }
                out
            }
        }
    };
    for (name, (hidden, ffn), types) in
        [("bf16", (64, 32), [30; 3]), ("q8_0", (64, 32), [8; 3]), ("q4_K with q6_K down", (256, 256), [12, 12, 14])]
    {
        let layers: Vec<[Vec<u8>; 3]> = (0..2)
            .map(|l| {
                [
                    stack(types[0], hidden * ffn, hidden, 3 * l),
                    stack(types[1], hidden * ffn, hidden, 3 * l + 1),
                    stack(types[2], hidden * ffn, ffn, 3 * l + 2),
                ]
            })
            .collect();
        let path = temp(&format!("cpu-demo-{}.gguf", types[2]));
        expertslab_tests::gguf::write_moe_types(&path, experts, hidden, ffn, 2, types, &layers);
        let p = path.to_str().unwrap();
        let out = stdout(&expertslab(&["demo", "--model", p, "--steps", "30", "--slots", "4", "--policy", "lru"]));
        assert!(
            out.contains("2 layers × 16 experts") && out.contains(&format!("({name}, top-2), 4 slots per layer")),
            "{out}"
        );
        assert!(out.contains("identical to the all-resident output at every step and layer (60 compared)"), "{out}");
        // The file sets the shape.
        let o = expertslab(&["demo", "--model", p, "--experts", "8"]);
        assert!(
            !o.status.success() && String::from_utf8_lossy(&o.stderr).contains("--experts sets a generated"),
            "{o:?}"
        );
        std::fs::remove_file(path).unwrap();
    }
}

#[test]
fn zero_counts_and_negative_sizes_say_what_is_wrong() {
    let trace = synth("zero-counts.ndjson", "10");
    let t = trace.to_str().unwrap();
    let out = temp("zero-experts.ndjson");
    for (args, expected) in [
        (vec!["tune", "--trace", t, "--max-slots", "0"], "--max-slots 0: tune needs at least one slot per layer"),
        (vec!["synth", "--out", out.to_str().unwrap(), "--experts", "0"], "needs at least one expert (0 given)"),
        (vec!["simulate", "--trace", t, "--expert-bytes=-5"], "'-5': a size cannot be negative"),
        // Negative numbers reach the value parsers, with or without `=`, which say why.
        (
            vec!["synth", "--out", out.to_str().unwrap(), "--zipf", "-1"],
            "the Zipf exponent must be a number of at least 0",
        ),
        (
            vec!["synth", "--out", out.to_str().unwrap(), "--zipf=-1"],
            "the Zipf exponent must be a number of at least 0",
        ),
        (
            vec!["synth", "--out", out.to_str().unwrap(), "--reuse", "-0.5"],
            "a probability must be a number from 0 to 1",
        ),
        (vec!["synth", "--out", out.to_str().unwrap(), "--reuse", "1.5"], "a probability must be a number from 0 to 1"),
        (vec!["simulate", "--trace", t, "--link-gbps", "-5"], "'-5' must be a positive number"),
        (vec!["tune", "--trace", t, "--layer-compute-us", "-1"], "'-1' must be a number of at least 0"),
    ] {
        let o = expertslab(&args);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && stderr.contains(expected), "{args:?}: {stderr}");
    }
    std::fs::remove_file(trace).unwrap();
}

#[test]
fn ids_past_the_expert_count_are_shown_warned_and_refused_when_strict() {
    let path = temp("invalid-ids.ndjson");
    std::fs::write(
        &path,
        "{\"format\":\"expertslab-trace\",\"version\":1,\"experts\":4,\"layers\":1,\"top_k\":2}\n\
         {\"layer\":0,\"step\":0,\"prefill\":false,\"ids\":[7,9]}\n\
         {\"layer\":0,\"step\":1,\"prefill\":false,\"ids\":[1,9]}\n",
    )
    .unwrap();
    let p = path.to_str().unwrap();
    let o = expertslab(&["simulate", "--trace", p, "--slots", "1", "--policy", "lru"]);
    let (out, err) = (stdout(&o), String::from_utf8_lossy(&o.stderr).to_string());
    assert!(out.lines().nth(1).is_some_and(|h| h.ends_with("invalid ids")), "{out}");
    assert!(out.lines().nth(2).is_some_and(|r| r.trim_end().ends_with(" 3")), "{out}");
    assert!(err.contains("warning:") && err.contains("3 of 4 ids name experts at or past the header's 4"), "{err}");
    for command in ["simulate", "tune"] {
        let o = expertslab(&[command, "--trace", p, "--strict"]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains("(--strict)"), "{command}: {err}");
    }
    // A clean trace: no column, no warning.
    let clean = synth("clean-ids.ndjson", "5");
    let o = expertslab(&["simulate", "--trace", clean.to_str().unwrap(), "--slots", "2", "--strict"]);
    assert!(!stdout(&o).contains("invalid") && o.stderr.is_empty(), "{o:?}");
    std::fs::remove_file(path).unwrap();
    std::fs::remove_file(clean).unwrap();
}

#[test]
fn tune_scores_its_pick_on_a_second_trace() {
    let train = synth("tune-train.ndjson", "80");
    let test = temp("tune-test.ndjson");
    let (tr, te) = (train.to_str().unwrap(), test.to_str().unwrap());
    // The same shape, other routing.
    stdout(&expertslab(&[
        "synth",
        "--out",
        te,
        "--experts",
        "16",
        "--layers",
        "3",
        "--top-k",
        "2",
        "--steps",
        "60",
        "--seed",
        "7",
    ]));
    let args = ["tune", "--trace", tr, "--test", te, "--max-slots", "4", "--policy", "tide,lru"];
    let doc: Value = serde_json::from_str(&stdout(&expertslab(&[&args[..], &["--json"]].concat()))).unwrap();
    // The pick of the training trace, replayed on the test trace: same settings, other counts.
    for key in ["policy", "slots", "schedule", "sharing"] {
        assert_eq!(doc["test"]["best"][key], doc["best"][key], "{key}");
    }
    assert_ne!(doc["test"]["best"]["total"]["pairs"], doc["best"]["total"]["pairs"]);
    assert!(doc["test"]["bound_ratio"].as_f64().unwrap() >= 1.0 - 1e-9, "the optimum of its kind of pool bounds it");
    assert_eq!(doc["test"]["trace"], te);
    let text = stdout(&expertslab(&args));
    assert!(
        text.contains("on the test trace") && text.contains("baselines and references on the test trace"),
        "{text}"
    );
    // A test trace of another shape is refused, naming it.
    let other = temp("tune-other.ndjson");
    let o = other.to_str().unwrap();
    stdout(&expertslab(&["synth", "--out", o, "--experts", "8", "--layers", "3", "--top-k", "2", "--steps", "10"]));
    // The Markov reference stands beside the others only for few experts per layer: not for 16
    // experts over 4 slots, and for 8 (where it is never below the optimum).
    assert!(doc["markov_ratio"].is_null() && doc["test"]["markov_ratio"].is_null(), "{doc}");
    let small: Value =
        serde_json::from_str(&stdout(&expertslab(&["tune", "--trace", o, "--max-slots", "4", "--json"]))).unwrap();
    let time = |name: &str| {
        small["references"].as_array().unwrap().iter().find(|r| r["policy"] == name).unwrap()["total"]["modeled_time_s"]
            .as_f64()
            .unwrap()
    };
    assert!(small["markov_ratio"].as_f64().unwrap() > 0.0, "{small}");
    assert!(time("markov") >= time("optimal") * (1.0 - 1e-9));
    assert!(stdout(&expertslab(&["tune", "--trace", o, "--max-slots", "4"])).contains("× the Markov reference"));
    let refused = expertslab(&["tune", "--trace", tr, "--test", o, "--max-slots", "4"]);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && err.contains("tune-other") && err.contains("8 experts"), "{err}");
    for p in [train, test, other] {
        std::fs::remove_file(p).unwrap();
    }
}

/// The text of every `<text>` element of an SVG document, trimmed.
fn svg_texts(svg: &str) -> Vec<String> {
    svg.split("<text")
        .skip(1)
        .filter_map(|t| Some(t.split_once('>')?.1.split_once("</text>")?.0.trim().to_owned()))
        .collect()
}

/// The (colour, x coordinates) of every polyline of width 2 with more than two points (the
/// series' lines, not the legend's marks).
fn svg_lines(svg: &str) -> Vec<(String, Vec<f64>)> {
    let attribute = |element: &str, name: &str| {
        let rest = element.split_once(&format!(" {name}=\""))?.1;
        Some(rest.split_once('"')?.0.to_owned())
    };
    svg.split("<polyline")
        .skip(1)
        .filter_map(|element| {
            let element = element.split_once("/>")?.0;
            (attribute(element, "stroke-width")? == "2").then_some(())?;
            let xs: Vec<f64> = attribute(element, "points")?
                .split_whitespace()
                .filter_map(|p| p.split_once(',')?.0.parse().ok())
                .collect();
            (xs.len() > 2).then(|| (attribute(element, "stroke").unwrap_or_default(), xs))
        })
        .collect()
}

#[test]
fn the_plot_draws_per_layer_and_shared_runs_of_a_policy_as_separate_series() {
    let trace = synth("plot.ndjson", "40");
    let plot = temp("plot.svg");
    let t = trace.to_str().unwrap();
    let args = ["simulate", "--trace", t, "--policy", "lru,lfu", "--sharing", "per-layer,shared", "--sweep", "2..8:2"];
    stdout(&expertslab(&[&args[..], &["--plot", plot.to_str().unwrap()]].concat()));
    let svg = std::fs::read_to_string(&plot).unwrap();
    // One legend entry per series in each of the two panels, named as the tables name them.
    let mut labels: Vec<String> = svg_texts(&svg).into_iter().filter(|t| t.starts_with('l')).collect();
    labels.sort();
    assert_eq!(labels, ["lfu", "lfu", "lfu/shared", "lfu/shared", "lru", "lru", "lru/shared", "lru/shared"]);
    // Four lines a panel, each its own colour, each going right through the sweep's 4 slot
    // counts (one line for both pools would go back to the start halfway).
    let lines = svg_lines(&svg);
    assert_eq!(lines.len(), 8, "{lines:?}");
    for (colour, xs) in &lines {
        assert_eq!(xs.len(), 4, "{colour}: {xs:?}");
        assert!(xs.windows(2).all(|w| w[0] < w[1]), "{colour} zig-zags: {xs:?}");
    }
    let mut colours: Vec<&str> = lines.iter().map(|(c, _)| c.as_str()).collect();
    colours.sort_unstable();
    colours.dedup();
    assert_eq!(colours.len(), 4, "{colours:?}");
    std::fs::remove_file(plot).unwrap();
    std::fs::remove_file(trace).unwrap();
}

#[test]
fn prompt_heavy_traces_and_the_busiest_first_order() {
    let path = temp("prompts.ndjson");
    let p = path.to_str().unwrap();
    let args = ["synth", "--out", p, "--experts", "16", "--layers", "2", "--top-k", "2", "--steps", "5"];
    stdout(&expertslab(&[&args[..], &["--sequences", "3", "--prefill-tokens", "12"]].concat()));
    let parsed = expertslab_std::trace::Trace::parse(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let prefills: Vec<u64> = parsed.records().iter().filter(|r| r.prefill).map(|r| r.step).collect();
    assert_eq!(prefills, [0, 0, 6, 6, 12, 12], "each of 3 sequences opens with a prefill block");
    let run = |order: &str| -> Value {
        let out = stdout(&expertslab(&[
            "simulate",
            "--trace",
            p,
            "--slots",
            "4",
            "--policy",
            "lru",
            "--miss-order",
            order,
            "--json",
        ]));
        serde_json::from_str::<Value>(&out).unwrap()[0].clone()
    };
    let (routing, busiest) = (run("routing"), run("busiest"));
    assert_eq!((routing["miss_order"].as_str(), busiest["miss_order"].as_str()), (Some("routing"), Some("busiest")));
    let time = |v: &Value| v["total"]["modeled_time_s"].as_f64().unwrap();
    assert!(time(&busiest) < time(&routing), "{busiest} {routing}");
    let table =
        stdout(&expertslab(&["simulate", "--trace", p, "--slots", "4", "--policy", "lru", "--miss-order", "busiest"]));
    assert!(table.contains("lru, busiest first"), "{table}");
    let bad = expertslab(&["simulate", "--trace", p, "--miss-order", "largest"]);
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("'largest' is not a miss order (routing, busiest)"),
        "{bad:?}"
    );
    let zero = expertslab(&[&args[..], &["--sequences", "0"]].concat());
    assert!(!zero.status.success(), "{zero:?}");
    std::fs::remove_file(path).unwrap();
}
