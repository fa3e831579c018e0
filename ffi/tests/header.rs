//! The committed header `include/expertslab.h` is what cbindgen generates from the crate now.
//! `EXPERTSLAB_BLESS_HEADER=1` rewrites it instead of comparing.

use std::path::Path;

#[test]
fn the_committed_header_is_current() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(dir.join("cbindgen.toml")).expect("cbindgen.toml parses");
    let bindings =
        cbindgen::Builder::new().with_crate(dir).with_config(config).generate().expect("cbindgen generates the header");
    let mut fresh = Vec::new();
    bindings.write(&mut fresh);
    let fresh = String::from_utf8(fresh).expect("the header is UTF-8");
    let path = dir.join("include/expertslab.h");
    if std::env::var_os("EXPERTSLAB_BLESS_HEADER").is_some() {
        std::fs::write(&path, &fresh).expect("the header is written");
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == fresh,
        "ffi/include/expertslab.h differs from a fresh generation; run \
         `EXPERTSLAB_BLESS_HEADER=1 cargo test -p expertslab-ffi --test header` and commit it"
    );
}

#[test]
fn every_function_in_the_header_is_documented() {
    let header = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("include/expertslab.h"))
        .expect("the header is readable");
    let lines: Vec<&str> = header.lines().collect();
    let mut functions = 0;
    for (i, line) in lines.iter().enumerate() {
        if line.starts_with("enum EsStatus es_") {
            functions += 1;
            let before = lines[..i].iter().rev().find(|l| !l.trim().is_empty()).copied().unwrap_or_default();
            assert!(before.trim_end().ends_with("*/"), "{line} has no doc comment");
        }
    }
    assert!(functions >= 40, "only {functions} functions found in the header");
}
