//! [`CudaSlotSink`]: the core's [`SlotSink`] over VRAM slot arenas, copying asynchronously on a
//! copy stream.
//!
//! # Ordering
//!
//! - **Copies**: every [`SlotSink::write`] enqueues its copy on the sink's copy stream, from
//!   page-locked memory (see [`crate::host`]); [`SlotSink::finish`] records the slot's ready
//!   event after them and returns without waiting, and the pool commits (see the core's
//!   [`SlotSink`] docs: the bytes are final for every consumer ordered after that event).
//! - **Read after write**: before kernels read slots, the compute stream waits on the copy
//!   stream: [`CudaSlotSink::order_before`] (everything enqueued so far, including the device
//!   slot table) or [`CudaSlotSink::order_slot_before`] (one slot's ready event). The host does
//!   not wait.
//! - **Write after read**: after launching kernels that read slots, call
//!   [`CudaSlotSink::after_reads`] (or [`CudaSlotSink::after_reads_of`] naming the slots) with
//!   their stream: the sink records an event there, and the copy stream waits on it before it
//!   next overwrites a slot those kernels may read (or the device slot table). Slots not read
//!   since are overwritten without waiting.
//!
//! # Failures
//!
//! A copy the driver refuses fails its `write` (the promotion is not committed; its slot stays
//! free). A copy that fails on the device is reported later, by [`CudaSlotSink::synchronize`]
//! (or by a write that had to wait for a staging buffer, which then answers
//! [`CudaError::Unconfirmed`] until `synchronize` is called): [`LateFailure`] names every slot
//! written since the last confirmed sync, and [`LateFailure::repair`] frees them in the pools.

use std::collections::BTreeMap;
use std::fmt;

use expertslab::{LayeredSource, SlotArena, SlotSink, SlotWrite};
use expertslab_std::ExpertStore;

use crate::arena::{VramArena, DEVICE_ALIGN};
use crate::driver::{CudaDriver, Driver};
use crate::error::CudaError;
use crate::host::{CopyFailure, CopyPath, HostMemory, RingConfig};

mod failure;
mod scratch;

pub use failure::{LateFailure, SlotRef};
pub use scratch::ScratchSlot;

/// One layer's scratch region: slot-shaped buffers for misses copied but not admitted.
struct Scratch<D: Driver> {
    vram: VramArena<D>,
    /// Per scratch slot: read by kernels before the pending read fence.
    read: Vec<bool>,
}

/// What the sink did since it was built.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SinkStats {
    /// Copies read straight from registered host memory.
    pub registered_copies: u64,
    /// Copies staged through the pinned ring.
    pub staged_copies: u64,
    /// Copies from pageable memory the host waited for.
    pub synchronous_copies: u64,
    /// Bytes written into slots.
    pub bytes: u64,
    /// Experts copied into scratch slots ([`CudaSlotSink::write_scratch`]).
    pub scratch_copies: u64,
    /// Bytes written into scratch slots.
    pub scratch_bytes: u64,
    /// Times the copy stream waited for kernels that read slots (write-after-read).
    pub read_waits: u64,
}

/// One arena's slots in VRAM and what the sink tracks of each: the last copy's event, reads
/// pending, writes not yet confirmed.
struct VramLayerState<D: Driver> {
    vram: VramArena<D>,
    /// Per slot: recorded after the slot's last copy.
    ready: Vec<D::Event>,
    /// Per slot: read by kernels before the pending read fence.
    read: Vec<bool>,
    /// Per slot: written since the last confirmed sync.
    suspect: Vec<bool>,
}

/// Slot sink over VRAM: one [`VramArena`] per layer, one copy stream. See the
/// [module docs](self).
pub struct CudaSlotSink<D: Driver = CudaDriver> {
    driver: D,
    copy: D::Stream,
    layers: BTreeMap<usize, VramLayerState<D>>,
    scratch: BTreeMap<usize, Scratch<D>>,
    host: HostMemory<D>,
    /// Recorded on the copy stream by `order_before`.
    tail: D::Event,
    /// Recorded after the kernels that read slots, by `after_reads`.
    read_fence: D::Event,
    fence_pending: bool,
    late: Option<CudaError>,
    stats: SinkStats,
}

impl<D: Driver> fmt::Debug for CudaSlotSink<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CudaSlotSink")
            .field("layers", &self.layers.keys().collect::<Vec<_>>())
            .field("host", &self.host)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl<D: Driver + Clone> CudaSlotSink<D> {
    /// A sink with one VRAM arena per `(layer, arena)` (a layer given twice keeps the last) and
    /// a staging ring as `ring` says. Register the slow memory through
    /// [`CudaSlotSink::host_mut`] (or use [`CudaSlotSink::for_store`]).
    ///
    /// # Errors
    /// As [`VramArena::new`] (in particular [`CudaError::DoesNotFit`], saying how many slots
    /// would fit), or the driver's error.
    pub fn new(
        driver: D,
        arenas: impl IntoIterator<Item = (usize, SlotArena)>,
        ring: RingConfig,
    ) -> Result<Self, CudaError> {
        let mut sink = Self {
            copy: driver.new_stream()?,
            host: HostMemory::new(driver.clone(), ring)?,
            tail: driver.new_event()?,
            read_fence: driver.new_event()?,
            driver,
            layers: BTreeMap::new(),
            scratch: BTreeMap::new(),
            fence_pending: false,
            late: None,
            stats: SinkStats::default(),
        };
        for (layer, arena) in arenas {
            sink.add_arena(layer, arena)?;
        }
        Ok(sink)
    }

    /// Gives layer `layer` the slot arena `arena` in VRAM (replacing one it had, after a device
    /// sync: kernels may still read it).
    ///
    /// # Errors
    /// As [`VramArena::new`], or the driver's error.
    pub fn add_arena(&mut self, layer: usize, arena: SlotArena) -> Result<(), CudaError> {
        let slots = arena.slots();
        let vram = VramArena::new(self.driver.clone(), layer, arena)?;
        let ready = (0..slots).map(|_| self.driver.new_event()).collect::<Result<Vec<_>, _>>()?;
        let state = VramLayerState { vram, ready, read: vec![false; slots], suspect: vec![false; slots] };
        if let Some(old) = self.layers.insert(layer, state) {
            let _ = self.driver.sync_device();
            drop(old);
        }
        Ok(())
    }

    /// A sink for every MoE layer of `store`, `slots` slots each (clamped to the layer's expert
    /// count) aligned to [`DEVICE_ALIGN`], with the store's stacks registered for copies (or
    /// staged where the driver refuses registration).
    ///
    /// # Errors
    /// As [`CudaSlotSink::new`], or [`CudaError::Layout`] when an arena's size overflows.
    pub fn for_store(driver: D, store: &ExpertStore, slots: usize, ring: RingConfig) -> Result<Self, CudaError> {
        let mut arenas = Vec::new();
        for layer in store.moe_layers() {
            if let Some(layout) = store.layer_layout(layer) {
                arenas.push((layer, SlotArena::new(layout, slots.min(layout.experts()), DEVICE_ALIGN)?));
            }
        }
        let mut sink = Self::new(driver, arenas, ring)?;
        sink.host.register_store(store);
        Ok(sink)
    }

    /// Gives layer key `layer` a scratch region laid out by `arena` (replacing one it had):
    /// slot-shaped buffers for experts copied for one step's pairs without being admitted
    /// ([`CudaSlotSink::write_scratch`]). The key is the scratch region's own, independent of
    /// the slot arenas' (a pool shared by several layers keeps one arena, and each layer may
    /// have its scratch region).
    ///
    /// # Errors
    /// As [`VramArena::new`].
    pub fn add_scratch(&mut self, layer: usize, arena: SlotArena) -> Result<(), CudaError> {
        let slots = arena.slots();
        let vram = VramArena::new(self.driver.clone(), layer, arena)?;
        if let Some(old) = self.scratch.insert(layer, Scratch { vram, read: vec![false; slots] }) {
            // Kernels may still read the old region.
            let _ = self.driver.sync_device();
            drop(old);
        }
        Ok(())
    }
}

impl<D: Driver> CudaSlotSink<D> {
    /// The driver.
    pub fn driver(&self) -> &D {
        &self.driver
    }

    /// The copy stream every slot copy and table update runs on.
    pub fn copy_stream(&self) -> &D::Stream {
        &self.copy
    }

    /// The slow memory copies come from.
    pub fn host(&self) -> &HostMemory<D> {
        &self.host
    }

    /// The slow memory copies come from, to register buffers.
    pub fn host_mut(&mut self) -> &mut HostMemory<D> {
        &mut self.host
    }

    /// Layer `layer`'s VRAM arena: its base pointer and layout are what kernels read slots by.
    pub fn vram(&self, layer: usize) -> Option<&VramArena<D>> {
        self.layers.get(&layer).map(|l| &l.vram)
    }

    /// Layer key `layer`'s scratch region ([`CudaSlotSink::add_scratch`]).
    pub fn scratch(&self, layer: usize) -> Option<&VramArena<D>> {
        self.scratch.get(&layer).map(|s| &s.vram)
    }

    /// The layers with an arena, ascending.
    pub fn layers(&self) -> impl Iterator<Item = usize> + '_ {
        self.layers.keys().copied()
    }

    /// What the sink did so far.
    pub fn stats(&self) -> &SinkStats {
        &self.stats
    }

    /// Makes `stream` wait (on the device; the host does not) for everything enqueued on the
    /// copy stream so far: every slot copy and table update. Call it before launching kernels
    /// that read slots.
    ///
    /// # Errors
    /// The driver's error.
    pub fn order_before(&self, stream: &D::Stream) -> Result<(), CudaError> {
        self.driver.record(&self.tail, &self.copy)?;
        self.driver.wait(stream, &self.tail)
    }

    /// Makes `stream` wait for the last copy into `slot` of `layer` only (its ready event), for
    /// kernels that read that slot while other copies still run.
    ///
    /// # Errors
    /// [`CudaError::UnknownLayer`], [`CudaError::Layout`] for a slot out of range, or the
    /// driver's error.
    pub fn order_slot_before(&self, stream: &D::Stream, layer: usize, slot: usize) -> Result<(), CudaError> {
        let slots = self.layers.get(&layer).ok_or(CudaError::UnknownLayer { layer })?;
        let ready = slots
            .ready
            .get(slot)
            .ok_or(CudaError::Layout(expertslab::LayoutError::SlotOutOfRange { slot, slots: slots.ready.len() }))?;
        self.driver.wait(stream, ready)
    }

    /// Records that kernels enqueued on `stream` so far may read every slot (and the device
    /// slot tables): the copy stream waits for them before it next overwrites one.
    ///
    /// # Errors
    /// The driver's error.
    pub fn after_reads(&mut self, stream: &D::Stream) -> Result<(), CudaError> {
        self.new_read_fence(stream)?;
        for slots in self.layers.values_mut() {
            slots.read.fill(true);
        }
        for scratch in self.scratch.values_mut() {
            scratch.read.fill(true);
        }
        Ok(())
    }

    /// As [`CudaSlotSink::after_reads`], for kernels that read only `slots` of `layer` (and the
    /// device slot tables, and any scratch slot of layer key `layer`): overwriting other slots
    /// does not wait for them.
    ///
    /// # Errors
    /// [`CudaError::UnknownLayer`], or the driver's error. Slots out of range are ignored (no
    /// kernel can have read them).
    pub fn after_reads_of(&mut self, stream: &D::Stream, layer: usize, slots: &[usize]) -> Result<(), CudaError> {
        if !self.layers.contains_key(&layer) {
            return Err(CudaError::UnknownLayer { layer });
        }
        self.new_read_fence(stream)?;
        if let Some(state) = self.layers.get_mut(&layer) {
            for &slot in slots {
                if let Some(read) = state.read.get_mut(slot) {
                    *read = true;
                }
            }
        }
        if let Some(scratch) = self.scratch.get_mut(&layer) {
            scratch.read.fill(true);
        }
        Ok(())
    }

    /// Records the read fence on `stream`. A fence still pending is waited for first (the copy
    /// stream waits; the host does not), since recording the event again would forget it.
    fn new_read_fence(&mut self, stream: &D::Stream) -> Result<(), CudaError> {
        if self.fence_pending {
            self.wait_for_reads()?;
        }
        self.driver.record(&self.read_fence, stream)?;
        self.fence_pending = true;
        Ok(())
    }

    /// Makes the copy stream wait for the pending read fence, if any; clears the read marks.
    pub(crate) fn wait_for_reads(&mut self) -> Result<(), CudaError> {
        if !self.fence_pending {
            return Ok(());
        }
        self.driver.wait(&self.copy, &self.read_fence)?;
        self.fence_pending = false;
        self.stats.read_waits = self.stats.read_waits.saturating_add(1);
        for slots in self.layers.values_mut() {
            slots.read.fill(false);
        }
        for scratch in self.scratch.values_mut() {
            scratch.read.fill(false);
        }
        Ok(())
    }

    /// Waits (host) for every copy enqueued so far and confirms them.
    ///
    /// # Errors
    /// [`LateFailure`] when a copy failed since the last confirmed sync (reported here or by an
    /// earlier write): every slot written since then is named; call [`LateFailure::repair`].
    pub fn synchronize(&mut self) -> Result<(), LateFailure> {
        let synced = self.driver.sync_stream(&self.copy);
        match (self.late.take(), synced) {
            (None, Ok(())) => {
                self.confirm();
                Ok(())
            }
            (Some(error), _) | (None, Err(error)) => Err(self.late_failure(error)),
        }
    }

    /// Confirms the copies enqueued so far if they already completed, without waiting
    /// (`cuEventQuery` on an event recorded now): `Ok(true)` when they did (as
    /// [`CudaSlotSink::synchronize`] would), `Ok(false)` when some still run (nothing changes).
    ///
    /// # Errors
    /// [`LateFailure`] as for [`CudaSlotSink::synchronize`].
    pub fn poll(&mut self) -> Result<bool, LateFailure> {
        let done = self.driver.record(&self.tail, &self.copy).and_then(|()| self.driver.query(&self.tail));
        match (self.late.take(), done) {
            (None, Ok(false)) => Ok(false),
            (None, Ok(true)) => {
                self.confirm();
                Ok(true)
            }
            (Some(error), _) | (None, Err(error)) => Err(self.late_failure(error)),
        }
    }

    /// Keeps `error`, a failure of earlier copies seen while waiting for something else, for
    /// the next [`CudaSlotSink::synchronize`] or [`CudaSlotSink::poll`]; writes are refused
    /// until then. Returns [`CudaError::Unconfirmed`] for the caller to report.
    pub(crate) fn note_late_failure(&mut self, error: CudaError) -> CudaError {
        self.late.get_or_insert(error);
        CudaError::Unconfirmed
    }

    /// Forgets the suspects: every copy so far completed.
    fn confirm(&mut self) {
        for slots in self.layers.values_mut() {
            slots.suspect.fill(false);
        }
    }

    /// The failure `error`, naming (and forgetting) every slot written since the last confirmed
    /// sync.
    fn late_failure(&mut self, error: CudaError) -> LateFailure {
        let mut suspects = Vec::new();
        for (&layer, slots) in &mut self.layers {
            for (slot, suspect) in slots.suspect.iter_mut().enumerate() {
                if std::mem::take(suspect) {
                    suspects.push(SlotRef { layer, slot });
                }
            }
        }
        LateFailure { error, suspects }
    }

    /// Copies projection number `projection` of `slot` of `layer` back into `out` (after
    /// waiting for the copy stream), for checks.
    ///
    /// # Errors
    /// [`CudaError::UnknownLayer`], [`CudaError::Layout`] when the slot or projection is out of
    /// range or `out` is not the projection's length, [`CudaError::Unconfirmed`] when a copy
    /// failed (call [`CudaSlotSink::synchronize`]), or the driver's error.
    pub fn read_slot(&mut self, layer: usize, slot: usize, projection: usize, out: &mut [u8]) -> Result<(), CudaError> {
        let slots = self.layers.get(&layer).ok_or(CudaError::UnknownLayer { layer })?;
        let range = slots.vram.arena().projection_range(slot, projection)?;
        if out.len() != range.len() {
            return Err(expertslab::LayoutError::LengthMismatch { expected: range.len(), actual: out.len() }.into());
        }
        let src = slots.vram.slot_ptr(slot, projection)?;
        if let Err(e) = self.driver.sync_stream(&self.copy) {
            return Err(self.note_late_failure(e));
        }
        // SAFETY: `src..src + out.len()` is projection `projection` of a slot of this layer's
        // arena, which is live; the copy stream is idle, so the bytes are final.
        unsafe { self.driver.copy_to_host(out, src) }
    }
}

impl<D: Driver> SlotSink for CudaSlotSink<D> {
    type Error = CudaError;

    /// Enqueues the copy of `bytes` into the slot's projection on the copy stream (waiting first,
    /// on the device, for kernels that may still read the slot). Registered bytes are copied
    /// directly, others staged through the pinned ring, or, without a ring, copied while the host
    /// waits: never asynchronously from pageable memory.
    fn write(&mut self, dest: SlotWrite, bytes: &[u8]) -> Result<(), CudaError> {
        if self.late.is_some() {
            return Err(CudaError::Unconfirmed);
        }
        let layer = dest.layer;
        let slots = self.layers.get_mut(&layer).ok_or(CudaError::UnknownLayer { layer })?;
        let range = slots.vram.arena().projection_range(dest.slot, dest.index)?;
        if bytes.len() != range.len() {
            return Err(expertslab::LayoutError::LengthMismatch { expected: range.len(), actual: bytes.len() }.into());
        }
        let dst = slots.vram.slot_ptr(dest.slot, dest.index)?;
        let was_read = slots.read.get(dest.slot).copied().unwrap_or(false);
        if let Some(suspect) = slots.suspect.get_mut(dest.slot) {
            *suspect = true;
        }
        if was_read && self.fence_pending {
            self.wait_for_reads()?;
        }
        // SAFETY: `dst..dst + bytes.len()` is one projection of a slot inside the layer's arena
        // (checked above), which lives until the sink is dropped after a device sync.
        let path = match unsafe { self.host.copy(dst, bytes, &self.copy) } {
            Ok(path) => path,
            Err(CopyFailure::Enqueue(e)) => return Err(e),
            Err(CopyFailure::Earlier(e)) => return Err(self.note_late_failure(e)),
        };
        let count = match path {
            CopyPath::Registered => &mut self.stats.registered_copies,
            CopyPath::Staged => &mut self.stats.staged_copies,
            CopyPath::Synchronous => &mut self.stats.synchronous_copies,
        };
        *count = count.saturating_add(1);
        self.stats.bytes = self.stats.bytes.saturating_add(bytes.len() as u64);
        Ok(())
    }

    /// Records the slot's ready event after its copies and returns without waiting.
    fn finish(&mut self, layer: usize, slot: usize) -> Result<(), CudaError> {
        if self.late.is_some() {
            return Err(CudaError::Unconfirmed);
        }
        let slots = self.layers.get(&layer).ok_or(CudaError::UnknownLayer { layer })?;
        let ready = slots
            .ready
            .get(slot)
            .ok_or(CudaError::Layout(expertslab::LayoutError::SlotOutOfRange { slot, slots: slots.ready.len() }))?;
        self.driver.record(ready, &self.copy)
    }
}

impl<D: Driver> Drop for CudaSlotSink<D> {
    fn drop(&mut self) {
        // Arenas, staging buffers and registrations go next: nothing may use them any more.
        let _ = self.driver.sync_device();
    }
}
