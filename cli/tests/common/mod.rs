//! What the command-line tests share: running the binary as a user does, and temporary files.
#![allow(dead_code, reason = "each test file uses its own part")]

use std::path::PathBuf;
use std::process::{Command, Output};

/// Runs the `expertslab` binary with `args`.
pub fn expertslab(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_expertslab")).args(args).output().expect("the binary runs")
}

/// A path in the temporary folder named for this test process and `name`.
pub fn temp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("expertslab-cli-{}-{name}", std::process::id()))
}

/// The standard output of a run that must have succeeded.
pub fn stdout(o: &Output) -> String {
    assert!(o.status.success(), "failed: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout.clone()).unwrap()
}
