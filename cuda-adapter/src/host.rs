//! Page-locked sources of slot copies: registered host memory, and a pinned staging ring for
//! everything else.
//!
//! Copies to the device run at full speed (and asynchronously) only from page-locked memory.
//! [`HostMemory`] decides, per write, where the bytes come from:
//!
//! 1. **Registered**: the bytes lie inside a [`SharedBytes`] registered with
//!    [`HostMemory::register`] or [`HostMemory::register_store`] (`cuMemHostRegister`,
//!    read-only, mapped for the device). The copy reads them directly; the registration holds a
//!    clone of every owner, so the bytes stay alive and unchanged as long as copies may read
//!    them (until the `HostMemory` is dropped, which synchronizes the device first). This is the
//!    path for a memory-mapped model file or an `expertslab-std` store, and kernels may read
//!    registered bytes over the bus through [`HostMemory::device_ptr_of`] (zero-copy).
//!    Registering locks the pages in RAM: a registered file range is read in whole and stays
//!    resident, so register what the slots are fed from, not more than RAM holds.
//! 2. **Staged**: bytes that are not registered (registration was refused, as some systems do
//!    for file mappings or beyond the locked-memory limit, or they were never offered) are
//!    copied by the host into the next entry of a ring of pinned buffers, and the device copies
//!    from there. An entry is reused only after the event recorded after its last copy
//!    completed; the host waits for that event only when the ring has wrapped around onto a copy
//!    still in flight.
//! 3. **Synchronous**: with a ring of no entries, the copy is enqueued from the caller's
//!    (pageable) bytes and the host waits for the stream before returning, because the bytes
//!    may be freed or changed as soon as the write returns. Never asynchronous from pageable
//!    memory.

use expertslab::LayeredSource;
use expertslab_std::{ExpertStore, SharedBytes, StoredStack};

use crate::driver::{Driver, PinnedMemory};
use crate::error::CudaError;

/// Registrations are merged where they share a page: the driver refuses to register a page
/// twice.
const PAGE: usize = 4096;

/// The staging ring's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingConfig {
    /// Number of pinned buffers (0: no ring; unregistered bytes are copied synchronously).
    pub entries: usize,
    /// Bytes per buffer; longer writes are split into several entries.
    pub entry_bytes: usize,
}

impl Default for RingConfig {
    /// Four buffers of 8 MiB: enough to keep the copy engine busy while the host fills the
    /// next one.
    fn default() -> Self {
        Self { entries: 4, entry_bytes: 8 << 20 }
    }
}

/// Where the bytes of one copy came from (see the [module docs](self)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyPath {
    /// Straight from registered host memory, asynchronously.
    Registered,
    /// Through the pinned staging ring, asynchronously.
    Staged,
    /// From pageable memory, the host waiting for the copy.
    Synchronous,
}

/// Why a copy failed: the driver refused it, or waiting for earlier work (a staging buffer, the
/// synchronous path) reported that earlier work failed.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum CopyFailure {
    /// The copy was not enqueued.
    Enqueue(CudaError),
    /// Earlier work failed (reported while waiting for it).
    Earlier(CudaError),
}

/// What one call of [`HostMemory::register`] did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RegisterReport {
    /// Regions registered (buffers sharing a page are one region).
    pub registered: usize,
    /// Bytes in them.
    pub bytes: usize,
    /// Regions that were page-locked and mapped for the device already (memory allocated that
    /// way, or registered by someone else): adopted as they are, never unregistered here.
    pub adopted: usize,
    /// Regions the driver refused; their bytes go through the staging ring.
    pub refused: usize,
    /// Why the first refused region was refused.
    pub first_refusal: Option<CudaError>,
}

/// One registered region and the buffers that keep it alive.
#[derive(Debug)]
struct Region {
    start: usize,
    len: usize,
    device: u64,
    /// Registered here (and unregistered on drop), not adopted.
    registered: bool,
    /// The buffers inside the region, with their address ranges.
    owners: Vec<(usize, usize, SharedBytes)>,
}

struct Entry<D: Driver> {
    buffer: D::Pinned,
    event: D::Event,
    in_flight: bool,
}

/// A ring of pinned buffers, each reused only after the event recorded after its last copy
/// completed: the staging ring here, and the device slot table's host mirrors.
pub(crate) struct StagingRing<D: Driver> {
    entries: Vec<Entry<D>>,
    entry_bytes: usize,
    next: usize,
}

impl<D: Driver> StagingRing<D> {
    /// `config.entries` pinned buffers of `config.entry_bytes` each (none when either is 0).
    pub(crate) fn new(driver: &D, config: RingConfig) -> Result<Self, CudaError> {
        let count = if config.entry_bytes == 0 { 0 } else { config.entries };
        let mut entries = Vec::with_capacity(count);
        for _ in 0..count {
            entries.push(Entry {
                buffer: driver.alloc_pinned(config.entry_bytes)?,
                event: driver.new_event()?,
                in_flight: false,
            });
        }
        Ok(Self { entries, entry_bytes: config.entry_bytes, next: 0 })
    }

    /// Whether the ring has no buffer.
    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Copies `bytes` into the next buffers (one per `entry_bytes` chunk) and enqueues their
    /// copies to `dst..` on `stream`, each followed by its buffer's event. The host waits only
    /// when the ring wrapped onto a copy still in flight.
    ///
    /// # Safety
    /// `dst..dst + bytes.len()` lies inside one device allocation of this driver that outlives
    /// the copies; the ring outlives them too (its owner synchronizes the device before dropping
    /// it).
    pub(crate) unsafe fn stage(
        &mut self,
        driver: &D,
        dst: u64,
        bytes: &[u8],
        stream: &D::Stream,
    ) -> Result<(), CopyFailure> {
        let count = self.entries.len();
        let overflow = || CopyFailure::Enqueue(CudaError::Layout(expertslab::LayoutError::Overflow));
        let mut offset = 0usize;
        for chunk in bytes.chunks(self.entry_bytes.max(1)) {
            let entry = self.entries.get_mut(self.next).ok_or_else(overflow)?;
            if entry.in_flight {
                entry.in_flight = false;
                driver.sync_event(&entry.event).map_err(CopyFailure::Earlier)?;
            }
            let staged =
                entry.buffer.bytes_mut().map_err(CopyFailure::Enqueue)?.get_mut(..chunk.len()).ok_or_else(overflow)?;
            staged.copy_from_slice(chunk);
            let at = dst.saturating_add(offset as u64);
            // SAFETY: the entry's pinned buffer outlives the copy (the caller's contract) and is
            // not written again before the event recorded below completed; the chunk lies inside
            // `dst..dst + bytes.len()`, which the caller vouches for.
            unsafe { driver.copy_to_device(at, staged, stream) }.map_err(CopyFailure::Enqueue)?;
            if let Err(e) = driver.record(&entry.event, stream) {
                // Without its event the entry cannot tell when the copy is done: wait for it.
                driver.sync_stream(stream).map_err(CopyFailure::Earlier)?;
                return Err(CopyFailure::Enqueue(e));
            }
            entry.in_flight = true;
            self.next = self.next.saturating_add(1).checked_rem(count).unwrap_or(0);
            offset = offset.saturating_add(chunk.len());
        }
        Ok(())
    }
}

/// Page-locked host memory for slot copies: registered buffers and the staging ring. See the
/// [module docs](self).
pub struct HostMemory<D: Driver> {
    driver: D,
    regions: Vec<Region>,
    ring: StagingRing<D>,
}

impl<D: Driver> std::fmt::Debug for HostMemory<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostMemory")
            .field("regions", &self.regions)
            .field("ring_entries", &self.ring.entries.len())
            .field("entry_bytes", &self.ring.entry_bytes)
            .finish_non_exhaustive()
    }
}

impl<D: Driver> HostMemory<D> {
    /// Nothing registered yet, and a staging ring as `ring` says (pinned buffers allocated now).
    ///
    /// # Errors
    /// The driver's error allocating the ring.
    pub fn new(driver: D, ring: RingConfig) -> Result<Self, CudaError> {
        let ring = StagingRing::new(&driver, ring)?;
        Ok(Self { driver, regions: Vec::new(), ring })
    }

    /// Registers `buffers` read-only with the driver (merging buffers that share a page), so
    /// copies read them directly and kernels can read them over the bus. Registration the driver
    /// refuses is reported, not an error: those bytes go through the staging ring. Buffers
    /// already inside a registered region are only kept alive.
    pub fn register(&mut self, buffers: impl IntoIterator<Item = SharedBytes>) -> RegisterReport {
        let mut owners: Vec<(usize, usize, SharedBytes)> = buffers
            .into_iter()
            .filter(|b| !b.is_empty())
            .map(|b| {
                let start = b.as_bytes().as_ptr().addr();
                (start, start.saturating_add(b.len()), b)
            })
            .collect();
        owners.sort_by_key(|&(start, end, _)| (start, end));
        let mut report = RegisterReport::default();
        let mut group: Vec<(usize, usize, SharedBytes)> = Vec::new();
        let mut group_end = 0usize;
        for owner in owners {
            if !group.is_empty() && owner.0 / PAGE >= group_end.div_ceil(PAGE) {
                self.register_group(std::mem::take(&mut group), &mut report);
            }
            group_end = if group.is_empty() { owner.1 } else { group_end.max(owner.1) };
            group.push(owner);
        }
        if !group.is_empty() {
            self.register_group(group, &mut report);
        }
        report
    }

    /// Registers every expert stack of `store` (see [`HostMemory::register`]): for a store
    /// opened from a GGUF file, the mapped file's expert ranges.
    pub fn register_store(&mut self, store: &ExpertStore) -> RegisterReport {
        let mut stacks = Vec::new();
        for layer in store.moe_layers() {
            if let Some(weights) = store.layer(layer) {
                for &(projection, _) in weights.layout().projections() {
                    match weights.stack_bytes(projection) {
                        Ok(StoredStack::Whole(stack)) => stacks.push(stack.clone()),
                        // Slabs kept apart in the file are registered where they lie.
                        Ok(StoredStack::PerExpert { slabs, .. }) => stacks.extend(slabs.iter().cloned()),
                        Err(_) => {}
                    }
                }
            }
        }
        self.register(stacks)
    }

    fn register_group(&mut self, group: Vec<(usize, usize, SharedBytes)>, report: &mut RegisterReport) {
        let Some(&(start, _, ref first)) = group.first() else { return };
        let end = group.iter().map(|&(_, e, _)| e).max().unwrap_or(start);
        // Already inside a region: keep the owners alive there.
        if let Some(region) = self.regions.iter_mut().find(|r| r.start <= start && end <= r.start.saturating_add(r.len))
        {
            region.owners.extend(group);
            return;
        }
        let len = end.saturating_sub(start);
        let ptr = first.as_bytes().as_ptr();
        // SAFETY: `ptr..ptr + len` covers buffers that share pages, so every byte of it is
        // mapped; the buffers' owners are kept in the region until it is unregistered in `drop`
        // after the device was synchronized.
        match unsafe { self.driver.register_host(ptr, len) } {
            Ok(device) => {
                report.registered = report.registered.saturating_add(1);
                report.bytes = report.bytes.saturating_add(len);
                self.regions.push(Region { start, len, device, registered: true, owners: group });
            }
            Err(e) => match self.mapped(ptr, len) {
                Some(device) => {
                    report.adopted = report.adopted.saturating_add(1);
                    report.bytes = report.bytes.saturating_add(len);
                    self.regions.push(Region { start, len, device, registered: false, owners: group });
                }
                None => {
                    report.refused = report.refused.saturating_add(1);
                    report.first_refusal.get_or_insert(e);
                }
            },
        }
    }

    /// The device address of `len` bytes at `ptr` when all of them are page-locked and mapped
    /// for the device already, contiguously (first and last byte mapped `len − 1` apart).
    fn mapped(&self, ptr: *const u8, len: usize) -> Option<u64> {
        let device = self.driver.mapped_device_ptr(ptr)?;
        let last = len.checked_sub(1)?;
        let end = self.driver.mapped_device_ptr(ptr.wrapping_add(last))?;
        (end == device.checked_add(last as u64)?).then_some(device)
    }

    /// The device address of `bytes` when they lie inside one registered buffer: kernels can
    /// read them there over the bus (zero-copy) for as long as this `HostMemory` lives.
    pub fn device_ptr_of(&self, bytes: &[u8]) -> Option<u64> {
        let start = bytes.as_ptr().addr();
        let end = start.checked_add(bytes.len())?;
        self.regions.iter().find_map(|region| {
            let inside = region.owners.iter().any(|&(s, e, _)| s <= start && end <= e);
            let offset = start.checked_sub(region.start)?;
            inside.then(|| region.device.saturating_add(offset as u64))
        })
    }

    /// Bytes registered in all.
    pub fn registered_bytes(&self) -> usize {
        self.regions.iter().map(|r| r.len).sum()
    }

    /// Enqueues a copy of `bytes` to device address `dst` on `stream`, from registered memory,
    /// through the ring, or synchronously (see the [module docs](self)); returns which.
    ///
    /// # Safety
    /// `dst..dst + bytes.len()` lies inside one device allocation of this driver that outlives
    /// the copy.
    ///
    /// # Errors
    /// The driver refused a copy (nothing further is enqueued), or waiting for a ring entry or
    /// the synchronous copy reported a failure of earlier work.
    pub(crate) unsafe fn copy(&mut self, dst: u64, bytes: &[u8], stream: &D::Stream) -> Result<CopyPath, CopyFailure> {
        if self.device_ptr_of(bytes).is_some() {
            // SAFETY: the bytes lie in a registered buffer whose owner this `HostMemory` keeps
            // until it synchronizes the device on drop; the caller vouches for `dst`.
            unsafe { self.driver.copy_to_device(dst, bytes, stream) }.map_err(CopyFailure::Enqueue)?;
            return Ok(CopyPath::Registered);
        }
        if self.ring.is_empty() {
            // SAFETY: the host waits below for the copy to complete before `bytes` can go; the
            // caller vouches for `dst`.
            unsafe { self.driver.copy_to_device(dst, bytes, stream) }.map_err(CopyFailure::Enqueue)?;
            self.driver.sync_stream(stream).map_err(CopyFailure::Earlier)?;
            return Ok(CopyPath::Synchronous);
        }
        // SAFETY: the caller vouches for `dst`; the ring lives as long as this `HostMemory`,
        // which synchronizes the device before it goes.
        unsafe { self.ring.stage(&self.driver, dst, bytes, stream)? };
        Ok(CopyPath::Staged)
    }
}

impl<D: Driver> Drop for HostMemory<D> {
    fn drop(&mut self) {
        // Nothing may read the registered buffers or the ring once they go.
        let _ = self.driver.sync_device();
        for region in self.regions.iter().filter(|r| r.registered) {
            if let Some((_, _, first)) = region.owners.first() {
                // SAFETY: registered in `register_group` at this pointer; the device was
                // synchronized above, so no copy or kernel reads the region any more.
                let _ = unsafe { self.driver.unregister_host(first.as_bytes().as_ptr()) };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::{MockDriver, MockOp, MockStream};
    use std::sync::Arc;

    fn setup(entries: usize, entry_bytes: usize) -> (Arc<MockDriver>, HostMemory<Arc<MockDriver>>, u64, MockStream) {
        let driver = Arc::new(MockDriver::new(1 << 20));
        let host = HostMemory::new(Arc::clone(&driver), RingConfig { entries, entry_bytes }).unwrap();
        let dst = driver.alloc(1 << 16).unwrap();
        let stream = driver.new_stream().unwrap();
        (driver, host, dst, stream)
    }

    #[test]
    fn registered_bytes_are_copied_directly_and_mapped_for_kernels() {
        let (driver, mut host, dst, stream) = setup(2, 64);
        let data = SharedBytes::copy_from(&(0..=255).collect::<Vec<u8>>());
        // Two slices of one buffer share pages: one region.
        let report = host.register([data.slice(0..100).unwrap(), data.slice(100..256).unwrap()]);
        assert_eq!((report.registered, report.bytes, report.refused), (1, 256, 0));
        let slab = &data.as_bytes()[110..200];
        assert_eq!(host.device_ptr_of(slab), Some(data.as_bytes().as_ptr().addr() as u64 + 110));
        // Bytes spanning two buffers are not inside one owner: not treated as registered.
        assert_eq!(host.device_ptr_of(&data.as_bytes()[90..110]), None);
        // SAFETY: `dst` is a 64 KiB allocation of the mock.
        assert_eq!(unsafe { host.copy(dst, slab, &stream) }.unwrap(), CopyPath::Registered);
        assert_eq!(driver.read(dst, 90).unwrap(), slab);
        // Registering a buffer inside the region again only keeps it alive.
        assert_eq!(host.register([data.slice(5..6).unwrap()]).registered, 0);
        let other = vec![7u8; 10];
        assert_eq!(host.device_ptr_of(&other), None);
        drop(host);
        assert_eq!(driver.ops().iter().filter(|op| **op == MockOp::Unregister).count(), 1);
    }

    #[test]
    fn memory_page_locked_already_is_adopted_and_never_unregistered() {
        let (driver, mut host, dst, stream) = setup(0, 0);
        let data = SharedBytes::copy_from(&[9u8; 300]);
        driver.lock_host(data.as_bytes()); // as memory allocated page-locked is
        let report = host.register([data.clone()]);
        assert_eq!((report.registered, report.adopted, report.bytes, report.refused), (0, 1, 300, 0));
        let slab = &data.as_bytes()[10..40];
        assert_eq!(host.device_ptr_of(slab), Some(slab.as_ptr().addr() as u64));
        // SAFETY: `dst` is a 64 KiB allocation of the mock.
        assert_eq!(unsafe { host.copy(dst, slab, &stream) }.unwrap(), CopyPath::Registered);
        // Memory that is neither registrable nor locked is refused.
        driver.refuse_registration(true);
        let other = SharedBytes::copy_from(&[1u8; 64]);
        let report = host.register([other]);
        assert_eq!((report.adopted, report.refused), (0, 1));
        drop(host);
        assert!(driver.ops().iter().all(|op| *op != MockOp::Unregister), "{:?}", driver.ops());
    }

    #[test]
    fn refused_registration_falls_back_to_the_ring_and_reuse_waits_for_the_entry() {
        let (driver, mut host, dst, stream) = setup(2, 64);
        driver.refuse_registration(true);
        let data = SharedBytes::copy_from(&[9u8; 300]);
        let report = host.register([data.clone()]);
        assert_eq!((report.registered, report.refused), (0, 1));
        assert!(report.first_refusal.is_some());
        driver.clear_ops();
        // 150 bytes: three chunks through two entries; the third reuses entry 0.
        let slab = &data.as_bytes()[..150];
        // SAFETY: `dst` is a 64 KiB allocation of the mock.
        assert_eq!(unsafe { host.copy(dst, slab, &stream) }.unwrap(), CopyPath::Staged);
        assert_eq!(driver.read(dst, 150).unwrap(), slab);
        let ops = driver.ops();
        let MockOp::Record { event: first, .. } = ops[1] else { panic!("{ops:?}") };
        assert_eq!(
            ops,
            [
                MockOp::Copy { stream, dst, len: 64 },
                MockOp::Record { event: first, stream },
                MockOp::Copy { stream, dst: dst + 64, len: 64 },
                MockOp::Record { event: MockEvent(first.0 + 1), stream },
                MockOp::SyncEvent { event: first },
                MockOp::Copy { stream, dst: dst + 128, len: 22 },
                MockOp::Record { event: first, stream },
            ]
        );
    }

    #[test]
    fn without_a_ring_unregistered_bytes_are_copied_synchronously() {
        let (driver, mut host, dst, stream) = setup(0, 64);
        driver.clear_ops();
        let bytes = vec![3u8; 40];
        // SAFETY: `dst` is a 64 KiB allocation of the mock.
        assert_eq!(unsafe { host.copy(dst, &bytes, &stream) }.unwrap(), CopyPath::Synchronous);
        assert_eq!(driver.ops(), [MockOp::Copy { stream, dst, len: 40 }, MockOp::SyncStream { stream }]);
    }

    use crate::driver::MockEvent;
}
