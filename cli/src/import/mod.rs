//! `expertslab trace import`: routing captured by other tools, written as an expertslab trace.
//!
//! Two shapes are read:
//!
//! - **JSON lines**, one record per token and layer, the keys named on the command line
//!   (`--layer-key layer --ids-key experts --token-key token_idx`, and `--sequence-key
//!   problem_id` when the capture holds several sequences). Other keys are ignored. Records may
//!   come in any order. Sequences follow one another in the order they first appear; within a
//!   sequence its tokens are steps in ascending token order (gaps close up), and its first token
//!   is a prefill step. Without `--sequence-key` the whole file is one sequence. With
//!   `--weights-key gating_probs` every record's router weights (one per id, in the same order:
//!   finite numbers of at least 0) are kept in the trace.
//! - **One JSON document** whose key `--selections-key` holds `selections[token][layer] =
//!   [ids]`: one sequence, token `t` is step `t`, token 0 the prefill step. Other keys are
//!   skipped as they are read.
//!
//! Every (token, layer) becomes one trace record. `top_k` is the number of ids of a record, the
//! same for all; the layer count is the largest layer plus one; the expert count is `--experts`
//! or the largest id plus one. A record names each expert once (so it has at most as many ids
//! as there are experts), a JSON-lines record gives each key once, and every token has a record
//! for each layer any record names (as a selections document's tokens all have the same
//! layers). Numbers are integers of at least 0 written without a fraction or an exponent. A UTF-8
//! byte order mark at the start of the input is skipped. Anything else is an error naming the
//! record (the line, or the token and layer) and what is wrong with it. The input is read as a
//! stream; what is kept until the trace is written is its ids and, per record, its position.

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Write};
use std::path::PathBuf;

use clap::{ArgGroup, Args as ClapArgs};
use expertslab_std::trace::{RecordLine, TraceHeader, TraceWriter};
use serde::de::{self, DeserializeSeed, MapAccess, Visitor};
use serde_json::Value;

use crate::error::CliError;
use crate::output::OutputFile;
use crate::units::format_size;

mod selections;
#[cfg(test)]
mod tests;

pub use selections::read_selections;

/// How records become steps, shown under `--help`.
const ORDER: &str = "JSON lines may come in any order. Sequences are written one after another in the order \
they first appear (the whole file is one sequence without --sequence-key); a sequence's tokens are steps in \
ascending token order, and its first token is a prefill step. A selections document is one sequence: token t \
is step t, token 0 the prefill step. Every record carries the same number of ids (the trace's top_k), \
each expert once, and every token has a record for each layer any record names. Numbers are integers of at \
least 0 without a fraction or an exponent; a UTF-8 byte order mark at the start of the input is skipped.";

/// `trace import`'s arguments.
#[derive(Debug, ClapArgs)]
#[command(group(ArgGroup::new("shape").required(true).args(["layer_key", "selections_key"])), after_help = ORDER)]
pub struct Args {
    /// The capture: JSON lines (with --layer-key, --ids-key, --token-key) or one JSON document
    /// (with --selections-key).
    input: PathBuf,
    /// The expertslab trace to write.
    #[arg(long)]
    out: PathBuf,
    /// JSON lines: the key of a record's layer (an integer).
    #[arg(long, requires_all = ["ids_key", "token_key"], conflicts_with = "selections_key")]
    layer_key: Option<String>,
    /// JSON lines: the key of a record's expert ids (an array of integers).
    #[arg(long, requires = "layer_key")]
    ids_key: Option<String>,
    /// JSON lines: the key of a record's token position in its sequence (an integer).
    #[arg(long, requires = "layer_key")]
    token_key: Option<String>,
    /// JSON lines: the key naming a record's sequence (a string or an integer); sequences are
    /// written in the order they first appear.
    #[arg(long, requires = "layer_key")]
    sequence_key: Option<String>,
    /// JSON lines: the key of a record's router weights (an array of numbers, one per id in the
    /// same order, each finite and at least 0), kept in the trace; every record needs it.
    #[arg(long, requires = "layer_key")]
    weights_key: Option<String>,
    /// One JSON document: the key holding selections[token][layer] = [ids].
    #[arg(long)]
    selections_key: Option<String>,
    /// Experts per layer (default: the largest id seen plus one); an id at or past it is an error.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    experts: Option<u32>,
}

/// The keys of a JSON-lines record.
#[derive(Debug, Clone, Copy)]
pub struct LineKeys<'a> {
    /// The layer's key.
    pub layer: &'a str,
    /// The ids' key.
    pub ids: &'a str,
    /// The token position's key.
    pub token: &'a str,
    /// The sequence's key, if records carry one.
    pub sequence: Option<&'a str>,
    /// The router weights' key, if they are kept.
    pub weights: Option<&'a str>,
}

pub fn run(args: &Args) -> Result<(), CliError> {
    let file = File::open(&args.input).map_err(|e| CliError::io(&args.input, e))?;
    let input = BufReader::new(file);
    let bad = |reason: String| CliError::unusable(&args.input, reason);
    let routing = match (&args.layer_key, &args.ids_key, &args.token_key, &args.selections_key) {
        (Some(layer), Some(ids), Some(token), _) => {
            let keys = LineKeys {
                layer,
                ids,
                token,
                sequence: args.sequence_key.as_deref(),
                weights: args.weights_key.as_deref(),
            };
            read_lines(input, keys, args.experts).map_err(|e| match e {
                ImportError::Read(e) => CliError::io(&args.input, e),
                ImportError::Bad(reason) => bad(reason),
            })?
        }
        (_, _, _, Some(key)) => read_selections(input, key, args.experts).map_err(bad)?,
        // clap requires one shape, and all three keys with --layer-key.
        _ => return Err(CliError::Usage("give --layer-key, --ids-key and --token-key, or --selections-key".into())),
    };
    let mut out = OutputFile::create(&args.out)?;
    routing.write(&mut out).map_err(|e| CliError::io(&args.out, e))?;
    out.commit()?;
    let h = routing.header;
    // On stderr, as `synth` does: the trace may be written to standard output.
    writeln!(
        io::stderr().lock(),
        "{}: {} tokens in {} sequence(s), {} layers × {} experts, top-{} -> {}",
        args.input.display(),
        routing.steps,
        routing.sequences,
        h.layers,
        h.experts,
        h.top_k,
        args.out.display()
    )?;
    Ok(())
}

/// Why an import failed: reading the input, or what it holds.
#[derive(Debug)]
pub enum ImportError {
    /// The input could not be read.
    Read(io::Error),
    /// A record (named in the text) is malformed.
    Bad(String),
}

impl fmt::Display for ImportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Read(e) => write!(f, "{e}"),
            Self::Bad(reason) => f.write_str(reason),
        }
    }
}

/// One (token, layer) of the capture: its order key and where its ids start.
#[derive(Debug, Clone, Copy)]
struct Row {
    sequence: u32,
    token: u64,
    layer: u32,
    /// The 1-based input line (JSON lines), for errors.
    line: u64,
    start: usize,
}

/// The ids and rows read so far, checked as they come.
#[derive(Debug, Default)]
struct Builder {
    experts: Option<u32>,
    top_k: Option<(usize, String)>,
    max_id: Option<u32>,
    max_layer: u32,
    ids: Vec<u32>,
    /// The router weights, one per id, when the records carry them.
    weights: Vec<f32>,
    rows: Vec<Row>,
    /// One record's ids, sorted to find repeats.
    sorted: Vec<u32>,
}

impl Builder {
    fn new(experts: Option<u32>) -> Self {
        Self { experts, ..Self::default() }
    }

    /// Appends one record's ids, `at` naming it in errors.
    fn push(&mut self, row: Row, ids: &[Value], at: &dyn fmt::Display) -> Result<(), String> {
        if ids.is_empty() {
            return Err(format!("{at}: no expert ids"));
        }
        if let Some(experts) = self.experts.filter(|&e| ids.len() > e as usize) {
            return Err(format!(
                "{at}: {} expert ids, more than the {experts} experts of --experts (a token picks an expert once)",
                ids.len()
            ));
        }
        match &self.top_k {
            Some((k, first)) if *k != ids.len() => {
                return Err(format!("{at}: {} expert ids, but {first} has {k} (a trace has one top-k)", ids.len()));
            }
            Some(_) => {}
            None => self.top_k = Some((ids.len(), at.to_string())),
        }
        let start = self.ids.len();
        for id in ids {
            let id = match integer(id).map(u32::try_from) {
                Ok(Ok(id)) => Ok(id),
                Ok(Err(_)) => Err(format!("{at}: expert id {id} is past 2^32 - 1")),
                Err(what) => Err(format!("{at}: expert id {id} {what}")),
            }
            .inspect_err(|_| self.ids.truncate(start))?;
            if let Some(experts) = self.experts.filter(|&e| id >= e) {
                self.ids.truncate(start);
                return Err(format!("{at}: expert id {id} is not below --experts {experts}"));
            }
            self.max_id = self.max_id.max(Some(id));
            self.ids.push(id);
        }
        self.sorted.clear();
        self.sorted.extend_from_slice(self.ids.get(start..).unwrap_or(&[]));
        self.sorted.sort_unstable();
        if let Some(pair) = self.sorted.windows(2).find(|w| w[0] == w[1]) {
            self.ids.truncate(start);
            return Err(format!("{at}: expert id {} is given twice (a token picks an expert once)", pair[0]));
        }
        self.max_layer = self.max_layer.max(row.layer);
        self.rows.push(Row { start, ..row });
        Ok(())
    }

    /// Appends the weights of the record just pushed (one per id), or takes the record back.
    fn push_weights(&mut self, weights: &[Value], key: &str, at: &dyn fmt::Display) -> Result<(), String> {
        let Some(row) = self.rows.last() else { return Ok(()) };
        let count = self.ids.len().saturating_sub(row.start);
        let result = if weights.len() == count {
            weights.iter().try_for_each(|w| match w.as_f64().map(|w| w as f32) {
                Some(weight) if weight.is_finite() && weight >= 0.0 => {
                    self.weights.push(weight);
                    Ok(())
                }
                _ => Err(format!("{at}: \"{key}\" holds {w}, not a finite number of at least 0")),
            })
        } else {
            Err(format!("{at}: \"{key}\" has {} weights for {count} ids (one per id)", weights.len()))
        };
        if result.is_err() {
            let start = row.start;
            self.rows.pop();
            self.ids.truncate(start);
            self.weights.truncate(start);
        }
        result
    }

    /// Orders the rows (sequence, token, layer), refuses repeats and numbers the steps.
    fn finish(mut self, name: impl Fn(&Row) -> String) -> Result<Routing, String> {
        let Some((top_k, _)) = self.top_k else { return Err("no records".into()) };
        let layers =
            self.max_layer.checked_add(1).ok_or_else(|| "a layer index of 2^32 - 1 is too large".to_string())?;
        let experts = match (self.experts, self.max_id) {
            (Some(experts), _) => experts,
            (None, max) => {
                max.unwrap_or(0).checked_add(1).ok_or_else(|| "an expert id of 2^32 - 1 is too large".to_string())?
            }
        };
        // Every record's ids were held in memory; a count past u32 cannot be a trace's top_k.
        let top_k = u32::try_from(top_k).map_err(|_| "too many ids in one record".to_string())?;
        let key = |r: &Row| (r.sequence, r.token, r.layer);
        // Stable: of two repeats, the first read stays first.
        self.rows.sort_by_key(key);
        if let Some(pair) = self.rows.windows(2).find(|w| key(&w[0]) == key(&w[1])) {
            return Err(format!("{} repeats {}", name(&pair[1]), name(&pair[0])));
        }
        // Every token has each layer any record names: its rows, in layer order without repeats,
        // are those layers.
        let mut named: Vec<u32> = self.rows.iter().map(|r| r.layer).collect();
        named.sort_unstable();
        named.dedup();
        for token in self.rows.chunk_by(|a, b| (a.sequence, a.token) == (b.sequence, b.token)) {
            let missing = named.iter().zip(token).find(|(&n, r)| n != r.layer).map(|(&n, _)| n);
            let missing = missing.or_else(|| named.get(token.len()).copied());
            if let (Some(layer), Some(first)) = (missing, token.first()) {
                return Err(format!(
                    "{}: its token has no layer {layer}, which other tokens have (every token needs the same layers)",
                    name(first)
                ));
            }
        }
        let steps = steps_of(&self.rows).last().map_or(0, |(step, _, _)| step.saturating_add(1));
        let sequences = self.rows.chunk_by(|a, b| a.sequence == b.sequence).count();
        Ok(Routing {
            header: TraceHeader { experts, layers, top_k },
            steps,
            sequences,
            ids: self.ids,
            weights: self.weights,
            rows: self.rows,
        })
    }
}

/// The rows, ordered, with their step and whether it is a prefill step: each new (sequence,
/// token) is the next step, and a sequence's first token is a prefill step.
fn steps_of(rows: &[Row]) -> impl Iterator<Item = (u64, bool, &Row)> {
    let mut first: Option<(u32, u64)> = None;
    let mut current: Option<(u32, u64)> = None;
    let mut step = 0u64;
    rows.iter().map(move |r| {
        let token = Some((r.sequence, r.token));
        if first.is_none_or(|(s, _)| s != r.sequence) {
            first = token;
        }
        if current != token {
            step = if current.is_some() { step.saturating_add(1) } else { 0 };
            current = token;
        }
        (step, first == token, r)
    })
}

/// A capture read and checked, ready to write.
#[derive(Debug)]
pub struct Routing {
    header: TraceHeader,
    /// Tokens (steps).
    steps: u64,
    sequences: usize,
    ids: Vec<u32>,
    /// One per id when the capture's weights were kept, else empty.
    weights: Vec<f32>,
    /// Ordered by (sequence, token, layer).
    rows: Vec<Row>,
}

impl Routing {
    /// Writes the trace: the header, then one record per (token, layer), steps in order, then
    /// the end record.
    pub fn write(&self, out: &mut impl Write) -> io::Result<()> {
        let format = |_| io::Error::other("formatting a trace line");
        let mut line = String::new();
        let mut writer = TraceWriter::start(&mut line, self.header).map_err(format)?;
        out.write_all(line.as_bytes())?;
        let k = self.header.top_k as usize;
        for (step, prefill, r) in steps_of(&self.rows) {
            line.clear();
            let span = r.start..r.start.saturating_add(k);
            let ids = self.ids.get(span.clone()).unwrap_or(&[]);
            let weights = self.weights.get(span);
            writer.record(&mut line, &RecordLine { layer: r.layer, step, prefill, ids, weights }).map_err(format)?;
            out.write_all(line.as_bytes())?;
        }
        line.clear();
        writer.finish(&mut line).map_err(format)?;
        out.write_all(line.as_bytes())
    }
}

/// The UTF-8 byte order mark, skipped at the start of the input.
const BOM: &str = "\u{feff}";

/// A JSON value as an integer of at least 0, or what it is instead ("is negative", ...).
fn integer(value: &Value) -> Result<u64, &'static str> {
    let Value::Number(n) = value else { return Err("is not a number") };
    if let Some(n) = n.as_u64() {
        return Ok(n);
    }
    // Not a u64: negative, past u64 (read as a float), or written with a fraction or exponent.
    let float = n.as_f64().unwrap_or(f64::NAN);
    Err(if n.is_i64() || float < 0.0 {
        "is negative"
    } else if float >= 18_446_744_073_709_551_616.0 {
        "is past 2^64 - 1"
    } else if float.fract() != 0.0 {
        "is not an integer"
    } else {
        "is not written as an integer (no fraction or exponent)"
    })
}

/// One JSON-lines record: a JSON object whose keys are all different (JSON readers differ on
/// which of two values wins).
fn read_record(text: &str) -> Result<serde_json::Map<String, Value>, String> {
    let mut repeated = None;
    let mut de = serde_json::Deserializer::from_str(text);
    let record = Record { repeated: &mut repeated }.deserialize(&mut de).and_then(|r| de.end().map(|()| r));
    match (record, repeated) {
        (Ok(record), _) => Ok(record),
        (Err(_), Some(key)) => Err(format!("\"{key}\" is given twice")),
        (Err(e), None) if e.is_data() => Err("not a JSON object".into()),
        (Err(e), None) => Err(format!("malformed JSON: {e}")),
    }
}

/// A JSON-lines record read into a map; a key given twice is left in `repeated` and stops it.
struct Record<'a> {
    repeated: &'a mut Option<String>,
}

impl<'de> DeserializeSeed<'de> for Record<'_> {
    type Value = serde_json::Map<String, Value>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Record<'_> {
    type Value = serde_json::Map<String, Value>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut record = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if record.contains_key(&key) {
                *self.repeated = Some(key);
                return Err(de::Error::custom("a key given twice"));
            }
            let value = map.next_value()?;
            record.insert(key, value);
        }
        Ok(record)
    }
}

/// Memory a JSON-lines record's parse may take per byte of its text, at worst: a one-digit id and
/// its comma (2 bytes) become a 32-byte JSON value in a vector that may have doubled.
const PARSE_BYTES_PER_INPUT_BYTE: u64 = 32;

/// Reads JSON lines, one record per token and layer, the keys named by `keys`.
///
/// # Errors
/// [`ImportError::Read`] when the input cannot be read; [`ImportError::Bad`] naming the first bad
/// line (or the repeated pair of lines) and what is wrong.
pub fn read_lines(mut input: impl BufRead, keys: LineKeys<'_>, experts: Option<u32>) -> Result<Routing, ImportError> {
    let mut builder = Builder::new(experts);
    let mut sequences: HashMap<String, u32> = HashMap::new();
    let mut text = String::new();
    let mut line = 0u64;
    loop {
        text.clear();
        line = line.saturating_add(1);
        match input.read_line(&mut text) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                return Err(ImportError::Bad(format!("line {line}: not UTF-8 text")));
            }
            Err(e) => return Err(ImportError::Read(e)),
        }
        if text.trim().is_empty() {
            continue;
        }
        let at = format!("line {line}");
        let bad = |what: String| ImportError::Bad(format!("{at}: {what}"));
        // A record is parsed whole: refuse one its parse could take more memory than planned.
        let need = u64::try_from(text.len()).unwrap_or(u64::MAX).saturating_mul(PARSE_BYTES_PER_INPUT_BYTE);
        let budget = crate::limits::memory_budget();
        if need > budget {
            return Err(bad(format!(
                "a record of {} may need {} of memory to parse; a command plans for at most {} here",
                format_size(u64::try_from(text.len()).unwrap_or(u64::MAX)),
                format_size(need),
                format_size(budget)
            )));
        }
        // A byte order mark may start the input.
        let json = if line == 1 { text.strip_prefix(BOM).unwrap_or(&text) } else { &text };
        let record = read_record(json).map_err(bad)?;
        let field = |key: &str| record.get(key).ok_or_else(|| bad(format!("no \"{key}\" key")));
        let integer = |key: &str| integer(field(key)?).map_err(|what| bad(format!("\"{key}\" {what}")));
        let layer =
            u32::try_from(integer(keys.layer)?).map_err(|_| bad(format!("\"{}\" is past 2^32 - 1", keys.layer)))?;
        let token = integer(keys.token)?;
        let ids = field(keys.ids)?.as_array().ok_or_else(|| bad(format!("\"{}\" is not an array", keys.ids)))?;
        let sequence = match keys.sequence {
            None => 0,
            Some(key) => {
                let name = match field(key)? {
                    v @ (Value::String(_) | Value::Number(_)) => v.to_string(),
                    _ => return Err(bad(format!("\"{key}\" is not a string or a number"))),
                };
                let next = u32::try_from(sequences.len()).map_err(|_| bad("too many sequences".into()))?;
                *sequences.entry(name).or_insert(next)
            }
        };
        builder.push(Row { sequence, token, layer, line, start: 0 }, ids, &at).map_err(ImportError::Bad)?;
        if let Some(key) = keys.weights {
            let weights = field(key)?.as_array().ok_or_else(|| bad(format!("\"{key}\" is not an array")))?;
            builder.push_weights(weights, key, &at).map_err(ImportError::Bad)?;
        }
    }
    let token = |r: &Row| format!("token {}", r.token);
    builder
        .finish(|r| match keys.sequence {
            Some(_) => format!("line {} ({}, layer {} of its sequence)", r.line, token(r), r.layer),
            None => format!("line {} ({}, layer {})", r.line, token(r), r.layer),
        })
        .map_err(ImportError::Bad)
}
