//! Passes the target's memory layout and the runtime's (and, with the `defmt` feature, defmt's)
//! linker scripts. The Cortex-M4's layout is `memory.x`, which cortex-m-rt's `link.x` includes
//! from the linker's search path (and which examples/firmware shares); RISC-V's is
//! `memory-riscv32.x`, given to the linker before riscv-rt's `link.x`.

use std::path::PathBuf;

fn main() {
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    println!("cargo:rerun-if-changed=memory.x");
    println!("cargo:rerun-if-changed=memory-riscv32.x");
    if std::env::var("CARGO_CFG_TARGET_ARCH").is_ok_and(|arch| arch == "riscv32") {
        let dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
        println!("cargo:rustc-link-arg=-T{}", dir.join("memory-riscv32.x").display());
    } else {
        std::fs::copy("memory.x", out.join("memory.x")).expect("copy memory.x");
        println!("cargo:rustc-link-search={}", out.display());
    }
    println!("cargo:rustc-link-arg=-Tlink.x");
    if std::env::var_os("CARGO_FEATURE_DEFMT").is_some() {
        println!("cargo:rustc-link-arg=-Tdefmt.x");
    }
}
