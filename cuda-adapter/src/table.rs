//! [`DeviceSlotTable`]: one layer's expert-to-slot table in VRAM, for kernels.

use expertslab::ExpertPool;

use crate::driver::{Driver, PinnedMemory};
use crate::error::CudaError;
use crate::sink::CudaSlotSink;

/// Host mirrors in flight at once; the host waits only when all are still being copied.
const MIRRORS: usize = 4;

/// The entry of an expert that is not resident.
pub const NOT_RESIDENT: i32 = -1;

/// Marks an entry whose device value is unknown, so the next update uploads it.
const UNKNOWN: i32 = i32::MIN;

struct Mirror<D: Driver> {
    bytes: D::Pinned,
    event: D::Event,
    in_flight: bool,
}

/// `i32[experts]` in device memory: entry `e` is the slot expert `e` is resident in, or
/// [`NOT_RESIDENT`]. Updated on the sink's copy stream from the pool after each plan's copies
/// were enqueued ([`DeviceSlotTable::update`]), so kernels ordered after the copy stream
/// ([`CudaSlotSink::order_before`]) see the table and the slots agree.
///
/// An update uploads the span from the first to the last changed entry (a few bytes per decode
/// step) from a pinned host mirror; mirrors are reused only once their copy completed.
pub struct DeviceSlotTable<D: Driver> {
    driver: D,
    layer: usize,
    ptr: u64,
    /// What the device holds (or will, once the copy stream gets there).
    current: Vec<i32>,
    next: Vec<i32>,
    mirrors: Vec<Mirror<D>>,
    next_mirror: usize,
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
        let mut mirrors = Vec::with_capacity(MIRRORS);
        for _ in 0..MIRRORS {
            mirrors.push(Mirror { bytes: driver.alloc_pinned(bytes)?, event: driver.new_event()?, in_flight: false });
        }
        let mut table = Self {
            driver,
            layer,
            ptr,
            current: vec![UNKNOWN; experts],
            next: vec![NOT_RESIDENT; experts],
            mirrors,
            next_mirror: 0,
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
        let count = self.mirrors.len();
        let mirror =
            self.mirrors.get_mut(self.next_mirror).ok_or(CudaError::Layout(expertslab::LayoutError::Overflow))?;
        if mirror.in_flight {
            mirror.in_flight = false;
            self.driver.sync_event(&mirror.event)?;
        }
        let len = span.len().saturating_mul(4);
        let staged =
            mirror.bytes.bytes_mut()?.get_mut(..len).ok_or(CudaError::Layout(expertslab::LayoutError::Overflow))?;
        for (out, value) in staged.chunks_exact_mut(4).zip(span) {
            out.copy_from_slice(&value.to_le_bytes());
        }
        // Kernels that read the table may still run: the copy stream waits for them.
        sink.wait_for_reads()?;
        let dst = self.ptr.saturating_add((first as u64).saturating_mul(4));
        // SAFETY: `dst..dst + len` lies inside the table's allocation (entries first..=last);
        // the mirror is pinned, lives as long as the table (dropped after a device sync) and is
        // not written again before the event recorded below completed.
        unsafe { self.driver.copy_to_device(dst, staged, sink.copy_stream())? };
        if let Err(e) = self.driver.record(&mirror.event, sink.copy_stream()) {
            self.driver.sync_stream(sink.copy_stream())?;
            return Err(e);
        }
        mirror.in_flight = true;
        self.next_mirror = self.next_mirror.saturating_add(1) % count;
        if let (Some(current), Some(next)) = (self.current.get_mut(first..=last), self.next.get(first..=last)) {
            current.copy_from_slice(next);
        }
        Ok(len)
    }

    /// Copies the table back from the device (after waiting for `sink`'s copy stream), for
    /// checks.
    ///
    /// # Errors
    /// The driver's error (a failure of earlier copies among them).
    pub fn read_back(&self, sink: &CudaSlotSink<D>) -> Result<Vec<i32>, CudaError> {
        self.driver.sync_stream(sink.copy_stream())?;
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
