//! # expertslab-cuda
//!
//! GPU fast memory for expertslab.

#![deny(missing_docs)]

pub mod error;
pub mod kernels;

pub use error::CudaError;
