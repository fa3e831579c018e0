//! The driver layer: the few CUDA driver calls the slot sink needs, behind one trait.
//!
//! [`Driver`] is implemented on the GPU by [`CudaDriver`] (cudarc's driver API, loaded at run
//! time), on the CPU by [`MockDriver`] (device memory simulated in host memory, every call
//! logged as a [`MockOp`]), and [`Faults`] wraps either to fail a chosen copy at enqueue time or
//! report a failure at the next sync, so the failure paths run in CPU tests and on the GPU alike.
//!
//! Device addresses are plain `u64` (`CUdeviceptr`).

//!
//! | file | what |
//! |---|---|
//! | `mod.rs` | [`Driver`], [`PinnedMemory`] |
//! | `cuda.rs` | [`CudaDriver`]: cudarc, the library loaded at run time |
//! | `mock.rs` | [`MockDriver`]: device memory simulated in host memory, every call logged |
//! | `faults.rs` | [`Faults`]: failure injection around any driver |

use std::sync::Arc;

use crate::error::CudaError;

mod cuda;
mod faults;
mod mock;

pub(crate) use cuda::copy_htod_async;
pub use cuda::{CudaDriver, CudaPinned};
pub use faults::Faults;
pub use mock::{MockDriver, MockEvent, MockOp, MockPinned, MockStream};

/// The error of a call given an invalid value (what the mock and the fault injection answer).
fn invalid(call: &'static str) -> CudaError {
    CudaError::Driver { call, code: cudarc::driver::sys::CUresult::CUDA_ERROR_INVALID_VALUE }
}

/// Page-locked host memory a [`Driver`] allocated (a staging buffer, a table mirror).
pub trait PinnedMemory {
    /// The bytes, for writing. The caller makes sure no copy reads them meanwhile.
    ///
    /// # Errors
    /// When the driver cannot give access to them.
    fn bytes_mut(&mut self) -> Result<&mut [u8], CudaError>;

    /// The bytes, for reading. The caller makes sure no copy writes them meanwhile.
    ///
    /// # Errors
    /// When the driver cannot give access to them.
    fn bytes(&self) -> Result<&[u8], CudaError>;
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

    /// Enqueues a copy of `len` bytes of device memory at `src` into the start of `dst` on
    /// `stream` (`cuMemcpyDtoHAsync`): the host reads them once an event recorded after it on
    /// `stream` completed.
    ///
    /// # Safety
    /// `src..src + len` lies inside one allocation of this driver, and the host neither reads
    /// nor writes `dst`'s first `len` bytes until the copy completed.
    ///
    /// # Errors
    /// The driver refused the copy, or `dst` is shorter than `len`.
    unsafe fn copy_to_pinned(
        &self,
        dst: &mut Self::Pinned,
        src: u64,
        len: usize,
        stream: &Self::Stream,
    ) -> Result<(), CudaError>;

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

    /// Allocates `len` bytes of page-locked host memory for the device to write and the host to
    /// read (cached: [`Driver::alloc_pinned`]'s may be write-combined, slow for the host to
    /// read), zeroed.
    ///
    /// # Errors
    /// The driver's error.
    fn alloc_readback(&self, len: usize) -> Result<Self::Pinned, CudaError>;
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
    unsafe fn copy_to_pinned(
        &self,
        dst: &mut Self::Pinned,
        src: u64,
        len: usize,
        stream: &Self::Stream,
    ) -> Result<(), CudaError> {
        // SAFETY: the caller keeps `copy_to_pinned`'s contract.
        unsafe { (**self).copy_to_pinned(dst, src, len, stream) }
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
    fn alloc_readback(&self, len: usize) -> Result<Self::Pinned, CudaError> {
        (**self).alloc_readback(len)
    }
}
