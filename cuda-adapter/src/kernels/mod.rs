//! CUDA C kernels, compiled at run time with NVRTC.
//!
//! [`MOE_FFN_SOURCE`] holds the MoE FFN kernels (gate/up, down per pair for F32, BF16, Q8_0,
//! Q4_K and Q6_K weights, and the combine over a token's pairs)
//! and the deterministic weight fill used by the demo. [`compile`] turns it into PTX for the
//! device's architecture, or for [`DEFAULT_ARCH`] when no device is given (NVRTC needs no GPU,
//! so the kernels are compiled by the CPU-side tests too).

use cudarc::nvrtc::{CompileError, CompileOptions, Ptx};

use crate::error::CudaError;

/// The MoE FFN kernels' source.
pub const MOE_FFN_SOURCE: &str = include_str!("moe_ffn.cu");

/// The architecture compiled for when no device is known (Hopper, the H100 and H200).
pub const DEFAULT_ARCH: (i32, i32) = (9, 0);

/// Threads per block of the combine.
pub(crate) const BLOCK_THREADS: u32 = 256;
/// Output rows per block of the gate/up and down kernels (`WARPS * ROWS_PER_WARP` in the source).
pub(crate) const ROWS_PER_BLOCK: u32 = 16;

/// The threads per block a gate/up or down kernel is launched with: its own launch bounds (the
/// function's most threads per block), whole warps whose count divides [`ROWS_PER_BLOCK`], so
/// each warp takes the same number of rows. A kernel source chooses its block size per format
/// by its launch bounds alone.
///
/// # Errors
/// [`CudaError::Unsupported`] naming the kernel when its block size is not such a one,
/// [`CudaError::Driver`] when the attribute cannot be read.
pub(crate) fn block_threads(function: &cudarc::driver::CudaFunction, name: &str) -> Result<u32, CudaError> {
    let threads = function.max_threads_per_block()?;
    let warps = u32::try_from(threads).unwrap_or(0) / 32;
    if threads % 32 != 0 || warps == 0 || !ROWS_PER_BLOCK.is_multiple_of(warps) {
        return Err(CudaError::Unsupported(format!(
            "{name}: {threads} threads per block; the kernels take whole warps dividing {ROWS_PER_BLOCK} rows"
        )));
    }
    Ok(warps * 32)
}

/// The kernels' entry points.
pub(crate) const GATE_UP_F32: &str = "moe_gate_up_f32";
pub(crate) const GATE_UP_BF16: &str = "moe_gate_up_bf16";
pub(crate) const DOWN_F32: &str = "moe_down_f32";
pub(crate) const DOWN_BF16: &str = "moe_down_bf16";
pub(crate) const GATE_UP_Q8_0: &str = "moe_gate_up_q8_0";
pub(crate) const DOWN_Q8_0: &str = "moe_down_q8_0";
pub(crate) const GATE_UP_Q4_K: &str = "moe_gate_up_q4_k";
pub(crate) const DOWN_Q4_K: &str = "moe_down_q4_k";
pub(crate) const GATE_UP_Q6_K: &str = "moe_gate_up_q6_k";
pub(crate) const DOWN_Q6_K: &str = "moe_down_q6_k";
pub(crate) const COMBINE: &str = "moe_combine";
pub(crate) const FILL_F32: &str = "fill_f32";
pub(crate) const FILL_BF16: &str = "fill_bf16";
pub(crate) const FILL_Q8_0: &str = "fill_q8_0";
pub(crate) const FILL_K_QUANT: &str = "fill_k_quant";

/// Every entry point of [`MOE_FFN_SOURCE`].
pub const ENTRY_POINTS: [&str; 15] = [
    GATE_UP_F32,
    GATE_UP_BF16,
    GATE_UP_Q8_0,
    GATE_UP_Q4_K,
    GATE_UP_Q6_K,
    DOWN_F32,
    DOWN_BF16,
    DOWN_Q8_0,
    DOWN_Q4_K,
    DOWN_Q6_K,
    COMBINE,
    FILL_F32,
    FILL_BF16,
    FILL_Q8_0,
    FILL_K_QUANT,
];

/// Whether the NVRTC library can be loaded.
pub fn nvrtc_available() -> bool {
    // SAFETY: loading a shared library by name runs its initialisers; libnvrtc's are those of a
    // plain C library and the handle is only probed, not kept.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// The environment variable that names a kernel source file to compile instead of
/// [`MOE_FFN_SOURCE`], for work on the kernels: a variant is tried on a GPU machine by the same
/// binaries, beside the built-in kernels, without a rebuild. The file must keep the entry points
/// ([`ENTRY_POINTS`]), their arguments and the argument structs of the built-in source: a
/// missing entry point is an error when the module is loaded, a changed argument is not caught.
pub const SOURCE_ENV: &str = "EXPERTSLAB_CUDA_KERNELS";

/// The environment variable that turns programmatic dependent launch of the down kernels off
/// (`0`; any other value, or none, leaves it on) on devices of compute capability 9.0 and up
/// (see [`dependent_launch`]).
pub const DEPENDENT_LAUNCH_ENV: &str = "EXPERTSLAB_CUDA_PDL";

/// Whether down kernels are launched as programmatic dependents of the gate/up launched just
/// before them on a device of compute capability `arch`: from 9.0 (Hopper) on, unless
/// [`DEPENDENT_LAUNCH_ENV`] is `0`; below 9.0 never. A dependent down's blocks are placed and
/// look up their rows while the gate/up still runs, and wait for it (`griddepcontrol.wait`)
/// before they read the intermediate rows, so the result is the same either way; only when the
/// work starts moves.
/// A kernel source named by [`SOURCE_ENV`] must wait the same way, or run with it off.
pub fn dependent_launch(arch: (i32, i32)) -> bool {
    dependent_launch_with(arch, std::env::var_os(DEPENDENT_LAUNCH_ENV).as_deref())
}

fn dependent_launch_with(arch: (i32, i32), setting: Option<&std::ffi::OsStr>) -> bool {
    arch >= (9, 0) && setting.is_none_or(|v| v != "0")
}

/// The kernel source [`compile`] compiles: the file [`SOURCE_ENV`] names when set, else
/// [`MOE_FFN_SOURCE`].
///
/// # Errors
/// [`CudaError::Compile`] naming the file when it cannot be read.
pub fn source() -> Result<std::borrow::Cow<'static, str>, CudaError> {
    source_named(std::env::var_os(SOURCE_ENV))
}

fn source_named(path: Option<std::ffi::OsString>) -> Result<std::borrow::Cow<'static, str>, CudaError> {
    match path {
        None => Ok(std::borrow::Cow::Borrowed(MOE_FFN_SOURCE)),
        Some(path) => std::fs::read_to_string(&path)
            .map(std::borrow::Cow::Owned)
            .map_err(|e| CudaError::Compile(format!("{SOURCE_ENV}={}: {e}", std::path::Path::new(&path).display()))),
    }
}

/// Compiles the kernel source ([`source`]: [`MOE_FFN_SOURCE`] unless [`SOURCE_ENV`] names
/// another) to PTX for compute capability `arch` (major, minor). Precise division, square root
/// and denormals (no fast math), so the arithmetic is the same on every run.
///
/// # Errors
/// [`CudaError::NoNvrtc`] when the NVRTC library cannot be loaded, [`CudaError::Compile`] with
/// NVRTC's log when the source does not compile or naming the file [`SOURCE_ENV`] gives when it
/// cannot be read.
pub fn compile(arch: (i32, i32)) -> Result<Ptx, CudaError> {
    if !nvrtc_available() {
        return Err(CudaError::NoNvrtc);
    }
    let source = source()?;
    let opts = CompileOptions {
        ftz: Some(false),
        prec_div: Some(true),
        prec_sqrt: Some(true),
        fmad: Some(true),
        options: vec![format!("--gpu-architecture=compute_{}{}", arch.0, arch.1), "--std=c++17".into()],
        name: Some("moe_ffn.cu".into()),
        ..CompileOptions::default()
    };
    cudarc::nvrtc::compile_ptx_with_opts(&*source, opts).map_err(|e| CudaError::Compile(compile_log(&e)))
}

fn compile_log(error: &CompileError) -> String {
    match error {
        CompileError::CompileError { log, options, .. } => {
            format!("options {options:?}\n{}", log.to_string_lossy())
        }
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Strict: a kernel that does not compile fails here. `scripts/test.sh` installs NVRTC from
    /// PyPI and puts it on `LD_LIBRARY_PATH`; without it this test fails and says how to fix it.
    #[test]
    fn kernels_compile_with_nvrtc() {
        assert!(
            nvrtc_available(),
            "NVRTC not found: install it with `python3 -m pip install --target target/nvrtc \
             'nvidia-cuda-nvrtc==13.0.88'` and put target/nvrtc/nvidia/cu13/lib on LD_LIBRARY_PATH \
             (scripts/test.sh does both)"
        );
        for arch in [DEFAULT_ARCH, (8, 0), (8, 9)] {
            let ptx = match compile(arch) {
                Ok(ptx) => ptx.to_src(),
                Err(e) => panic!("compute_{}{}: {e}", arch.0, arch.1),
            };
            for entry in ENTRY_POINTS {
                assert!(ptx.contains(&format!(".entry {entry}(")), "{entry} missing from the PTX");
            }
            assert!(ptx.contains(&format!(".target sm_{}{}", arch.0, arch.1)), "wrong target");
        }
    }

    #[test]
    fn the_source_is_the_built_in_one_unless_a_file_is_named() {
        assert_eq!(source_named(None).ok().as_deref(), Some(MOE_FFN_SOURCE));
        let dir = std::env::temp_dir().join(format!("expertslab-kernels-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("variant.cu");
        std::fs::write(&file, "// a variant\n").unwrap();
        assert_eq!(source_named(Some(file.clone().into())).ok().as_deref(), Some("// a variant\n"));
        let missing = dir.join("missing.cu");
        let err = source_named(Some(missing.into())).unwrap_err().to_string();
        assert!(err.contains(SOURCE_ENV) && err.contains("missing.cu"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn dependent_launch_from_hopper_on_unless_turned_off() {
        let off = std::ffi::OsStr::new("0");
        let on = std::ffi::OsStr::new("1");
        assert!(dependent_launch_with((9, 0), None));
        assert!(dependent_launch_with((10, 0), Some(on)));
        assert!(!dependent_launch_with((9, 0), Some(off)));
        assert!(!dependent_launch_with((8, 9), None));
        assert!(!dependent_launch_with((8, 0), Some(on)));
    }

    #[test]
    fn a_broken_source_reports_the_log() {
        if !nvrtc_available() {
            return; // kernels_compile_with_nvrtc reports the missing library
        }
        let opts = CompileOptions { name: Some("broken.cu".into()), ..CompileOptions::default() };
        let err = cudarc::nvrtc::compile_ptx_with_opts("extern \"C\" __global__ void k() { undefined_name; }", opts)
            .map_err(|e| compile_log(&e));
        assert!(err.is_err_and(|log| log.contains("undefined_name")));
    }
}
