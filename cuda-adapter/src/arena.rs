//! [`VramArena`]: one layer's slots in one device allocation, laid out by the core's
//! [`SlotArena`].

use expertslab::{ExpertLayout, SlotArena};

use crate::driver::Driver;
use crate::error::CudaError;

/// The least alignment of device slots and of every projection in them, in bytes: what
/// `cudaMalloc` guarantees for an allocation's start, and enough for every vector load.
pub const DEVICE_ALIGN: usize = 256;

/// One layer's slot arena in device memory: slot `s`, projection `p` lives at
/// `device_ptr() + arena().projection_range(s, p).start`.
///
/// The memory is freed on drop; whoever holds the arena keeps kernels that read it ordered
/// before that (the sink synchronizes the device before dropping its arenas).
#[derive(Debug)]
pub struct VramArena<D: Driver> {
    driver: D,
    layer: usize,
    arena: SlotArena,
    ptr: u64,
}

impl<D: Driver> VramArena<D> {
    /// Allocates `arena` for layer `layer`.
    ///
    /// # Errors
    /// [`CudaError::AlignmentTooSmall`] below [`DEVICE_ALIGN`]; [`CudaError::DoesNotFit`]
    /// (saying how many slots would fit) when the arena exceeds the free device memory or the
    /// allocation runs out of memory; otherwise the driver's error.
    pub fn new(driver: D, layer: usize, arena: SlotArena) -> Result<Self, CudaError> {
        if arena.align() < DEVICE_ALIGN {
            return Err(CudaError::AlignmentTooSmall { align: arena.align(), needed: DEVICE_ALIGN });
        }
        let needed = arena.total_bytes();
        if needed == 0 {
            return Ok(Self { driver, layer, arena, ptr: 0 });
        }
        let too_small = |free: usize| CudaError::DoesNotFit {
            layer: Some(layer),
            needed: needed as u64,
            free: free as u64,
            slots_that_fit: free.checked_div(arena.slot_stride()).unwrap_or(0).min(arena.slots()),
        };
        let free = driver.free_memory()?;
        if needed > free {
            return Err(too_small(free));
        }
        let ptr = match driver.alloc(needed) {
            Ok(ptr) => ptr,
            Err(CudaError::Driver { code: cudarc::driver::sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY, .. }) => {
                return Err(too_small(driver.free_memory()?));
            }
            Err(e) => return Err(e),
        };
        Ok(Self { driver, layer, arena, ptr })
    }

    /// Allocates `slots` slots of `layout` for layer `layer`, aligned to [`DEVICE_ALIGN`].
    ///
    /// # Errors
    /// [`CudaError::Layout`] when the arena's size overflows, otherwise as [`VramArena::new`].
    pub fn for_layout(driver: D, layer: usize, layout: &ExpertLayout, slots: usize) -> Result<Self, CudaError> {
        Self::new(driver, layer, SlotArena::new(layout, slots, DEVICE_ALIGN)?)
    }

    /// The layer.
    pub fn layer(&self) -> usize {
        self.layer
    }

    /// The layout of the slots.
    pub fn arena(&self) -> &SlotArena {
        &self.arena
    }

    /// The device address of slot 0 (0 for an arena of no slots).
    pub fn device_ptr(&self) -> u64 {
        self.ptr
    }

    /// The device address of projection number `projection` (its position in the layer's
    /// layout) of slot `slot`.
    ///
    /// # Errors
    /// [`CudaError::Layout`] for a slot or projection out of range.
    pub fn slot_ptr(&self, slot: usize, projection: usize) -> Result<u64, CudaError> {
        let start = self.arena.projection_range(slot, projection)?.start;
        // The arena fits one allocation, so its offsets fit the address space.
        Ok(self.ptr.saturating_add(start as u64))
    }

    /// The driver the arena was allocated with.
    pub fn driver(&self) -> &D {
        &self.driver
    }
}

impl<D: Driver> Drop for VramArena<D> {
    fn drop(&mut self) {
        if self.ptr != 0 {
            // SAFETY: `ptr` came from this driver's `alloc` and is freed only here; the owner
            // (the sink) synchronized the device before dropping, so no work uses it.
            let _ = unsafe { self.driver.free(self.ptr) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::MockDriver;
    use expertslab::{Format, StackLayout};
    use std::sync::Arc;

    fn layout() -> ExpertLayout {
        let stack = StackLayout::new(Format::F32, 8, 4, 25).unwrap(); // 400 B per expert
        ExpertLayout::gate_up_down(stack, stack, stack).unwrap()
    }

    #[test]
    fn slots_are_aligned_and_addressed_by_the_core_layout() {
        let driver = Arc::new(MockDriver::new(1 << 20));
        let vram = VramArena::for_layout(Arc::clone(&driver), 3, &layout(), 4).unwrap();
        assert_eq!(vram.arena().slot_stride(), 3 * 512);
        assert_eq!(vram.device_ptr() % DEVICE_ALIGN as u64, 0);
        assert_eq!(vram.slot_ptr(2, 1).unwrap(), vram.device_ptr() + 2 * 1536 + 512);
        assert!(matches!(vram.slot_ptr(4, 0), Err(CudaError::Layout(_))));
        assert_eq!(driver.free_memory().unwrap(), (1 << 20) - 4 * 1536);
        drop(vram);
        assert_eq!(driver.free_memory().unwrap(), 1 << 20);
    }

    #[test]
    fn too_many_slots_say_how_many_fit() {
        let driver = Arc::new(MockDriver::new(10_000));
        let err = VramArena::for_layout(Arc::clone(&driver), 1, &layout(), 8).unwrap_err();
        assert_eq!(err, CudaError::DoesNotFit { layer: Some(1), needed: 8 * 1536, free: 10_000, slots_that_fit: 6 });
        assert!(err.to_string().contains("6 slots per layer would fit"), "{err}");
        let low = SlotArena::new(&layout(), 2, 64).unwrap();
        assert_eq!(
            VramArena::new(driver, 0, low).unwrap_err(),
            CudaError::AlignmentTooSmall { align: 64, needed: DEVICE_ALIGN }
        );
    }

    #[test]
    fn an_arena_of_no_slots_allocates_nothing() {
        let driver = Arc::new(MockDriver::new(0));
        let vram = VramArena::for_layout(Arc::clone(&driver), 0, &layout(), 0).unwrap();
        assert_eq!(vram.device_ptr(), 0);
        assert!(driver.ops().is_empty());
    }
}
