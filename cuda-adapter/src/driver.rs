//! The driver layer: the few CUDA driver calls the slot sink needs, behind one trait.
//!
//! [`Driver`] is implemented on the GPU by [`CudaDriver`] (cudarc's driver API, loaded at run
//! time), on the CPU by [`MockDriver`] (device memory simulated in host memory, every call
//! logged as a [`MockOp`]), and [`Faults`] wraps either to fail a chosen copy at enqueue time or
//! report a failure at the next sync, so the failure paths run in CPU tests and on the GPU alike.
//!
//! Device addresses are plain `u64` (`CUdeviceptr`).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use cudarc::driver::sys::{self, CUresult};
use cudarc::driver::{result, CudaContext, CudaEvent, CudaStream, DriverError, PinnedHostSlice};

use crate::error::CudaError;

/// Page-locked host memory a [`Driver`] allocated (a staging buffer, a table mirror).
pub trait PinnedMemory {
    /// The bytes, for writing. The caller makes sure no copy reads them meanwhile.
    ///
    /// # Errors
    /// When the driver cannot give access to them.
    fn bytes_mut(&mut self) -> Result<&mut [u8], CudaError>;
}

/// The driver calls the slot sink, the staging ring and the device slot table make.
///
/// Work on a stream runs in order; events mark a point of a stream that other streams wait on
/// or the host synchronizes with. Errors of asynchronous work surface at a later call (a sync
/// or a query), not at the call that enqueued it.
pub trait Driver {
    /// A stream of work on the device.
    type Stream;
    /// A marker recorded on a stream.
    type Event;
    /// Page-locked host memory.
    type Pinned: PinnedMemory;

    /// A new stream that does not synchronize with the legacy default stream.
    ///
    /// # Errors
    /// The driver's error.
    fn new_stream(&self) -> Result<Self::Stream, CudaError>;

    /// A new event, never recorded (waiting on it returns at once).
    ///
    /// # Errors
    /// The driver's error.
    fn new_event(&self) -> Result<Self::Event, CudaError>;

    /// Bytes of device memory free now (`cuMemGetInfo`).
    ///
    /// # Errors
    /// The driver's error.
    fn free_memory(&self) -> Result<usize, CudaError>;

    /// Allocates `bytes` (more than zero) of device memory; returns its address.
    ///
    /// # Errors
    /// The driver's error (out of memory among others).
    fn alloc(&self, bytes: usize) -> Result<u64, CudaError>;

    /// Frees device memory from [`Driver::alloc`].
    ///
    /// # Safety
    /// `ptr` came from `alloc` of this driver, is freed once, and no work that uses it is
    /// pending.
    ///
    /// # Errors
    /// The driver's error.
    unsafe fn free(&self, ptr: u64) -> Result<(), CudaError>;

    /// Enqueues a copy of `src` to device address `dst` on `stream` (`cuMemcpyHtoDAsync`).
    ///
    /// # Safety
    /// `src` stays allocated and unchanged until the copy completed on `stream` (registered or
    /// pinned memory whose owner is kept, or the caller synchronizes before `src` goes), and
    /// `dst..dst + src.len()` lies inside one allocation of this driver.
    ///
    /// # Errors
    /// The driver refused the copy (it was not enqueued).
    unsafe fn copy_to_device(&self, dst: u64, src: &[u8], stream: &Self::Stream) -> Result<(), CudaError>;

    /// Copies device memory at `src` into `dst`, synchronously (`cuMemcpyDtoH`), for checks.
    /// Work on non-blocking streams is not waited for: synchronize them first.
    ///
    /// # Safety
    /// `src..src + dst.len()` lies inside one allocation of this driver.
    ///
    /// # Errors
    /// The driver's error.
    unsafe fn copy_to_host(&self, dst: &mut [u8], src: u64) -> Result<(), CudaError>;

    /// Records `event` at the current end of `stream`.
    ///
    /// # Errors
    /// The driver's error.
    fn record(&self, event: &Self::Event, stream: &Self::Stream) -> Result<(), CudaError>;

    /// Makes later work on `stream` wait until `event` (as last recorded) completed
    /// (`cuStreamWaitEvent`); the host does not wait.
    ///
    /// # Errors
    /// The driver's error.
    fn wait(&self, stream: &Self::Stream, event: &Self::Event) -> Result<(), CudaError>;

    /// Whether the work before `event` completed, without waiting (`cuEventQuery`).
    ///
    /// # Errors
    /// A failure of that work, or the driver's error.
    fn query(&self, event: &Self::Event) -> Result<bool, CudaError>;

    /// Blocks the host until the work before `event` completed.
    ///
    /// # Errors
    /// A failure of that work, or the driver's error.
    fn sync_event(&self, event: &Self::Event) -> Result<(), CudaError>;

    /// Blocks the host until all work on `stream` completed.
    ///
    /// # Errors
    /// A failure of that work, or the driver's error.
    fn sync_stream(&self, stream: &Self::Stream) -> Result<(), CudaError>;

    /// Blocks the host until all work on the device completed.
    ///
    /// # Errors
    /// A failure of that work, or the driver's error.
    fn sync_device(&self) -> Result<(), CudaError>;

    /// Page-locks `len` bytes of host memory at `ptr` read-only and maps them for the device
    /// (`cuMemHostRegister` with `READ_ONLY | DEVICEMAP`); returns the device address of `ptr`
    /// (`cuMemHostGetDevicePointer`), which kernels may read over the bus (zero-copy).
    ///
    /// # Safety
    /// The memory stays allocated and unchanged until [`Driver::unregister_host`].
    ///
    /// # Errors
    /// The driver refused (some systems refuse file mappings or limit locked memory).
    unsafe fn register_host(&self, ptr: *const u8, len: usize) -> Result<u64, CudaError>;

    /// The device address of host memory at `ptr` that is page-locked and mapped for the device
    /// already (allocated page-locked with device mapping, or registered): `None` for other
    /// memory. A lookup only (`cuMemHostGetDevicePointer`); nothing is read or changed.
    fn mapped_device_ptr(&self, ptr: *const u8) -> Option<u64>;

    /// Undoes [`Driver::register_host`] of `ptr`.
    ///
    /// # Safety
    /// No work that reads the memory is pending.
    ///
    /// # Errors
    /// The driver's error.
    unsafe fn unregister_host(&self, ptr: *const u8) -> Result<(), CudaError>;

    /// Allocates `len` bytes of page-locked host memory, zeroed.
    ///
    /// # Errors
    /// The driver's error.
    fn alloc_pinned(&self, len: usize) -> Result<Self::Pinned, CudaError>;
}

impl<D: Driver + ?Sized> Driver for Arc<D> {
    type Stream = D::Stream;
    type Event = D::Event;
    type Pinned = D::Pinned;

    fn new_stream(&self) -> Result<Self::Stream, CudaError> {
        (**self).new_stream()
    }
    fn new_event(&self) -> Result<Self::Event, CudaError> {
        (**self).new_event()
    }
    fn free_memory(&self) -> Result<usize, CudaError> {
        (**self).free_memory()
    }
    fn alloc(&self, bytes: usize) -> Result<u64, CudaError> {
        (**self).alloc(bytes)
    }
    unsafe fn free(&self, ptr: u64) -> Result<(), CudaError> {
        // SAFETY: the caller keeps `free`'s contract.
        unsafe { (**self).free(ptr) }
    }
    unsafe fn copy_to_device(&self, dst: u64, src: &[u8], stream: &Self::Stream) -> Result<(), CudaError> {
        // SAFETY: the caller keeps `copy_to_device`'s contract.
        unsafe { (**self).copy_to_device(dst, src, stream) }
    }
    unsafe fn copy_to_host(&self, dst: &mut [u8], src: u64) -> Result<(), CudaError> {
        // SAFETY: the caller keeps `copy_to_host`'s contract.
        unsafe { (**self).copy_to_host(dst, src) }
    }
    fn record(&self, event: &Self::Event, stream: &Self::Stream) -> Result<(), CudaError> {
        (**self).record(event, stream)
    }
    fn wait(&self, stream: &Self::Stream, event: &Self::Event) -> Result<(), CudaError> {
        (**self).wait(stream, event)
    }
    fn query(&self, event: &Self::Event) -> Result<bool, CudaError> {
        (**self).query(event)
    }
    fn sync_event(&self, event: &Self::Event) -> Result<(), CudaError> {
        (**self).sync_event(event)
    }
    fn sync_stream(&self, stream: &Self::Stream) -> Result<(), CudaError> {
        (**self).sync_stream(stream)
    }
    fn sync_device(&self) -> Result<(), CudaError> {
        (**self).sync_device()
    }
    unsafe fn register_host(&self, ptr: *const u8, len: usize) -> Result<u64, CudaError> {
        // SAFETY: the caller keeps `register_host`'s contract.
        unsafe { (**self).register_host(ptr, len) }
    }
    fn mapped_device_ptr(&self, ptr: *const u8) -> Option<u64> {
        (**self).mapped_device_ptr(ptr)
    }
    unsafe fn unregister_host(&self, ptr: *const u8) -> Result<(), CudaError> {
        // SAFETY: the caller keeps `unregister_host`'s contract.
        unsafe { (**self).unregister_host(ptr) }
    }
    fn alloc_pinned(&self, len: usize) -> Result<Self::Pinned, CudaError> {
        (**self).alloc_pinned(len)
    }
}

// ---------------------------------------------------------------------------------------------
// The real driver.

/// The CUDA driver of one device, through cudarc (the library is loaded at run time).
#[derive(Debug, Clone)]
pub struct CudaDriver {
    ctx: Arc<CudaContext>,
}

impl CudaDriver {
    /// The driver of device `ordinal` (its primary context).
    ///
    /// # Errors
    /// [`CudaError::NoDriver`] when `libcuda.so` cannot be loaded, [`CudaError::NoDevice`] when
    /// the driver has no such device, otherwise the driver's error.
    pub fn new(ordinal: usize) -> Result<Self, CudaError> {
        if !Self::driver_present() {
            return Err(CudaError::NoDriver);
        }
        let count = match CudaContext::device_count() {
            Ok(count) => count,
            Err(DriverError(CUresult::CUDA_ERROR_NO_DEVICE)) => 0,
            Err(e) => return Err(CudaError::driver("cuDeviceGetCount", e)),
        };
        if usize::try_from(count).map_or(true, |count| ordinal >= count) {
            return Err(CudaError::NoDevice { ordinal });
        }
        let ctx = CudaContext::new(ordinal).map_err(|e| CudaError::driver("cuDevicePrimaryCtxRetain", e))?;
        Ok(Self { ctx })
    }

    /// The driver of an existing context (to share one with kernels).
    pub fn from_context(ctx: Arc<CudaContext>) -> Self {
        Self { ctx }
    }

    /// Whether the CUDA driver library can be loaded here (no device needed).
    pub fn driver_present() -> bool {
        // SAFETY: only tries to load the library by its usual names; nothing is called.
        unsafe { sys::is_culib_present() }
    }

    /// The context, for launching kernels on the same device.
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    fn bind(&self, call: &'static str) -> Result<(), CudaError> {
        self.ctx.bind_to_thread().map_err(|e| CudaError::driver(call, e))
    }
}

/// Page-locked host memory of a [`CudaDriver`] (`cuMemHostAlloc`, write-combined: written by
/// the host, read by the device).
#[derive(Debug)]
pub struct CudaPinned(PinnedHostSlice<u8>);

impl PinnedMemory for CudaPinned {
    fn bytes_mut(&mut self) -> Result<&mut [u8], CudaError> {
        self.0.as_mut_slice().map_err(|e| CudaError::driver("cuEventSynchronize", e))
    }
}

fn wrap<T>(call: &'static str, result: Result<T, DriverError>) -> Result<T, CudaError> {
    result.map_err(|e| CudaError::driver(call, e))
}

impl Driver for CudaDriver {
    type Stream = Arc<CudaStream>;
    type Event = CudaEvent;
    type Pinned = CudaPinned;

    fn new_stream(&self) -> Result<Self::Stream, CudaError> {
        wrap("cuStreamCreate", self.ctx.new_stream())
    }

    fn new_event(&self) -> Result<Self::Event, CudaError> {
        wrap("cuEventCreate", self.ctx.new_event(Some(sys::CUevent_flags::CU_EVENT_DISABLE_TIMING)))
    }

    fn free_memory(&self) -> Result<usize, CudaError> {
        wrap("cuMemGetInfo", self.ctx.mem_get_info()).map(|(free, _)| free)
    }

    fn alloc(&self, bytes: usize) -> Result<u64, CudaError> {
        self.bind("cuMemAlloc")?;
        // SAFETY: the context is current; the memory is uninitialised device memory, which the
        // crate only writes before kernels read it.
        wrap("cuMemAlloc", unsafe { result::malloc_sync(bytes) })
    }

    unsafe fn free(&self, ptr: u64) -> Result<(), CudaError> {
        self.bind("cuMemFree")?;
        // SAFETY: the caller guarantees `ptr` came from `alloc` and nothing uses it any more.
        wrap("cuMemFree", unsafe { result::free_sync(ptr) })
    }

    unsafe fn copy_to_device(&self, dst: u64, src: &[u8], stream: &Self::Stream) -> Result<(), CudaError> {
        self.bind("cuMemcpyHtoDAsync")?;
        // SAFETY: the caller guarantees `src` outlives the copy and `dst` spans a live
        // allocation; the stream belongs to this context.
        wrap("cuMemcpyHtoDAsync", unsafe { result::memcpy_htod_async(dst, src, stream.cu_stream()) })
    }

    unsafe fn copy_to_host(&self, dst: &mut [u8], src: u64) -> Result<(), CudaError> {
        self.bind("cuMemcpyDtoH")?;
        // SAFETY: `dst` is a live, writable slice; the caller guarantees `src` spans a live
        // allocation of `dst.len()` bytes.
        wrap("cuMemcpyDtoH", unsafe { result::memcpy_dtoh_sync(dst, src) })
    }

    fn record(&self, event: &Self::Event, stream: &Self::Stream) -> Result<(), CudaError> {
        wrap("cuEventRecord", event.record(stream))
    }

    fn wait(&self, stream: &Self::Stream, event: &Self::Event) -> Result<(), CudaError> {
        wrap("cuStreamWaitEvent", stream.wait(event))
    }

    fn query(&self, event: &Self::Event) -> Result<bool, CudaError> {
        self.bind("cuEventQuery")?;
        wrap("cuEventQuery", event.try_is_complete())
    }

    fn sync_event(&self, event: &Self::Event) -> Result<(), CudaError> {
        wrap("cuEventSynchronize", event.synchronize())
    }

    fn sync_stream(&self, stream: &Self::Stream) -> Result<(), CudaError> {
        wrap("cuStreamSynchronize", stream.synchronize())
    }

    fn sync_device(&self) -> Result<(), CudaError> {
        wrap("cuCtxSynchronize", self.ctx.synchronize())
    }

    unsafe fn register_host(&self, ptr: *const u8, len: usize) -> Result<u64, CudaError> {
        self.bind("cuMemHostRegister")?;
        let flags = sys::CU_MEMHOSTREGISTER_READ_ONLY | sys::CU_MEMHOSTREGISTER_DEVICEMAP;
        // SAFETY: the caller guarantees `ptr..ptr + len` is mapped and stays so until it is
        // unregistered; READ_ONLY means the device never writes it.
        let registered = unsafe { sys::cuMemHostRegister_v2(ptr.cast_mut().cast(), len, flags) };
        wrap("cuMemHostRegister", registered.result())?;
        let mut device = 0u64;
        // SAFETY: `ptr` was just registered with DEVICEMAP; `device` is a valid out pointer.
        let mapped = unsafe { sys::cuMemHostGetDevicePointer_v2(&mut device, ptr.cast_mut().cast(), 0) };
        if let Err(e) = mapped.result() {
            // SAFETY: registered above, nothing uses it yet.
            let _ = unsafe { sys::cuMemHostUnregister(ptr.cast_mut().cast()) };
            return Err(CudaError::driver("cuMemHostGetDevicePointer", e));
        }
        Ok(device)
    }

    fn mapped_device_ptr(&self, ptr: *const u8) -> Option<u64> {
        self.bind("cuMemHostGetDevicePointer").ok()?;
        let mut device = 0u64;
        // SAFETY: a lookup of `ptr` in the driver's tables; `device` is a valid out pointer and
        // nothing is read at `ptr`.
        let mapped = unsafe { sys::cuMemHostGetDevicePointer_v2(&mut device, ptr.cast_mut().cast(), 0) };
        mapped.result().ok().map(|()| device)
    }

    unsafe fn unregister_host(&self, ptr: *const u8) -> Result<(), CudaError> {
        self.bind("cuMemHostUnregister")?;
        // SAFETY: the caller guarantees `ptr` was registered and no pending work reads it.
        wrap("cuMemHostUnregister", unsafe { sys::cuMemHostUnregister(ptr.cast_mut().cast()) }.result())
    }

    fn alloc_pinned(&self, len: usize) -> Result<Self::Pinned, CudaError> {
        // SAFETY: the memory is uninitialised; it is zeroed below before anything reads it.
        let mut pinned = wrap("cuMemHostAlloc", unsafe { self.ctx.alloc_pinned::<u8>(len) })?;
        let ptr = wrap("cuEventSynchronize", pinned.as_mut_ptr())?;
        // SAFETY: `ptr` is the start of `len` bytes of host memory just allocated and owned by
        // `pinned`; nothing else refers to them.
        unsafe { std::ptr::write_bytes(ptr, 0, len) };
        Ok(CudaPinned(pinned))
    }
}

// ---------------------------------------------------------------------------------------------
// The mock driver.

/// A stream of the [`MockDriver`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MockStream(pub u32);

/// An event of the [`MockDriver`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MockEvent(pub u32);

/// "Pinned" memory of the [`MockDriver`]: a plain vector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MockPinned(Vec<u8>);

impl PinnedMemory for MockPinned {
    fn bytes_mut(&mut self) -> Result<&mut [u8], CudaError> {
        Ok(&mut self.0)
    }
}

/// One call the [`MockDriver`] received, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MockOp {
    /// A device allocation.
    Alloc {
        /// Its address.
        ptr: u64,
        /// Its size.
        bytes: usize,
    },
    /// A device allocation freed.
    Free {
        /// Its address.
        ptr: u64,
    },
    /// A host-to-device copy enqueued.
    Copy {
        /// The stream.
        stream: MockStream,
        /// The destination.
        dst: u64,
        /// The bytes copied.
        len: usize,
    },
    /// An event recorded on a stream.
    Record {
        /// The event.
        event: MockEvent,
        /// The stream.
        stream: MockStream,
    },
    /// A stream made to wait on an event.
    Wait {
        /// The stream that waits.
        stream: MockStream,
        /// The event.
        event: MockEvent,
    },
    /// The host waited for an event.
    SyncEvent {
        /// The event.
        event: MockEvent,
    },
    /// The host waited for a stream.
    SyncStream {
        /// The stream.
        stream: MockStream,
    },
    /// The host waited for the device.
    SyncDevice,
    /// Host memory registered.
    Register {
        /// Its length.
        len: usize,
    },
    /// Host memory unregistered.
    Unregister,
}

#[derive(Debug, Default)]
struct MockState {
    next_ptr: u64,
    /// Device memory: (address, bytes), by address.
    memory: Vec<(u64, Vec<u8>)>,
    ops: Vec<MockOp>,
    streams: u32,
    events: u32,
    free: usize,
    refuse_registration: bool,
    registered: Vec<(usize, usize)>,
    /// Host ranges page-locked and mapped from the start (`lock_host`).
    locked: Vec<(usize, usize)>,
}

/// A driver that simulates device memory in host memory and logs every call: for CPU tests of
/// the sink, the staging ring and the table. Copies happen at once; streams and events only
/// order the log. Sharing it through an `Arc` lets a test inspect it while a sink uses it.
#[derive(Debug)]
pub struct MockDriver {
    state: Mutex<MockState>,
}

/// First address the mock hands out, and the alignment of its allocations.
const MOCK_BASE: u64 = 1 << 32;
const MOCK_ALIGN: u64 = 4096;

impl MockDriver {
    /// A mock device with `free` bytes of free memory.
    pub fn new(free: usize) -> Self {
        Self { state: Mutex::new(MockState { next_ptr: MOCK_BASE, free, ..MockState::default() }) }
    }

    fn state(&self) -> MutexGuard<'_, MockState> {
        // A test that panicked while holding the lock leaves consistent state: every update
        // below completes before it could panic.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Every call so far, in order.
    pub fn ops(&self) -> Vec<MockOp> {
        self.state().ops.clone()
    }

    /// Forgets the calls logged so far.
    pub fn clear_ops(&self) {
        self.state().ops.clear();
    }

    /// Makes host registration fail (as on systems that refuse to lock file pages) or succeed.
    pub fn refuse_registration(&self, refuse: bool) {
        self.state().refuse_registration = refuse;
    }

    /// Marks `bytes` as page-locked and mapped for the device, as memory allocated that way
    /// (`cuMemHostAlloc` with device mapping) is: registering it is refused as already
    /// registered, and [`Driver::mapped_device_ptr`] finds it.
    pub fn lock_host(&self, bytes: &[u8]) {
        let start = bytes.as_ptr().addr();
        self.state().locked.push((start, start.saturating_add(bytes.len())));
    }

    /// `len` bytes of device memory at `ptr`, or `None` when they are not inside one allocation.
    pub fn read(&self, ptr: u64, len: usize) -> Option<Vec<u8>> {
        let state = self.state();
        let (range, bytes) = find(&state.memory, ptr, len)?;
        bytes.get(range).map(<[u8]>::to_vec)
    }

    fn log(&self, op: MockOp) {
        self.state().ops.push(op);
    }
}

fn invalid(call: &'static str) -> CudaError {
    CudaError::Driver { call, code: CUresult::CUDA_ERROR_INVALID_VALUE }
}

/// The allocation holding `ptr..ptr + len`, and the range within it.
fn find(memory: &[(u64, Vec<u8>)], ptr: u64, len: usize) -> Option<(std::ops::Range<usize>, &Vec<u8>)> {
    memory.iter().find_map(|(base, bytes)| {
        let start = usize::try_from(ptr.checked_sub(*base)?).ok()?;
        let end = start.checked_add(len)?;
        (end <= bytes.len()).then_some((start..end, bytes))
    })
}

impl Driver for MockDriver {
    type Stream = MockStream;
    type Event = MockEvent;
    type Pinned = MockPinned;

    fn new_stream(&self) -> Result<MockStream, CudaError> {
        let mut state = self.state();
        state.streams = state.streams.saturating_add(1);
        Ok(MockStream(state.streams))
    }

    fn new_event(&self) -> Result<MockEvent, CudaError> {
        let mut state = self.state();
        state.events = state.events.saturating_add(1);
        Ok(MockEvent(state.events))
    }

    fn free_memory(&self) -> Result<usize, CudaError> {
        Ok(self.state().free)
    }

    fn alloc(&self, bytes: usize) -> Result<u64, CudaError> {
        let mut state = self.state();
        if bytes == 0 {
            return Err(invalid("cuMemAlloc"));
        }
        if bytes > state.free {
            return Err(CudaError::Driver { call: "cuMemAlloc", code: CUresult::CUDA_ERROR_OUT_OF_MEMORY });
        }
        let ptr = state.next_ptr;
        let span = u64::try_from(bytes).map_err(|_| invalid("cuMemAlloc"))?;
        let next = ptr.checked_add(span).and_then(|end| end.checked_next_multiple_of(MOCK_ALIGN));
        state.next_ptr = next.ok_or(invalid("cuMemAlloc"))?;
        state.free = state.free.saturating_sub(bytes);
        state.memory.push((ptr, vec![0; bytes]));
        state.ops.push(MockOp::Alloc { ptr, bytes });
        Ok(ptr)
    }

    unsafe fn free(&self, ptr: u64) -> Result<(), CudaError> {
        let mut state = self.state();
        let index = state.memory.iter().position(|(base, _)| *base == ptr).ok_or(invalid("cuMemFree"))?;
        let (_, bytes) = state.memory.swap_remove(index);
        state.free = state.free.saturating_add(bytes.len());
        state.ops.push(MockOp::Free { ptr });
        Ok(())
    }

    unsafe fn copy_to_device(&self, dst: u64, src: &[u8], stream: &MockStream) -> Result<(), CudaError> {
        let mut state = self.state();
        let index = state
            .memory
            .iter()
            .position(|(base, bytes)| dst >= *base && dst.saturating_sub(*base) < bytes.len() as u64)
            .ok_or(invalid("cuMemcpyHtoDAsync"))?;
        let (base, bytes) = state.memory.get_mut(index).ok_or(invalid("cuMemcpyHtoDAsync"))?;
        let start = usize::try_from(dst.saturating_sub(*base)).map_err(|_| invalid("cuMemcpyHtoDAsync"))?;
        let out = start
            .checked_add(src.len())
            .and_then(|end| bytes.get_mut(start..end))
            .ok_or(invalid("cuMemcpyHtoDAsync"))?;
        out.copy_from_slice(src);
        state.ops.push(MockOp::Copy { stream: *stream, dst, len: src.len() });
        Ok(())
    }

    unsafe fn copy_to_host(&self, dst: &mut [u8], src: u64) -> Result<(), CudaError> {
        let bytes = self.read(src, dst.len()).ok_or(invalid("cuMemcpyDtoH"))?;
        dst.copy_from_slice(&bytes);
        Ok(())
    }

    fn record(&self, event: &MockEvent, stream: &MockStream) -> Result<(), CudaError> {
        self.log(MockOp::Record { event: *event, stream: *stream });
        Ok(())
    }

    fn wait(&self, stream: &MockStream, event: &MockEvent) -> Result<(), CudaError> {
        self.log(MockOp::Wait { stream: *stream, event: *event });
        Ok(())
    }

    fn query(&self, _event: &MockEvent) -> Result<bool, CudaError> {
        Ok(true)
    }

    fn sync_event(&self, event: &MockEvent) -> Result<(), CudaError> {
        self.log(MockOp::SyncEvent { event: *event });
        Ok(())
    }

    fn sync_stream(&self, stream: &MockStream) -> Result<(), CudaError> {
        self.log(MockOp::SyncStream { stream: *stream });
        Ok(())
    }

    fn sync_device(&self) -> Result<(), CudaError> {
        self.log(MockOp::SyncDevice);
        Ok(())
    }

    unsafe fn register_host(&self, ptr: *const u8, len: usize) -> Result<u64, CudaError> {
        let mut state = self.state();
        let start = ptr.addr();
        let end = start.saturating_add(len);
        let overlaps = state.registered.iter().chain(&state.locked).any(|&(s, e)| s < end && start < e);
        if state.refuse_registration || overlaps {
            let code = if overlaps {
                CUresult::CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED
            } else {
                CUresult::CUDA_ERROR_NOT_PERMITTED
            };
            return Err(CudaError::Driver { call: "cuMemHostRegister", code });
        }
        state.registered.push((start, end));
        state.ops.push(MockOp::Register { len });
        // Unified addressing: the device sees host memory at the same address.
        Ok(start as u64)
    }

    fn mapped_device_ptr(&self, ptr: *const u8) -> Option<u64> {
        let state = self.state();
        let at = ptr.addr();
        // Unified addressing: the device sees host memory at the same address.
        state.registered.iter().chain(&state.locked).any(|&(s, e)| s <= at && at < e).then_some(at as u64)
    }

    unsafe fn unregister_host(&self, ptr: *const u8) -> Result<(), CudaError> {
        let mut state = self.state();
        let index = state.registered.iter().position(|&(s, _)| s == ptr.addr()).ok_or(CudaError::Driver {
            call: "cuMemHostUnregister",
            code: CUresult::CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED,
        })?;
        state.registered.swap_remove(index);
        state.ops.push(MockOp::Unregister);
        Ok(())
    }

    fn alloc_pinned(&self, len: usize) -> Result<MockPinned, CudaError> {
        Ok(MockPinned(vec![0; len]))
    }
}

// ---------------------------------------------------------------------------------------------
// Fault injection.

/// No copy is set to fail.
const NO_FAULT: usize = usize::MAX;

/// Wraps a driver to make chosen calls fail: a copy at enqueue time ([`Faults::fail_copy`]),
/// or the next host sync ([`Faults::fail_next_sync`], the way the driver reports an
/// asynchronous copy that failed). Everything else goes to the inner driver unchanged.
#[derive(Debug)]
pub struct Faults<D> {
    inner: D,
    copies: AtomicUsize,
    fail_copy_at: AtomicUsize,
    fail_sync: AtomicBool,
}

impl<D> Faults<D> {
    /// `inner`, failing nothing yet.
    pub fn new(inner: D) -> Self {
        Self {
            inner,
            copies: AtomicUsize::new(0),
            fail_copy_at: AtomicUsize::new(NO_FAULT),
            fail_sync: AtomicBool::new(false),
        }
    }

    /// The wrapped driver.
    pub fn inner(&self) -> &D {
        &self.inner
    }

    /// Makes the copy `after` copies from now (0: the next one) fail at enqueue time with
    /// `CUDA_ERROR_INVALID_VALUE`, without reaching the inner driver. Once.
    pub fn fail_copy(&self, after: usize) {
        let at = self.copies.load(Ordering::SeqCst).saturating_add(after);
        self.fail_copy_at.store(at, Ordering::SeqCst);
    }

    /// Makes the next host sync (stream, event or device) report `CUDA_ERROR_LAUNCH_FAILED`
    /// after waiting, as a copy that failed on the device would. Once.
    pub fn fail_next_sync(&self) {
        self.fail_sync.store(true, Ordering::SeqCst);
    }

    fn sync_fault(&self, call: &'static str) -> Result<(), CudaError> {
        if self.fail_sync.swap(false, Ordering::SeqCst) {
            return Err(CudaError::Driver { call, code: CUresult::CUDA_ERROR_LAUNCH_FAILED });
        }
        Ok(())
    }
}

impl<D: Driver> Driver for Faults<D> {
    type Stream = D::Stream;
    type Event = D::Event;
    type Pinned = D::Pinned;

    fn new_stream(&self) -> Result<Self::Stream, CudaError> {
        self.inner.new_stream()
    }
    fn new_event(&self) -> Result<Self::Event, CudaError> {
        self.inner.new_event()
    }
    fn free_memory(&self) -> Result<usize, CudaError> {
        self.inner.free_memory()
    }
    fn alloc(&self, bytes: usize) -> Result<u64, CudaError> {
        self.inner.alloc(bytes)
    }
    unsafe fn free(&self, ptr: u64) -> Result<(), CudaError> {
        // SAFETY: the caller keeps `free`'s contract.
        unsafe { self.inner.free(ptr) }
    }
    unsafe fn copy_to_device(&self, dst: u64, src: &[u8], stream: &Self::Stream) -> Result<(), CudaError> {
        let n = self.copies.fetch_add(1, Ordering::SeqCst);
        if self.fail_copy_at.compare_exchange(n, NO_FAULT, Ordering::SeqCst, Ordering::SeqCst).is_ok() {
            return Err(invalid("cuMemcpyHtoDAsync"));
        }
        // SAFETY: the caller keeps `copy_to_device`'s contract.
        unsafe { self.inner.copy_to_device(dst, src, stream) }
    }
    unsafe fn copy_to_host(&self, dst: &mut [u8], src: u64) -> Result<(), CudaError> {
        // SAFETY: the caller keeps `copy_to_host`'s contract.
        unsafe { self.inner.copy_to_host(dst, src) }
    }
    fn record(&self, event: &Self::Event, stream: &Self::Stream) -> Result<(), CudaError> {
        self.inner.record(event, stream)
    }
    fn wait(&self, stream: &Self::Stream, event: &Self::Event) -> Result<(), CudaError> {
        self.inner.wait(stream, event)
    }
    fn query(&self, event: &Self::Event) -> Result<bool, CudaError> {
        let done = self.inner.query(event)?;
        if done {
            self.sync_fault("cuEventQuery")?;
        }
        Ok(done)
    }
    fn sync_event(&self, event: &Self::Event) -> Result<(), CudaError> {
        self.inner.sync_event(event)?;
        self.sync_fault("cuEventSynchronize")
    }
    fn sync_stream(&self, stream: &Self::Stream) -> Result<(), CudaError> {
        self.inner.sync_stream(stream)?;
        self.sync_fault("cuStreamSynchronize")
    }
    fn sync_device(&self) -> Result<(), CudaError> {
        self.inner.sync_device()?;
        self.sync_fault("cuCtxSynchronize")
    }
    unsafe fn register_host(&self, ptr: *const u8, len: usize) -> Result<u64, CudaError> {
        // SAFETY: the caller keeps `register_host`'s contract.
        unsafe { self.inner.register_host(ptr, len) }
    }
    fn mapped_device_ptr(&self, ptr: *const u8) -> Option<u64> {
        self.inner.mapped_device_ptr(ptr)
    }
    unsafe fn unregister_host(&self, ptr: *const u8) -> Result<(), CudaError> {
        // SAFETY: the caller keeps `unregister_host`'s contract.
        unsafe { self.inner.unregister_host(ptr) }
    }
    fn alloc_pinned(&self, len: usize) -> Result<Self::Pinned, CudaError> {
        self.inner.alloc_pinned(len)
    }
}
