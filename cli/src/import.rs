//! `expertslab trace import`: routing captured by other tools, written as an expertslab trace.
//!
//! Two shapes are read:
//!
//! - **JSON lines**, one record per token and layer, the keys named on the command line
//!   (`--layer-key layer --ids-key experts --token-key token_idx`, and `--sequence-key
//!   problem_id` when the capture holds several sequences). Other keys are ignored. Records may
//!   come in any order. Sequences follow one another in the order they first appear; within a
//!   sequence its tokens are steps in ascending token order (gaps close up), and its first token
//!   is a prefill step. Without `--sequence-key` the whole file is one sequence.
//! - **One JSON document** whose key `--selections-key` holds `selections[token][layer] =
//!   [ids]`: one sequence, token `t` is step `t`, token 0 the prefill step. Other keys are
//!   skipped as they are read.
//!
//! Every (token, layer) becomes one trace record. `top_k` is the number of ids of a record, the
//! same for all; the layer count is the largest layer plus one; the expert count is `--experts`
//! or the largest id plus one. Anything else is an error naming the record (the line, or the
//! token and layer) and what is wrong with it. The input is read as a stream; what is kept until
//! the trace is written is its ids and, per record, its position.

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Write};
use std::path::PathBuf;

use clap::{ArgGroup, Args as ClapArgs};
use expertslab_std::trace::{write_header, write_record, TraceHeader};
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use crate::error::CliError;
use crate::output::OutputFile;

/// How records become steps, shown under `--help`.
const ORDER: &str = "JSON lines may come in any order. Sequences are written one after another in the order \
they first appear (the whole file is one sequence without --sequence-key); a sequence's tokens are steps in \
ascending token order, and its first token is a prefill step. A selections document is one sequence: token t \
is step t, token 0 the prefill step. Every record carries the same number of ids (the trace's top_k).";

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
}

pub fn run(args: &Args) -> Result<(), CliError> {
    let file = File::open(&args.input).map_err(|e| CliError::io(&args.input, e))?;
    let input = BufReader::new(file);
    let bad = |reason: String| CliError::unusable(&args.input, reason);
    let routing = match (&args.layer_key, &args.ids_key, &args.token_key, &args.selections_key) {
        (Some(layer), Some(ids), Some(token), _) => {
            let keys = LineKeys { layer, ids, token, sequence: args.sequence_key.as_deref() };
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
    rows: Vec<Row>,
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
        match &self.top_k {
            Some((k, first)) if *k != ids.len() => {
                return Err(format!("{at}: {} expert ids, but {first} has {k} (a trace has one top-k)", ids.len()));
            }
            Some(_) => {}
            None => self.top_k = Some((ids.len(), at.to_string())),
        }
        let start = self.ids.len();
        for id in ids {
            let Some(id) = id.as_u64().and_then(|id| u32::try_from(id).ok()) else {
                self.ids.truncate(start);
                return Err(format!("{at}: expert id {id} is not an integer in 0..2^32"));
            };
            if let Some(experts) = self.experts.filter(|&e| id >= e) {
                self.ids.truncate(start);
                return Err(format!("{at}: expert id {id} is not below --experts {experts}"));
            }
            self.max_id = self.max_id.max(Some(id));
            self.ids.push(id);
        }
        self.max_layer = self.max_layer.max(row.layer);
        self.rows.push(Row { start, ..row });
        Ok(())
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
        let steps = steps_of(&self.rows).last().map_or(0, |(step, _, _)| step.saturating_add(1));
        let sequences = self.rows.chunk_by(|a, b| a.sequence == b.sequence).count();
        Ok(Routing { header: TraceHeader { experts, layers, top_k }, steps, sequences, ids: self.ids, rows: self.rows })
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
    /// Ordered by (sequence, token, layer).
    rows: Vec<Row>,
}

impl Routing {
    /// Writes the trace: the header, then one record per (token, layer), steps in order.
    pub fn write(&self, out: &mut impl Write) -> io::Result<()> {
        let mut line = String::new();
        // Writing to a String cannot fail.
        let _ = write_header(&mut line, self.header);
        out.write_all(line.as_bytes())?;
        let k = self.header.top_k as usize;
        for (step, prefill, r) in steps_of(&self.rows) {
            line.clear();
            let ids = self.ids.get(r.start..r.start.saturating_add(k)).unwrap_or(&[]);
            let _ = write_record(&mut line, r.layer, step, prefill, ids);
            out.write_all(line.as_bytes())?;
        }
        Ok(())
    }
}

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
        let record: serde_json::Map<String, Value> = serde_json::from_str(&text)
            .map_err(|e| bad(if e.is_data() { "not a JSON object".into() } else { format!("malformed JSON: {e}") }))?;
        let field = |key: &str| record.get(key).ok_or_else(|| bad(format!("no \"{key}\" key")));
        let integer =
            |key: &str| field(key)?.as_u64().ok_or_else(|| bad(format!("\"{key}\" is not an integer of at least 0")));
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
    }
    let token = |r: &Row| format!("token {}", r.token);
    builder
        .finish(|r| match keys.sequence {
            Some(_) => format!("line {} ({}, layer {} of its sequence)", r.line, token(r), r.layer),
            None => format!("line {} ({}, layer {})", r.line, token(r), r.layer),
        })
        .map_err(ImportError::Bad)
}

/// Reads one JSON document whose key `key` holds `selections[token][layer] = [ids]`; other keys
/// are skipped unread.
///
/// # Errors
/// The problem, naming the token and layer where it lies in one, and serde's line and column.
pub fn read_selections(input: impl io::Read, key: &str, experts: Option<u32>) -> Result<Routing, String> {
    let mut builder = Builder::new(experts);
    let mut de = serde_json::Deserializer::from_reader(input);
    let found = Document { key, builder: &mut builder }.deserialize(&mut de).map_err(|e| e.to_string())?;
    de.end().map_err(|e| format!("after the document: {e}"))?;
    if !found {
        return Err(format!("the document has no \"{key}\" key"));
    }
    builder.finish(|r| format!("token {}, layer {}", r.token, r.layer))
}

/// The top-level object: finds `key` and reads its selections into `builder`.
struct Document<'a> {
    key: &'a str,
    builder: &'a mut Builder,
}

impl<'de> DeserializeSeed<'de> for Document<'_> {
    type Value = bool;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Document<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a JSON object with a \"{}\" key", self.key)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
        let mut found = false;
        while let Some(name) = map.next_key::<String>()? {
            if name != self.key {
                map.next_value::<IgnoredAny>()?;
            } else if found {
                return Err(de::Error::custom(format!("\"{name}\" is given twice")));
            } else {
                map.next_value_seed(Tokens { builder: &mut *self.builder })?;
                found = true;
            }
        }
        Ok(found)
    }
}

/// `selections`: an array of tokens.
struct Tokens<'a> {
    builder: &'a mut Builder,
}

impl<'de> DeserializeSeed<'de> for Tokens<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Tokens<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of tokens")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut layers_of_first = None;
        let mut token = 0u64;
        while let Some(layers) = seq.next_element_seed(Layers { token, builder: &mut *self.builder })? {
            match layers_of_first {
                None => layers_of_first = Some(layers),
                Some(first) if first != layers => {
                    return Err(de::Error::custom(format!("token {token} has {layers} layers, token 0 has {first}")));
                }
                Some(_) => {}
            }
            token = token.saturating_add(1);
        }
        Ok(())
    }
}

/// One token: an array of layers, each an array of ids. Gives the number of layers.
struct Layers<'a> {
    token: u64,
    builder: &'a mut Builder,
}

impl<'de> DeserializeSeed<'de> for Layers<'_> {
    type Value = u32;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<u32, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Layers<'_> {
    type Value = u32;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "token {}: an array of layers, each an array of expert ids", self.token)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<u32, A::Error> {
        let mut layer = 0u32;
        let token = self.token;
        while let Some(ids) = seq.next_element::<Value>()? {
            let at = format!("token {token}, layer {layer}");
            let ids = ids.as_array().ok_or_else(|| de::Error::custom(format!("{at}: not an array of expert ids")))?;
            let row = Row { sequence: 0, token, layer, line: 0, start: 0 };
            self.builder.push(row, ids, &at).map_err(de::Error::custom)?;
            layer = layer.checked_add(1).ok_or_else(|| de::Error::custom(format!("token {token}: too many layers")))?;
        }
        Ok(layer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use expertslab_std::trace::Trace;

    const KEYS: LineKeys<'static> = LineKeys { layer: "layer", ids: "experts", token: "token_idx", sequence: None };
    const BY_PROBLEM: LineKeys<'static> = LineKeys { sequence: Some("problem_id"), ..KEYS };

    fn trace_of(routing: &Routing) -> Trace {
        let mut bytes = Vec::new();
        routing.write(&mut bytes).unwrap();
        Trace::parse(std::str::from_utf8(&bytes).unwrap()).unwrap()
    }

    /// (layer, step, prefill, ids) of every record.
    fn records(trace: &Trace) -> Vec<(u32, u64, bool, Vec<u32>)> {
        trace.records().iter().map(|r| (r.layer, r.step, r.prefill, trace.ids(r).to_vec())).collect()
    }

    fn lines(text: &str, keys: LineKeys<'_>, experts: Option<u32>) -> Result<Routing, String> {
        read_lines(text.as_bytes(), keys, experts).map_err(|e| e.to_string())
    }

    #[test]
    fn lines_in_any_order_become_steps_in_order_sequence_by_sequence() {
        let text = r#"{"problem_id":"b","token_idx":7,"layer":1,"experts":[3,1],"score":[0.5,0.25]}
{"problem_id":"a","token_idx":2,"layer":0,"experts":[0,2]}

{"problem_id":"b","token_idx":7,"layer":0,"experts":[4,4]}
{"problem_id":"b","token_idx":5,"layer":0,"experts":[5,0]}
{"problem_id":"a","token_idx":0,"layer":0,"experts":[1,2]}
{"problem_id":"a","token_idx":0,"layer":1,"experts":[2,3]}
"#;
        let routing = lines(text, BY_PROBLEM, None).unwrap();
        assert_eq!((routing.steps, routing.sequences), (4, 2));
        let trace = trace_of(&routing);
        assert_eq!(trace.header(), TraceHeader { experts: 6, layers: 2, top_k: 2 });
        // "b" appears first: its tokens 5 and 7 are steps 0 and 1, then "a"'s 0 and 2.
        assert_eq!(
            records(&trace),
            [
                (0, 0, true, vec![5, 0]),
                (0, 1, false, vec![4, 4]),
                (1, 1, false, vec![3, 1]),
                (0, 2, true, vec![1, 2]),
                (1, 2, true, vec![2, 3]),
                (0, 3, false, vec![0, 2]),
            ]
        );
        // Without a sequence key the file is one sequence, ordered by token.
        let one = trace_of(
            &lines(text.replace(r#""problem_id":"a","#, "").as_str(), KEYS, Some(9)).unwrap_or_else(|e| panic!("{e}")),
        );
        assert_eq!(one.header().experts, 9);
        assert_eq!(records(&one).first(), Some(&(0, 0, true, vec![1, 2])));
    }

    #[test]
    fn bad_lines_are_named_with_their_problem() {
        let good = r#"{"layer":0,"token_idx":0,"experts":[1,2]}"#;
        let cases: [(&str, &str); 14] = [
            ("[1,2]", "line 2: not a JSON object"),
            (r#"{"layer":0,"#, "line 2: malformed JSON"),
            (r#"{"token_idx":1,"experts":[1,2]}"#, r#"line 2: no "layer" key"#),
            (r#"{"layer":0,"experts":[1,2]}"#, r#"line 2: no "token_idx" key"#),
            (r#"{"layer":0,"token_idx":1}"#, r#"line 2: no "experts" key"#),
            (r#"{"layer":-1,"token_idx":1,"experts":[1,2]}"#, r#"line 2: "layer" is not an integer of at least 0"#),
            (r#"{"layer":4294967296,"token_idx":1,"experts":[1,2]}"#, r#"line 2: "layer" is past 2^32 - 1"#),
            (r#"{"layer":0,"token_idx":1.5,"experts":[1,2]}"#, r#"line 2: "token_idx" is not an integer"#),
            (r#"{"layer":0,"token_idx":1,"experts":"1,2"}"#, r#"line 2: "experts" is not an array"#),
            (r#"{"layer":0,"token_idx":1,"experts":[]}"#, "line 2: no expert ids"),
            (r#"{"layer":0,"token_idx":1,"experts":[1,2,3]}"#, "line 2: 3 expert ids, but line 1 has 2"),
            (r#"{"layer":0,"token_idx":1,"experts":[1,-2]}"#, "line 2: expert id -2 is not an integer"),
            (r#"{"layer":0,"token_idx":1,"experts":[1,8]}"#, "line 2: expert id 8 is not below --experts 8"),
            (
                r#"{"layer":0,"token_idx":0,"experts":[3,4]}"#,
                "line 2 (token 0, layer 0) repeats line 1 (token 0, layer 0)",
            ),
        ];
        for (line, expected) in cases {
            let err = lines(&format!("{good}\n{line}\n"), KEYS, Some(8)).unwrap_err();
            assert!(err.starts_with(expected), "{line}: {err}");
        }
        let err = lines(&format!("{good}\n{good}\n"), BY_PROBLEM, None).unwrap_err();
        assert_eq!(err, r#"line 1: no "problem_id" key"#);
        let err = lines(r#"{"problem_id":[1],"layer":0,"token_idx":0,"experts":[1]}"#, BY_PROBLEM, None).unwrap_err();
        assert_eq!(err, r#"line 1: "problem_id" is not a string or a number"#);
        let repeat = "{\"problem_id\":1,\"layer\":0,\"token_idx\":0,\"experts\":[1]}\n";
        let err = lines(&format!("{repeat}{repeat}"), BY_PROBLEM, None).unwrap_err();
        assert_eq!(err, "line 2 (token 0, layer 0 of its sequence) repeats line 1 (token 0, layer 0 of its sequence)");
        assert_eq!(lines("\n\n", KEYS, None).unwrap_err(), "no records");
        let err = read_lines(&[b'{', 0xff, b'\n'][..], KEYS, None).unwrap_err().to_string();
        assert_eq!(err, "line 1: not UTF-8 text");
        let err = lines(r#"{"layer":4294967295,"token_idx":0,"experts":[1]}"#, KEYS, None).unwrap_err();
        assert_eq!(err, "a layer index of 2^32 - 1 is too large");
        let err = lines(r#"{"layer":0,"token_idx":0,"experts":[4294967295]}"#, KEYS, None).unwrap_err();
        assert_eq!(err, "an expert id of 2^32 - 1 is too large");
    }

    fn selections(text: &str) -> Result<Routing, String> {
        read_selections(text.as_bytes(), "selections", Some(8))
    }

    #[test]
    fn a_selections_document_is_one_sequence_and_other_keys_are_skipped() {
        let doc = r#"{"model":{"id":"m","layers":[1,2]},"selections":[[[1],[2]],[[3],[1]],[[0],[7]]],"tokens":3}"#;
        let routing = read_selections(doc.as_bytes(), "selections", None).unwrap();
        assert_eq!((routing.steps, routing.sequences), (3, 1));
        let trace = trace_of(&routing);
        assert_eq!(trace.header(), TraceHeader { experts: 8, layers: 2, top_k: 1 });
        assert_eq!(records(&trace)[..3], [(0, 0, true, vec![1]), (1, 0, true, vec![2]), (0, 1, false, vec![3])]);
    }

    #[test]
    fn bad_selections_name_their_token_and_layer() {
        let cases: [(&str, &str); 11] = [
            (r#"{"other":1}"#, r#"the document has no "selections" key"#),
            (r#"[1]"#, r#"invalid type: sequence, expected a JSON object with a "selections" key"#),
            (r#"{"selections":{}}"#, "invalid type: map, expected an array of tokens"),
            (r#"{"selections":[[[1]],7]}"#, "invalid type: integer `7`, expected token 1: an array of layers"),
            (r#"{"selections":[[[1]],[3]]}"#, "token 1, layer 0: not an array of expert ids"),
            (r#"{"selections":[[[1],[2]],[[3]]]}"#, "token 1 has 1 layers, token 0 has 2"),
            (r#"{"selections":[[[1]],[[2.5]]]}"#, "token 1, layer 0: expert id 2.5 is not an integer"),
            (r#"{"selections":[[[1]],[[9]]]}"#, "token 1, layer 0: expert id 9 is not below --experts 8"),
            (r#"{"selections":[[[1]],[[]]]}"#, "token 1, layer 0: no expert ids"),
            (r#"{"selections":[[[1]]],"selections":[]}"#, r#""selections" is given twice"#),
            (r#"{"selections":[[[1]]]} x"#, "after the document: trailing characters"),
        ];
        for (doc, expected) in cases {
            let err = selections(doc).map(|_| ()).unwrap_err();
            assert!(err.starts_with(expected), "{doc}: {err}");
        }
        assert_eq!(selections(r#"{"selections":[]}"#).map(|_| ()).unwrap_err(), "no records");
        let err = selections(r#"{"selections":[[[1]],[[2]]"#).map(|_| ()).unwrap_err();
        assert!(err.contains("EOF"), "{err}");
    }
}
