//! Writes the golden vectors as C source (declared in tests/cfirmware/golden.h) for the C firmware (tests/cfirmware): the routing
//! scenario's layers, steps and ids, the words the replay folds into the digest (see
//! [`expertslab_golden::replay_observing`]) and the digest after each step, the layout cases and
//! the expert blob. The vectors are parsed and replayed here, by this crate, so the C side parses
//! nothing and computes no digest: it computes the same words through the C interface and
//! compares them.
//!
//! Usage: `c-vectors OUT.c`.

use std::fmt::Write as _;

use expertslab::{InitialPlacement, Mode, Schedule};
use expertslab_golden::{
    parse_layouts, parse_scenario, replay_observing, BLOB_COLS, BLOB_EXPERTS, BLOB_ROWS, EXPERT_BLOB, LAYOUT_VECTORS,
    ROUTING_VECTORS,
};

fn schedule(schedule: Schedule) -> (&'static str, u32) {
    match schedule {
        Schedule::EveryDecodeSteps(n) => ("ES_SCHEDULE_KIND_EVERY_DECODE_STEPS", n.get()),
        Schedule::EveryDenoiseSteps(n) => ("ES_SCHEDULE_KIND_EVERY_DENOISE_STEPS", n.get()),
        _ => ("ES_SCHEDULE_KIND_EVERY_FORWARD", 1),
    }
}

fn mode(mode: Mode) -> &'static str {
    match mode {
        Mode::Scheduled => "ES_MODE_SCHEDULED",
        Mode::Reuse => "ES_MODE_REUSE",
        Mode::Refresh => "ES_MODE_REFRESH",
    }
}

/// `values` as a comma-separated list, eight to a line.
fn list<T: std::fmt::Display>(out: &mut String, values: impl IntoIterator<Item = T>) -> std::fmt::Result {
    for (i, value) in values.into_iter().enumerate() {
        let sep = if i % 8 == 0 { "\n   " } else { "" };
        write!(out, "{sep} {value},")?;
    }
    writeln!(out)
}

fn header() -> Result<String, String> {
    let scenario = parse_scenario(ROUTING_VECTORS).map_err(|e| format!("routing.txt: {e}"))?;
    let mut words = Vec::new();
    let replayed = replay_observing(&scenario, |w| words.push(w)).map_err(|e| format!("routing.txt: {e}"))?;
    let layouts = parse_layouts(LAYOUT_VECTORS).map_err(|e| format!("layout.txt: {e}"))?;
    let mut out = String::new();
    let w = &mut out;
    (|| -> std::fmt::Result {
        writeln!(
            w,
            "/* Generated from tests/vectors by `cargo run -p expertslab-golden --bin c-vectors`: do not edit. */"
        )?;
        writeln!(w, "#include \"golden.h\"\n")?;
        writeln!(w, "const struct golden_layer golden_layers[] = {{")?;
        for layer in &scenario.layers {
            let (kind, interval) = schedule(layer.schedule);
            let initial = if layer.initial == InitialPlacement::Cold { "COLD" } else { "WARM" };
            writeln!(
                w,
                "    {{{}, {}, {kind}, {interval}, ES_INITIAL_PLACEMENT_{initial}}},",
                layer.experts, layer.slots
            )?;
        }
        writeln!(w, "}};\nconst size_t golden_layer_count = {};\n", scenario.layers.len())?;
        let mut ids = Vec::new();
        writeln!(w, "const struct golden_step golden_steps[] = {{")?;
        for (step, digest) in scenario.steps.iter().zip(&replayed.digests) {
            let (prefill, mode) = (step.step.prefill, mode(step.step.mode));
            write!(w, "    {{{}, {prefill}, {mode}, {{", step.step.index)?;
            for layer in &step.ids {
                write!(w, "{{{}, {}}}, ", ids.len(), layer.len())?;
                ids.extend_from_slice(layer);
            }
            writeln!(w, "}}, 0x{digest:016x}ull}},")?;
        }
        writeln!(w, "}};\nconst size_t golden_step_count = {};\n", scenario.steps.len())?;
        write!(w, "const uint32_t golden_ids[] = {{")?;
        list(w, &ids)?;
        writeln!(w, "}};\n")?;
        write!(w, "const uint32_t golden_words[] = {{")?;
        list(w, words.iter().map(|v| format!("0x{v:x}u")))?;
        writeln!(w, "}};\nconst size_t golden_word_count = {};\n", words.len())?;
        writeln!(w, "const struct golden_layout golden_layouts[] = {{")?;
        for (line, case) in &layouts {
            let [experts, rows, cols] = case.dims;
            let (ok, [row, expert, total]) = case.bytes.map_or((false, [0; 3]), |b| (true, b));
            writeln!(
                w,
                "    {{{line}, \"{}\", {experts}, {rows}, {cols}, {ok}, {row}u, {expert}u, {total}ull}},",
                case.format.name()
            )?;
        }
        writeln!(w, "}};\nconst size_t golden_layout_count = {};\n", layouts.len())?;
        write!(w, "const uint8_t golden_experts[] __attribute__((aligned(16))) = {{")?;
        list(w, EXPERT_BLOB.0.iter())?;
        writeln!(w, "}};\nconst size_t golden_experts_len = sizeof golden_experts;")?;
        writeln!(w, "const size_t golden_blob_dims[3] = {{{BLOB_EXPERTS}, {BLOB_ROWS}, {BLOB_COLS}}};")
    })()
    .map_err(|e| e.to_string())?;
    Ok(out)
}

fn main() {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: c-vectors OUT.c");
        std::process::exit(2);
    };
    match header().and_then(|text| std::fs::write(&path, text).map_err(|e| format!("{path}: {e}"))) {
        Ok(()) => {}
        Err(e) => {
            eprintln!("c-vectors: {e}");
            std::process::exit(1);
        }
    }
}
