//! The kernels' wide paths checked on the host, no GPU needed: `tests/kernel_host/widen.cpp`
//! compiles the kernel source's device functions as plain C++ (`tests/kernel_host/stubs.h`
//! stands in for the CUDA built-ins) and checks that every F32 and BF16 weight the wide path
//! widens, and every block-format term its vector loads and dp4a give, has the bits of the
//! element-by-element path, over random bytes at every alignment the wide paths take, and that
//! the branch-free f16 widening matches the branching one for every half. The GPU lane checks
//! the element-by-element paths against the host FFN, so together they tie the wide paths to
//! the host's bits on every CI run. Q8_0's aligned rows are staged through shared memory by a
//! warp: each lane's reading of its block from the staged words is checked here, the warp's
//! loads and stores only by the GPU lane.
//!
//! Without a C++ compiler (`c++`) the test prints one line saying what it did not run and
//! passes, unless `EXPERTSLAB_REQUIRE_CC=1` (set by `scripts/test.sh`) makes that a failure.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn have_cxx() -> bool {
    Command::new("c++").arg("--version").output().is_ok_and(|out| out.status.success())
}

/// Builds the checker against the kernel source at `kernel` into `exe`, runs it.
fn build_and_run(kernel: &Path, exe: &Path) -> Output {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/kernel_host");
    let build = Command::new("c++")
        .args(["-std=c++17", "-O1", "-w", "-ffp-contract=off"])
        .arg(format!("-DKERNEL=\"{}\"", kernel.display()))
        .arg(dir.join("widen.cpp"))
        .arg("-o")
        .arg(exe)
        .output()
        .expect("c++ runs");
    assert!(build.status.success(), "c++ failed:\n{}", String::from_utf8_lossy(&build.stderr));
    Command::new(exe).output().expect("the checker runs")
}

fn scratch() -> PathBuf {
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("kernel_host");
    std::fs::create_dir_all(&out).expect("the temporary folder is created");
    out
}

#[test]
fn the_wide_path_widens_every_weight_to_the_element_path_s_bits() {
    if !have_cxx() {
        let why = "expertslab-cuda: the kernels' host check (tests/kernel_host/widen.cpp) did not run: no `c++`";
        assert!(std::env::var("EXPERTSLAB_REQUIRE_CC").as_deref() != Ok("1"), "{why}");
        println!("{why}");
        return;
    }
    let kernel = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/kernels/moe_ffn.cu");
    let run = build_and_run(&kernel, &scratch().join("widen"));
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "{stdout}");
    assert!(stdout.contains("f16: 0 bad") && stdout.contains("weights: 0 bad"), "{stdout}");

    // The check has teeth: Q6_K's wide path taking the wrong high bits is caught.
    let source = std::fs::read_to_string(&kernel).expect("the kernel source reads");
    let right = "hs = 2u * (u32)k;";
    assert!(source.contains(right), "the Q6_K wide path this test breaks on purpose moved");
    let broken = scratch().join("broken.cu");
    std::fs::write(&broken, source.replace(right, "hs = 2u * (u32)k + 1u;")).expect("written");
    let run = build_and_run(&broken, &scratch().join("widen_broken"));
    assert!(!run.status.success(), "a broken widening passed:\n{}", String::from_utf8_lossy(&run.stdout));
}
