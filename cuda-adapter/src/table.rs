//! [`DeviceSlotTable`]: one layer's expert-to-slot table in VRAM, double-buffered, for kernels.

use expertslab::{ExpertPool, SharedSlotPool};

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

/// `i32[experts]` in device memory, double-buffered: entry `e` is the slot expert `e` is
/// resident in, or [`NOT_RESIDENT`]. Updated on the sink's copy stream from the pool after each
/// plan's copies were enqueued ([`DeviceSlotTable::update`]), so kernels ordered after the copy
/// stream ([`CudaSlotSink::order_before`]) see the table and the slots agree.
///
/// # Two buffers
///
/// An update that changes an entry writes the buffer the kernels did not read last and makes it
/// current ([`DeviceSlotTable::view`] names it), so kernels still reading the previous table
/// (those of the step's first phase, which read experts resident before its copies) run on
/// while the copy stream writes the next one. The copy stream waits only for the kernels that
/// read the buffer it overwrites, as [`DeviceSlotTable::after_reads`] marked them; a table never
/// marked waits for every read the sink knows of ([`CudaSlotSink::after_reads`]).
///
/// An update uploads the span from the first to the last entry that differs from what the
/// written buffer holds (a few bytes per decode step) from a pinned host mirror (a small staging
/// ring); mirrors are reused only once their copy completed.
pub struct DeviceSlotTable<D: Driver> {
    driver: D,
    layer: usize,
    buffers: [TableBuffer<D>; 2],
    /// The buffer the next kernels read: the last one written.
    current: usize,
    /// Whether [`DeviceSlotTable::after_reads`] was ever called.
    reads_marked: bool,
    next: Vec<i32>,
    /// The changed span, little-endian, as it is staged.
    span: Vec<u8>,
    mirrors: StagingRing<D>,
}

/// One of the table's two device buffers.
struct TableBuffer<D: Driver> {
    ptr: u64,
    /// What the device holds (or will, once the copy stream gets there).
    entries: Vec<i32>,
    /// Recorded after the last kernels marked as reading this buffer.
    read: D::Event,
    read_pending: bool,
}

/// The device slot table as the kernels read it: the current buffer's address and its length.
/// Only [`DeviceSlotTable::view`] makes one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableView {
    ptr: u64,
    experts: u32,
}

impl TableView {
    /// The device address of entry 0.
    pub const fn device_ptr(&self) -> u64 {
        self.ptr
    }

    /// Number of entries.
    pub const fn experts(&self) -> u32 {
        self.experts
    }
}

impl<D: Driver> std::fmt::Debug for DeviceSlotTable<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceSlotTable")
            .field("layer", &self.layer)
            .field("experts", &self.next.len())
            .field("current", &self.current)
            .field("entries", &self.entries())
            .finish_non_exhaustive()
    }
}

impl<D: Driver + Clone> DeviceSlotTable<D> {
    /// A table of `experts` entries for layer `layer`, every expert [`NOT_RESIDENT`] (the upload
    /// is enqueued on `sink`'s copy stream).
    ///
    /// # Errors
    /// [`CudaError::Unsupported`] for more than `i32::MAX` experts, or the driver's error.
    pub fn new(layer: usize, experts: usize, sink: &mut CudaSlotSink<D>) -> Result<Self, CudaError> {
        if i32::try_from(experts).is_err() {
            return Err(CudaError::Unsupported(format!("a slot table of {experts} experts")));
        }
        let driver = sink.driver().clone();
        let bytes = experts.saturating_mul(4).max(4);
        let buffer = |driver: &D| -> Result<TableBuffer<D>, CudaError> {
            let ptr = driver.alloc(bytes)?;
            let read = driver.new_event().inspect_err(|_| {
                // SAFETY: allocated just above by this driver; nothing has used it.
                let _ = unsafe { driver.free(ptr) };
            })?;
            Ok(TableBuffer { ptr, entries: vec![UNKNOWN; experts], read, read_pending: false })
        };
        let first = buffer(&driver)?;
        let second = match buffer(&driver) {
            Ok(second) => second,
            Err(e) => {
                // SAFETY: allocated above by this driver; nothing has used it.
                let _ = unsafe { driver.free(first.ptr) };
                return Err(e);
            }
        };
        let mirrors = match StagingRing::new(&driver, RingConfig { entries: MIRRORS, entry_bytes: bytes }) {
            Ok(mirrors) => mirrors,
            Err(e) => {
                for buffer in [&first, &second] {
                    // SAFETY: allocated above by this driver; nothing has used it.
                    let _ = unsafe { driver.free(buffer.ptr) };
                }
                return Err(e);
            }
        };
        // Buffer 1 is current, so the first upload fills buffer 0 and makes it current.
        let mut table = Self {
            driver,
            layer,
            buffers: [first, second],
            current: 1,
            reads_marked: false,
            next: vec![NOT_RESIDENT; experts],
            span: Vec::with_capacity(bytes),
            mirrors,
        };
        table.upload(sink)?;
        Ok(table)
    }
}

impl<D: Driver> DeviceSlotTable<D> {
    /// The table the next kernels read (the current buffer).
    pub fn view(&self) -> TableView {
        // The expert count was checked against i32::MAX in `new`.
        TableView { ptr: self.current().ptr, experts: self.next.len() as u32 }
    }

    /// The device address of entry 0 of the current buffer.
    pub fn device_ptr(&self) -> u64 {
        self.current().ptr
    }

    /// The layer.
    pub fn layer(&self) -> usize {
        self.layer
    }

    /// Number of entries.
    pub fn experts(&self) -> usize {
        self.next.len()
    }

    /// The entries of the current buffer, as last enqueued for the device.
    pub fn entries(&self) -> &[i32] {
        &self.current().entries
    }

    /// The device addresses of both buffers.
    #[cfg(test)]
    pub(crate) fn buffer_ptrs(&self) -> [u64; 2] {
        let [first, second] = &self.buffers;
        [first.ptr, second.ptr]
    }

    fn current(&self) -> &TableBuffer<D> {
        let [first, second] = &self.buffers;
        if self.current == 0 {
            first
        } else {
            second
        }
    }

    /// Forgets what the device holds, so the next updates upload every entry of each buffer:
    /// after a [`crate::LateFailure`], whose failed copies may include the table's.
    pub fn invalidate(&mut self) {
        for buffer in &mut self.buffers {
            buffer.entries.fill(UNKNOWN);
        }
    }

    /// Records on `stream`, after the kernels enqueued there so far, that they read the current
    /// buffer: the update that next overwrites it makes the copy stream wait for them, and for
    /// nothing else. Kernels that read the table run on one stream (an event records a stream's
    /// work up to it, so the last mark covers every earlier read there).
    ///
    /// # Errors
    /// The driver's error.
    pub fn after_reads(&mut self, stream: &D::Stream) -> Result<(), CudaError> {
        let driver = &self.driver;
        let [first, second] = &mut self.buffers;
        let buffer = if self.current == 0 { first } else { second };
        driver.record(&buffer.read, stream)?;
        buffer.read_pending = true;
        self.reads_marked = true;
        Ok(())
    }

    /// Enqueues on `sink`'s copy stream the entries of `pool`'s residency that differ from the
    /// buffer kernels did not read last, and makes that buffer current; returns the bytes
    /// uploaded. 0 when nothing was written: the residency is the current buffer's (which
    /// stays), or the other buffer holds it already (which becomes current). Take the
    /// [`DeviceSlotTable::view`] again after every update. The copy stream first waits for the kernels marked as reading the
    /// buffer it overwrites ([`DeviceSlotTable::after_reads`]).
    ///
    /// # Errors
    /// [`CudaError::TableMismatch`] for a pool of another layer or expert count, or the
    /// driver's error.
    pub fn update(&mut self, pool: &ExpertPool, sink: &mut CudaSlotSink<D>) -> Result<usize, CudaError> {
        if pool.layer() != self.layer || pool.experts() != self.next.len() {
            return Err(CudaError::TableMismatch {
                table: (self.layer, self.next.len()),
                pool: (pool.layer(), pool.experts()),
            });
        }
        self.mirror(pool.residents(), sink)
    }

    /// As [`DeviceSlotTable::update`], from this table's layer in `pool`, a pool of slots shared
    /// by several layers: entry `e` is the shared slot expert `e` of this layer is resident in.
    ///
    /// # Errors
    /// [`CudaError::TableMismatch`] when `pool` has no such layer or another expert count, or
    /// the driver's error.
    pub fn update_shared(&mut self, pool: &SharedSlotPool, sink: &mut CudaSlotSink<D>) -> Result<usize, CudaError> {
        if self.layer >= pool.layers() || pool.experts() != self.next.len() {
            return Err(CudaError::TableMismatch {
                table: (self.layer, self.next.len()),
                pool: (pool.layers(), pool.experts()),
            });
        }
        let layer = self.layer;
        let residents = (0..pool.slots())
            .filter_map(|slot| pool.expert_in(slot).filter(|&(l, _)| l == layer).map(|(_, e)| (slot, e)));
        self.mirror(residents, sink)
    }

    /// Uploads `residents` (slot, expert) when they differ from the current buffer.
    fn mirror(
        &mut self,
        residents: impl Iterator<Item = (usize, usize)>,
        sink: &mut CudaSlotSink<D>,
    ) -> Result<usize, CudaError> {
        self.next.fill(NOT_RESIDENT);
        for (slot, expert) in residents {
            if let (Some(entry), Ok(slot)) = (self.next.get_mut(expert), i32::try_from(slot)) {
                *entry = slot;
            }
        }
        if self.next == self.current().entries {
            return Ok(0);
        }
        self.upload(sink)
    }

    /// Uploads the span of `next` that differs from the other buffer, and makes it current.
    fn upload(&mut self, sink: &mut CudaSlotSink<D>) -> Result<usize, CudaError> {
        let index = usize::from(self.current == 0);
        let [first, second] = &mut self.buffers;
        let target = if index == 0 { first } else { second };
        let changed = |(a, b): (&i32, &i32)| a != b;
        let Some(first) = self.next.iter().zip(&target.entries).position(changed) else {
            // The other buffer already holds it (the residency went back): read it from there.
            self.current = index;
            return Ok(0);
        };
        let last = self.next.iter().zip(&target.entries).rposition(changed).unwrap_or(first);
        let span = self.next.get(first..=last).ok_or(CudaError::Layout(expertslab::LayoutError::Overflow))?;
        self.span.clear();
        self.span.extend(span.iter().flat_map(|value| value.to_le_bytes()));
        // Kernels that read this buffer may still run: the copy stream waits for them.
        if target.read_pending {
            self.driver.wait(sink.copy_stream(), &target.read)?;
            target.read_pending = false;
        } else if !self.reads_marked {
            sink.wait_for_reads()?;
        }
        let dst = target.ptr.saturating_add((first as u64).saturating_mul(4));
        // SAFETY: `dst..dst + span` lies inside the buffer's allocation (entries first..=last);
        // the mirrors live as long as the table, which synchronizes the device before it goes.
        match unsafe { self.mirrors.stage(&self.driver, dst, &self.span, sink.copy_stream()) } {
            Ok(()) => {}
            Err(CopyFailure::Enqueue(e)) => return Err(e),
            Err(CopyFailure::Earlier(e)) => return Err(sink.note_late_failure(e)),
        }
        if let (Some(entries), Some(next)) = (target.entries.get_mut(first..=last), self.next.get(first..=last)) {
            entries.copy_from_slice(next);
        }
        self.current = index;
        Ok(self.span.len())
    }

    /// Copies the current buffer back from the device (after waiting for `sink`'s copy stream),
    /// for checks.
    ///
    /// # Errors
    /// [`CudaError::Unconfirmed`] when an earlier copy failed (call
    /// [`CudaSlotSink::synchronize`]), or the driver's error.
    pub fn read_back(&self, sink: &mut CudaSlotSink<D>) -> Result<Vec<i32>, CudaError> {
        if let Err(e) = self.driver.sync_stream(sink.copy_stream()) {
            return Err(sink.note_late_failure(e));
        }
        let mut bytes = vec![0u8; self.next.len().saturating_mul(4)];
        // SAFETY: each buffer holds `experts × 4` bytes (at least 4) and is live.
        unsafe { self.driver.copy_to_host(&mut bytes, self.current().ptr)? };
        Ok(bytes.chunks_exact(4).map(|b| b.try_into().map_or(UNKNOWN, i32::from_le_bytes)).collect())
    }
}

impl<D: Driver> Drop for DeviceSlotTable<D> {
    fn drop(&mut self) {
        // Kernels or copies may still use the table or a mirror.
        let _ = self.driver.sync_device();
        for buffer in &self.buffers {
            // SAFETY: allocated in `new` by this driver, freed only here, after the device sync.
            let _ = unsafe { self.driver.free(buffer.ptr) };
        }
    }
}
