//! Builds the host C test (`tests/c/host_test.c`) with the system C compiler under
//! AddressSanitizer and UndefinedBehaviorSanitizer, links it against this crate's static library,
//! runs it and checks that it reports `N passed, 0 failed`.
//!
//! Without a C compiler (`cc`) the test prints one line saying what it did not run and passes,
//! unless `EXPERTSLAB_REQUIRE_CC=1` (set by `scripts/test.sh`) makes that a failure.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The static library cargo built beside this test's executable.
fn static_library() -> PathBuf {
    let exe = std::env::current_exe().expect("the test knows its executable");
    let deps = exe.parent().expect("the executable lies in a folder");
    [deps.to_path_buf(), deps.join("..")]
        .into_iter()
        .map(|dir| dir.join("libexpertslab_ffi.a"))
        .find(|path| path.exists())
        .expect("cargo built libexpertslab_ffi.a beside the test executable")
}

fn have_cc() -> bool {
    Command::new("cc").arg("--version").output().is_ok_and(|out| out.status.success())
}

#[test]
fn the_c_host_test_passes_under_sanitizers() {
    if !cfg!(target_os = "linux") || !have_cc() {
        let why = "expertslab-ffi: the C host test (ffi/tests/c/host_test.c) did not run: no `cc` on a Linux host";
        assert!(std::env::var("EXPERTSLAB_REQUIRE_CC").as_deref() != Ok("1"), "{why}");
        println!("{why}");
        return;
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("c_host");
    std::fs::create_dir_all(&out).expect("the temporary folder is created");
    let exe = out.join("host_test");
    let build = Command::new("cc")
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-g", "-O1"])
        .args(["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer"])
        .arg("-I")
        .arg(dir.join("include"))
        .arg(dir.join("tests/c/host_test.c"))
        .arg(static_library())
        .args(["-lpthread", "-ldl", "-lm", "-o"])
        .arg(&exe)
        .output()
        .expect("cc runs");
    assert!(build.status.success(), "cc failed:\n{}", String::from_utf8_lossy(&build.stderr));

    let run = Command::new(&exe).output().expect("the C test runs");
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    let summary = stdout.lines().last().unwrap_or_default();
    let passed: Option<u32> = summary.strip_suffix(" passed, 0 failed").and_then(|n| n.parse().ok());
    assert!(
        run.status.success() && passed.is_some_and(|n| n > 0),
        "the C test failed ({}):\n{stdout}\n{stderr}",
        run.status
    );
    println!("C host test: {summary}");
}
