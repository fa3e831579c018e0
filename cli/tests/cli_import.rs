//! `trace import` on the switch-base-8 capture and on hand-made captures, and `--warm-from`, run
//! as a user runs them.
#![cfg(not(miri))] // runs the binary as a process, which Miri cannot spawn

use std::path::{Path, PathBuf};
use std::process::Output;

use expertslab_std::trace::{Trace, TraceHeader};
use serde_json::Value;

mod common;
use common::{expertslab, stdout, temp};

fn failure(o: &Output) -> String {
    assert!(!o.status.success(), "succeeded: {}", String::from_utf8_lossy(&o.stdout));
    String::from_utf8(o.stderr.clone()).unwrap()
}

fn switch_base_8() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/switch-base-8/router-trace.v2.json");
    path.display().to_string()
}

/// Imports the switch-base-8 capture into `name`.
fn import_switch(name: &str) -> PathBuf {
    let out = temp(name);
    let o = expertslab(&[
        "trace",
        "import",
        &switch_base_8(),
        "--selections-key",
        "selections",
        "--out",
        out.to_str().unwrap(),
    ]);
    // The summary goes to stderr, so a trace written to standard output stays a trace.
    assert!(stdout(&o).is_empty(), "{o:?}");
    assert!(String::from_utf8_lossy(&o.stderr).contains("215 tokens in 1 sequence(s), 6 layers × 8 experts, top-1"));
    out
}

#[test]
fn a_trace_imported_to_standard_output_reads_back() {
    let o =
        expertslab(&["trace", "import", &switch_base_8(), "--selections-key", "selections", "--out", "/dev/stdout"]);
    assert!(o.status.success(), "{o:?}");
    let trace = Trace::parse(&String::from_utf8(o.stdout).unwrap()).unwrap();
    assert_eq!(trace.header(), TraceHeader { experts: 8, layers: 6, top_k: 1 });
}

fn simulate(trace: &Path, extra: &[&str]) -> Vec<Value> {
    let args = [&["simulate", "--trace", trace.to_str().unwrap(), "--slots", "2", "--json"][..], extra].concat();
    serde_json::from_str(&stdout(&expertslab(&args))).unwrap()
}

#[test]
fn the_switch_base_8_capture_imports_and_replays() {
    let path = import_switch("switch.ndjson");
    let trace = Trace::parse(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(trace.header(), TraceHeader { experts: 8, layers: 6, top_k: 1 });
    assert_eq!(trace.records().len(), 215 * 6);
    assert_eq!(trace.records().last().map(|r| r.step), Some(214));
    assert!(trace.records().iter().all(|r| r.prefill == (r.step == 0)));
    // The capture's first token, as the document lists it.
    let first: Vec<u32> = trace.records()[..6].iter().map(|r| trace.ids(r)[0]).collect();
    assert_eq!(first, [7, 0, 2, 1, 3, 7]);
    for run in simulate(&path, &[]) {
        assert_eq!(run["total"]["pairs"], 1290, "{run}");
        assert_eq!(run["total"]["invalid_ids"], 0, "{run}");
        assert_eq!(run["layers"].as_array().unwrap().len(), 6);
    }
    std::fs::remove_file(path).unwrap();
}

#[test]
fn warm_from_a_profile_changes_the_start_and_the_default_stays() {
    let path = import_switch("warm.ndjson");
    let default = simulate(&path, &[]);
    let warm = simulate(&path, &["--warm-from", path.to_str().unwrap()]);
    assert_eq!(simulate(&path, &[]), default, "replays are deterministic");
    let promotions = |runs: &[Value], policy: &str| {
        let run = runs.iter().find(|r| r["policy"] == policy).unwrap();
        run["total"]["promotions"].as_u64().unwrap()
    };
    // LRU with 2 of 8 slots: the two hottest experts of each layer are the better start.
    for policy in ["lru", "lfu", "belady"] {
        assert!(promotions(&warm, policy) < promotions(&default, policy), "{policy}");
    }
    // The references start from it too.
    assert_ne!(promotions(&warm, "oracle"), promotions(&default, "oracle"));
    let tune = ["tune", "--trace", path.to_str().unwrap(), "--max-slots", "2", "--intervals", "1", "--json"];
    let tuned: Value =
        serde_json::from_str(&stdout(&expertslab(&[&tune[..], &["--warm-from", path.to_str().unwrap()]].concat())))
            .unwrap();
    let lru = &tuned["vs_lru"]["run"]["total"]["promotions"];
    assert_eq!(lru.as_u64(), Some(promotions(&warm, "lru")));

    let err = failure(&expertslab(&[
        "simulate",
        "--trace",
        path.to_str().unwrap(),
        "--cold",
        "--warm-from",
        path.to_str().unwrap(),
    ]));
    assert!(err.contains("cannot be used with"), "{err}");
    // A profile of another shape.
    let other = temp("other.ndjson");
    std::fs::write(&other, "{\"format\":\"expertslab-trace\",\"version\":1,\"experts\":16,\"layers\":6,\"top_k\":1}\n")
        .unwrap();
    let err =
        failure(&expertslab(&["simulate", "--trace", path.to_str().unwrap(), "--warm-from", other.to_str().unwrap()]));
    assert!(err.contains("the profile has 16 experts per layer, the trace 8"), "{err}");
    std::fs::remove_file(other).unwrap();
    std::fs::remove_file(path).unwrap();
}

#[test]
fn json_lines_import_and_errors_name_the_record() {
    let input = temp("lines.jsonl");
    let out = temp("lines.ndjson");
    let (i, o) = (input.to_str().unwrap(), out.to_str().unwrap());
    std::fs::write(
        &input,
        concat!(
            "{\"problem_id\":3,\"token_idx\":1,\"layer\":0,\"experts\":[2,5]}\n",
            "{\"problem_id\":3,\"token_idx\":0,\"layer\":0,\"experts\":[1,5]}\n",
            "{\"problem_id\":1,\"token_idx\":0,\"layer\":0,\"experts\":[0,1]}\n",
        ),
    )
    .unwrap();
    let keys = ["--layer-key", "layer", "--ids-key", "experts", "--token-key", "token_idx"];
    let import = |extra: &[&str]| expertslab(&[&["trace", "import", i, "--out", o][..], &keys, extra].concat());
    stdout(&import(&["--sequence-key", "problem_id"]));
    let trace = Trace::parse(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(trace.header(), TraceHeader { experts: 6, layers: 1, top_k: 2 });
    let steps: Vec<(u32, u64, bool)> = trace.records().iter().map(|r| (r.layer, r.step, r.prefill)).collect();
    assert_eq!(steps, [(0, 0, true), (0, 1, false), (0, 2, true)]);

    let err = failure(&import(&["--experts", "4"]));
    assert!(err.contains("lines.jsonl: line 1: expert id 5 is not below --experts 4"), "{err}");
    std::fs::write(
        &input,
        "{\"token_idx\":1,\"layer\":0,\"experts\":[2,5]}\n{\"token_idx\":1,\"layer\":0,\"experts\":[2]}\n",
    )
    .unwrap();
    let err = failure(&import(&[]));
    assert!(err.contains("line 2: 1 expert ids, but line 1 has 2"), "{err}");
    // The shape must be named, and the keys of JSON lines given together.
    assert!(failure(&expertslab(&["trace", "import", i, "--out", o])).contains("--layer-key"));
    assert!(failure(&expertslab(&["trace", "import", i, "--out", o, "--layer-key", "layer"])).contains("--ids-key"));
    let both = [&["trace", "import", i, "--out", o, "--selections-key", "s"][..], &keys].concat();
    assert!(failure(&expertslab(&both)).contains("cannot be used with"));
    let missing = failure(&expertslab(&["trace", "import", "/nonexistent.json", "--out", o, "--selections-key", "s"]));
    assert!(missing.contains("/nonexistent.json"), "{missing}");
    std::fs::remove_file(input).unwrap();
    std::fs::remove_file(out).unwrap();
}

/// Runs `trace import` of `text` as JSON lines (`extra` after the keys) and gives its error.
fn import_lines_error(name: &str, text: &str, extra: &[&str]) -> String {
    let (input, out) = (temp(name), temp(&format!("{name}.ndjson")));
    std::fs::write(&input, text).unwrap();
    let keys = ["--layer-key", "layer", "--ids-key", "experts", "--token-key", "token_idx"];
    let args = [&["trace", "import", input.to_str().unwrap(), "--out", out.to_str().unwrap()][..], &keys, extra];
    let err = failure(&expertslab(&args.concat()));
    std::fs::remove_file(input).unwrap();
    assert!(err.starts_with("error: ") && err.lines().count() == 1, "{err}");
    err
}

#[test]
fn records_that_json_readers_would_take_silently_are_refused_by_line() {
    let good = "{\"token_idx\":0,\"layer\":0,\"experts\":[1,2]}\n";
    for (line, extra, expected) in [
        // A key given twice: readers differ on which value wins.
        ("{\"token_idx\":1,\"layer\":0,\"layer\":1,\"experts\":[1,2]}", &[][..], "line 2: \"layer\" is given twice"),
        ("{\"token_idx\":1,\"layer\":0,\"experts\":[3,3]}", &[], "line 2: expert id 3 is given twice"),
        (
            "{\"token_idx\":1,\"layer\":0,\"experts\":[0,1,2,0]}",
            &["--experts", "3"],
            "line 2: 4 expert ids, more than the 3 experts of --experts",
        ),
        // Token 1 has layer 1 only, token 0 layer 0 only.
        (
            "{\"token_idx\":1,\"layer\":1,\"experts\":[1,2]}",
            &[],
            "line 1 (token 0, layer 0): its token has no layer 1, which other tokens have",
        ),
        (
            "{\"token_idx\":18446744073709551616,\"layer\":0,\"experts\":[1,2]}",
            &[],
            "line 2: \"token_idx\" is past 2^64 - 1",
        ),
        (
            "{\"token_idx\":1.0,\"layer\":0,\"experts\":[1,2]}",
            &[],
            "line 2: \"token_idx\" is not written as an integer",
        ),
        (
            "{\"token_idx\":1,\"layer\":0,\"experts\":[1,4294967296]}",
            &[],
            "line 2: expert id 4294967296 is past 2^32 - 1",
        ),
    ] {
        let err = import_lines_error("refused.jsonl", &format!("{good}{line}\n"), extra);
        assert!(err.contains(&format!("refused.jsonl: {expected}")), "{line}: {err}");
    }
}

#[test]
fn a_byte_order_mark_is_skipped_and_json_lines_under_selections_key_are_named() {
    let (input, out) = (temp("bom.jsonl"), temp("bom.ndjson"));
    let (i, o) = (input.to_str().unwrap(), out.to_str().unwrap());
    let text =
        "\u{feff}{\"token_idx\":0,\"layer\":0,\"experts\":[1,2]}\n{\"token_idx\":1,\"layer\":0,\"experts\":[2,3]}\n";
    std::fs::write(&input, text).unwrap();
    let keys = ["--layer-key", "layer", "--ids-key", "experts", "--token-key", "token_idx"];
    stdout(&expertslab(&[&["trace", "import", i, "--out", o][..], &keys].concat()));
    assert_eq!(Trace::parse(&std::fs::read_to_string(&out).unwrap()).unwrap().records().len(), 2);
    // The same JSON lines read as one document.
    let err = failure(&expertslab(&["trace", "import", i, "--out", o, "--selections-key", "selections"]));
    assert!(err.contains("more JSON after the document, at line 2 (--selections-key reads one JSON document"), "{err}");
    assert!(err.contains("give --layer-key, --ids-key and --token-key"), "{err}");
    // A selections document may start with one too.
    std::fs::write(&input, "\u{feff}{\"selections\":[[[1],[0]]]}").unwrap();
    stdout(&expertslab(&["trace", "import", i, "--out", o, "--selections-key", "selections"]));
    std::fs::remove_file(input).unwrap();
    std::fs::remove_file(out).unwrap();
}

#[test]
fn on_the_switch_capture_a_staging_slot_lets_lfu_s_guesses_in() {
    let path = import_switch("staging.ndjson");
    let time = |extra: &[&str]| -> f64 {
        let p = path.to_str().unwrap();
        let base = ["simulate", "--trace", p, "--slots", "4", "--policy", "lfu", "--layer-compute-us", "525", "--json"];
        let runs: Vec<Value> = serde_json::from_str(&stdout(&expertslab(&[&base[..], extra].concat()))).unwrap();
        runs[0]["total"]["modeled_time_s"].as_f64().unwrap()
    };
    let (none, outranked) = (time(&[]), time(&["--prefetch", "transitions"]));
    let staged = time(&["--prefetch", "transitions", "--staging-slots", "2"]);
    // BENCHMARKS.md: 121.4 ms without prefetch, 108.0 ms when a guess must outrank a resident,
    // 90.4 ms with two of the four slots held for guesses.
    assert!(staged < 0.8 * none && staged < outranked, "{none} {outranked} {staged}");
    let err = failure(&expertslab(&["simulate", "--trace", path.to_str().unwrap(), "--staging-slots", "1"]));
    assert!(err.contains("--prefetch"), "{err}");
    // tune tries 0, 1 and 2 staging slots for the policies that prefetch, and none for the others.
    let p = path.to_str().unwrap();
    let tune = ["tune", "--trace", p, "--max-slots", "4", "--prefetch", "transitions", "--layer-compute-us", "525"];
    let tuned: Value = serde_json::from_str(&stdout(&expertslab(&[&tune[..], &["--json"]].concat()))).unwrap();
    let runs = tuned["candidate_runs"].as_array().unwrap();
    let stagings = |policy: &str| -> Vec<u64> {
        let mut s: Vec<u64> =
            runs.iter().filter(|r| r["policy"] == policy).map(|r| r["staging"].as_u64().unwrap()).collect();
        s.sort_unstable();
        s.dedup();
        s
    };
    assert_eq!((stagings("lfu"), stagings("lru2"), stagings("tide")), (vec![0, 1, 2], vec![0], vec![0]));
    assert!(tuned["best"]["total"]["modeled_time_s"].as_f64().unwrap() <= staged + 1e-12);
    std::fs::remove_file(path).unwrap();
}
