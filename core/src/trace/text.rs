//! The trace's text form: writing lines, and the lexer and parser of the JSON subset it uses.

use alloc::vec::Vec;
use core::fmt;

use super::{TraceErrorKind, TraceHeader, FORMAT, VERSION};

/// Writes a header line.
///
/// # Errors
/// The writer's error.
pub fn write_header(out: &mut impl fmt::Write, header: TraceHeader) -> fmt::Result {
    let TraceHeader { experts, layers, top_k } = header;
    writeln!(
        out,
        "{{\"format\":\"{FORMAT}\",\"version\":{VERSION},\"experts\":{experts},\"layers\":{layers},\"top_k\":{top_k}}}"
    )
}

/// Writes one record line.
///
/// # Errors
/// The writer's error.
pub fn write_record(out: &mut impl fmt::Write, layer: u32, step: u64, prefill: bool, ids: &[u32]) -> fmt::Result {
    write!(out, "{{\"layer\":{layer},\"step\":{step},\"prefill\":{prefill},\"ids\":[")?;
    for (i, id) in ids.iter().enumerate() {
        if i > 0 {
            out.write_char(',')?;
        }
        write!(out, "{id}")?;
    }
    out.write_str("]}\n")
}

/// A value of this format's JSON subset.
pub(super) enum Value<'a> {
    Str(&'a str),
    Int(u64),
    Bool(bool),
    /// An array of integers, appended to the scratch buffer.
    Ints,
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

    /// A decimal integer of `u64`.
    fn integer(&mut self) -> Result<u64, TraceErrorKind> {
        self.skip_ws();
        let at_start = TraceErrorKind::Syntax { column: self.column() };
        let mut value: u64 = 0;
        let mut rest = self.rest;
        while let Some((&b, tail)) = rest.split_first().filter(|(b, _)| b.is_ascii_digit()) {
            let digit = u64::from(b.wrapping_sub(b'0')); // an ASCII digit, so 0..=9
            value = value.checked_mul(10).and_then(|v| v.checked_add(digit)).ok_or_else(|| at_start.clone())?;
            rest = tail;
        }
        if rest.len() == self.rest.len() {
            return Err(at_start); // no digit
        }
        self.rest = rest;
        Ok(value)
    }

    /// `[id, ...]` after its `[`, each id appended to `ids`.
    fn ids(&mut self, ids: &mut Vec<u32>) -> Result<(), TraceErrorKind> {
        ids.clear();
        self.skip_ws();
        if self.eat(b"]") {
            return Ok(());
        }
        loop {
            // An id's column is where it starts after `[` or right after its comma.
            let at_id = self.syntax();
            let id = self.integer()?;
            ids.push(u32::try_from(id).map_err(|_| at_id)?);
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
    ids: &mut Vec<u32>,
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
                Some(b'[') if s.eat(b"[") => {
                    s.ids(ids)?;
                    Value::Ints
                }
                _ => Value::Int(s.integer()?),
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

pub(super) fn parse_header(line: &str) -> Result<TraceHeader, TraceErrorKind> {
    let (mut format, mut version, mut experts, mut layers, mut top_k) = (None, None, None, None, None);
    let u32_of = |v: &Value<'_>| match v {
        Value::Int(n) => u32::try_from(*n).ok(),
        _ => None,
    };
    parse_object(line, &mut Vec::new(), |key, value| match key {
        "format" => set(&mut format, matches!(value, Value::Str(FORMAT)).then_some(()), "format"),
        "version" => set(&mut version, matches!(value, Value::Int(VERSION)).then_some(()), "version"),
        "experts" => set(&mut experts, u32_of(&value), "experts"),
        "layers" => set(&mut layers, u32_of(&value), "layers"),
        "top_k" => set(&mut top_k, u32_of(&value), "top_k"),
        _ => Err(TraceErrorKind::UnexpectedKey),
    })
    .map_err(|e| match e {
        TraceErrorKind::BadValue("format" | "version") => TraceErrorKind::NotAHeader,
        other => other,
    })?;
    if format.is_none() || version.is_none() {
        return Err(TraceErrorKind::NotAHeader);
    }
    Ok(TraceHeader {
        experts: experts.ok_or(TraceErrorKind::MissingKey("experts"))?,
        layers: layers.ok_or(TraceErrorKind::MissingKey("layers"))?,
        top_k: top_k.ok_or(TraceErrorKind::MissingKey("top_k"))?,
    })
}

pub(super) fn parse_record(line: &str, ids: &mut Vec<u32>) -> Result<(u32, u64, bool), TraceErrorKind> {
    let (mut layer, mut step, mut prefill, mut has_ids) = (None, None, None, None);
    parse_object(line, ids, |key, value| match (key, value) {
        ("layer", Value::Int(n)) => set(&mut layer, u32::try_from(n).ok(), "layer"),
        ("step", Value::Int(n)) => set(&mut step, Some(n), "step"),
        ("prefill", Value::Bool(b)) => set(&mut prefill, Some(b), "prefill"),
        ("ids", Value::Ints) => set(&mut has_ids, Some(()), "ids"),
        ("layer" | "step" | "prefill" | "ids", _) => Err(TraceErrorKind::BadValue(match key {
            "layer" => "layer",
            "step" => "step",
            "prefill" => "prefill",
            _ => "ids",
        })),
        _ => Err(TraceErrorKind::UnexpectedKey),
    })?;
    has_ids.ok_or(TraceErrorKind::MissingKey("ids"))?;
    Ok((
        layer.ok_or(TraceErrorKind::MissingKey("layer"))?,
        step.ok_or(TraceErrorKind::MissingKey("step"))?,
        prefill.ok_or(TraceErrorKind::MissingKey("prefill"))?,
    ))
}
