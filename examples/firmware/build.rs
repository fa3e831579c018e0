//! Links against the QEMU mps2-an386 memory map shared with the test firmware.

use std::path::PathBuf;

fn main() {
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let memory = "../../tests/qemu/memory.x";
    std::fs::copy(memory, out.join("memory.x")).expect("copy memory.x");
    println!("cargo:rustc-link-search={}", out.display());
    println!("cargo:rerun-if-changed={memory}");
    println!("cargo:rustc-link-arg=-Tlink.x");
}
