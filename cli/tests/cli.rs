//! The `expertslab` binary against the GGUF fixtures of `tests/fixtures/gguf/` and their
//! manifest (what ggml-org's writer put where, with the SHA-256 of every expert slab).
#![cfg(not(miri))] // runs the binary as a process, which Miri cannot spawn

use std::path::{Path, PathBuf};

use serde_json::Value;

mod common;
use common::expertslab;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/gguf")
}

fn fixture(name: &str) -> String {
    fixtures().join(name).display().to_string()
}

fn manifest() -> Value {
    let text = std::fs::read_to_string(fixtures().join("manifest.json")).expect("manifest");
    serde_json::from_str(&text).expect("manifest is JSON")
}

/// Runs a command that must succeed and returns its stdout.
fn stdout_of(args: &[&str]) -> String {
    let out = expertslab(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{args:?} failed: {stderr}");
    assert!(stderr.is_empty(), "{args:?} wrote to stderr: {stderr}");
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

fn json_of(args: &[&str]) -> Value {
    serde_json::from_str(&stdout_of(args)).expect("one JSON document")
}

/// Runs a command that must fail with `code` and returns its stderr.
fn failure(args: &[&str], code: i32) -> String {
    let out = expertslab(args);
    assert_eq!(out.status.code(), Some(code), "{args:?}");
    assert!(out.stdout.is_empty(), "{args:?} wrote to stdout");
    String::from_utf8(out.stderr).expect("UTF-8 errors")
}

fn u64_of(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("{v} is not an unsigned integer"))
}

#[test]
fn inspect_lists_the_moe_layers() {
    let text = stdout_of(&["inspect", &fixture("moe_types.gguf")]);
    assert!(text.contains("GGUF v3, architecture qwen2moe"), "{text}");
    assert!(text.contains("3 MoE layers; expert_count 8, expert_used_count 2"), "{text}");
    let rows: Vec<String> = text.lines().map(|l| l.split_whitespace().collect::<Vec<_>>().join(" ")).collect();
    for row in [
        "1 gate f32 [256, 4, 8] stacked 4096 32768",
        "2 up q4_0 [256, 4, 8] stacked 576 4608",
        "3 up q6_K [256, 4, 8] stacked 840 6720",
        "3 all (8 experts) 3464 27712",
    ] {
        assert!(rows.iter().any(|r| r == row), "no row '{row}' in\n{text}");
    }
    assert!(!text.lines().any(|l| l.trim_start().starts_with("0 ")), "block 0 is dense:\n{text}");

    let legacy = stdout_of(&["inspect", &fixture("moe_legacy.gguf")]);
    assert!(legacy.contains("2 MoE layers"), "{legacy}");
    assert_eq!(legacy.matches("4 tensors").count(), 6, "{legacy}");

    let fused = stdout_of(&["inspect", &fixture("moe_fused.gguf")]);
    assert!(fused.contains("gate_up"), "{fused}");
}

#[test]
fn inspect_json_with_hashes_matches_the_manifest() {
    let manifest = manifest();
    let files = manifest["files"].as_object().expect("files");
    assert_eq!(files.len(), 4);
    for (name, expected) in files {
        let doc = json_of(&["inspect", "--json", "--hashes", &fixture(name)]);
        for key in ["version", "alignment", "data_start", "architecture", "expert_count", "expert_used_count"] {
            assert_eq!(doc[key], expected[key], "{name}: {key}");
        }
        let tensors = expected["tensors"].as_array().expect("tensors");
        let experts = expected["experts"].as_array().expect("experts");
        let entries = doc["expert_tensors"].as_array().expect("expert_tensors");
        assert_eq!(entries.len(), experts.len(), "{name}: one entry per expert tensor");
        for want in experts {
            let tname = want["tensor"].as_str().expect("tensor name");
            let got = entries.iter().find(|e| e["name"] == tname).unwrap_or_else(|| panic!("{name}: no {tname}"));
            let info = tensors.iter().find(|t| t["name"] == tname).expect("tensor in the manifest");
            for (key, value) in [
                ("type", &info["type"]),
                ("ne", &info["ne"]),
                ("offset", &info["offset"]),
                ("nbytes", &info["nbytes"]),
                ("block", &want["block"]),
                ("projection", &want["projection"]),
                ("expert_stride", &want["expert_stride"]),
            ] {
                assert_eq!(&got[key], value, "{name} {tname}: {key}");
            }
            let slabs = want["slabs"].as_array().expect("slabs");
            let hashes = got["sha256"].as_array().expect("sha256 array");
            assert_eq!(hashes.len(), slabs.len(), "{name} {tname}");
            assert_eq!(got["experts"].as_u64(), Some(slabs.len() as u64), "{name} {tname}");
            for (i, (slab, hash)) in slabs.iter().zip(hashes).enumerate() {
                let expert = u64_of(&slab["expert"]);
                assert_eq!(expert, u64_of(&got["first_expert"]) + i as u64, "{name} {tname}");
                let offset = u64_of(&got["offset"]) + i as u64 * u64_of(&got["expert_stride"]);
                assert_eq!(offset, u64_of(&slab["offset"]), "{name} {tname} expert {expert}");
                assert_eq!(got["expert_stride"], slab["nbytes"], "{name} {tname} expert {expert}");
                assert_eq!(hash, &slab["sha256"], "{name} {tname} expert {expert}");
            }
        }
    }
}

#[test]
fn inspect_json_without_hashes_has_no_sha256() {
    let doc = json_of(&["inspect", "--json", &fixture("moe_fused.gguf")]);
    let entries = doc["expert_tensors"].as_array().expect("expert_tensors");
    assert_eq!(entries.len(), 4);
    assert!(entries.iter().all(|e| e.get("sha256").is_none()));
    let layers = doc["layers"].as_array().expect("layers");
    assert_eq!(layers.len(), 2);
    // Block 0: gate_up 8192 + down 2176 bytes per expert, 8 experts.
    assert_eq!(layers[0]["expert_bytes"], 8192 + 2176);
    assert_eq!(layers[0]["stack_bytes"], 8 * (8192 + 2176));
}

fn align_up(value: u64, align: u64) -> u64 {
    value.div_ceil(align) * align
}

/// The slot size of each MoE block of a fixture, from the manifest's bytes per expert: each
/// projection at an aligned offset, the slot rounded up to the alignment.
fn manifest_slots(file: &str, align: u64) -> Vec<(u64, u64)> {
    let manifest = manifest();
    let mut slots: Vec<(u64, u64)> = Vec::new();
    let mut seen = Vec::new();
    for e in manifest["files"][file]["experts"].as_array().expect("experts") {
        let (block, stride) = (u64_of(&e["block"]), u64_of(&e["expert_stride"]));
        // Files with one tensor per expert list each projection once per expert.
        if seen.contains(&(block, e["projection"].clone())) {
            continue;
        }
        seen.push((block, e["projection"].clone()));
        match slots.last_mut() {
            Some((b, end)) if *b == block => *end = align_up(*end, align) + stride,
            _ => slots.push((block, stride)),
        }
    }
    slots.into_iter().map(|(block, end)| (block, align_up(end, align))).collect()
}

fn layer_column(fit: &Value, key: &str) -> Vec<u64> {
    fit["layers"].as_array().expect("layers").iter().map(|l| u64_of(&l[key])).collect()
}

#[test]
fn fit_follows_the_budget_formulas() {
    // moe_align64: block 0 is q4_K gate and up (4608 bytes per expert each) and q8_0 down (8704),
    // block 1 is q4_0 gate, up and down (4608 each); 4 experts.
    let slots = manifest_slots("moe_align64.gguf", 64);
    assert_eq!(slots, [(0, 4608 + 4608 + 8704), (1, 3 * 4608)]);
    let fit = json_of(&["fit", &fixture("moe_align64.gguf"), "--memory", "100000", "--reserve", "10000", "--json"]);
    assert_eq!(layer_column(&fit, "slot_bytes"), [17920, 13824]);
    assert_eq!(fit["largest_slot_bytes"], 17920);
    assert_eq!(fit["budget"], 90_000);
    // Equal split: ⌊90000 / (2 layers × 17920)⌋ = 2 slots each.
    assert_eq!(layer_column(&fit, "equal_slots"), [2, 2]);
    assert_eq!(layer_column(&fit, "equal_bytes"), [2 * 17920, 2 * 13824]);
    assert_eq!(fit["equal_bytes"], 2 * 17920 + 2 * 13824);
    // Shared budget, one slot per layer per round: 31744 after round 1, 63488 after round 2,
    // then 81408 with block 0's third slot; block 1's third (95232) no longer fits.
    assert_eq!(layer_column(&fit, "shared_slots"), [3, 2]);
    assert_eq!(fit["shared_bytes"], 81_408);

    // The same with sizes in units, and a larger alignment, against the manifest's sizes.
    let fit = json_of(&[
        "fit",
        &fixture("moe_types.gguf"),
        "--memory",
        "1.1MB",
        "--reserve",
        "1MiB",
        "--align",
        "256",
        "--json",
    ]);
    let slots = manifest_slots("moe_types.gguf", 256);
    let largest = slots.iter().map(|s| s.1).max().unwrap();
    let budget = 1_100_000 - (1 << 20);
    assert_eq!(fit["budget"], budget);
    assert_eq!(layer_column(&fit, "slot_bytes"), slots.iter().map(|s| s.1).collect::<Vec<_>>());
    let equal = (budget / (3 * largest)).min(8);
    assert_eq!(equal, 2);
    assert_eq!(layer_column(&fit, "equal_slots"), [equal; 3]);
}

#[test]
fn fit_clamps_the_equal_split_to_the_expert_count() {
    let fit = json_of(&["fit", &fixture("moe_legacy.gguf"), "--memory", "8GiB", "--reserve", "1GiB", "--json"]);
    assert_eq!(layer_column(&fit, "experts"), [4, 4]);
    assert_eq!(layer_column(&fit, "equal_slots"), [4, 4]);
    assert_eq!(layer_column(&fit, "shared_slots"), [4, 4]);
    let stacks: u64 = manifest_slots("moe_legacy.gguf", 64).iter().map(|s| 4 * s.1).sum();
    assert_eq!(fit["equal_bytes"], stacks);
}

#[test]
fn fit_with_a_reserve_larger_than_the_memory_gives_no_slots() {
    let fit = json_of(&["fit", &fixture("moe_types.gguf"), "--memory", "1GiB", "--reserve", "2GiB", "--json"]);
    assert_eq!(fit["budget"], 0);
    assert_eq!(layer_column(&fit, "equal_slots"), [0, 0, 0]);
    assert_eq!(layer_column(&fit, "shared_slots"), [0, 0, 0]);
    assert_eq!(fit["equal_bytes"], 0);
}

#[test]
fn fit_prints_a_table_of_every_layer() {
    let text = stdout_of(&["fit", &fixture("moe_fused.gguf"), "--memory", "64KiB"]);
    assert!(text.contains("2 MoE layers; memory 64 KiB, reserve 0 B"), "{text}");
    let rows: Vec<Vec<&str>> = text.lines().map(|l| l.split_whitespace().collect()).collect();
    // Block 0: 8192 + 2176 = 10368 per slot, the largest; ⌊65536 / (2 × 10368)⌋ = 3.
    assert!(
        rows.iter().any(|r| r.first() == Some(&"0") && r.get(2) == Some(&"10368") && r.get(3) == Some(&"3")),
        "{text}"
    );
    assert!(rows.iter().any(|r| r.first() == Some(&"total")), "{text}");
}

#[test]
fn plan_is_the_earlier_name_of_fit() {
    let file = fixture("moe_align64.gguf");
    let args = [file.as_str(), "--memory", "100000", "--reserve", "10000"];
    for json in [&[][..], &["--json"]] {
        let fit = stdout_of(&[&["fit"][..], &args, json].concat());
        assert_eq!(stdout_of(&[&["plan"][..], &args, json].concat()), fit);
    }
}

#[test]
fn a_missing_file_is_an_error_naming_the_path() {
    let path = fixtures().join("no_such_model.gguf").display().to_string();
    for args in [vec!["inspect", &path], vec!["fit", &path, "--memory", "1GiB"]] {
        let stderr = failure(&args, 1);
        assert!(stderr.starts_with("error: "), "{stderr}");
        assert!(stderr.contains(&path), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
    }
}

#[test]
fn a_file_that_is_not_gguf_is_an_error() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml").display().to_string();
    let stderr = failure(&["inspect", &path], 1);
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(stderr.contains(&path) && stderr.contains("GGUF") && stderr.contains("magic"), "{stderr}");
    let stderr = failure(&["fit", &path, "--memory", "1GiB"], 1);
    assert!(stderr.contains("not a GGUF file"), "{stderr}");
}

#[test]
fn a_file_without_moe_layers_cannot_be_fitted() {
    // The smallest GGUF: magic, version 3, no tensors, no metadata.
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cli_no_moe.gguf");
    let bytes: Vec<u8> = [&b"GGUF"[..], &3u32.to_le_bytes(), &0u64.to_le_bytes(), &0u64.to_le_bytes()].concat();
    std::fs::write(&path, bytes).expect("temporary file");
    let path = path.display().to_string();
    assert!(stdout_of(&["inspect", &path]).contains("0 MoE layers"));
    let stderr = failure(&["fit", &path, "--memory", "1GiB"], 1);
    assert!(stderr.contains("no MoE layers") && stderr.contains(&path), "{stderr}");
}

#[test]
fn bad_arguments_are_rejected() {
    let file = fixture("moe_types.gguf");
    for (args, needle) in [
        (vec!["fit", &file, "--memory", "8XB"], "8XB"),
        (vec!["fit", &file, "--memory", "-1GiB"], "--memory"),
        (vec!["fit", &file, "--memory", "1GiB", "--reserve", "lots"], "lots"),
        (vec!["fit", &file, "--memory", "1GiB", "--align", "48"], "power of two"),
        (vec!["fit", &file], "--memory"),
        (vec!["inspect", &file, "--hashes"], "--json"),
        (vec!["inspect"], "<FILE>"),
        (vec!["frobnicate"], "frobnicate"),
    ] {
        let stderr = failure(&args, 2);
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
}

#[test]
fn a_model_that_is_not_a_regular_file_says_so() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).display().to_string();
    let empty = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cli_empty.gguf");
    std::fs::write(&empty, b"").expect("temporary file");
    let empty = empty.display().to_string();
    let mut cases = vec![(dir, "not a regular file but a directory"), (empty, "the file is empty")];
    if cfg!(unix) {
        cases.push(("/dev/null".into(), "not a regular file but a character device"));
    }
    if Path::new("/proc/self/status").exists() {
        cases.push(("/proc/self/status".into(), "the file is empty"));
    }
    // A pipe, named so that opening it would wait for a writer: looked at before it is opened.
    let fifo = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("cli_fifo_{}.gguf", std::process::id()));
    let made = std::process::Command::new("mkfifo").arg(&fifo).status().is_ok_and(|s| s.success());
    if made {
        cases.push((fifo.display().to_string(), "not a regular file but a pipe"));
    }
    for (path, expected) in &cases {
        for args in [vec!["inspect", path], vec!["fit", path, "--memory", "1GiB"]] {
            let stderr = failure(&args, 1);
            assert!(stderr.starts_with(&format!("error: {path}: {expected}")), "{args:?}: {stderr}");
            assert!(!stderr.contains("os error"), "{stderr}");
            assert_eq!(stderr.lines().count(), 1, "{stderr}");
        }
    }
    if made {
        std::fs::remove_file(fifo).expect("the pipe is removed");
    }
}

#[test]
fn an_alignment_too_large_for_the_slots_names_align() {
    let file = fixture("moe_types.gguf");
    for align in ["9223372036854775808", "4611686018427387904"] {
        let stderr = failure(&["fit", &file, "--memory", "1GiB", "--align", align], 1);
        assert_eq!(
            stderr,
            format!("error: --align {align}: slots aligned to it are too large to count in bytes (size arithmetic overflows)\n")
        );
    }
    let stderr = failure(&["fit", &file, "--memory", "1GiB", "--align", "18446744073709551616"], 2);
    assert!(stderr.contains("--align") && stderr.contains("larger than the largest alignment"), "{stderr}");
}
