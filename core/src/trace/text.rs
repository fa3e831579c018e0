//! The trace's text form: writing lines, and the lexer and parser of the JSON subset it uses.

use alloc::vec::Vec;
use core::fmt;

use super::{TraceErrorKind, TraceHeader, FORMAT, VERSION};

/// FNV-1a over 64 bits: the digest of an end record, folded over the canonical text of every
/// record line (as [`TraceWriter`] writes it, newline included).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Digest(u64);

impl Digest {
    pub(super) const fn new() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }

    pub(super) const fn value(self) -> u64 {
        self.0
    }
}

impl fmt::Write for Digest {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for &b in s.as_bytes() {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        Ok(())
    }
}

/// Writes one line to `out` and folds it into `digest`.
struct Tee<'a, W> {
    out: &'a mut W,
    digest: &'a mut Digest,
}

impl<W: fmt::Write> fmt::Write for Tee<'_, W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.digest.write_str(s)?;
        self.out.write_str(s)
    }
}

/// One record line's fields, as [`TraceWriter::record`] writes them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RecordLine<'a> {
    /// The layer.
    pub layer: u32,
    /// The step.
    pub step: u64,
    /// Whether the step is a prefill block.
    pub prefill: bool,
    /// The ids, token-major.
    pub ids: &'a [u32],
    /// The router's weights, one per id in the same order, when kept.
    pub weights: Option<&'a [f32]>,
}

impl RecordLine<'_> {
    /// Writes the line's canonical text: the form the end record's digest is folded over.
    pub(super) fn write(&self, out: &mut impl fmt::Write) -> fmt::Result {
        let Self { layer, step, prefill, ids, weights } = *self;
        write!(out, "{{\"layer\":{layer},\"step\":{step},\"prefill\":{prefill},\"ids\":")?;
        list(out, ids)?;
        if let Some(weights) = weights {
            // `f32`'s `Display` is the shortest text that reads back to the same bits.
            out.write_str(",\"weights\":")?;
            list(out, weights)?;
        }
        out.write_str("}\n")
    }
}

/// Writes `[a,b,...]`.
fn list(out: &mut impl fmt::Write, items: &[impl fmt::Display]) -> fmt::Result {
    out.write_char('[')?;
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.write_char(',')?;
        }
        write!(out, "{item}")?;
    }
    out.write_char(']')
}

/// Writes a trace line by line, in this crate's version: the header, the records, then the end
/// record (their count and digest) that lets a reader tell a whole file from one cut at a line
/// boundary.
///
/// ```
/// use expertslab::trace::{RecordLine, Trace, TraceHeader, TraceWriter};
///
/// let mut text = String::new();
/// let mut writer = TraceWriter::start(&mut text, TraceHeader { experts: 8, layers: 1, top_k: 2 })?;
/// let line = RecordLine { layer: 0, step: 0, prefill: true, ids: &[3, 5], weights: Some(&[0.75, 0.25]) };
/// writer.record(&mut text, &line)?;
/// writer.finish(&mut text)?;
/// let (trace, file) = Trace::read(&text).map_err(|_| core::fmt::Error)?;
/// assert!(file.sealed);
/// assert_eq!(trace.weights(&trace.records()[0]), Some(&[0.75, 0.25][..]));
/// # Ok::<(), core::fmt::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct TraceWriter {
    records: u64,
    digest: Digest,
}

impl TraceWriter {
    /// Writes the header line.
    ///
    /// # Errors
    /// The writer's error.
    pub fn start(out: &mut impl fmt::Write, header: TraceHeader) -> Result<Self, fmt::Error> {
        let TraceHeader { experts, layers, top_k } = header;
        writeln!(
            out,
            "{{\"format\":\"{FORMAT}\",\"version\":{VERSION},\"experts\":{experts},\"layers\":{layers},\"top_k\":{top_k}}}"
        )?;
        Ok(Self { records: 0, digest: Digest::new() })
    }

    /// Writes one record line: a layer's ids in one step, with their router weights when given.
    ///
    /// # Errors
    /// The writer's error.
    pub fn record(&mut self, out: &mut impl fmt::Write, line: &RecordLine<'_>) -> fmt::Result {
        line.write(&mut Tee { out, digest: &mut self.digest })?;
        self.records = self.records.saturating_add(1);
        Ok(())
    }

    /// Records written so far.
    pub const fn records(&self) -> u64 {
        self.records
    }

    /// Writes the end record.
    ///
    /// # Errors
    /// The writer's error.
    pub fn finish(self, out: &mut impl fmt::Write) -> fmt::Result {
        writeln!(out, "{{\"records\":{},\"digest\":\"{:016x}\"}}", self.records, self.digest.value())
    }
}

/// A value of this format's JSON subset.
pub(super) enum Value<'a> {
    Str(&'a str),
    Int(u64),
    Bool(bool),
    /// An array of integers, appended to the scratch buffers' ids.
    Ints,
    /// An array of weights (`"weights"`'s), appended to the scratch buffers' weights.
    Weights,
}

/// The arrays of the line being read, reused from line to line.
#[derive(Debug, Default)]
pub(super) struct Arrays {
    pub(super) ids: Vec<u32>,
    pub(super) weights: Vec<f32>,
}

/// The keys of the format, which errors name.
const KEYS: [&str; 12] = [
    "format", "version", "experts", "layers", "top_k", "layer", "step", "prefill", "ids", "weights", "records",
    "digest",
];

/// What is wrong with a number where an integer should be.
enum Number {
    /// Not a JSON number: a syntax error at this byte.
    Syntax(usize),
    /// A JSON number that is negative or has a fraction or an exponent.
    NotAnInteger,
    /// An integer past this largest value.
    TooLarge(u64),
}

impl Number {
    /// The error of this number as the value of `key`; a key the format does not have is the
    /// error instead.
    fn of(self, key: &str) -> TraceErrorKind {
        let known = KEYS.iter().copied().find(|&k| k == key);
        match (self, known) {
            (Self::Syntax(column), _) => TraceErrorKind::Syntax { column },
            (_, None) => TraceErrorKind::UnexpectedKey,
            // A number where the weights' array should be.
            (_, Some("weights")) => TraceErrorKind::BadValue("weights"),
            (Self::NotAnInteger, Some(key)) => TraceErrorKind::NotAnInteger(key),
            (Self::TooLarge(max), Some(key)) => TraceErrorKind::OutOfRange { key, max },
        }
    }
}

/// `bytes` after its leading ASCII digits.
fn skip_digits(bytes: &[u8]) -> &[u8] {
    let digits = bytes.iter().take_while(|b| b.is_ascii_digit()).count();
    bytes.get(digits..).unwrap_or(&[])
}

/// A position in one line of text that only moves forward, over bytes that exist.
struct Scanner<'a> {
    line: &'a str,
    rest: &'a [u8],
}

impl<'a> Scanner<'a> {
    fn new(line: &'a str) -> Self {
        Self { line, rest: line.as_bytes() }
    }

    /// The byte offset of the next byte in the line.
    fn column(&self) -> usize {
        #[allow(clippy::arithmetic_side_effects, reason = "rest is always a suffix of line")]
        let column = self.line.len() - self.rest.len();
        column
    }

    /// A syntax error at the next byte.
    fn syntax(&self) -> TraceErrorKind {
        TraceErrorKind::Syntax { column: self.column() }
    }

    fn peek(&self) -> Option<u8> {
        self.rest.first().copied()
    }

    fn skip_ws(&mut self) {
        self.rest = self.rest.trim_ascii_start();
    }

    /// Consumes `literal` when the text goes on with it.
    fn eat(&mut self, literal: &[u8]) -> bool {
        match self.rest.strip_prefix(literal) {
            Some(rest) => {
                self.rest = rest;
                true
            }
            None => false,
        }
    }

    /// Skips whitespace, then consumes `c` or fails where it should be.
    fn expect(&mut self, c: u8) -> Result<(), TraceErrorKind> {
        self.skip_ws();
        if self.eat(&[c]) {
            Ok(())
        } else {
            Err(self.syntax())
        }
    }

    /// A string without escapes (the format has none).
    fn string(&mut self) -> Result<&'a str, TraceErrorKind> {
        self.expect(b'"')?;
        let start = self.column();
        let len = self.rest.iter().position(|&b| b == b'"' || b == b'\\').unwrap_or(self.rest.len());
        let (_, after) = self.rest.split_at_checked(len).unwrap_or((self.rest, &[]));
        self.rest = after;
        if !self.eat(b"\"") {
            return Err(self.syntax()); // an escape, or the line ended
        }
        // The body lies between two ASCII quotes, so both ends are character boundaries.
        self.line.get(start..).and_then(|body| body.get(..len)).ok_or(TraceErrorKind::Syntax { column: start })
    }

    /// A decimal integer of `u64`. A JSON number that is not one (negative, with a fraction or
    /// an exponent, or past `u64::MAX`) is read to its end and named as such; anything else
    /// that is not a number is a syntax error where it starts.
    fn integer(&mut self) -> Result<u64, Number> {
        self.skip_ws();
        let start = self.column();
        let negative = self.eat(b"-");
        let mut value: Option<u64> = Some(0);
        let digits = self.rest.iter().take_while(|b| b.is_ascii_digit()).count();
        let (number, rest) = self.rest.split_at_checked(digits).unwrap_or((self.rest, &[]));
        for &b in number {
            let digit = u64::from(b.wrapping_sub(b'0')); // an ASCII digit, so 0..=9
            value = value.and_then(|v| v.checked_mul(10)).and_then(|v| v.checked_add(digit));
        }
        if digits == 0 {
            return Err(Number::Syntax(start)); // no digit
        }
        self.rest = rest;
        // JSON's fraction and exponent: `.` and digits, then `e` or `E`, a sign and digits.
        let mut whole = true;
        if self.rest.first() == Some(&b'.') && self.rest.get(1).is_some_and(u8::is_ascii_digit) {
            self.rest = self.rest.get(1..).map_or(&[][..], skip_digits);
            whole = false;
        }
        if matches!(self.rest.first(), Some(b'e' | b'E')) {
            let after = self.rest.get(1..).unwrap_or(&[]);
            let after = after.strip_prefix(b"+").or_else(|| after.strip_prefix(b"-")).unwrap_or(after);
            if after.first().is_some_and(u8::is_ascii_digit) {
                self.rest = skip_digits(after);
                whole = false;
            }
        }
        match value {
            _ if negative || !whole => Err(Number::NotAnInteger),
            None => Err(Number::TooLarge(u64::MAX)),
            Some(value) => Ok(value),
        }
    }

    /// A JSON number's text, whatever its form (sign, fraction, exponent).
    fn number(&mut self) -> Result<&'a str, TraceErrorKind> {
        self.skip_ws();
        let start = self.column();
        let digits_at =
            |at: usize| self.rest.get(at..).map_or(0, |r| r.iter().take_while(|b| b.is_ascii_digit()).count());
        let mut len = usize::from(self.rest.first() == Some(&b'-'));
        let whole = digits_at(len);
        if whole == 0 {
            return Err(self.syntax());
        }
        len = len.saturating_add(whole);
        let fraction = digits_at(len.saturating_add(1));
        if self.rest.get(len) == Some(&b'.') && fraction > 0 {
            len = len.saturating_add(1).saturating_add(fraction);
        }
        if matches!(self.rest.get(len), Some(b'e' | b'E')) {
            let sign = usize::from(matches!(self.rest.get(len.saturating_add(1)), Some(b'+' | b'-')));
            let at = len.saturating_add(1).saturating_add(sign);
            let exponent = digits_at(at);
            if exponent > 0 {
                len = at.saturating_add(exponent);
            }
        }
        let (_, rest) = self.rest.split_at_checked(len).unwrap_or((self.rest, &[]));
        self.rest = rest;
        // The number is ASCII, so both ends are character boundaries.
        self.line.get(start..).and_then(|t| t.get(..len)).ok_or(TraceErrorKind::Syntax { column: start })
    }

    /// `[w, ...]` after its `[`, each weight appended to `weights`: finite numbers of at least 0.
    fn weights(&mut self, weights: &mut Vec<f32>) -> Result<(), TraceErrorKind> {
        weights.clear();
        self.skip_ws();
        if self.eat(b"]") {
            return Ok(());
        }
        loop {
            let text = self.number()?;
            match text.parse::<f32>() {
                Ok(w) if w.is_finite() && w >= 0.0 => weights.push(w),
                _ => return Err(TraceErrorKind::BadWeight),
            }
            self.skip_ws();
            if self.eat(b"]") {
                return Ok(());
            }
            if !self.eat(b",") {
                return Err(self.syntax());
            }
        }
    }

    /// `[id, ...]` after its `[`, each id appended to `ids`; `key` names the array in errors.
    fn ids(&mut self, ids: &mut Vec<u32>, key: &str) -> Result<(), TraceErrorKind> {
        ids.clear();
        self.skip_ws();
        if self.eat(b"]") {
            return Ok(());
        }
        loop {
            let id = self.integer().map_err(|e| e.of(key))?;
            ids.push(u32::try_from(id).map_err(|_| Number::TooLarge(u32::MAX.into()).of(key))?);
            self.skip_ws();
            if self.eat(b"]") {
                return Ok(());
            }
            if !self.eat(b",") {
                return Err(self.syntax());
            }
        }
    }
}

/// Reads `{"key": value, ...}` with this format's values, calling `field` for each pair.
pub(super) fn parse_object<'a>(
    line: &'a str,
    arrays: &mut Arrays,
    mut field: impl FnMut(&'a str, Value<'a>) -> Result<(), TraceErrorKind>,
) -> Result<(), TraceErrorKind> {
    let mut s = Scanner::new(line);
    s.expect(b'{')?;
    s.skip_ws();
    if !s.eat(b"}") {
        loop {
            let key = s.string()?;
            s.expect(b':')?;
            s.skip_ws();
            let value = match s.peek() {
                Some(b'"') => Value::Str(s.string()?),
                Some(b't') if s.eat(b"true") => Value::Bool(true),
                Some(b'f') if s.eat(b"false") => Value::Bool(false),
                Some(b'[') if key == "weights" && s.eat(b"[") => {
                    s.weights(&mut arrays.weights)?;
                    Value::Weights
                }
                Some(b'[') if s.eat(b"[") => {
                    s.ids(&mut arrays.ids, key)?;
                    Value::Ints
                }
                _ => Value::Int(s.integer().map_err(|e| e.of(key))?),
            };
            field(key, value)?;
            s.skip_ws();
            if s.eat(b"}") {
                break;
            }
            if !s.eat(b",") {
                return Err(s.syntax());
            }
        }
    }
    s.skip_ws();
    if s.peek().is_some() {
        return Err(s.syntax());
    }
    Ok(())
}

/// Records `value` for `key` once; a repeated key is an error.
fn set<T>(slot: &mut Option<T>, value: Option<T>, key: &'static str) -> Result<(), TraceErrorKind> {
    if slot.is_some() {
        return Err(TraceErrorKind::UnexpectedKey);
    }
    *slot = Some(value.ok_or(TraceErrorKind::BadValue(key))?);
    Ok(())
}

/// An integer value of `key` as `u32`: `None` when the value is not an integer, an error when
/// it is past `u32::MAX`.
fn u32_of(value: &Value<'_>, key: &'static str) -> Result<Option<u32>, TraceErrorKind> {
    match *value {
        Value::Int(n) => u32::try_from(n).map(Some).map_err(|_| Number::TooLarge(u32::MAX.into()).of(key)),
        _ => Ok(None),
    }
}

/// Reads a header line: the shape, and the format version (1 ..= [`VERSION`]).
pub(super) fn parse_header(line: &str) -> Result<(TraceHeader, u64), TraceErrorKind> {
    let (mut format, mut version, mut experts, mut layers, mut top_k) = (None, None, None, None, None);
    parse_object(line, &mut Arrays::default(), |key, value| match key {
        "format" => set(&mut format, matches!(value, Value::Str(FORMAT)).then_some(()), "format"),
        "version" => {
            let known = match value {
                Value::Int(v @ 1..=VERSION) => Some(v),
                _ => None,
            };
            set(&mut version, known, "version")
        }
        "experts" => set(&mut experts, u32_of(&value, "experts")?, "experts"),
        "layers" => set(&mut layers, u32_of(&value, "layers")?, "layers"),
        "top_k" => set(&mut top_k, u32_of(&value, "top_k")?, "top_k"),
        _ => Err(TraceErrorKind::UnexpectedKey),
    })
    .map_err(|e| match e {
        TraceErrorKind::BadValue("format" | "version")
        | TraceErrorKind::NotAnInteger("version")
        | TraceErrorKind::OutOfRange { key: "version", .. } => TraceErrorKind::NotAHeader,
        other => other,
    })?;
    let (Some(()), Some(version)) = (format, version) else { return Err(TraceErrorKind::NotAHeader) };
    let header = TraceHeader {
        experts: experts.ok_or(TraceErrorKind::MissingKey("experts"))?,
        layers: layers.ok_or(TraceErrorKind::MissingKey("layers"))?,
        top_k: top_k.ok_or(TraceErrorKind::MissingKey("top_k"))?,
    };
    Ok((header, version))
}

/// A line after the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Line {
    /// A record; its ids (and weights, when `weighted`) are in the scratch arrays.
    Record { layer: u32, step: u64, prefill: bool, weighted: bool },
    /// The end record (version 2): the records before it and their digest.
    End { records: u64, digest: u64 },
}

/// Reads a line after the header of a trace of format `version`.
pub(super) fn parse_line(line: &str, version: u64, arrays: &mut Arrays) -> Result<Line, TraceErrorKind> {
    let (mut layer, mut step, mut prefill, mut has_ids, mut weighted) = (None, None, None, None, None);
    let (mut records, mut digest) = (None, None);
    let later = version >= 2;
    parse_object(line, arrays, |key, value| match (key, value) {
        ("layer", n @ Value::Int(_)) => set(&mut layer, u32_of(&n, "layer")?, "layer"),
        ("step", Value::Int(n)) => set(&mut step, Some(n), "step"),
        ("prefill", Value::Bool(b)) => set(&mut prefill, Some(b), "prefill"),
        ("ids", Value::Ints) => set(&mut has_ids, Some(()), "ids"),
        ("weights", Value::Weights) if later => set(&mut weighted, Some(()), "weights"),
        ("records", Value::Int(n)) if later => set(&mut records, Some(n), "records"),
        ("digest", Value::Str(hex)) if later => {
            let value = (hex.len() == 16).then(|| u64::from_str_radix(hex, 16).ok()).flatten();
            set(&mut digest, value, "digest")
        }
        // A key of this version's lines with a value of the wrong kind.
        (key, _)
            if matches!(key, "layer" | "step" | "prefill" | "ids")
                || (later && matches!(key, "weights" | "records" | "digest")) =>
        {
            Err(KEYS
                .iter()
                .copied()
                .find(|&k| k == key)
                .map_or(TraceErrorKind::UnexpectedKey, TraceErrorKind::BadValue))
        }
        _ => Err(TraceErrorKind::UnexpectedKey),
    })?;
    let record_keys = layer.is_some() || step.is_some() || prefill.is_some() || has_ids.is_some() || weighted.is_some();
    if records.is_some() || digest.is_some() {
        if record_keys {
            return Err(TraceErrorKind::UnexpectedKey);
        }
        return Ok(Line::End {
            records: records.ok_or(TraceErrorKind::MissingKey("records"))?,
            digest: digest.ok_or(TraceErrorKind::MissingKey("digest"))?,
        });
    }
    has_ids.ok_or(TraceErrorKind::MissingKey("ids"))?;
    Ok(Line::Record {
        layer: layer.ok_or(TraceErrorKind::MissingKey("layer"))?,
        step: step.ok_or(TraceErrorKind::MissingKey("step"))?,
        prefill: prefill.ok_or(TraceErrorKind::MissingKey("prefill"))?,
        weighted: weighted.is_some(),
    })
}
