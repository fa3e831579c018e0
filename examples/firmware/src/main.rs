//! An edge-NPU style integration of expertslab on a Cortex-M4 (QEMU mps2-an386):
//!
//! - the experts' weights live in **flash** (a `static` table built at compile time; on a real
//!   part, the model image);
//! - each MoE layer has a few **slots in SRAM**, laid out by a [`SlotArena`];
//! - a **DMA-like sink** moves each slab in fixed-size bursts and reports completion per slot,
//!   the way a driver for a DMA engine would; the pool commits a promotion only after that;
//! - **router ids** arrive per step, per layer; each layer refreshes on its own schedule, and the
//!   runtime reads resident experts from SRAM and the others straight from flash.
//!
//! Run: `cd examples/firmware && cargo run --release`

#![no_std]
#![no_main]

extern crate alloc;

use core::mem::MaybeUninit;
use core::num::NonZeroU32;

use cortex_m_rt::{entry, exception, ExceptionFrame};
use cortex_m_semihosting::{debug, hprintln};
use embedded_alloc::LlffHeap;
use expertslab::{
    migrate, ExpertLayout, ExpertSource, Format, LayerPools, LayerStacks, LayoutError, PoolConfig, Schedule, SlotArena,
    SlotSink, SlotWrite, StackLayout, Step,
};
use panic_semihosting as _;

#[global_allocator]
static HEAP: LlffHeap = LlffHeap::empty();

const LAYERS: usize = 2;
const EXPERTS: usize = 16;
const SLOTS: usize = 4;
const ROWS: usize = 32;
const COLS: usize = 64;
/// Bytes of one Q8_0 stack: experts × rows × (cols / 32 blocks × 34 bytes).
const STACK_BYTES: usize = EXPERTS * ROWS * (COLS / 32) * 34;
/// Gate, up and down stacks of every layer, one after the other.
const WEIGHT_BYTES: usize = LAYERS * 3 * STACK_BYTES;
/// Bytes of one layer's slot arena: 16-byte aligned slots of three Q8_0 slabs.
const ARENA_BYTES: usize = SLOTS * 3 * (STACK_BYTES / EXPERTS);
/// Bytes one DMA burst moves.
const BURST: usize = 256;

#[repr(C, align(16))]
struct Aligned<T>(T);

/// Deterministic stand-in weights, computed at compile time so they sit in flash.
const fn weights() -> [u8; WEIGHT_BYTES] {
    let mut out = [0u8; WEIGHT_BYTES];
    let mut state: u32 = 0x1234_5678;
    let mut i = 0;
    while i < WEIGHT_BYTES {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        out[i] = (state >> 24) as u8;
        i += 1;
    }
    out
}

static WEIGHTS: Aligned<[u8; WEIGHT_BYTES]> = Aligned(weights());

/// A DMA-like sink over one SRAM arena per layer: `write` splits each slab into bursts and
/// queues them, `finish` runs the queued bursts for the slot and reports completion with a
/// read-back checksum, as a driver waiting for the engine's completion interrupt would.
struct DmaSink<'a> {
    arena: SlotArena,
    sram: [&'a mut [u8]; LAYERS],
    /// Bursts programmed for the slot in flight, and their checksum.
    pending_bursts: usize,
    pending_sum: u32,
    bursts: u32,
}

/// Why the DMA-like sink failed.
#[derive(Debug)]
#[allow(dead_code)] // the fields are read through Debug
enum DmaError {
    Layout(LayoutError),
    Checksum { slot: usize },
}

fn checksum(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0u32, |sum, &b| sum.rotate_left(5) ^ u32::from(b))
}

impl SlotSink for DmaSink<'_> {
    type Error = DmaError;

    fn write(&mut self, dest: SlotWrite, bytes: &[u8]) -> Result<(), DmaError> {
        let sram = self
            .sram
            .get_mut(dest.layer)
            .ok_or(DmaError::Layout(LayoutError::LayerOutOfRange { layer: dest.layer, layers: LAYERS }))?;
        let out = self.arena.projection_bytes_mut(sram, dest.slot, dest.index).map_err(DmaError::Layout)?;
        if out.len() != bytes.len() {
            return Err(DmaError::Layout(LayoutError::LengthMismatch { expected: out.len(), actual: bytes.len() }));
        }
        for (dst, src) in out.chunks_mut(BURST).zip(bytes.chunks(BURST)) {
            dst.copy_from_slice(src); // one burst
            self.pending_bursts += 1;
        }
        self.pending_sum = self.pending_sum.wrapping_add(checksum(bytes));
        Ok(())
    }

    fn finish(&mut self, layer: usize, slot: usize) -> Result<(), DmaError> {
        // Completion: every burst of the slot has landed; read back and compare.
        let sram =
            self.sram.get(layer).ok_or(DmaError::Layout(LayoutError::LayerOutOfRange { layer, layers: LAYERS }))?;
        let mut sum = 0u32;
        for index in 0..self.arena.projections() {
            sum = sum.wrapping_add(checksum(self.arena.projection_bytes(sram, slot, index).map_err(DmaError::Layout)?));
        }
        let expected = core::mem::take(&mut self.pending_sum);
        self.bursts += core::mem::take(&mut self.pending_bursts) as u32;
        if sum != expected {
            return Err(DmaError::Checksum { slot });
        }
        Ok(())
    }
}

/// A tiny router: each token's top-2 experts drift slowly and favour a few hot experts.
fn route(step: u32, layer: usize, ids: &mut [u32; 4]) {
    for token in 0..2u32 {
        let base = (step / 6 + token * 5 + layer as u32 * 3) % EXPERTS as u32;
        ids[token as usize * 2] = base;
        ids[token as usize * 2 + 1] = (base + 1 + (step % 3)) % EXPERTS as u32;
    }
}

#[entry]
fn main() -> ! {
    {
        const HEAP_BYTES: usize = 16 * 1024;
        static mut MEMORY: [MaybeUninit<u8>; HEAP_BYTES] = [MaybeUninit::uninit(); HEAP_BYTES];
        // SAFETY: called once before any allocation; MEMORY is used by nothing else.
        unsafe { HEAP.init(core::ptr::addr_of_mut!(MEMORY) as usize, HEAP_BYTES) }
    }
    match run() {
        Ok(()) => debug::exit(debug::EXIT_SUCCESS),
        Err(e) => {
            hprintln!("firmware example failed: {:?}", e);
            debug::exit(debug::EXIT_FAILURE)
        }
    }
    #[allow(clippy::empty_loop)]
    loop {}
}

/// A fault (a bad address, an undefined instruction) prints where it happened, the program
/// counter the core stacked on entry, and ends the emulation with a failure status instead of
/// spinning in cortex-m-rt's default handler.
#[exception]
unsafe fn HardFault(frame: &ExceptionFrame) -> ! {
    hprintln!("HardFault: stacked pc {:#010x}, lr {:#010x}", frame.pc(), frame.lr());
    debug::exit(debug::EXIT_FAILURE);
    #[allow(clippy::empty_loop)]
    loop {}
}

#[derive(Debug)]
#[allow(dead_code)] // the fields are read through Debug
enum Failure {
    Layout(LayoutError),
    Pool(expertslab::PoolError),
    Migrate(expertslab::MigrateFailure<LayoutError, DmaError>),
    Step(expertslab::StepError<LayoutError, DmaError>),
    Mismatch { layer: usize, expert: usize },
    SramTaken,
}

fn run() -> Result<(), Failure> {
    let stack = StackLayout::new(Format::Q8_0, EXPERTS, ROWS, COLS).map_err(Failure::Layout)?;
    let layout = ExpertLayout::gate_up_down(stack, stack, stack).map_err(Failure::Layout)?;
    let flash: &'static [u8] = &WEIGHTS.0;
    let stacks = |layer: usize| {
        let base = layer * 3 * STACK_BYTES;
        [0, 1, 2].map(|p| &flash[base + p * STACK_BYTES..base + (p + 1) * STACK_BYTES])
    };
    let model = [
        LayerStacks::new(layout.clone(), &stacks(0)).map_err(Failure::Layout)?,
        LayerStacks::new(layout.clone(), &stacks(1)).map_err(Failure::Layout)?,
    ];

    // SRAM: one statically placed arena per layer, 16-byte aligned for the NPU's loads.
    let arena = SlotArena::new(&layout, SLOTS, 16).map_err(Failure::Layout)?;
    // Room for the alignment: `fit` skips to the first aligned byte.
    let sram = cortex_m::singleton!(: [[u8; ARENA_BYTES + 16]; LAYERS] = [[0; ARENA_BYTES + 16]; LAYERS])
        .ok_or(Failure::SramTaken)?;
    let [sram0, sram1] = sram;
    let mut dma = DmaSink {
        arena: arena.clone(),
        sram: [arena.fit(sram0).map_err(Failure::Layout)?, arena.fit(sram1).map_err(Failure::Layout)?],
        pending_bursts: 0,
        pending_sum: 0,
        bursts: 0,
    };
    hprintln!(
        "expertslab firmware example: {} layers x {} experts, {} slots of {} bytes per layer in SRAM, weights {} KiB in flash",
        LAYERS,
        EXPERTS,
        SLOTS,
        arena.slot_stride(),
        WEIGHT_BYTES / 1024
    );

    let every = |n| Schedule::EveryDecodeSteps(NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN));
    let configs =
        [PoolConfig::new(EXPERTS, SLOTS).schedule(every(2)), PoolConfig::new(EXPERTS, SLOTS).schedule(every(4))];
    let mut pools = LayerPools::new(&configs).map_err(Failure::Pool)?;
    let mut plans = pools.new_plans();
    for (pool, plan) in pools.pools_mut().iter_mut().zip(plans.iter_mut()) {
        pool.initial_plan(plan);
        migrate(pool, plan, &layout, &model[..], &mut dma).map_err(Failure::Migrate)?;
    }

    let mut ids = [0u32; 4];
    for step in 0..64u32 {
        for (layer, plan) in plans.iter_mut().enumerate() {
            route(step, layer, &mut ids);
            let pool = &mut pools.pools_mut()[layer];
            pool.step(Step::decode(u64::from(step)), &ids, plan, &layout, &model[..], &mut dma)
                .map_err(Failure::Step)?;
            // The "NPU" reads each routed expert: from its SRAM slot when resident, else from flash.
            for &e in &ids {
                let expert = e as usize;
                let from_flash =
                    model[..].expert(layer, expertslab::Projection::Down, expert).map_err(Failure::Layout)?;
                if let Some(slot) = pool.slot_of(expert) {
                    let sram: &[u8] = dma.sram[layer];
                    let from_sram = arena.projection_bytes(sram, slot, 2).map_err(Failure::Layout)?;
                    if from_sram != from_flash {
                        return Err(Failure::Mismatch { layer, expert });
                    }
                }
            }
        }
        if step % 16 == 15 {
            let total = pools.total_stats();
            hprintln!(
                "  step {:2}: hit rate {}%, promotions {}, DMA bursts {}",
                step,
                total.served.hits * 100 / total.served.pairs().max(1),
                total.promotions,
                dma.bursts
            );
        }
    }
    let total = pools.total_stats();
    hprintln!(
        "  done: {} hits, {} misses ({} served by copy, {} in place), {} bytes moved by DMA",
        total.served.hits,
        total.served.misses,
        total.served.served_by_copy,
        total.served.served_in_place,
        total.bytes_promoted
    );
    Ok(())
}
