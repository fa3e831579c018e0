//! # expertslab-cuda
//!
//! GPU fast memory for expertslab.

#![deny(missing_docs)]

pub mod demo;
pub mod error;
pub mod ffn;
pub mod kernels;
pub mod reference;

pub use error::CudaError;
pub use ffn::{LayerSlots, MissAction, MissCosts, MissRule, MoeFfn, PairSource, Phase, StepBuffers};
pub use reference::FfnShape;
