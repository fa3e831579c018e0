//! # expertslab
//!
//! Mixture-of-Experts expert residency for machines whose fast memory cannot hold every expert.
//!
//! Every expert's weights stay in slow memory (flash, host DRAM, a memory-mapped model file). Each
//! MoE layer gets a fixed number of fast-memory *slots*; an [`ExpertPool`] decides from the
//! router's choices which experts live in them (TIDE-style hit-count placement on a
//! [`Schedule`], decayed frequency, or demand caching: see [`Policy`]), and [`migrate()`] copies
//! only the promoted experts into memory the caller owns,
//! committing each move only after its copy completed. Misses are served from slow memory, so
//! placement never changes the model's output.
//!
//! The crate is `no_std` + `alloc`, has no `unsafe`, and allocates nothing on the refresh and
//! migrate paths once a pool and its plan are built.
//!
//! ## Map
//! The runtime's types are re-exported at the crate root; the lab (trace replay and synthetic
//! routing) stays namespaced under [`trace`].
//!
//! | module | concept |
//! |---|---|
//! | [`format`] | element formats: plain scalars and GGML block-quantized types, row sizes |
//! | [`layout`] | `[experts, rows, cols]` stacks ([`StackLayout`]), the projections one expert needs ([`ExpertLayout`]), and [`Projection`] |
//! | [`arena`] | [`SlotArena`]: slots laid out in a caller buffer, each projection aligned |
//! | [`budget`] | how many slots fit in a memory size; one byte budget split across layers |
//! | [`view`] | typed views of slabs through bytemuck, with a copying fallback |
//! | [`schedule`] | when a layer refreshes: [`Schedule`], [`Step`], [`Mode`] |
//! | [`pool`] | [`ExpertPool`]: residency, planning, serving, statistics ([`PoolConfig`], [`PoolStats`], [`ServeStats`]); [`SharedSlotPool`]: one set of slots for several layers |
//! | [`policy`] | placement: TIDE hit count, decayed frequency, LRU, LFU, LRU-2, Belady, cost-aware admission (TinyLFU-style) |
//! | [`predict`] | guessing the next layer's experts ([`Prefetcher`]); [`ExpertPool::prefetch`] places them |
//! | [`plan`] | what moves: [`MigrationPlan`], [`Promotion`] |
//! | [`count`] | counting a long step's ids per expert in banks ([`count::CountBanks`], the scratch a plan lends its refresh) |
//! | [`migrate`](mod@migrate) | moving it: copy each promotion, then commit; [`push_stacks`] for whole stacks |
//! | [`step`] | plan, migrate and serve one layer's step in one call ([`ExpertPool::step`]) |
//! | [`source`], [`sink`] | where bytes come from ([`LayerStacks`], generic over its byte owner) and go to ([`ArenaSink`], [`StackSink`]) |
//! | [`layers`], [`locked`] | one pool per layer; a pool behind a spin lock, for contexts without std |
//! | [`name`] | GGUF stack names without the heap |
//! | [`gguf`] | GGUF v2/v3 files read in place: tensor directory, MoE layers, a model as a source |
//! | [`trace`] | the routing-trace format (NDJSON) |
//! | [`trace::replay`], [`trace::synthetic`] | the lab: replaying traces under a policy and a cost model; synthetic routing |
//! | [`trace::profile`] | warm starts: each layer's hottest experts in a profile trace |
//! | [`error`] | the layout, view, pool, plan and migration errors |
//!
//! Internal: `projection` (the leaf module [`Projection`] lives in, so `error`, `format` and
//! `layout` import no circle) and `slot_table` (the one owner of the per-expert word, the slot
//! table and their flag bits, shared by the pool and the policies).
//!
//! ## Example
//! One layer of 4 experts, each a 2 × 4 `F32` gate/up/down, with 2 slots in a caller buffer:
//! ```
//! use expertslab::{
//!     migrate, ArenaSink, ExpertLayout, ExpertPool, Format, LayerStacks, MigrationPlan,
//!     PoolConfig, SlotArena, StackLayout, Step,
//! };
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let stack = StackLayout::new(Format::F32, 4, 2, 4)?; // 4 experts of 2 × 4 floats
//! let layout = ExpertLayout::gate_up_down(stack, stack, stack)?;
//!
//! // Slow memory: each stack is 4 experts × 32 bytes; expert e's bytes are all `e`.
//! let bytes: Vec<u8> = (0..4u8).flat_map(|e| [e; 32]).collect();
//! let model = [LayerStacks::new(layout.clone(), &[&bytes, &bytes, &bytes])?];
//!
//! // Fast memory: two slots, 16-byte aligned, in a buffer the caller owns.
//! let arena = SlotArena::new(&layout, 2, 16)?;
//! let mut sram = vec![0u128; arena.total_bytes() / 16];
//! let mut sink = ArenaSink::new(arena, 0, bytemuck::cast_slice_mut(&mut sram))?;
//!
//! let mut pool = ExpertPool::new(PoolConfig::new(4, 2))?;
//! let mut plan = MigrationPlan::new(pool.slots());
//! pool.initial_plan(&mut plan); // warm start: experts 0 and 1
//! migrate(&mut pool, &plan, &layout, &model[..], &mut sink)?;
//!
//! // One decode step, two tokens routed top-2: plan, migrate and serve in one call.
//! let ids = [3, 1, 3, 2];
//! let stats = pool.step(Step::decode(0), &ids, &mut plan, &layout, &model[..], &mut sink)?;
//! assert_eq!(stats.migrated.bytes_promoted, 96); // expert 3 replaced expert 0: three 32-byte slabs
//! // 1 was resident before the step: a hit. 3 was copied in for it: two misses served by copy.
//! // 2 is computed in slow memory: a miss served in place.
//! let served = stats.served;
//! assert_eq!((served.hits, served.served_by_copy, served.served_in_place), (1, 2, 1));
//!
//! let slot = pool.slot_of(3).unwrap();
//! assert!(sink.slab(slot, 0)?.iter().all(|&b| b == 3));
//! # Ok(())
//! # }
//! ```
//!
//! ## Feature flags
//! - `demand` (default): the demand policies ([`Policy::Lru`], [`Policy::Lfu`], [`Policy::Lru2`],
//!   [`Policy::Belady`], [`Policy::Tinylfu`]), the pool's prefetch hook and the
//!   [`SharedSlotPool`] they drive. Without it a pool refuses a demand policy with
//!   [`PoolError::PolicyNotBuilt`], [`ExpertPool::prefetch`] answers
//!   [`PoolError::PolicyMismatch`], and a firmware placing by TIDE or decay links none of their
//!   code (`default-features = false` in its `Cargo.toml`).
//! - `defmt`: derive `defmt::Format` for the public data and error types.
//! - `heap-select`: select a refresh's targets with the bounded heap only, leaving out the linear
//!   bucket selection (smaller code for a microcontroller; the same decisions).

#![no_std]
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![cfg_attr(
    not(test),
    warn(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::arithmetic_side_effects)
)]

extern crate alloc;

pub mod arena;
pub mod budget;
pub mod count;
pub mod error;
pub mod format;
pub mod gguf;
pub mod layers;
pub mod layout;
pub mod locked;
pub mod migrate;
pub mod name;
pub mod plan;
pub mod policy;
pub mod pool;
pub mod predict;
mod projection;
pub mod schedule;
pub mod sink;
pub(crate) mod slot_table;
pub mod source;
pub mod step;
pub mod trace;
pub mod view;

pub use arena::SlotArena;
pub use budget::{slots_per_layer, split_byte_budget, LayerDemand};
pub use error::{LayoutError, MigrateError, PlanError, PoolError, ViewError};
pub use format::{BlockShape, Format};
pub use gguf::{GgufError, GgufFile, GgufModel, MoeModel};
pub use layers::LayerPools;
pub use layout::{ExpertLayout, StackLayout, MAX_PROJECTIONS};
pub use locked::LockedPool;
pub use migrate::{expert_slabs, migrate, push_stacks, ExpertSlab, MigrateFailure, MigrateStats, PushError};
pub use name::{stack_name, TensorName};
pub use plan::{MigrationPlan, Promotion};
pub use policy::{Admission, AdmissionConfig, DecayConfig, MissOrder, Policy, PolicyError};
pub use pool::{
    ExpertPool, InitialPlacement, PoolConfig, PoolStats, PromotionState, ServeStats, SharedSlotPool, MAX_EXPERTS,
    MAX_STEP_IDS,
};
pub use predict::{Predictor, Prefetcher};
pub use projection::Projection;
pub use schedule::{Mode, Schedule, Step};
pub use sink::{ArenaSink, SlotSink, SlotWrite, StackSink};
pub use source::{ExpertSource, LayerStacks, LayeredSource, StackBytes, StackSource};
pub use step::{StepError, StepStats};
pub use view::{cast_bytes, copy_bytes, copy_expert, expert_as};

#[cfg(test)]
extern crate std;
