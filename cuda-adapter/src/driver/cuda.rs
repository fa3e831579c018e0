//! [`CudaDriver`]: the CUDA driver of one device, through cudarc.

use std::sync::Arc;

use cudarc::driver::sys::{self, CUresult};
use cudarc::driver::{result, CudaContext, CudaEvent, CudaStream, DriverError, PinnedHostSlice};

use super::{Driver, PinnedMemory};
use crate::error::CudaError;

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

/// Page-locked host memory of a [`CudaDriver`] (`cuMemHostAlloc`): write-combined from
/// [`Driver::alloc_pinned`] (written by the host, read by the device), cached from
/// [`Driver::alloc_readback`] (written by the device, read by the host).
#[derive(Debug)]
pub struct CudaPinned(PinnedHostSlice<u8>);

impl PinnedMemory for CudaPinned {
    fn bytes_mut(&mut self) -> Result<&mut [u8], CudaError> {
        self.0.as_mut_slice().map_err(|e| CudaError::driver("cuEventSynchronize", e))
    }

    fn bytes(&self) -> Result<&[u8], CudaError> {
        self.0.as_slice().map_err(|e| CudaError::driver("cuEventSynchronize", e))
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
        // SAFETY: the caller's guarantees, passed on.
        unsafe { copy_htod_async(dst, src, stream) }
    }

    unsafe fn copy_to_host(&self, dst: &mut [u8], src: u64) -> Result<(), CudaError> {
        self.bind("cuMemcpyDtoH")?;
        // SAFETY: `dst` is a live, writable slice; the caller guarantees `src` spans a live
        // allocation of `dst.len()` bytes.
        wrap("cuMemcpyDtoH", unsafe { result::memcpy_dtoh_sync(dst, src) })
    }

    unsafe fn copy_to_pinned(
        &self,
        dst: &mut Self::Pinned,
        src: u64,
        len: usize,
        stream: &Self::Stream,
    ) -> Result<(), CudaError> {
        self.bind("cuMemcpyDtoHAsync")?;
        let out = dst
            .bytes_mut()?
            .get_mut(..len)
            .ok_or(CudaError::Driver { call: "cuMemcpyDtoHAsync", code: CUresult::CUDA_ERROR_INVALID_VALUE })?;
        // SAFETY: `out` is page-locked host memory of `len` bytes that the caller leaves alone
        // until the copy completed; the caller guarantees `src..src + len` is device memory.
        wrap("cuMemcpyDtoHAsync", unsafe { result::memcpy_dtoh_async(out, src, stream.cu_stream()) })
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

    fn alloc_readback(&self, len: usize) -> Result<Self::Pinned, CudaError> {
        // SAFETY: as in `alloc_pinned`; flags 0: cached, not write-combined.
        let mut pinned = wrap("cuMemHostAlloc", unsafe { self.ctx.alloc_pinned_with_flags::<u8>(len, 0) })?;
        wrap("cuEventSynchronize", pinned.as_mut_slice())?.fill(0);
        Ok(CudaPinned(pinned))
    }
}

/// Enqueues a copy of `src` to device address `dst` on `stream` (the one host-to-device copy
/// call of the crate, shared by the driver and the step buffers).
///
/// # Safety
/// `src` stays alive and unchanged until the copy completes (page-locked for the copy to be
/// asynchronous), and `dst..dst + src.len()` lies inside a live allocation of `stream`'s
/// context.
///
/// # Errors
/// [`CudaError::Driver`] when the driver refuses the copy.
pub(crate) unsafe fn copy_htod_async(dst: u64, src: &[u8], stream: &CudaStream) -> Result<(), CudaError> {
    // SAFETY: the caller's guarantees.
    wrap("cuMemcpyHtoDAsync", unsafe { result::memcpy_htod_async(dst, src, stream.cu_stream()) })
}
