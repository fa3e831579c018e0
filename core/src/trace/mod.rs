//! Routing traces: the router's expert ids per layer and step, in a documented text format.
//!
//! Newline-delimited JSON. The first line is the header, then one line per layer and step:
//!
//! ```text
//! {"format":"expertslab-trace","version":1,"experts":64,"layers":2,"top_k":2}
//! {"layer":0,"step":0,"prefill":true,"ids":[3,17,3,5]}
//! {"layer":1,"step":0,"prefill":true,"ids":[8,1,60,2]}
//! {"layer":0,"step":1,"prefill":false,"ids":[3,9]}
//! ```
//!
//! `ids` are flat and token-major (`top_k` per token, so their number is a multiple of `top_k`).
//! Keys may come in any order, with any JSON whitespace; blank lines are skipped. Every other
//! deviation is an error naming the line: unknown or repeated keys, missing keys, a layer at or
//! past `layers`, a step smaller than the layer's previous one (except in a prefill record, see
//! below), ids that are not integers in `0..2^32`. Numbers are integers of at least 0 written
//! in digits: a JSON number with a sign, a fraction or an exponent (`-1`, `1.0`, `1e3`) or past
//! its key's range (`u64` for `step`, `u32` for the rest) is named as such, and a file that
//! starts with a UTF-8 byte order mark is refused. Ids at or past `experts` are kept: replay
//! counts them as invalid.
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
use text::{parse_header, parse_record};
pub use text::{write_header, write_record};
// For the files of this folder (`interleaved` uses the replay's types through here).
use replay::{CostModel, OverlapClock, ReplayConfig, ReplayError, ReplayPolicy, ReplayReport, ReplayStats};

mod interleaved;
pub mod profile;
pub mod replay;
#[cfg(all(test, feature = "demand"))]
mod sharing_tests;
pub mod synthetic;
mod text;

/// The format name in the header.
pub const FORMAT: &str = "expertslab-trace";
/// The format version this crate reads and writes.
pub const VERSION: u64 = 1;

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
    /// The first line is not a header of this format and version.
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
}

impl fmt::Display for TraceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: ", self.line)?;
        match &self.kind {
            TraceErrorKind::Syntax { column } => write!(f, "malformed JSON at byte {column}"),
            TraceErrorKind::NotAHeader => {
                write!(f, "not a header {{\"format\":\"{FORMAT}\",\"version\":{VERSION},...}}")
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
        }
    }
}

impl core::error::Error for TraceError {}

/// A whole routing trace in memory: records in file order, their ids in one flat buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trace {
    header: TraceHeader,
    records: Vec<TraceRecord>,
    ids: Vec<u32>,
    /// Each layer's last step, for the layers seen.
    last_step: BTreeMap<u32, u64>,
}

impl Trace {
    /// An empty trace of the given shape.
    ///
    /// # Errors
    /// [`TraceErrorKind::EmptyShape`] when a count is zero.
    pub fn new(header: TraceHeader) -> Result<Self, TraceError> {
        if header.experts == 0 || header.layers == 0 || header.top_k == 0 {
            return Err(TraceError { line: 0, kind: TraceErrorKind::EmptyShape });
        }
        Ok(Self { header, records: Vec::new(), ids: Vec::new(), last_step: BTreeMap::new() })
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

    /// Appends a record.
    ///
    /// # Errors
    /// [`TraceErrorKind::LayerOutOfRange`], [`TraceErrorKind::StepBackwards`] or
    /// [`TraceErrorKind::PartialToken`] (line 0).
    pub fn push(&mut self, layer: u32, step: u64, prefill: bool, ids: &[u32]) -> Result<(), TraceError> {
        self.push_at(0, layer, step, prefill, ids.iter().copied())
    }

    fn push_at(
        &mut self,
        line: usize,
        layer: u32,
        step: u64,
        prefill: bool,
        ids: impl Iterator<Item = u32>,
    ) -> Result<(), TraceError> {
        let fail = |kind| TraceError { line, kind };
        if layer >= self.header.layers {
            return Err(fail(TraceErrorKind::LayerOutOfRange(layer)));
        }
        // A prefill record starts a block, whose step counter may restart (diffusion models).
        if !prefill && self.last_step.get(&layer).is_some_and(|&previous| step < previous) {
            return Err(fail(TraceErrorKind::StepBackwards));
        }
        let start = self.ids.len();
        self.ids.extend(ids);
        let pushed = self.ids.get(start..).map_or(0, <[u32]>::len);
        if !pushed.is_multiple_of(self.header.top_k as usize) {
            self.ids.truncate(start);
            return Err(fail(TraceErrorKind::PartialToken));
        }
        self.last_step.insert(layer, step);
        self.records.push(TraceRecord { layer, step, prefill, ids: start..self.ids.len() });
        Ok(())
    }

    /// Reads a trace in the text format.
    ///
    /// # Errors
    /// A [`TraceError`] naming the first bad line.
    pub fn parse(text: &str) -> Result<Self, TraceError> {
        if text.starts_with('\u{feff}') {
            return Err(TraceError { line: 1, kind: TraceErrorKind::ByteOrderMark });
        }
        let mut lines =
            text.lines().enumerate().map(|(i, l)| (i.saturating_add(1), l)).filter(|(_, l)| !l.trim().is_empty());
        let (line, header) = lines.next().ok_or(TraceError { line: 1, kind: TraceErrorKind::Empty })?;
        let mut trace = Self::new(parse_header(header).map_err(|kind| TraceError { line, kind })?)
            .map_err(|e| TraceError { line, ..e })?;
        let mut scratch = Vec::new();
        for (line, text) in lines {
            let record = parse_record(text, &mut scratch).map_err(|kind| TraceError { line, kind })?;
            trace.push_at(line, record.0, record.1, record.2, scratch.iter().copied())?;
        }
        Ok(trace)
    }

    /// Writes the trace in the text format.
    ///
    /// # Errors
    /// The writer's error.
    pub fn write(&self, out: &mut impl fmt::Write) -> fmt::Result {
        write_header(out, self.header)?;
        for r in &self.records {
            write_record(out, r.layer, r.step, r.prefill, self.ids(r))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::text::parse_object;
    use super::*;
    use alloc::string::{String, ToString};

    const SAMPLE: &str = r#"{"format":"expertslab-trace","version":1,"experts":8,"layers":2,"top_k":2}
{"layer":0,"step":0,"prefill":true,"ids":[3,7,3,5]}

{ "ids" : [ 9 , 1 ] , "prefill" : false, "step": 1, "layer": 1 }
{"layer":0,"step":1,"prefill":false,"ids":[]}
"#;

    #[test]
    fn parses_and_writes_back() {
        let trace = Trace::parse(SAMPLE).unwrap();
        assert_eq!(trace.header(), TraceHeader { experts: 8, layers: 2, top_k: 2 });
        assert_eq!(trace.records().len(), 3);
        assert_eq!(trace.ids(&trace.records()[0]), &[3, 7, 3, 5]);
        assert_eq!(trace.ids(&trace.records()[1]), &[9, 1]);
        assert!(trace.records()[0].prefill && !trace.records()[1].prefill);
        let mut text = String::new();
        trace.write(&mut text).unwrap();
        assert_eq!(Trace::parse(&text).unwrap(), trace);
        assert!(text.starts_with(r#"{"format":"expertslab-trace","version":1,"experts":8,"layers":2,"top_k":2}"#));
    }

    fn error(text: &str) -> TraceError {
        Trace::parse(text).unwrap_err()
    }

    #[test]
    fn syntax_errors_name_their_byte() {
        let column = |line: &str| {
            let mut ids = Vec::new();
            match parse_object(line, &mut ids, |_, _| Ok(())) {
                Err(TraceErrorKind::Syntax { column }) => Some(column),
                _ => None,
            }
        };
        // The byte where the text stops being this format's JSON.
        assert_eq!(column(r#"{"ids":[1,2.]}"#), Some(11));
        assert_eq!(column(r#"{"ids":[1, -]}"#), Some(11));
        assert_eq!(column(r#"{"ids":[1,]}"#), Some(10));
        assert_eq!(column(r#"{"ids":[1 2]}"#), Some(10));
        assert_eq!(column(r#"{"a\"b":1}"#), Some(3));
        assert_eq!(column(r#"{"open"#), Some(6));
        assert_eq!(column(r#"{"a":tru}"#), Some(5));
        assert_eq!(column(r#"{"a":1 "b":2}"#), Some(7));
        assert_eq!(column(r#"{"a":1} x"#), Some(8));
        assert_eq!(column(r#"  {"a":1}"#), None);
        assert_eq!(column(r#"{ "a" : [ 1 , 2 ] , "b" : true , "c" : false }"#), None);
        assert_eq!(column("{}"), None);
        assert_eq!(column(""), Some(0));
        // Multi-byte text inside a key is kept whole.
        let mut keys = Vec::new();
        let mut ids = Vec::new();
        let keep = |k, _| {
            keys.push(k);
            Ok(())
        };
        assert_eq!(parse_object(r#"{"lä":7}"#, &mut ids, keep), Ok(()));
        assert_eq!(keys, ["lä"]);
    }

    #[test]
    fn numbers_that_are_json_but_not_the_formats_integers_name_their_key() {
        let kind = |line: &str| parse_object(line, &mut Vec::new(), |_, _| Ok(())).unwrap_err();
        let not_an_integer = |key| TraceErrorKind::NotAnInteger(key);
        let past = |key, max| TraceErrorKind::OutOfRange { key, max };
        assert_eq!(kind(r#"{"ids":[1,2.5]}"#), not_an_integer("ids"));
        assert_eq!(kind(r#"{"ids":[1, -2]}"#), not_an_integer("ids"));
        assert_eq!(kind(r#"{"step":1.0}"#), not_an_integer("step"));
        assert_eq!(kind(r#"{"step":1e3}"#), not_an_integer("step"));
        assert_eq!(kind(r#"{"step":1E-3}"#), not_an_integer("step"));
        assert_eq!(kind(r#"{"layer":-0}"#), not_an_integer("layer"));
        assert_eq!(kind(r#"{"step":18446744073709551616}"#), past("step", u64::MAX));
        assert_eq!(kind(r#"{"step":99999999999999999999.5}"#), not_an_integer("step"));
        assert_eq!(kind(r#"{"ids":[1,4294967296]}"#), past("ids", u64::from(u32::MAX)));
        assert_eq!(kind(r#"{"ids":[ 4294967296]}"#), past("ids", u64::from(u32::MAX)));
        // A key the format does not have is the error, whatever its value.
        assert_eq!(kind(r#"{"other":1.5}"#), TraceErrorKind::UnexpectedKey);
        // The largest values are taken.
        assert_eq!(
            parse_object(r#"{"step":18446744073709551615,"ids":[4294967295]}"#, &mut Vec::new(), |_, _| Ok(())),
            Ok(())
        );

        let header = "{\"format\":\"expertslab-trace\",\"version\":1,\"experts\":8,\"layers\":2,\"top_k\":1}\n";
        let record = |text: &str| error(&alloc::format!("{header}{text}\n"));
        let e = record(r#"{"layer":0,"step":18446744073709551616,"prefill":false,"ids":[1]}"#);
        assert_eq!((e.line, e.kind), (2, past("step", u64::MAX)));
        assert_eq!(
            record(r#"{"layer":4294967296,"step":0,"prefill":false,"ids":[1]}"#).kind,
            past("layer", 4_294_967_295)
        );
        assert_eq!(record(r#"{"layer":0,"step":1.0,"prefill":false,"ids":[1]}"#).kind, not_an_integer("step"));
        let e = record(r#"{"layer":0,"step":1,"prefill":false,"ids":[4294967296]}"#);
        assert_eq!(e.to_string(), "line 2: a value of \"ids\" is past 4294967295, its largest");
        assert_eq!(
            record(r#"{"layer":0,"step":1.0,"prefill":false,"ids":[1]}"#).to_string(),
            "line 2: \"step\" takes integers of at least 0 in digits, without a sign, fraction or exponent"
        );
        let e = error(r#"{"format":"expertslab-trace","version":1,"experts":4294967296,"layers":2,"top_k":1}"#);
        assert_eq!(e.kind, past("experts", 4_294_967_295));
        let e = error(r#"{"format":"expertslab-trace","version":1.0,"experts":8,"layers":2,"top_k":1}"#);
        assert_eq!(e.kind, TraceErrorKind::NotAHeader);
    }

    #[test]
    fn a_byte_order_mark_is_refused_by_name() {
        let header = "{\"format\":\"expertslab-trace\",\"version\":1,\"experts\":8,\"layers\":2,\"top_k\":1}\n";
        assert!(Trace::parse(header).is_ok());
        let e = error(&alloc::format!("\u{feff}{header}"));
        assert_eq!((e.line, e.kind.clone()), (1, TraceErrorKind::ByteOrderMark));
        assert_eq!(
            e.to_string(),
            "line 1: the text starts with a UTF-8 byte order mark, which the format does not allow"
        );
    }

    #[test]
    fn bad_lines_name_their_line() {
        let header = "{\"format\":\"expertslab-trace\",\"version\":1,\"experts\":8,\"layers\":2,\"top_k\":2}\n";
        let with =
            |line: &str| alloc::format!("{header}{{\"layer\":0,\"step\":0,\"prefill\":false,\"ids\":[1,2]}}\n{line}\n");
        assert_eq!(
            error(&with(r#"{"layer":2,"step":1,"prefill":false,"ids":[1,2]}"#)).kind,
            TraceErrorKind::LayerOutOfRange(2)
        );
        assert_eq!(
            error(&with(r#"{"layer":0,"step":1,"prefill":false,"ids":[1]}"#)).kind,
            TraceErrorKind::PartialToken
        );
        assert_eq!(error(&with(r#"{"layer":0,"step":1,"prefill":false,"ids":[1,-2]}"#)).line, 3);
        assert_eq!(
            error(&with(r#"{"layer":0,"step":1,"prefill":false,"ids":[1,2.5]}"#)).kind,
            TraceErrorKind::NotAnInteger("ids")
        );
        assert_eq!(
            error(&with(r#"{"layer":0,"step":1,"prefill":false,"ids":[1,4294967296]}"#)).kind,
            TraceErrorKind::OutOfRange { key: "ids", max: u32::MAX.into() }
        );
        assert_eq!(
            error(&with(r#"{"layer":0,"step":1,"prefill":false,"ids":[1,2],"x":1}"#)).kind,
            TraceErrorKind::UnexpectedKey
        );
        assert_eq!(
            error(&with(r#"{"layer":0,"layer":0,"step":1,"prefill":false,"ids":[1,2]}"#)).kind,
            TraceErrorKind::UnexpectedKey
        );
        assert_eq!(error(&with(r#"{"layer":0,"prefill":false,"ids":[1,2]}"#)).kind, TraceErrorKind::MissingKey("step"));
        assert_eq!(
            error(&with(r#"{"layer":0,"step":1,"prefill":0,"ids":[1,2]}"#)).kind,
            TraceErrorKind::BadValue("prefill")
        );
        assert_eq!(error(&with(r#"{"layer":0,"step":0,"prefill":false,"ids":[1,2]} x"#)).line, 3);
        assert_eq!(error(&with(r#"{"layer":0,"step":0,"prefill":false,"ids":[1,2]"#)).line, 3);
        assert_eq!(error("").kind, TraceErrorKind::Empty);
        assert_eq!(
            error(r#"{"format":"other","version":1,"experts":8,"layers":2,"top_k":2}"#).kind,
            TraceErrorKind::NotAHeader
        );
        assert_eq!(
            error(r#"{"format":"expertslab-trace","version":2,"experts":8,"layers":2,"top_k":2}"#).kind,
            TraceErrorKind::NotAHeader
        );
        assert_eq!(
            error(r#"{"format":"expertslab-trace","version":1,"experts":0,"layers":2,"top_k":2}"#).kind,
            TraceErrorKind::EmptyShape
        );
        assert_eq!(
            error(r#"{"format":"expertslab-trace","version":1,"layers":2,"top_k":2}"#).kind,
            TraceErrorKind::MissingKey("experts")
        );
        assert_eq!(
            error(r#"{"format":"expertslab-trace","version":1,"experts":"8","layers":2,"top_k":2}"#).kind,
            TraceErrorKind::BadValue("experts")
        );
    }

    #[test]
    fn a_huge_layer_count_costs_nothing_until_used() {
        let text = "{\"format\":\"expertslab-trace\",\"version\":1,\"experts\":4,\"layers\":4294967295,\"top_k\":1}\n{\"layer\":4294967294,\"step\":0,\"prefill\":false,\"ids\":[1]}\n{\"layer\":3,\"step\":0,\"prefill\":false,\"ids\":[2]}\n";
        let trace = Trace::parse(text).unwrap();
        assert_eq!(trace.layers().collect::<Vec<_>>(), [3, 4_294_967_294]);
    }

    #[test]
    fn steps_may_not_go_backwards_within_a_layer() {
        let mut t = Trace::new(TraceHeader { experts: 4, layers: 2, top_k: 1 }).unwrap();
        t.push(0, 5, false, &[1]).unwrap();
        t.push(1, 0, false, &[1]).unwrap();
        t.push(0, 5, false, &[2]).unwrap();
        assert_eq!(t.push(0, 4, false, &[1]).unwrap_err().kind, TraceErrorKind::StepBackwards);
        assert_eq!(t.records().len(), 3);
        // A prefill record starts a new block: its step may restart, and the block's later
        // records count from there.
        t.push(0, 0, true, &[3]).unwrap();
        t.push(0, 1, false, &[3]).unwrap();
        assert_eq!(t.push(0, 0, false, &[3]).unwrap_err().kind, TraceErrorKind::StepBackwards);
        assert_eq!(t.records().len(), 5);
        let text = "{\"format\":\"expertslab-trace\",\"version\":1,\"experts\":4,\"layers\":1,\"top_k\":1}\n\
                    {\"layer\":0,\"step\":3,\"prefill\":false,\"ids\":[1]}\n\
                    {\"layer\":0,\"step\":2,\"prefill\":false,\"ids\":[1]}\n";
        let err = Trace::parse(text).unwrap_err();
        assert_eq!((err.line, err.kind), (3, TraceErrorKind::StepBackwards));
        assert!(Trace::parse(&text.replace("\"step\":2,\"prefill\":false", "\"step\":2,\"prefill\":true")).is_ok());
    }
}
