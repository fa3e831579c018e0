//! # expertslab-cuda
//!
//! GPU fast memory for expertslab: the slots of each MoE layer live in VRAM, the experts in
//! host memory (a memory-mapped model file or an `expertslab-std` store), and the core's pools
//! decide which experts occupy the slots.
//!
//! | module | what |
//! |---|---|
//! | [`driver`] | [`Driver`]: the driver calls the sink needs; [`CudaDriver`] (cudarc, loaded at run time), [`MockDriver`] (CPU tests), [`Faults`] (failure injection) |
//! | [`arena`] | [`VramArena`]: one layer's slots in one device allocation, laid out by the core's `SlotArena` |
//! | [`host`] | [`HostMemory`]: registered (page-locked, read-only) host buffers, memory page-locked already (adopted), and a pinned staging ring |
//! | [`sink`] | [`CudaSlotSink`]: the core's `SlotSink`, copying asynchronously on a copy stream; scratch slots for misses not admitted |
//! | [`table`] | [`DeviceSlotTable`]: `i32[experts]` in VRAM, expert to slot, double-buffered, for kernels ([`TableView`]) |
//! | [`kernels`] | the MoE FFN's CUDA C sources, compiled at run time with NVRTC |
//! | [`ffn`] | [`MoeFfn`]: the MoE FFN for decode and small batches, reading experts through a [`SlotView`] or a miss's [`PairSource`] |
//! | [`reference`](mod@reference) | the CPU reference of the same FFN |
//! | [`demo`] | the GPU demo and decode runner: a current MoE's shape decoded through the library's path, layers chained, against streaming and bus reads |
//! | [`error`] | [`CudaError`] |
//!
//! The CUDA driver library is loaded at run time: the crate builds and its CPU tests run on
//! machines without a GPU or CUDA toolkit. [`CudaDriver::new`] answers [`CudaError::NoDriver`]
//! or [`CudaError::NoDevice`] there.
//!
//! ## One decode step
//!
//! [`ExpertPool::step`](expertslab::ExpertPool::step) (or
//! [`SharedSlotPool::step`](expertslab::SharedSlotPool::step)) into the sink: plan, copies
//! enqueued, the pool commits, the ids served → [`DeviceSlotTable::update`] (the buffer the
//! kernels did not read last) → [`CudaSlotSink::order_before`] on the compute stream → kernels
//! reading slots through a [`SlotView`] → [`CudaSlotSink::after_reads`] and
//! [`DeviceSlotTable::after_reads`] on the compute stream. Kernels of pairs whose expert stayed in
//! its slot may run before the update, through the view taken then, followed by
//! [`DeviceSlotTable::after_reads`] (so the update after next waits for them): they overlap the
//! copies. Take the view again after every update. The host never waits for copies in the steady state;
//! [`CudaSlotSink::synchronize`] confirms them when the caller wants (and reports failed copies,
//! see [`LateFailure`]). The decode runner of [`demo`] (`demo/runner/`), which the decode
//! benchmark, the GPU demo and the GPU tests run, is this sequence per layer, with layers
//! chained.
//!
//! ## Example
//!
//! The same code runs on the GPU with [`CudaDriver`]; here the [`MockDriver`] simulates the
//! device in host memory.
//!
//! ```
//! use std::sync::Arc;
//! use expertslab::{ExpertLayout, ExpertPool, Format, MigrationPlan, PoolConfig, SlotArena, StackLayout, Step};
//! use expertslab_std::{ExpertStore, LayerStacks, SharedBytes};
//! use expertslab_cuda::{CudaSlotSink, DeviceSlotTable, Driver, MockDriver, RingConfig, DEVICE_ALIGN};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // One layer of 8 experts, BF16-sized gate/up/down of 4 × 64 elements (2 bytes each).
//! let stack = StackLayout::new(Format::BF16, 8, 4, 64)?;
//! let layout = ExpertLayout::gate_up_down(stack, stack, stack)?;
//! let bytes: Vec<u8> = (0..8 * 512).map(|i| i as u8).collect();
//! let shared = SharedBytes::copy_from(&bytes);
//! let mut store = ExpertStore::new();
//! store.insert(0, LayerStacks::new(layout.clone(), &[shared.clone(), shared.clone(), shared])?)?;
//!
//! // Three VRAM slots; the store's buffers registered for direct copies.
//! let driver = Arc::new(MockDriver::new(1 << 20));
//! let mut sink = CudaSlotSink::for_store(Arc::clone(&driver), &store, 3, RingConfig::default())?;
//! assert_eq!(sink.vram(0).map(|v| v.arena().align()), Some(DEVICE_ALIGN));
//! let mut table = DeviceSlotTable::new(0, 8, &mut sink)?;
//! let compute = driver.new_stream()?;
//!
//! let mut pool = ExpertPool::new(PoolConfig::new(8, 3))?;
//! let mut plan = MigrationPlan::new(3);
//! let stats = pool.step(Step::decode(0), &[5, 6, 5], &mut plan, &layout, &store, &mut sink)?;
//! assert_eq!(stats.migrated.copied, 2);
//! table.update(&pool, &mut sink)?;
//! sink.order_before(&compute)?; // kernels on `compute` now see slots and table
//! // ... launch kernels reading the slots on `compute` through a `SlotView` ...
//! sink.after_reads(&compute)?; // the next copies into these slots wait for them
//! table.after_reads(&compute)?; // and the update that next overwrites this table buffer
//!
//! sink.synchronize()?; // confirms every copy so far
//! assert_eq!(table.read_back(&mut sink)?, table.entries());
//! let slot = pool.slot_of(5).ok_or("expert 5 is resident")?;
//! let mut gate = vec![0u8; 512];
//! sink.read_slot(0, slot, 0, &mut gate)?;
//! assert_eq!(gate, &bytes[5 * 512..6 * 512]);
//! assert_eq!(sink.stats().registered_copies, 6); // two experts × three projections
//! # Ok(())
//! # }
//! ```
//!
//! ## Safety
//!
//! `unsafe` appears only where a driver call needs it (copies whose source must outlive them,
//! registration, raw device memory), each block with a `// SAFETY:` comment. The rules it
//! relies on: copies read only registered buffers whose owners the sink keeps, or pinned
//! buffers reused after their event completed; device memory is freed only after a device sync.

#![deny(missing_docs)]
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing))]

pub mod arena;
pub mod demo;
pub mod driver;
pub mod error;
pub mod ffn;
pub mod host;
pub mod kernels;
pub mod reference;
pub mod sink;
pub mod table;

pub use arena::{VramArena, DEVICE_ALIGN};
pub use driver::{CudaDriver, Driver, Faults, MockDriver, MockEvent, MockOp, MockStream, PinnedMemory};
pub use error::{CudaError, ResidencyError};
pub use ffn::{MissAction, MissCosts, MissRule, MoeFfn, PairSource, Phase, SlotView, StepBuffers};
pub use host::{CopyPath, HostMemory, RegisterReport, RingConfig};
pub use reference::FfnShape;
pub use sink::{CudaSlotSink, LateFailure, ScratchSlot, SinkStats, SlotRef};
pub use table::{DeviceSlotTable, TableView, NOT_RESIDENT};
