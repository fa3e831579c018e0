//! The trace format: reading, writing and the errors that name their line.

use super::text::{parse_object, Arrays};
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
    assert!(text.starts_with(r#"{"format":"expertslab-trace","version":2,"experts":8,"layers":2,"top_k":2}"#));
    assert!(text.lines().last().is_some_and(|end| end.starts_with(r#"{"records":3,"digest":""#)));
}

fn error(text: &str) -> TraceError {
    Trace::parse(text).unwrap_err()
}

#[test]
fn syntax_errors_name_their_byte() {
    let column = |line: &str| {
        let mut ids = Arrays::default();
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
    let mut ids = Arrays::default();
    let keep = |k, _| {
        keys.push(k);
        Ok(())
    };
    assert_eq!(parse_object(r#"{"lä":7}"#, &mut ids, keep), Ok(()));
    assert_eq!(keys, ["lä"]);
}

#[test]
fn numbers_that_are_json_but_not_the_formats_integers_name_their_key() {
    let kind = |line: &str| parse_object(line, &mut Arrays::default(), |_, _| Ok(())).unwrap_err();
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
        parse_object(r#"{"step":18446744073709551615,"ids":[4294967295]}"#, &mut Arrays::default(), |_, _| Ok(())),
        Ok(())
    );

    let header = "{\"format\":\"expertslab-trace\",\"version\":1,\"experts\":8,\"layers\":2,\"top_k\":1}\n";
    let record = |text: &str| error(&alloc::format!("{header}{text}\n"));
    let e = record(r#"{"layer":0,"step":18446744073709551616,"prefill":false,"ids":[1]}"#);
    assert_eq!((e.line, e.kind), (2, past("step", u64::MAX)));
    assert_eq!(record(r#"{"layer":4294967296,"step":0,"prefill":false,"ids":[1]}"#).kind, past("layer", 4_294_967_295));
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
    assert_eq!(e.to_string(), "line 1: the text starts with a UTF-8 byte order mark, which the format does not allow");
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
    assert_eq!(error(&with(r#"{"layer":0,"step":1,"prefill":false,"ids":[1]}"#)).kind, TraceErrorKind::PartialToken);
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
        error(r#"{"format":"expertslab-trace","version":3,"experts":8,"layers":2,"top_k":2}"#).kind,
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

/// The module documentation's sample, end record included.
const SAMPLE_V2: &str = r#"{"format":"expertslab-trace","version":2,"experts":64,"layers":2,"top_k":2}
{"layer":0,"step":0,"prefill":true,"ids":[3,17,3,5]}
{"layer":1,"step":0,"prefill":true,"ids":[8,1,60,2],"weights":[0.7,0.3,0.55,0.45]}
{"layer":0,"step":1,"prefill":false,"ids":[3,9]}
{"records":3,"digest":"90bda36a62a7800b"}
"#;

#[test]
fn version_2_carries_weights_and_an_end_record_that_is_checked() {
    let (trace, file) = Trace::read(SAMPLE_V2).unwrap();
    assert_eq!(file, TraceFile { version: 2, sealed: true });
    let records = trace.records();
    assert_eq!(trace.weights(&records[0]), None);
    assert_eq!(trace.weights(&records[1]), Some(&[0.7, 0.3, 0.55, 0.45][..]));
    // Written back, it is the same text: the digest is over the canonical lines.
    let mut text = String::new();
    trace.write(&mut text).unwrap();
    assert_eq!(text, SAMPLE_V2);
    // Version 1 files still read, unsealed.
    let (old, file) = Trace::read(SAMPLE).unwrap();
    assert_eq!(file, TraceFile { version: 1, sealed: false });
    assert_eq!(old.records().len(), 3);
}

#[test]
fn a_cut_or_changed_file_is_caught_by_its_end_record() {
    let lines: Vec<&str> = SAMPLE_V2.lines().collect();
    let join = |lines: &[&str]| lines.iter().map(|l| alloc::format!("{l}\n")).collect::<String>();
    // Cut at a line boundary: the end record is gone, which the reader reports.
    let (cut, file) = Trace::read(&join(&lines[..3])).unwrap();
    assert_eq!((cut.records().len(), file.sealed), (2, false));
    // A record lost before the end record.
    let e = error(&join(&[lines[0], lines[1], lines[3], lines[4]]));
    assert_eq!((e.line, e.kind.clone()), (4, TraceErrorKind::RecordCount { expected: 3, found: 2 }));
    assert_eq!(e.to_string(), "line 4: the end record counts 3 records, the file holds 2 (lines lost or added)");
    // A record changed: an id, a weight, a flag; whitespace and key order are not changes.
    for (from, to) in
        [("[3,9]", "[3,8]"), ("0.55", "0.56"), ("\"step\":1,\"prefill\":false", "\"step\":1,\"prefill\":true")]
    {
        let e = error(&SAMPLE_V2.replacen(from, to, 1));
        assert_eq!((e.line, e.kind), (5, TraceErrorKind::DigestMismatch), "{from} -> {to}");
    }
    let respaced = SAMPLE_V2.replace(
        r#"{"layer":0,"step":1,"prefill":false,"ids":[3,9]}"#,
        r#"{ "ids": [3, 9], "prefill": false, "step": 1, "layer": 0 }"#,
    );
    assert!(Trace::read(&respaced).unwrap().1.sealed);
    // Nothing may follow the end record.
    let e = error(&alloc::format!("{SAMPLE_V2}{}\n", lines[3]));
    assert_eq!((e.line, e.kind), (6, TraceErrorKind::AfterEnd));
    // A malformed end record.
    let header = lines[0];
    for (end, kind) in [
        (r#"{"records":0}"#, TraceErrorKind::MissingKey("digest")),
        (r#"{"digest":"cbf29ce484222325"}"#, TraceErrorKind::MissingKey("records")),
        (r#"{"records":0,"digest":"cbf29ce48422232"}"#, TraceErrorKind::BadValue("digest")),
        (r#"{"records":0,"digest":7}"#, TraceErrorKind::BadValue("digest")),
        (r#"{"records":0,"digest":"cbf29ce484222325","layer":0}"#, TraceErrorKind::UnexpectedKey),
    ] {
        assert_eq!(error(&alloc::format!("{header}\n{end}\n")).kind, kind, "{end}");
    }
    // The empty trace's end record: no records, the digest's starting value.
    assert!(
        Trace::read(&alloc::format!("{header}\n{{\"records\":0,\"digest\":\"cbf29ce484222325\"}}\n")).unwrap().1.sealed
    );
}

#[test]
fn weights_are_one_finite_non_negative_number_per_id() {
    let header = "{\"format\":\"expertslab-trace\",\"version\":2,\"experts\":8,\"layers\":1,\"top_k\":2}\n";
    let record = |weights: &str| {
        error(&alloc::format!(
            "{header}{{\"layer\":0,\"step\":0,\"prefill\":false,\"ids\":[1,2],\"weights\":{weights}}}\n"
        ))
    };
    assert_eq!(record("[0.5]").kind, TraceErrorKind::WeightCount);
    assert_eq!(record("[0.5,-0.5]").kind, TraceErrorKind::BadWeight);
    assert_eq!(record("[0.5,1e39]").kind, TraceErrorKind::BadWeight);
    assert_eq!(record("[0.5,true]").kind, TraceErrorKind::Syntax { column: 63 });
    assert_eq!(record("0.5").kind, TraceErrorKind::BadValue("weights"));
    assert_eq!(record("[0.5,-1]").to_string(), "line 2: \"weights\" takes finite numbers of at least 0");
    let ok = alloc::format!(
        "{header}{{\"layer\":0,\"step\":0,\"prefill\":false,\"ids\":[1,2],\"weights\":[5E-1,0.25e0]}}\n"
    );
    let trace = Trace::parse(&ok).unwrap();
    assert_eq!(trace.weights(&trace.records()[0]), Some(&[0.5, 0.25][..]));
    // Version 1 has neither weights nor end records.
    let old = header.replace("\"version\":2", "\"version\":1");
    let e = error(&alloc::format!(
        "{old}{{\"layer\":0,\"step\":0,\"prefill\":false,\"ids\":[1,2],\"weights\":[0.5,0.5]}}\n"
    ));
    assert_eq!(e.kind, TraceErrorKind::UnexpectedKey);
    assert_eq!(
        error(&alloc::format!("{old}{{\"records\":0,\"digest\":\"cbf29ce484222325\"}}\n")).kind,
        TraceErrorKind::UnexpectedKey
    );
    // Built in code, the same rules.
    let mut t = Trace::new(TraceHeader { experts: 8, layers: 1, top_k: 2 }).unwrap();
    assert_eq!(t.push_weighted(0, 0, false, &[1, 2], &[0.5]).unwrap_err().kind, TraceErrorKind::WeightCount);
    assert_eq!(t.push_weighted(0, 0, false, &[1, 2], &[0.5, f32::NAN]).unwrap_err().kind, TraceErrorKind::BadWeight);
    assert!(t.records().is_empty());
    t.push_weighted(0, 0, false, &[1, 2], &[0.5, 0.5]).unwrap();
    t.push(0, 1, false, &[3, 4]).unwrap();
    assert_eq!(t.weights(&t.records()[0]), Some(&[0.5, 0.5][..]));
    assert_eq!(t.weights(&t.records()[1]), None);
}
