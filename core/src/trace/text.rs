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

/// The keys of the format, which errors name.
const KEYS: [&str; 9] = ["format", "version", "experts", "layers", "top_k", "layer", "step", "prefill", "ids"];

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
                    s.ids(ids, key)?;
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

pub(super) fn parse_header(line: &str) -> Result<TraceHeader, TraceErrorKind> {
    let (mut format, mut version, mut experts, mut layers, mut top_k) = (None, None, None, None, None);
    parse_object(line, &mut Vec::new(), |key, value| match key {
        "format" => set(&mut format, matches!(value, Value::Str(FORMAT)).then_some(()), "format"),
        "version" => set(&mut version, matches!(value, Value::Int(VERSION)).then_some(()), "version"),
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
        ("layer", n @ Value::Int(_)) => set(&mut layer, u32_of(&n, "layer")?, "layer"),
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
