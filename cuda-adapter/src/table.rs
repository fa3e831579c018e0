//! [`DeviceSlotTable`]: one layer's expert-to-slot table in VRAM, for kernels.

use expertslab::ExpertPool;

use crate::driver::Driver;
use crate::error::CudaError;
use crate::host::{CopyFailure, RingConfig, StagingRing};
use crate::sink::CudaSlotSink;

/// Host mirrors in flight at once; the host waits only when all are still being copied.
const MIRRORS: usize = 4;

/// The entry of an expert that is not resident.
pub const NOT_RESIDENT: i32 = -1;

/// Marks an entry whose device value is unknown, so the next update uploads it.
const UNKNOWN: i32 = i32::MIN;

/// `i32[experts]` in device memory: entry `e` is the slot expert `e` is resident in, or
/// [`NOT_RESIDENT`]. Updated on the sink's copy stream from the pool after each plan's copies
/// were enqueued ([`DeviceSlotTable::update`]), so kernels ordered after the copy stream
/// ([`CudaSlotSink::order_before`]) see the table and the slots agree.
///
/// An update uploads the span from the first to the last changed entry (a few bytes per decode
/// step) from a pinned host mirror (a small staging ring); mirrors are reused only once their
/// copy completed.
pub struct DeviceSlotTable<D: Driver> {
    driver: D,
    layer: usize,
    ptr: u64,
    /// What the device holds (or will, once the copy stream gets there).
    current: Vec<i32>,
    next: Vec<i32>,
    /// The changed span, little-endian, as it is staged.
    span: Vec<u8>,
    mirrors: StagingRing<D>,
}

impl<D: Driver> std::fmt::Debug for DeviceSlotTable<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceSlotTable")
            .field("layer", &self.layer)
            .field("experts", &self.current.len())
            .field("entries", &self.current)
            .finish_non_exhaustive()
    }
}

impl<D: Driver + Clone> DeviceSlotTable<D> {
    /// A table of `experts` entries for layer `layer`, every expert [`NOT_RESIDENT`] (the upload
    /// is enqueued on `sink`'s copy stream).
    ///
    /// # Errors
    /// The driver's error.
    pub fn new(layer: usize, experts: usize, sink: &mut CudaSlotSink<D>) -> Result<Self, CudaError> {
        let driver = sink.driver().clone();
        let bytes = experts.saturating_mul(4).max(4);
        let ptr = driver.alloc(bytes)?;
        let mirrors = StagingRing::new(&driver, RingConfig { entries: MIRRORS, entry_bytes: bytes })?;
        let mut table = Self {
            driver,
            layer,
            ptr,
            current: vec![UNKNOWN; experts],
            next: vec![NOT_RESIDENT; experts],
            span: Vec::with_capacity(bytes),
            mirrors,
        };
        table.upload(sink)?;
        Ok(table)
    }
}

impl<D: Driver> DeviceSlotTable<D> {
    /// The device address of entry 0.
    pub fn device_ptr(&self) -> u64 {
        self.ptr
    }

    /// The layer.
    pub fn layer(&self) -> usize {
        self.layer
    }

    /// Number of entries.
    pub fn experts(&self) -> usize {
        self.current.len()
    }

    /// The entries as last enqueued for the device.
    pub fn entries(&self) -> &[i32] {
        &self.current
    }

    /// Forgets what the device holds, so the next update uploads every entry: after a
    /// [`crate::LateFailure`], whose failed copies may include the table's.
    pub fn invalidate(&mut self) {
        self.current.fill(UNKNOWN);
    }

    /// Enqueues on `sink`'s copy stream the entries that changed since the last update, from
    /// `pool`'s residency (after kernels that read the table, see
    /// [`CudaSlotSink::after_reads`]); returns the bytes uploaded (0 when nothing changed).
    ///
    /// # Errors
    /// [`CudaError::TableMismatch`] for a pool of another layer or expert count, or the
    /// driver's error.
    pub fn update(&mut self, pool: &ExpertPool, sink: &mut CudaSlotSink<D>) -> Result<usize, CudaError> {
        if pool.layer() != self.layer || pool.experts() != self.current.len() {
            return Err(CudaError::TableMismatch {
                table: (self.layer, self.current.len()),
                pool: (pool.layer(), pool.experts()),
            });
        }
        self.next.fill(NOT_RESIDENT);
        for (slot, expert) in pool.residents() {
            if let (Some(entry), Ok(slot)) = (self.next.get_mut(expert), i32::try_from(slot)) {
                *entry = slot;
            }
        }
        self.upload(sink)
    }

    /// Uploads the span of `next` that differs from `current`.
    fn upload(&mut self, sink: &mut CudaSlotSink<D>) -> Result<usize, CudaError> {
        let changed = |(a, b): (&i32, &i32)| a != b;
        let Some(first) = self.next.iter().zip(&self.current).position(changed) else { return Ok(0) };
        let last = self.next.iter().zip(&self.current).rposition(changed).unwrap_or(first);
        let span = self.next.get(first..=last).ok_or(CudaError::Layout(expertslab::LayoutError::Overflow))?;
        self.span.clear();
        self.span.extend(span.iter().flat_map(|value| value.to_le_bytes()));
        // Kernels that read the table may still run: the copy stream waits for them.
        sink.wait_for_reads()?;
        let dst = self.ptr.saturating_add((first as u64).saturating_mul(4));
        // SAFETY: `dst..dst + span` lies inside the table's allocation (entries first..=last);
        // the mirrors live as long as the table, which synchronizes the device before it goes.
        match unsafe { self.mirrors.stage(&self.driver, dst, &self.span, sink.copy_stream()) } {
            Ok(()) => {}
            Err(CopyFailure::Enqueue(e)) => return Err(e),
            Err(CopyFailure::Earlier(e)) => return Err(sink.note_late_failure(e)),
        }
        if let (Some(current), Some(next)) = (self.current.get_mut(first..=last), self.next.get(first..=last)) {
            current.copy_from_slice(next);
        }
        Ok(self.span.len())
    }

    /// Copies the table back from the device (after waiting for `sink`'s copy stream), for
    /// checks.
    ///
    /// # Errors
    /// [`CudaError::Unconfirmed`] when an earlier copy failed (call
    /// [`CudaSlotSink::synchronize`]), or the driver's error.
    pub fn read_back(&self, sink: &mut CudaSlotSink<D>) -> Result<Vec<i32>, CudaError> {
        if let Err(e) = self.driver.sync_stream(sink.copy_stream()) {
            return Err(sink.note_late_failure(e));
        }
        let mut bytes = vec![0u8; self.current.len().saturating_mul(4)];
        // SAFETY: the table's allocation holds `experts × 4` bytes (at least 4) and is live.
        unsafe { self.driver.copy_to_host(&mut bytes, self.ptr)? };
        Ok(bytes.chunks_exact(4).map(|b| b.try_into().map_or(UNKNOWN, i32::from_le_bytes)).collect())
    }
}

impl<D: Driver> Drop for DeviceSlotTable<D> {
    fn drop(&mut self) {
        // Kernels or copies may still use the table or a mirror.
        let _ = self.driver.sync_device();
        // SAFETY: allocated in `new` by this driver, freed only here, after the device sync.
        let _ = unsafe { self.driver.free(self.ptr) };
    }
}
