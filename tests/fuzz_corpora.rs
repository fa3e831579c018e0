//! Every input saved in the fuzzers' corpora (`fuzz/corpus/<target>/`), run through the same
//! target bodies the fuzzers run, so CI checks them all without a fuzzing engine. Inputs that
//! once crashed a target stay in its corpus as regression tests.

use std::path::PathBuf;

use expertslab_tests::fuzz::TARGETS;

#[test]
fn every_saved_input_passes_its_target() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    for (name, target) in TARGETS {
        let dir = root.join(name);
        let mut inputs = 0;
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.expect("a directory entry").path();
            let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            target(&data);
            inputs += 1;
        }
        assert!(inputs > 0, "the {name} corpus is empty");
    }
}
