//! [`Faults`]: failure injection around any driver.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use cudarc::driver::sys::CUresult;

use super::{invalid, Driver};
use crate::error::CudaError;

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
    unsafe fn copy_to_pinned(
        &self,
        dst: &mut Self::Pinned,
        src: u64,
        len: usize,
        stream: &Self::Stream,
    ) -> Result<(), CudaError> {
        // SAFETY: the caller keeps `copy_to_pinned`'s contract.
        unsafe { self.inner.copy_to_pinned(dst, src, len, stream) }
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
    fn alloc_readback(&self, len: usize) -> Result<Self::Pinned, CudaError> {
        self.inner.alloc_readback(len)
    }
}
