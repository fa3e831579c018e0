//! Routing traces: the router's expert ids per layer and step, in a documented text format.
//!
//! Newline-delimited JSON. The first line is the header, then one line per layer and step, then
//! (from version 2) an end record:
//!
//! ```text
//! {"format":"expertslab-trace","version":2,"experts":64,"layers":2,"top_k":2}
//! {"layer":0,"step":0,"prefill":true,"ids":[3,17,3,5]}
//! {"layer":1,"step":0,"prefill":true,"ids":[8,1,60,2],"weights":[0.7,0.3,0.55,0.45]}
//! {"layer":0,"step":1,"prefill":false,"ids":[3,9]}
//! {"records":3,"digest":"90bda36a62a7800b"}
//! ```
//!
//! `ids` are flat and token-major (`top_k` per token, so their number is a multiple of `top_k`).
//! A token's ids are in the router's order, so an id's rank is its place among its token's.
//!
//! Keys may come in any order, with any JSON whitespace; blank lines are skipped. Every other
//! deviation is an error naming the line: unknown or repeated keys, missing keys, a layer at or
//! past `layers`, a step smaller than the layer's previous one (except in a prefill record, see
//! below), ids that are not integers in `0..2^32`, weights that are not one per id. Numbers
//! other than weights are integers of at least 0 written in digits: a JSON number with a sign, a
//! fraction or an exponent (`-1`, `1.0`, `1e3`) or past its key's range (`u64` for `step` and
//! `records`, `u32` for the rest) is named as such, and a file that starts with a UTF-8 byte
//! order mark is refused. Ids at or past `experts` are kept: replay counts them as invalid.
//!
//! Version 2 adds two optional parts; version 1 files (without them) still read.
//!
//! - **Router weights.** A record may carry `weights`, one per id in the same order: the weight
//!   the router gave that choice (finite, at least 0, as JSON numbers).
//! - **The end record** `{"records":N,"digest":"<16 hex digits>"}`: the number of record lines
//!   before it and FNV-1a (64-bit) over their canonical text, as [`TraceWriter`] writes them,
//!   newlines included. Writers emit it last; a reader that finds it checks both and refuses a
//!   mismatch, and refuses any line after it. A file cut at a line boundary has none, which
//!   [`Trace::read`] reports ([`TraceFile::sealed`]), so a tool can tell its user.
//!
//! A layer's steps never go backwards, except where a record starts a new block
//! (`"prefill":true`): a diffusion model's denoise counter restarts at each block, so a block's
//! first record may carry a step smaller than its layer's previous one. A refresh schedule
//! `every:N` then counts within the block (see [`crate::Schedule`]).

use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::fmt;
use core::ops::Range;

pub use profile::WarmStart;
use text::parse_header;
use text::{parse_line, Arrays, Digest, Line};
pub use text::{RecordLine, TraceWriter};
// For the files of this folder (`interleaved` uses the replay's types through here).
use replay::{OverlapClock, ReplayConfig, ReplayError, ReplayPolicy, ReplayReport, ReplayStats};

mod interleaved;
pub mod profile;
pub mod replay;
#[cfg(all(test, feature = "demand"))]
mod sharing_tests;
pub mod synthetic;
mod text;

/// The format name in the header.
pub const FORMAT: &str = "expertslab-trace";
/// The format version this crate writes; it reads every version up to this one.
pub const VERSION: u64 = 2;

/// A trace's header: the model's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct TraceHeader {
    /// Experts per layer.
    pub experts: u32,
    /// MoE layers.
    pub layers: u32,
    /// Experts per token.
    pub top_k: u32,
}

/// One line of a trace: a layer's routing in one step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceRecord {
    /// The layer.
    pub layer: u32,
    /// The step.
    pub step: u64,
    /// Whether the step is a prefill block.
    pub prefill: bool,
    ids: Range<usize>,
    /// Where the record's weights start in the trace's weights, when it has them.
    weights: Option<usize>,
}

/// What reading a trace's text found beyond its routing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct TraceFile {
    /// The header's format version.
    pub version: u64,
    /// Whether the text ended with an end record, checked against the records read. Without
    /// one, a file cut at a line boundary cannot be told from a whole one.
    pub sealed: bool,
}

/// A trace that cannot be read or built, with the 1-based line (0 when built in code).
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct TraceError {
    /// The line.
    pub line: usize,
    /// What is wrong.
    pub kind: TraceErrorKind,
}

/// What is wrong with a trace line.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum TraceErrorKind {
    /// The text is not the JSON this format allows, at byte `column` of the line.
    Syntax {
        /// Byte position in the line.
        column: usize,
    },
    /// The first line is not a header of this format and of a version this crate reads.
    NotAHeader,
    /// A header with a zero count.
    EmptyShape,
    /// A key the format does not have, or one given twice.
    UnexpectedKey,
    /// A key the line must have is missing.
    MissingKey(&'static str),
    /// A value of the wrong kind or out of range for its key.
    BadValue(&'static str),
    /// A JSON number where the key takes an integer of at least 0, but negative or written with
    /// a fraction or an exponent (`-1`, `1.0`, `1e3`).
    NotAnInteger(&'static str),
    /// An integer past the largest value its key takes.
    OutOfRange {
        /// The key.
        key: &'static str,
        /// The largest value it takes (`u32::MAX` for layers, counts and ids, `u64::MAX` for
        /// steps).
        max: u64,
    },
    /// The text starts with a UTF-8 byte order mark, which the format does not allow.
    ByteOrderMark,
    /// A layer at or past the header's count.
    LayerOutOfRange(u32),
    /// A step smaller than the same layer's previous step, in a record that does not start a
    /// block (only a prefill record may restart the step counter).
    StepBackwards,
    /// A number of ids that is not a multiple of `top_k`.
    PartialToken,
    /// No header line at all.
    Empty,
    /// A weight that is not a finite number of at least 0.
    BadWeight,
    /// A record whose weights are not one per id.
    WeightCount,
    /// The end record counts a different number of records than the file holds before it.
    RecordCount {
        /// The end record's count.
        expected: u64,
        /// The records read.
        found: u64,
    },
    /// The end record's digest differs from the records read: a record was changed.
    DigestMismatch,
    /// A line after the end record.
    AfterEnd,
}

impl fmt::Display for TraceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: ", self.line)?;
        match &self.kind {
            TraceErrorKind::Syntax { column } => write!(f, "malformed JSON at byte {column}"),
            TraceErrorKind::NotAHeader => {
                write!(f, "not a header {{\"format\":\"{FORMAT}\",\"version\":1..={VERSION},...}}")
            }
            TraceErrorKind::EmptyShape => f.write_str("experts, layers and top_k must be at least 1"),
            TraceErrorKind::UnexpectedKey => f.write_str("unknown or repeated key"),
            TraceErrorKind::MissingKey(key) => write!(f, "missing \"{key}\""),
            TraceErrorKind::BadValue(key) => write!(f, "bad value for \"{key}\""),
            TraceErrorKind::NotAnInteger(key) => {
                write!(f, "\"{key}\" takes integers of at least 0 in digits, without a sign, fraction or exponent")
            }
            TraceErrorKind::OutOfRange { key, max } => write!(f, "a value of \"{key}\" is past {max}, its largest"),
            TraceErrorKind::ByteOrderMark => {
                f.write_str("the text starts with a UTF-8 byte order mark, which the format does not allow")
            }
            TraceErrorKind::LayerOutOfRange(layer) => write!(f, "layer {layer} is past the header's layer count"),
            TraceErrorKind::StepBackwards => {
                f.write_str("step is smaller than this layer's previous step and the record is not a prefill block")
            }
            TraceErrorKind::PartialToken => f.write_str("the number of ids is not a multiple of top_k"),
            TraceErrorKind::Empty => f.write_str("no header"),
            TraceErrorKind::BadWeight => f.write_str("\"weights\" takes finite numbers of at least 0"),
            TraceErrorKind::WeightCount => f.write_str("a record needs one weight per id"),
            TraceErrorKind::RecordCount { expected, found } => {
                write!(f, "the end record counts {expected} records, the file holds {found} (lines lost or added)")
            }
            TraceErrorKind::DigestMismatch => {
                f.write_str("the end record's digest differs from the records' (a record was changed)")
            }
            TraceErrorKind::AfterEnd => f.write_str("a line after the end record"),
        }
    }
}

impl core::error::Error for TraceError {}

/// A whole routing trace in memory: records in file order, their ids (and the weights of the
/// records that have them) in flat buffers. Two traces are equal when their header, records,
/// ids and weights (bit for bit) are.
#[derive(Debug, Clone)]
pub struct Trace {
    header: TraceHeader,
    records: Vec<TraceRecord>,
    ids: Vec<u32>,
    weights: Vec<f32>,
    /// Each layer's last step, for the layers seen.
    last_step: BTreeMap<u32, u64>,
}

impl PartialEq for Trace {
    fn eq(&self, other: &Self) -> bool {
        self.header == other.header
            && self.records == other.records
            && self.ids == other.ids
            && self.weights.iter().map(|w| w.to_bits()).eq(other.weights.iter().map(|w| w.to_bits()))
    }
}

impl Eq for Trace {}

impl Trace {
    /// An empty trace of the given shape.
    ///
    /// # Errors
    /// [`TraceErrorKind::EmptyShape`] when a count is zero.
    pub fn new(header: TraceHeader) -> Result<Self, TraceError> {
        if header.experts == 0 || header.layers == 0 || header.top_k == 0 {
            return Err(TraceError { line: 0, kind: TraceErrorKind::EmptyShape });
        }
        Ok(Self { header, records: Vec::new(), ids: Vec::new(), weights: Vec::new(), last_step: BTreeMap::new() })
    }

    /// The header.
    pub const fn header(&self) -> TraceHeader {
        self.header
    }

    /// The records, in order.
    pub fn records(&self) -> &[TraceRecord] {
        &self.records
    }

    /// The layers that have records, ascending.
    pub fn layers(&self) -> impl Iterator<Item = u32> + '_ {
        self.last_step.keys().copied()
    }

    /// The ids of `record`.
    pub fn ids(&self, record: &TraceRecord) -> &[u32] {
        self.ids.get(record.ids.clone()).unwrap_or(&[])
    }

    /// The router weights of `record`, one per id, when it has them.
    pub fn weights(&self, record: &TraceRecord) -> Option<&[f32]> {
        let start = record.weights?;
        self.weights.get(start..start.saturating_add(record.ids.len()))
    }

    /// Appends a record.
    ///
    /// # Errors
    /// [`TraceErrorKind::LayerOutOfRange`], [`TraceErrorKind::StepBackwards`] or
    /// [`TraceErrorKind::PartialToken`] (line 0).
    pub fn push(&mut self, layer: u32, step: u64, prefill: bool, ids: &[u32]) -> Result<(), TraceError> {
        self.push_at(0, layer, step, prefill, ids, None)
    }

    /// Appends a record with the router's weights, one per id.
    ///
    /// # Errors
    /// As [`Trace::push`], and [`TraceErrorKind::WeightCount`] or [`TraceErrorKind::BadWeight`]
    /// (line 0).
    pub fn push_weighted(
        &mut self,
        layer: u32,
        step: u64,
        prefill: bool,
        ids: &[u32],
        weights: &[f32],
    ) -> Result<(), TraceError> {
        self.push_at(0, layer, step, prefill, ids, Some(weights))
    }

    fn push_at(
        &mut self,
        line: usize,
        layer: u32,
        step: u64,
        prefill: bool,
        ids: &[u32],
        weights: Option<&[f32]>,
    ) -> Result<(), TraceError> {
        let fail = |kind| TraceError { line, kind };
        if let Some(weights) = weights {
            if weights.len() != ids.len() {
                return Err(fail(TraceErrorKind::WeightCount));
            }
            if !weights.iter().all(|w| w.is_finite() && *w >= 0.0) {
                return Err(fail(TraceErrorKind::BadWeight));
            }
        }
        if layer >= self.header.layers {
            return Err(fail(TraceErrorKind::LayerOutOfRange(layer)));
        }
        // A prefill record starts a block, whose step counter may restart (diffusion models).
        if !prefill && self.last_step.get(&layer).is_some_and(|&previous| step < previous) {
            return Err(fail(TraceErrorKind::StepBackwards));
        }
        if !ids.len().is_multiple_of(self.header.top_k as usize) {
            return Err(fail(TraceErrorKind::PartialToken));
        }
        let start = self.ids.len();
        self.ids.extend_from_slice(ids);
        let weights = weights.map(|w| {
            let at = self.weights.len();
            self.weights.extend_from_slice(w);
            at
        });
        self.last_step.insert(layer, step);
        self.records.push(TraceRecord { layer, step, prefill, ids: start..self.ids.len(), weights });
        Ok(())
    }

    /// Reads a trace in the text format.
    ///
    /// # Errors
    /// A [`TraceError`] naming the first bad line.
    pub fn parse(text: &str) -> Result<Self, TraceError> {
        Self::read(text).map(|(trace, _)| trace)
    }

    /// Reads a trace in the text format, and what the text says of itself: its version and
    /// whether it ended with an end record (checked).
    ///
    /// # Errors
    /// A [`TraceError`] naming the first bad line.
    pub fn read(text: &str) -> Result<(Self, TraceFile), TraceError> {
        if text.starts_with('\u{feff}') {
            return Err(TraceError { line: 1, kind: TraceErrorKind::ByteOrderMark });
        }
        let mut lines =
            text.lines().enumerate().map(|(i, l)| (i.saturating_add(1), l)).filter(|(_, l)| !l.trim().is_empty());
        let (line, header) = lines.next().ok_or(TraceError { line: 1, kind: TraceErrorKind::Empty })?;
        let (header, version) = parse_header(header).map_err(|kind| TraceError { line, kind })?;
        let mut trace = Self::new(header).map_err(|e| TraceError { line, ..e })?;
        let mut arrays = Arrays::default();
        let mut digest = Digest::new();
        let mut sealed = false;
        for (line, text) in lines {
            let fail = |kind| TraceError { line, kind };
            if sealed {
                return Err(fail(TraceErrorKind::AfterEnd));
            }
            match parse_line(text, version, &mut arrays).map_err(fail)? {
                Line::Record { layer, step, prefill, weighted } => {
                    let weights = weighted.then_some(arrays.weights.as_slice());
                    trace.push_at(line, layer, step, prefill, &arrays.ids, weights)?;
                    // Writing into a digest cannot fail.
                    let _ = RecordLine { layer, step, prefill, ids: &arrays.ids, weights }.write(&mut digest);
                }
                Line::End { records, digest: expected } => {
                    let found = trace.records.len() as u64;
                    if records != found {
                        return Err(fail(TraceErrorKind::RecordCount { expected: records, found }));
                    }
                    if expected != digest.value() {
                        return Err(fail(TraceErrorKind::DigestMismatch));
                    }
                    sealed = true;
                }
            }
        }
        Ok((trace, TraceFile { version, sealed }))
    }

    /// Writes the trace in the text format of this crate's version, end record included.
    ///
    /// # Errors
    /// The writer's error.
    pub fn write(&self, out: &mut impl fmt::Write) -> fmt::Result {
        let mut writer = TraceWriter::start(out, self.header)?;
        for r in &self.records {
            let line = RecordLine {
                layer: r.layer,
                step: r.step,
                prefill: r.prefill,
                ids: self.ids(r),
                weights: self.weights(r),
            };
            writer.record(out, &line)?;
        }
        writer.finish(out)
    }
}

#[cfg(test)]
mod tests;
