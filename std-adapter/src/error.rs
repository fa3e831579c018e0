//! The adapter's error: a core error, or I/O with the path it concerned.

use std::fmt;
use std::io;
use std::path::PathBuf;

use expertslab::trace::replay::ReplayError;
use expertslab::trace::TraceError;
use expertslab::{GgufError, LayoutError, MigrateFailure, PoolError};

use crate::capture::CaptureError;
use crate::ffn::FfnError;

/// Anything the adapter can fail with.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// Reading or mapping a file failed.
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// A model file is not valid GGUF.
    Gguf(GgufError),
    /// A layout, length or buffer error.
    Layout(LayoutError),
    /// A pool refused a configuration or a step.
    Pool(PoolError),
    /// Routing ids could not be captured.
    Capture(CaptureError),
    /// Memory for slots could not be had.
    Allocation {
        /// Bytes asked for.
        bytes: usize,
    },
    /// A routing trace is malformed.
    Trace(TraceError),
    /// A trace could not be replayed.
    Replay(ReplayError),
    /// A migration stopped at a failed promotion of layer `layer`.
    Migrate {
        /// The layer.
        layer: usize,
        /// The failure.
        failure: MigrateFailure<LayoutError, LayoutError>,
    },
    /// The host's expert FFN refused the layer's pairs.
    Ffn(FfnError),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io { path, source } => write!(f, "{}: {source}", path.display()),
            Self::Gguf(e) => write!(f, "GGUF: {e}"),
            Self::Layout(e) => write!(f, "{e}"),
            Self::Pool(e) => write!(f, "{e}"),
            Self::Capture(e) => write!(f, "{e}"),
            Self::Allocation { bytes } => write!(f, "could not allocate {bytes} bytes for slots"),
            Self::Trace(e) => write!(f, "trace: {e}"),
            Self::Replay(e) => write!(f, "replay: {e}"),
            Self::Migrate { layer, failure } => write!(f, "layer {layer}: {failure}"),
            Self::Ffn(e) => write!(f, "expert FFN: {e}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io { source, .. } => Some(source),
            Self::Gguf(e) => Some(e),
            Self::Layout(e) => Some(e),
            Self::Pool(e) => Some(e),
            Self::Capture(e) => Some(e),
            Self::Allocation { .. } => None,
            Self::Trace(e) => Some(e),
            Self::Replay(e) => Some(e),
            Self::Migrate { failure, .. } => Some(failure),
            Self::Ffn(e) => Some(e),
        }
    }
}

impl From<GgufError> for Error {
    fn from(e: GgufError) -> Self {
        Self::Gguf(e)
    }
}

impl From<LayoutError> for Error {
    fn from(e: LayoutError) -> Self {
        Self::Layout(e)
    }
}

impl From<PoolError> for Error {
    fn from(e: PoolError) -> Self {
        Self::Pool(e)
    }
}

impl From<TraceError> for Error {
    fn from(e: TraceError) -> Self {
        Self::Trace(e)
    }
}

impl From<ReplayError> for Error {
    fn from(e: ReplayError) -> Self {
        Self::Replay(e)
    }
}

impl From<FfnError> for Error {
    fn from(e: FfnError) -> Self {
        Self::Ffn(e)
    }
}

impl From<CaptureError> for Error {
    fn from(e: CaptureError) -> Self {
        Self::Capture(e)
    }
}
