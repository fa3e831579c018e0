//! The importer's readers on hand-made captures: what they make of good input and how they
//! name bad records.

use super::*;
use expertslab_std::trace::Trace;

const KEYS: LineKeys<'static> =
    LineKeys { layer: "layer", ids: "experts", token: "token_idx", sequence: None, weights: None };
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

{"problem_id":"b","token_idx":7,"layer":0,"experts":[4,1]}
{"problem_id":"b","token_idx":5,"layer":0,"experts":[5,0]}
{"problem_id":"a","token_idx":0,"layer":0,"experts":[1,2]}
{"problem_id":"a","token_idx":0,"layer":1,"experts":[2,3]}
{"problem_id":"b","token_idx":5,"layer":1,"experts":[1,0]}
{"problem_id":"a","token_idx":2,"layer":1,"experts":[3,2]}
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
            (1, 0, true, vec![1, 0]),
            (0, 1, false, vec![4, 1]),
            (1, 1, false, vec![3, 1]),
            (0, 2, true, vec![1, 2]),
            (1, 2, true, vec![2, 3]),
            (0, 3, false, vec![0, 2]),
            (1, 3, false, vec![3, 2]),
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
    let cases = [
        ("[1,2]", "line 2: not a JSON object"),
        (r#"{"layer":0,"#, "line 2: malformed JSON"),
        (r#"{"token_idx":1,"experts":[1,2]}"#, r#"line 2: no "layer" key"#),
        (r#"{"layer":0,"experts":[1,2]}"#, r#"line 2: no "token_idx" key"#),
        (r#"{"layer":0,"token_idx":1}"#, r#"line 2: no "experts" key"#),
        (r#"{"layer":-1,"token_idx":1,"experts":[1,2]}"#, r#"line 2: "layer" is negative"#),
        (r#"{"layer":0,"token_idx":1.0,"experts":[1,2]}"#, r#"line 2: "token_idx" is not written as an integer"#),
        (r#"{"layer":0,"token_idx":1e2,"experts":[1,2]}"#, r#"line 2: "token_idx" is not written as an integer"#),
        (r#"{"layer":0,"token_idx":18446744073709551616,"experts":[1,2]}"#, r#"line 2: "token_idx" is past 2^64 - 1"#),
        (r#"{"layer":0,"token_idx":1,"experts":[1,4294967296]}"#, "line 2: expert id 4294967296 is past 2^32 - 1"),
        (r#"{"layer":"0","token_idx":1,"experts":[1,2]}"#, r#"line 2: "layer" is not a number"#),
        (r#"{"layer":0,"token_idx":1,"layer":1,"experts":[1,2]}"#, r#"line 2: "layer" is given twice"#),
        (r#"{"layer":0,"token_idx":1,"experts":[1,2],"score":1,"score":2}"#, r#"line 2: "score" is given twice"#),
        (r#"{"layer":0,"token_idx":1,"experts":[3,3]}"#, "line 2: expert id 3 is given twice"),
        (
            r#"{"layer":0,"token_idx":1,"experts":[0,1,2,3,4,5,6,7,0]}"#,
            "line 2: 9 expert ids, more than the 8 experts of --experts",
        ),
        (
            r#"{"layer":1,"token_idx":1,"experts":[1,2]}"#,
            "line 1 (token 0, layer 0): its token has no layer 1, which other tokens have",
        ),
        (r#"{"layer":4294967296,"token_idx":1,"experts":[1,2]}"#, r#"line 2: "layer" is past 2^32 - 1"#),
        (r#"{"layer":0,"token_idx":1.5,"experts":[1,2]}"#, r#"line 2: "token_idx" is not an integer"#),
        (r#"{"layer":0,"token_idx":1,"experts":"1,2"}"#, r#"line 2: "experts" is not an array"#),
        (r#"{"layer":0,"token_idx":1,"experts":[]}"#, "line 2: no expert ids"),
        (r#"{"layer":0,"token_idx":1,"experts":[1,2,3]}"#, "line 2: 3 expert ids, but line 1 has 2"),
        (r#"{"layer":0,"token_idx":1,"experts":[1,-2]}"#, "line 2: expert id -2 is negative"),
        (r#"{"layer":0,"token_idx":1,"experts":[1,8]}"#, "line 2: expert id 8 is not below --experts 8"),
        (r#"{"layer":0,"token_idx":0,"experts":[3,4]}"#, "line 2 (token 0, layer 0) repeats line 1 (token 0, layer 0)"),
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
    // Without --experts, a token's ids are still each named once.
    let err = lines(r#"{"layer":0,"token_idx":0,"experts":[2,0,2]}"#, KEYS, None).unwrap_err();
    assert_eq!(err, "line 1: expert id 2 is given twice (a token picks an expert once)");
    // A token missing a layer in the middle, or the last: named by its first line.
    let text = "{\"layer\":0,\"token_idx\":0,\"experts\":[1]}\n{\"layer\":2,\"token_idx\":0,\"experts\":[1]}\n\
                {\"layer\":1,\"token_idx\":0,\"experts\":[1]}\n{\"layer\":2,\"token_idx\":4,\"experts\":[1]}\n\
                {\"layer\":0,\"token_idx\":4,\"experts\":[1]}\n";
    assert_eq!(
        lines(text, KEYS, None).unwrap_err(),
        "line 5 (token 4, layer 0): its token has no layer 1, which other tokens have (every token needs the same \
         layers)"
    );
    let text = "{\"problem_id\":1,\"layer\":0,\"token_idx\":0,\"experts\":[1]}\n\
                {\"problem_id\":1,\"layer\":1,\"token_idx\":0,\"experts\":[1]}\n\
                {\"problem_id\":2,\"layer\":0,\"token_idx\":0,\"experts\":[1]}\n";
    let err = lines(text, BY_PROBLEM, None).unwrap_err();
    assert!(err.starts_with("line 3 (token 0, layer 0 of its sequence): its token has no layer 1"), "{err}");
    // Layers no token has (dense blocks between MoE ones) are not missing.
    let text = "{\"layer\":1,\"token_idx\":0,\"experts\":[1]}\n{\"layer\":3,\"token_idx\":0,\"experts\":[1]}\n";
    assert_eq!(lines(text, KEYS, None).unwrap().header.layers, 4);
}

#[test]
fn a_byte_order_mark_may_start_the_input() {
    let line = "\u{feff}{\"layer\":0,\"token_idx\":0,\"experts\":[1]}\n";
    assert_eq!(lines(line, KEYS, None).unwrap().steps, 1);
    // Only at the start.
    let err = lines(&format!("{}{line}", &line[3..]), KEYS, None).unwrap_err();
    assert!(err.starts_with("line 2: malformed JSON"), "{err}");
    let doc = "\u{feff}{\"selections\":[[[1]]]}";
    assert_eq!(selections(doc).unwrap().steps, 1);
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
    let cases = [
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
        (r#"{"selections":[[[1]]]} x"#, "more JSON after the document, at line 1 (--selections-key reads one"),
        (r#"{"selections":[[[1]],[[2.0]]]}"#, "token 1, layer 0: expert id 2.0 is not written as an integer"),
        (r#"{"selections":[[[1]],[[4294967296]]]}"#, "token 1, layer 0: expert id 4294967296 is past 2^32 - 1"),
        (r#"{"selections":[[[1,1]]]}"#, "token 0, layer 0: expert id 1 is given twice"),
        (
            r#"{"selections":[[[0,1,2,3,4,5,6,7,1]]]}"#,
            "token 0, layer 0: 9 expert ids, more than the 8 experts of --experts",
        ),
    ];
    for (doc, expected) in cases {
        let err = selections(doc).map(|_| ()).unwrap_err();
        assert!(err.starts_with(expected), "{doc}: {err}");
    }
    assert_eq!(selections(r#"{"selections":[]}"#).map(|_| ()).unwrap_err(), "no records");
    let err = selections(r#"{"selections":[[[1]],[[2]]"#).map(|_| ()).unwrap_err();
    assert!(err.contains("EOF"), "{err}");
}

#[test]
fn router_weights_are_kept_one_per_id_and_checked() {
    let keys = LineKeys { weights: Some("gating_probs"), ..BY_PROBLEM };
    let text = r#"{"dataset":"gsm8k","problem_id":0,"layer":1,"experts":[7,0],"gating_probs":[0.8,0.2],"token_idx":0}
{"dataset":"gsm8k","problem_id":0,"layer":0,"experts":[1,2],"gating_probs":[0.625,0.375],"token_idx":0}
{"dataset":"gsm8k","problem_id":0,"layer":0,"experts":[3,2],"gating_probs":[1,0],"token_idx":1}
{"dataset":"gsm8k","problem_id":0,"layer":1,"experts":[0,1],"gating_probs":[0.5,5e-1],"token_idx":1}
"#;
    let mut bytes = Vec::new();
    lines(text, keys, None).unwrap().write(&mut bytes).unwrap();
    let (trace, file) = Trace::read(std::str::from_utf8(&bytes).unwrap()).unwrap();
    assert!(file.sealed, "an imported trace ends with its end record");
    let weights: Vec<Vec<f32>> = trace.records().iter().map(|r| trace.weights(r).unwrap().to_vec()).collect();
    assert_eq!(weights, [vec![0.625, 0.375], vec![0.8, 0.2], vec![1.0, 0.0], vec![0.5, 0.5]]);
    // Without the key the weights are left out.
    let plain = trace_of(&lines(text, BY_PROBLEM, None).unwrap());
    assert!(plain.records().iter().all(|r| plain.weights(r).is_none()));

    let first = text.lines().next().unwrap();
    for (from, to, error) in [
        ("[0.8,0.2]", "[0.8]", "line 1: \"gating_probs\" has 1 weights for 2 ids (one per id)"),
        ("[0.8,0.2]", "[0.8,-0.2]", "line 1: \"gating_probs\" holds -0.2, not a finite number of at least 0"),
        ("[0.8,0.2]", "[0.8,\"x\"]", "line 1: \"gating_probs\" holds \"x\", not a finite number of at least 0"),
        ("[0.8,0.2]", "[0.8,1e300]", "line 1: \"gating_probs\" holds 1e+300, not a finite number of at least 0"),
        ("[0.8,0.2]", "0.8", "line 1: \"gating_probs\" is not an array"),
        (",\"gating_probs\":[0.8,0.2]", "", "line 1: no \"gating_probs\" key"),
    ] {
        assert_eq!(lines(&first.replace(from, to), keys, None).unwrap_err(), error, "{to}");
    }
}
