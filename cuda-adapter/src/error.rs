//! The crate's error type.

use core::fmt;

use cudarc::driver::DriverError;
use expertslab::LayoutError;

/// Why a CUDA operation of this crate failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum CudaError {
    /// A driver call failed.
    Driver(DriverError),
    /// The CUDA driver library (`libcuda.so`) could not be loaded.
    NoDriver,
    /// The driver found no CUDA device (or not the one asked for).
    NoDevice,
    /// A layout of slots or experts was refused.
    Layout(LayoutError),

    // --- MoE FFN kernels and the GPU demo ---
    /// The NVRTC library (`libnvrtc.so.13`) could not be loaded.
    NoNvrtc,
    /// NVRTC refused the kernels: its log.
    Compile(String),
    /// A kernel was asked for a shape, format or argument it does not take.
    Unsupported(String),
    /// A kernel reported pairs it could not compute (status bits: 1 no weights for a
    /// non-resident expert, 2 an expert id out of range).
    KernelStatus(u32),
    /// The residency pool, a replay or a trace refused a step.
    Residency(String),
    /// The slots asked for do not fit the free device memory.
    DoesNotFit {
        /// Bytes the slots need.
        needed: u64,
        /// Bytes free on the device.
        free: u64,
        /// Slots per layer that would fit.
        slots_that_fit: usize,
    },
}

impl fmt::Display for CudaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Driver(e) => write!(f, "CUDA driver call failed: {e}"),
            Self::NoDriver => write!(f, "no CUDA driver found (libcuda.so could not be loaded)"),
            Self::NoDevice => write!(f, "no CUDA device found"),
            Self::Layout(e) => write!(f, "slot layout refused: {e}"),
            Self::NoNvrtc => {
                write!(f, "NVRTC not found (libnvrtc.so.13 could not be loaded; put its folder on LD_LIBRARY_PATH)")
            }
            Self::Compile(log) => write!(f, "NVRTC could not compile the kernels:\n{log}"),
            Self::Unsupported(what) => write!(f, "not supported by the MoE kernels: {what}"),
            Self::KernelStatus(bits) => write!(
                f,
                "the MoE kernel could not compute some pairs (status {bits:#x}: 1 = a non-resident expert without \
                 a miss source, 2 = an expert id out of range)"
            ),
            Self::Residency(what) => write!(f, "residency: {what}"),
            Self::DoesNotFit { needed, free, slots_that_fit } => write!(
                f,
                "the slots need {needed} bytes of device memory but {free} are free: {slots_that_fit} slots per \
                 layer would fit"
            ),
        }
    }
}

impl std::error::Error for CudaError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Driver(e) => Some(e),
            Self::Layout(e) => Some(e),
            _ => None,
        }
    }
}

impl From<DriverError> for CudaError {
    fn from(e: DriverError) -> Self {
        Self::Driver(e)
    }
}

impl From<LayoutError> for CudaError {
    fn from(e: LayoutError) -> Self {
        Self::Layout(e)
    }
}
