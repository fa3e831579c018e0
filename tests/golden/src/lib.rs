//! Golden vectors shared by the host tests and the Cortex-M4 firmware.
//!
//! The files in `tests/vectors/` are the single source of truth: the host test
//! (`tests/golden_vectors.rs`) and the QEMU firmware (`tests/qemu`) both read them through this
//! crate, compute the same quantities with the core, and must agree with the values they hold.
//!
//! - `layout.txt`: stack layouts of every format (and layouts that must fail) with their byte
//!   counts.
//! - `routing.txt`: pool configurations for several layers, a routing trace, and the digest of
//!   what the pools did after every step (refreshes, plans, slot tables, hits).
//! - `demand.txt`: the same format over demand policies (needs the core's `demand` feature).
//! - `experts.bin`: the slabs of one layer (gate, up and down `F32` stacks), for migration.
//!
//! `no_std` + `alloc`, so it runs unchanged on the device. The C firmware (`tests/cfirmware`)
//! gets the vectors as C from this crate's `c-vectors` bin, with the words
//! [`replay_observing`] folds into the digest.

#![no_std]
#![forbid(unsafe_code)]
#![deny(missing_docs)]

extern crate alloc;

use alloc::vec::Vec;
use core::fmt;
use core::num::NonZeroU32;

use expertslab::{
    ExpertLayout, ExpertPool, Format, InitialPlacement, LayerPools, LayoutError, MigrationPlan, Mode, Policy,
    PoolConfig, Schedule, StackLayout, Step,
};

/// `tests/vectors/layout.txt`.
pub const LAYOUT_VECTORS: &str = include_str!("../../vectors/layout.txt");
/// `tests/vectors/routing.txt`.
pub const ROUTING_VECTORS: &str = include_str!("../../vectors/routing.txt");

/// `demand.txt`: the `routing.txt` format over demand policies (LRU, LFU, LRU-2, tinylfu), with
/// the case that pins before it admits (3 experts, 2 slots warm, steps `[0, 1]` then `[2, 0]`:
/// one promotion). Replaying it needs the core's `demand` feature.
pub const DEMAND_VECTORS: &str = include_str!("../../vectors/demand.txt");

/// Bytes with a guaranteed alignment, for weights embedded with `include_bytes!`.
#[repr(C, align(16))]
pub struct Aligned<B: ?Sized>(pub B);

/// `tests/vectors/experts.bin`, 16-byte aligned (in flash on the device).
pub static EXPERT_BLOB: &Aligned<[u8]> = &Aligned(*include_bytes!("../../vectors/experts.bin"));

/// Experts in [`EXPERT_BLOB`].
pub const BLOB_EXPERTS: usize = 8;
/// Rows of each expert matrix in [`EXPERT_BLOB`].
pub const BLOB_ROWS: usize = 2;
/// Columns of each expert matrix in [`EXPERT_BLOB`].
pub const BLOB_COLS: usize = 8;

/// The layout of [`EXPERT_BLOB`]: gate, up and down `F32` stacks of the same shape, stored one
/// after the other.
///
/// # Errors
/// Never for these constants; the `Result` carries the core's checks.
pub fn blob_layout() -> Result<ExpertLayout, LayoutError> {
    let stack = StackLayout::new(Format::F32, BLOB_EXPERTS, BLOB_ROWS, BLOB_COLS)?;
    ExpertLayout::gate_up_down(stack, stack, stack)
}

/// The three stacks of `blob`, split as [`blob_layout`] says.
///
/// # Errors
/// [`LayoutError::LengthMismatch`] when `blob` is not exactly three stacks long.
pub fn blob_stacks(blob: &[u8]) -> Result<[&[u8]; 3], LayoutError> {
    let layout = blob_layout()?;
    let total: usize = layout.projections().iter().map(|(_, s)| s.total_bytes()).sum();
    if blob.len() != total {
        return Err(LayoutError::LengthMismatch { expected: total, actual: blob.len() });
    }
    let third = total / 3;
    Ok([&blob[..third], &blob[third..2 * third], &blob[2 * third..]])
}

/// A vector file that does not parse, or a computed value that differs from the file's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VectorError {
    /// Line `line` (1-based) is malformed.
    Parse {
        /// The line number.
        line: usize,
    },
    /// Line `line` expected one value and the core computed another.
    Mismatch {
        /// The line number.
        line: usize,
        /// What the file says.
        expected: u64,
        /// What the core computed.
        actual: u64,
    },
}

impl fmt::Display for VectorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Parse { line } => write!(f, "line {line}: malformed"),
            Self::Mismatch { line, expected, actual } => {
                write!(f, "line {line}: expected {expected:#x}, computed {actual:#x}")
            }
        }
    }
}

fn words(line: &str) -> core::str::SplitAsciiWhitespace<'_> {
    line.split_ascii_whitespace()
}

fn number<T: core::str::FromStr>(word: Option<&str>, line: usize) -> Result<T, VectorError> {
    word.and_then(|w| w.parse().ok()).ok_or(VectorError::Parse { line })
}

fn hex(word: Option<&str>, line: usize) -> Result<u64, VectorError> {
    word.and_then(|w| u64::from_str_radix(w.trim_start_matches("0x"), 16).ok()).ok_or(VectorError::Parse { line })
}

fn check(line: usize, expected: u64, actual: u64) -> Result<(), VectorError> {
    if expected == actual {
        Ok(())
    } else {
        Err(VectorError::Mismatch { line, expected, actual })
    }
}

/// Numbered content lines of a vector file: comments (`#`) and blank lines skipped.
fn content(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines().enumerate().map(|(i, l)| (i + 1, l.trim())).filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
}

/// One layout line: `layout FORMAT EXPERTS ROWS COLS ROW_BYTES EXPERT_BYTES TOTAL_BYTES`, or
/// `error FORMAT EXPERTS ROWS COLS` for a layout that must be refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayoutCase {
    /// The format.
    pub format: Format,
    /// Experts, rows, cols.
    pub dims: [usize; 3],
    /// Row, expert and total bytes; `None` when the layout must be refused.
    pub bytes: Option<[usize; 3]>,
}

impl LayoutCase {
    /// The core's answer for this case: byte counts, or `None` when it refuses the layout.
    pub fn compute(&self) -> Option<[usize; 3]> {
        let [experts, rows, cols] = self.dims;
        StackLayout::new(self.format, experts, rows, cols)
            .ok()
            .map(|s| [s.row_bytes(), s.expert_bytes(), s.total_bytes()])
    }

    /// The line this case is written as.
    pub fn write(&self, out: &mut impl fmt::Write) -> fmt::Result {
        let [e, r, c] = self.dims;
        match self.bytes {
            Some([rb, eb, tb]) => writeln!(out, "layout {} {e} {r} {c} {rb} {eb} {tb}", self.format.name()),
            None => writeln!(out, "error {} {e} {r} {c}", self.format.name()),
        }
    }
}

/// Parses `layout.txt`.
///
/// # Errors
/// [`VectorError::Parse`] for a malformed line.
pub fn parse_layouts(text: &str) -> Result<Vec<(usize, LayoutCase)>, VectorError> {
    let mut cases = Vec::new();
    for (line, l) in content(text) {
        let mut w = words(l);
        let kind = w.next();
        let format = w.next().and_then(Format::from_name).ok_or(VectorError::Parse { line })?;
        let dims = [number(w.next(), line)?, number(w.next(), line)?, number(w.next(), line)?];
        let bytes = match kind {
            Some("layout") => Some([number(w.next(), line)?, number(w.next(), line)?, number(w.next(), line)?]),
            Some("error") => None,
            _ => return Err(VectorError::Parse { line }),
        };
        cases.push((line, LayoutCase { format, dims, bytes }));
    }
    Ok(cases)
}

/// Checks every case of `layout.txt` against the core; returns the number of cases.
///
/// # Errors
/// The first malformed line or mismatch (a refused layout counts as `u64::MAX`).
pub fn check_layouts(text: &str) -> Result<usize, VectorError> {
    let cases = parse_layouts(text)?;
    for (line, case) in &cases {
        let flat = |b: Option<[usize; 3]>| b.map_or([u64::MAX; 3], |b| b.map(|v| v as u64));
        for (expected, actual) in flat(case.bytes).into_iter().zip(flat(case.compute())) {
            check(*line, expected, actual)?;
        }
    }
    Ok(cases.len())
}

/// One layer's pool in a [`Scenario`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LayerSpec {
    /// Experts of the layer.
    pub experts: usize,
    /// Slots asked for.
    pub slots: usize,
    /// Refresh schedule.
    pub schedule: Schedule,
    /// Initial placement.
    pub initial: InitialPlacement,
    /// The placement policy (by name in the file; TIDE when the line names none).
    pub policy: Policy,
}

impl LayerSpec {
    /// The pool configuration.
    pub fn config(&self) -> PoolConfig {
        PoolConfig::new(self.experts, self.slots).schedule(self.schedule).initial(self.initial).policy(self.policy)
    }
}

/// A routing scenario: one pool configuration per layer and a trace of steps.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    /// Each layer's pool.
    pub layers: Vec<LayerSpec>,
    /// The steps, in order.
    pub steps: Vec<ScenarioStep>,
}

/// One step of a [`Scenario`]: the step and each layer's routing ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScenarioStep {
    /// The step.
    pub step: Step,
    /// Routing ids of each layer (token-major).
    pub ids: Vec<Vec<u32>>,
    /// The expected digest after this step, and its line in the file.
    pub expected: Option<(usize, u64)>,
}

/// 64-bit FNV-1a over 32-bit words: small, portable, and the same on every target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Digest(pub u64);

impl Default for Digest {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Digest {
    /// Mixes `word` in.
    pub fn word(&mut self, word: u32) {
        for byte in word.to_le_bytes() {
            self.0 = (self.0 ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

fn schedule_name(schedule: Schedule) -> (&'static str, u32) {
    match schedule {
        Schedule::EveryDecodeSteps(n) => ("decode", n.get()),
        Schedule::EveryDenoiseSteps(n) => ("denoise", n.get()),
        _ => ("every", 1),
    }
}

fn parse_layer(mut w: core::str::SplitAsciiWhitespace<'_>, line: usize) -> Result<LayerSpec, VectorError> {
    let experts: usize = number(w.next(), line)?;
    let slots: usize = number(w.next(), line)?;
    let kind = w.next();
    let interval = NonZeroU32::new(number(w.next(), line)?).ok_or(VectorError::Parse { line })?;
    let schedule = match kind {
        Some("every") => Schedule::EveryForward,
        Some("decode") => Schedule::EveryDecodeSteps(interval),
        Some("denoise") => Schedule::EveryDenoiseSteps(interval),
        _ => return Err(VectorError::Parse { line }),
    };
    let initial = match w.next() {
        Some("warm") => InitialPlacement::Warm,
        Some("cold") => InitialPlacement::Cold,
        _ => return Err(VectorError::Parse { line }),
    };
    let policy = match w.next() {
        None => Policy::Tide,
        Some(name) => Policy::from_name(name).map_err(|_| VectorError::Parse { line })?,
    };
    Ok(LayerSpec { experts, slots, schedule, initial, policy })
}

fn parse_step(mut w: core::str::SplitAsciiWhitespace<'_>, line: usize) -> Result<Step, VectorError> {
    let index = number(w.next(), line)?;
    let step = match w.next() {
        Some("prefill") => Step::prefill(index),
        Some("decode") => Step::decode(index),
        _ => return Err(VectorError::Parse { line }),
    };
    let mode = match w.next() {
        Some("scheduled") => Mode::Scheduled,
        Some("reuse") => Mode::Reuse,
        Some("refresh") => Mode::Refresh,
        _ => return Err(VectorError::Parse { line }),
    };
    Ok(step.with_mode(mode))
}

/// Parses `routing.txt` (or `demand.txt`): `layer EXPERTS BUDGET every|decode|denoise N warm|cold
/// [POLICY]` lines (a policy by [`Policy::from_name`]; TIDE when none is named), then per
/// step a `step INDEX prefill|decode scheduled|reuse|refresh` line, one `ids ...` line per layer,
/// and an optional `digest HEX` line.
///
/// # Errors
/// [`VectorError::Parse`] for a malformed line or a step with the wrong number of `ids` lines.
pub fn parse_scenario(text: &str) -> Result<Scenario, VectorError> {
    let mut scenario = Scenario { layers: Vec::new(), steps: Vec::new() };
    for (line, l) in content(text) {
        let mut w = words(l);
        match w.next() {
            Some("layer") => scenario.layers.push(parse_layer(w, line)?),
            Some("step") => {
                scenario.steps.push(ScenarioStep { step: parse_step(w, line)?, ids: Vec::new(), expected: None })
            }
            Some("ids") => {
                let step = scenario.steps.last_mut().ok_or(VectorError::Parse { line })?;
                let ids = w.map(|v| v.parse().map_err(|_| VectorError::Parse { line })).collect::<Result<_, _>>()?;
                step.ids.push(ids);
            }
            Some("digest") => {
                let step = scenario.steps.last_mut().ok_or(VectorError::Parse { line })?;
                step.expected = Some((line, hex(w.next(), line)?));
            }
            _ => return Err(VectorError::Parse { line }),
        }
    }
    let layers = scenario.layers.len();
    if let Some(bad) = scenario.steps.iter().position(|s| s.ids.len() != layers) {
        return Err(VectorError::Parse { line: bad });
    }
    Ok(scenario)
}

/// Writes `scenario` in the `routing.txt` format, with `digests[i]` after step `i`.
pub fn write_scenario(scenario: &Scenario, digests: &[u64], out: &mut impl fmt::Write) -> fmt::Result {
    writeln!(out, "# expertslab golden routing vector: layers, then steps (ids per layer) and the digest after each")?;
    for layer in &scenario.layers {
        let (kind, n) = schedule_name(layer.schedule);
        let initial = if layer.initial == InitialPlacement::Cold { "cold" } else { "warm" };
        write!(out, "layer {} {} {kind} {n} {initial}", layer.experts, layer.slots)?;
        if layer.policy != Policy::Tide {
            write!(out, " {}", layer.policy.name())?;
        }
        writeln!(out)?;
    }
    for (step, digest) in scenario.steps.iter().zip(digests) {
        let kind = if step.step.prefill { "prefill" } else { "decode" };
        let mode = match step.step.mode {
            Mode::Scheduled => "scheduled",
            Mode::Reuse => "reuse",
            Mode::Refresh => "refresh",
        };
        writeln!(out, "step {} {kind} {mode}", step.step.index)?;
        for ids in &step.ids {
            write!(out, "ids")?;
            for id in ids {
                write!(out, " {id}")?;
            }
            writeln!(out)?;
        }
        writeln!(out, "digest {digest:016x}")?;
    }
    Ok(())
}

fn pools(scenario: &Scenario) -> Option<LayerPools> {
    let configs: Vec<PoolConfig> = scenario.layers.iter().map(LayerSpec::config).collect();
    LayerPools::new(&configs).ok()
}

/// What replaying a scenario gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replay {
    /// The digest after each step.
    pub digests: Vec<u64>,
    /// Hits, misses and promotions over all layers and steps.
    pub totals: [u64; 3],
}

/// Replays `scenario`: builds the pools, commits their initial plans, then per step plans every
/// layer, commits each plan (no bytes: placement only), serves the ids, and folds into the digest
/// whether each layer refreshed, its plan, its slot table, its hits, its misses served by copy
/// and served in place, and its invalid ids.
///
/// # Errors
/// [`VectorError::Parse`] (line 0) when a layer configuration is refused by the core, or a
/// [`VectorError::Mismatch`] at the first step whose digest differs from the expected one.
pub fn replay(scenario: &Scenario) -> Result<Replay, VectorError> {
    replay_observing(scenario, |_| {})
}

/// As [`replay`], also handing `observe` every word folded into the digest, in order: per step
/// and layer, whether it refreshed (0 or 1), the plan's length, each promotion's expert, slot
/// and demoted expert (`u32::MAX`: none), the slot table after the commit (`u32::MAX`: empty
/// slot), then the served hits, misses served by copy and in place, and invalid ids. The C
/// firmware (tests/cfirmware) computes the same words through the C interface and compares them.
///
/// # Errors
/// As [`replay`].
pub fn replay_observing(scenario: &Scenario, mut observe: impl FnMut(u32)) -> Result<Replay, VectorError> {
    let mut pools = pools(scenario).ok_or(VectorError::Parse { line: 0 })?;
    let mut plans = pools.new_plans();
    for (pool, plan) in pools.pools_mut().iter_mut().zip(plans.iter_mut()) {
        pool.initial_plan(plan);
        commit(pool, plan)?;
    }
    let mut digest = Digest::default();
    let mut fold = |digest: &mut Digest, word: u32| {
        digest.word(word);
        observe(word);
    };
    let mut digests = Vec::with_capacity(scenario.steps.len());
    for step in &scenario.steps {
        for ((pool, plan), ids) in pools.pools_mut().iter_mut().zip(plans.iter_mut()).zip(&step.ids) {
            let refreshed = pool.plan_step(step.step, ids, plan).map_err(|_| VectorError::Parse { line: 0 })?;
            fold(&mut digest, u32::from(refreshed));
            fold(&mut digest, plan.len() as u32);
            for p in plan.promotions() {
                fold(&mut digest, u32::from(p.expert));
                fold(&mut digest, u32::from(p.slot));
                fold(&mut digest, p.demoted.map_or(u32::MAX, u32::from));
            }
            commit(pool, plan)?;
            for slot in 0..pool.slots() {
                fold(&mut digest, pool.expert_in(slot).map_or(u32::MAX, |e| e as u32));
            }
            let served = pool.serve(ids);
            // A step's counts are at most its ids (fewer than 2^32): the digest folds them as words.
            for count in [served.hits, served.served_by_copy, served.served_in_place, served.invalid_ids] {
                fold(&mut digest, u32::try_from(count).unwrap_or(u32::MAX));
            }
        }
        if let Some((line, expected)) = step.expected {
            check(line, expected, digest.0)?;
        }
        digests.push(digest.0);
    }
    let stats = pools.total_stats();
    Ok(Replay { digests, totals: [stats.served.hits, stats.served.misses, stats.promotions] })
}

fn commit(pool: &mut ExpertPool, plan: &MigrationPlan) -> Result<(), VectorError> {
    for &p in plan.promotions() {
        pool.commit(p, 0).map_err(|_| VectorError::Parse { line: 0 })?;
    }
    Ok(())
}
