//! # expertslab-std
//!
//! The std side of [`expertslab`]: everything of the core (re-exported), plus
//!
//! | module | what |
//! |---|---|
//! | [`bytes`] | [`SharedBytes`]: weight bytes shared by `Arc` (aligned copies, typed `Arc<[T]>`, memory maps) |
//! | [`store`] | [`ExpertStore`]: a model's [`LayerStacks`] of [`StoredStack`]s as a source (legacy per-expert slabs served from the mapping); [`open_gguf`]: GGUF files through mmap |
//! | [`parallel`] | [`ParallelMigrator`]: a plan's copies run at once with rayon, committed after each copy |
//! | [`capture`] | [`RoutingCapture`]: the router's ids per layer and step, `u32` or f32-encoded |
//! | [`recorder`] | [`TraceRecorder`]: routing traces written in the core's format; [`read_trace`] |
//! | [`offload`] | [`Offloader`]: pools, plans and slot arenas of every MoE layer, each stepped through [`ExpertPool::step_with`] from a capture; [`Offloader::decode_layer`]: a layer step on the host, pairs computed from slots or in place |
//! | [`ffn`] | [`ffn::ExpertFfn`]: the host's expert FFN, bit-identical to the GPU kernels' (one order of operations), threaded and vectorised |
//! | [`error`] | [`Error`]: anything the adapter can fail with |
//!
//! Policy and layout live in the core; this crate adds only what needs std.
//!
//! ## Example
//! ```
//! use std::sync::Arc;
//! use expertslab_std::{
//!     ExpertLayout, ExpertStore, Format, LayerStacks, Offloader, PoolConfig, Projection,
//!     RoutingCapture, SharedBytes, StackLayout, Step,
//! };
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // One MoE layer of 8 experts, F32 gate/up/down of 4 × 4, shared as Arc<[f32]>.
//! let stack = StackLayout::new(Format::F32, 8, 4, 4)?;
//! let layout = ExpertLayout::gate_up_down(stack, stack, stack)?;
//! let weights: Arc<[f32]> = (0..8 * 16).map(|i| i as f32).collect();
//! let shared = SharedBytes::from_typed(weights);
//! let mut store = ExpertStore::new();
//! store.insert(0, LayerStacks::new(layout, &[shared.clone(), shared.clone(), shared])?)?;
//!
//! // Two slots per layer, 64-byte aligned, refreshed every step.
//! let mut model = Offloader::new(store, PoolConfig::new(8, 2), 64)?;
//! model.warm_up()?;
//! let mut capture = RoutingCapture::new();
//! capture.record(0, &[5, 6, 5]);
//! let report = model.step(Step::decode(0), &capture)?;
//! // The warm start holds experts 0 and 1: this step copies 5 and 6 in, so its three pairs are
//! // misses served by copy (computed from the slots once the copies landed).
//! assert_eq!((report.served.hits, report.served.served_by_copy, report.served.served_in_place), (0, 3, 0));
//! let (slab, from_slot) = model.expert_slab(0, Projection::Down, 5)?;
//! assert!(from_slot);
//! assert_eq!(bytemuck::cast_slice::<u8, f32>(slab)[0], 80.0); // expert 5 starts at element 80
//! # Ok(())
//! # }
//! ```

#![deny(unsafe_code)]
#![deny(missing_docs)]
#![cfg_attr(
    not(test),
    warn(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::arithmetic_side_effects)
)]

pub mod bytes;
pub mod capture;
pub mod error;
pub mod ffn;
pub mod offload;
pub mod parallel;
pub mod recorder;
pub mod store;

pub use bytes::SharedBytes;
pub use capture::{CaptureError, RoutingCapture};
pub use error::Error;
pub use expertslab::*;
pub use offload::{OffloadStats, Offloader};
pub use parallel::ParallelMigrator;
pub use recorder::{read_trace, TraceRecorder};
pub use store::{open_gguf, ExpertStore, StoredStack};
