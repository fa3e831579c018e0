//! [`CudaError`]: every error of this crate.

use std::fmt;

use cudarc::driver::sys::CUresult;
use cudarc::driver::DriverError;
use expertslab::trace::replay::ReplayError;
use expertslab::trace::synthetic::SyntheticTraceError;
use expertslab::trace::TraceError;
use expertslab::{LayoutError, PlanError, PolicyError, PoolError};

/// What the core refused on the way to a run, with the core's own error.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ResidencyError {
    /// A pool refused its settings or a step.
    Pool(PoolError),
    /// A migration's promotion did not fit the pool's state.
    Plan(PlanError),
    /// A source gave a slab whose length is not the layout's.
    SlabLength {
        /// Bytes the layout expects.
        expected: usize,
        /// Bytes the source gave.
        actual: usize,
    },
    /// A migration failed another way (the core's summary of it).
    Migrate(&'static str),
    /// A replay (a prediction, a tune pick) refused the trace.
    Replay(ReplayError),
    /// A trace could not be built.
    Trace(TraceError),
    /// A synthetic trace could not be made.
    Synthetic(SyntheticTraceError),
    /// A policy name is not known.
    Policy(PolicyError),
}

impl fmt::Display for ResidencyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Pool(e) => write!(f, "pool: {e}"),
            Self::Plan(e) => write!(f, "plan: {e}"),
            Self::SlabLength { expected, actual } => {
                write!(f, "the source gave a slab of {actual} bytes, the layout needs {expected}")
            }
            Self::Migrate(what) => write!(f, "migrate: {what}"),
            Self::Replay(e) => write!(f, "replay: {e}"),
            Self::Trace(e) => write!(f, "trace: {e}"),
            Self::Synthetic(e) => write!(f, "synthetic trace: {e}"),
            Self::Policy(e) => write!(f, "policy: {e}"),
        }
    }
}

impl std::error::Error for ResidencyError {}

impl From<ResidencyError> for CudaError {
    fn from(e: ResidencyError) -> Self {
        Self::Residency(e)
    }
}

/// Why a CUDA operation of this crate failed.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum CudaError {
    /// No CUDA driver library (`libcuda.so`) was found on this machine.
    NoDriver,
    /// The driver found no CUDA device with this ordinal (or none at all).
    NoDevice {
        /// The device ordinal asked for.
        ordinal: usize,
    },
    /// A driver call failed. Asynchronous failures are reported by a later call (a sync) and
    /// are not tied to the call that enqueued the failed work.
    Driver {
        /// The driver call, as the driver API names it.
        call: &'static str,
        /// The driver's result code.
        code: CUresult,
    },
    /// A slot, projection or length did not match the slot arena's layout.
    Layout(LayoutError),
    /// A slot arena's alignment is below what device slots need.
    AlignmentTooSmall {
        /// The arena's alignment.
        align: usize,
        /// The least alignment accepted ([`crate::DEVICE_ALIGN`]).
        needed: usize,
    },
    /// The sink has no arena for this layer.
    UnknownLayer {
        /// The layer asked for.
        layer: usize,
    },
    /// A device slot table was asked to mirror a pool of another shape.
    TableMismatch {
        /// The table's layer and expert count.
        table: (usize, usize),
        /// The pool's layer and expert count.
        pool: (usize, usize),
    },
    /// A copy enqueued earlier failed and the failure has not been handed to the caller yet:
    /// call [`crate::CudaSlotSink::synchronize`] to learn which slots to free.
    Unconfirmed,
    /// The NVRTC library (`libnvrtc.so.13`) could not be loaded.
    NoNvrtc,
    /// NVRTC refused the kernels: its log.
    Compile(String),
    /// A kernel was asked for a shape, format or argument it does not take.
    Unsupported(String),
    /// A model file could not be used: which file, and why (unreadable, not GGUF, or experts the
    /// kernels do not read).
    Model(String),
    /// A kernel reported pairs it could not compute (status bits: 1 no weights for a
    /// non-resident expert, 2 an expert id out of range).
    KernelStatus(u32),
    /// The core refused: a pool, a plan, a replay, a trace, a policy name
    /// ([`ResidencyError`]).
    Residency(ResidencyError),
    /// Slots do not fit the free device memory: one layer's slot arena, or the slots of every
    /// layer of a model.
    DoesNotFit {
        /// The layer whose arena did not fit, or `None` for the slots of every layer.
        layer: Option<usize>,
        /// Bytes the slots need.
        needed: u64,
        /// Bytes free on the device when it was asked.
        free: u64,
        /// Slots (per layer) that would fit.
        slots_that_fit: usize,
    },
}

impl CudaError {
    /// Wraps a driver result of the call named `call`.
    pub fn driver(call: &'static str, error: DriverError) -> Self {
        Self::Driver { call, code: error.0 }
    }
}

/// For `?` on cudarc calls made outside the [`crate::driver`] layer (kernel launches); the call
/// is not named.
impl From<DriverError> for CudaError {
    fn from(e: DriverError) -> Self {
        Self::driver("CUDA driver call", e)
    }
}

impl From<LayoutError> for CudaError {
    fn from(e: LayoutError) -> Self {
        Self::Layout(e)
    }
}

impl fmt::Display for CudaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoDriver => write!(f, "no CUDA driver found (libcuda.so could not be loaded)"),
            Self::NoDevice { ordinal } => write!(f, "no CUDA device with ordinal {ordinal}"),
            // The code's name, not the driver's message: reading that needs the driver, which
            // may be absent (mock drivers produce these errors too).
            Self::Driver { call, code } => write!(f, "{call} failed: {code:?}"),
            Self::Layout(e) => write!(f, "slot layout: {e}"),
            Self::AlignmentTooSmall { align, needed } => {
                write!(f, "slot arena aligned to {align} bytes; device slots need at least {needed}")
            }
            Self::UnknownLayer { layer } => write!(f, "no slot arena for layer {layer}"),
            Self::TableMismatch { table, pool } => write!(
                f,
                "device slot table of layer {} with {} experts cannot mirror the pool of layer {} with {} experts",
                table.0, table.1, pool.0, pool.1
            ),
            Self::Unconfirmed => {
                write!(f, "an earlier copy failed; synchronize the sink to free the slots it may have hit")
            }
            Self::NoNvrtc => {
                write!(f, "NVRTC not found (libnvrtc.so.13 could not be loaded; put its folder on LD_LIBRARY_PATH)")
            }
            Self::Compile(log) => write!(f, "NVRTC could not compile the kernels:\n{log}"),
            Self::Unsupported(what) => write!(f, "not supported by the MoE kernels: {what}"),
            Self::Model(why) => write!(f, "model file: {why}"),
            Self::KernelStatus(bits) => write!(
                f,
                "the MoE kernel could not compute some pairs (status {bits:#x}: 1 = a non-resident expert without \
                 a miss source, 2 = an expert id out of range)"
            ),
            Self::Residency(e) => write!(f, "residency: {e}"),
            Self::DoesNotFit { layer, needed, free, slots_that_fit } => {
                if let Some(layer) = layer {
                    write!(f, "layer {layer}: ")?;
                }
                write!(
                    f,
                    "the slots need {needed} bytes of device memory but {free} are free: {slots_that_fit} slots per \
                     layer would fit"
                )
            }
        }
    }
}

impl std::error::Error for CudaError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Layout(e) => Some(e),
            Self::Residency(e) => Some(e),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    #[test]
    fn the_core_s_refusals_keep_their_type() {
        let e = CudaError::from(ResidencyError::Pool(PoolError::NoExperts));
        assert!(matches!(e, CudaError::Residency(ResidencyError::Pool(PoolError::NoExperts))));
        assert!(e.to_string().starts_with("residency: pool: "), "{e}");
        let source = e.source().expect("the residency error is the source");
        assert_eq!(source.to_string(), ResidencyError::Pool(PoolError::NoExperts).to_string());
    }
}
