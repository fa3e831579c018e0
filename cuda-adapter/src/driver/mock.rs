//! [`MockDriver`]: a driver that simulates device memory in host memory, for CPU tests.

use std::sync::{Mutex, MutexGuard};

use cudarc::driver::sys::CUresult;

use super::{invalid, Driver, PinnedMemory};
use crate::error::CudaError;

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

    fn bytes(&self) -> Result<&[u8], CudaError> {
        Ok(&self.0)
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
    /// A synchronous device-to-host copy (the host reads device memory).
    ReadBack {
        /// The source.
        src: u64,
        /// The bytes copied.
        len: usize,
    },
    /// A device-to-host copy into page-locked memory enqueued on a stream.
    ReadBackAsync {
        /// The stream.
        stream: MockStream,
        /// The source.
        src: u64,
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
    /// A kernel launch a test stood in for ([`MockDriver::launch`]).
    Launch {
        /// The stream.
        stream: MockStream,
        /// What the test named it.
        tag: u32,
    },
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

    /// Logs a kernel launch on `stream`, named `tag`: tests stand in for kernels with it.
    pub fn launch(&self, stream: &MockStream, tag: u32) {
        self.log(MockOp::Launch { stream: *stream, tag });
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
        self.log(MockOp::ReadBack { src, len: dst.len() });
        dst.copy_from_slice(&bytes);
        Ok(())
    }

    unsafe fn copy_to_pinned(
        &self,
        dst: &mut MockPinned,
        src: u64,
        len: usize,
        stream: &MockStream,
    ) -> Result<(), CudaError> {
        let out = dst.0.get_mut(..len).ok_or(invalid("cuMemcpyDtoHAsync"))?;
        let bytes = self.read(src, len).ok_or(invalid("cuMemcpyDtoHAsync"))?;
        out.copy_from_slice(&bytes);
        self.log(MockOp::ReadBackAsync { stream: *stream, src, len });
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

    fn alloc_readback(&self, len: usize) -> Result<MockPinned, CudaError> {
        Ok(MockPinned(vec![0; len]))
    }
}
