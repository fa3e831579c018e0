//! The smallest useful firmware for the size report: one layer's layout, a pool, an arena in RAM,
//! a few refreshes with migration from flash, and hit accounting. Compare with `baseline`, the
//! same runtime without the core, to get the core's share.

#![no_std]
#![no_main]

use expertslab::{
    migrate, ArenaSink, ExpertLayout, ExpertPool, Format, LayerStacks, MigrationPlan, PoolConfig, SlotArena,
    StackLayout, Step,
};
use expertslab_qemu::{entry, exit, init_heap, singleton};

const EXPERTS: usize = 8;
const STACK_BYTES: usize = EXPERTS * 2 * 8 * 4;

#[repr(C, align(16))]
struct Aligned<T>(T);

const fn weights() -> [u8; 3 * STACK_BYTES] {
    let mut out = [0u8; 3 * STACK_BYTES];
    let mut i = 0;
    while i < out.len() {
        out[i] = (i * 31 % 251) as u8;
        i += 1;
    }
    out
}

static WEIGHTS: Aligned<[u8; 3 * STACK_BYTES]> = Aligned(weights());

fn run() -> Option<bool> {
    let stack = StackLayout::new(Format::F32, EXPERTS, 2, 8).ok()?;
    let layout = ExpertLayout::gate_up_down(stack, stack, stack).ok()?;
    let w = &WEIGHTS.0;
    let model = [LayerStacks::new(
        layout.clone(),
        &[&w[..STACK_BYTES], &w[STACK_BYTES..2 * STACK_BYTES], &w[2 * STACK_BYTES..]],
    )
    .ok()?];
    let arena = SlotArena::new(&layout, 3, 16).ok()?;
    let sram = singleton!(: [u8; 1024] = [0; 1024])?;
    let mut sink = ArenaSink::new(arena.clone(), 0, arena.fit(sram).ok()?).ok()?;
    let mut pool = ExpertPool::new(PoolConfig::new(EXPERTS, 3)).ok()?;
    let mut plan = MigrationPlan::new(pool.slots());
    pool.initial_plan(&mut plan);
    migrate(&mut pool, &plan, &layout, &model[..], &mut sink).ok()?;
    let (mut hits, mut by_copy) = (0, 0);
    for (step, ids) in (0..).zip([[5u32, 6], [5, 7], [1, 2]]) {
        let served = pool.step(Step::decode(step), &ids, &mut plan, &layout, &model[..], &mut sink).ok()?.served;
        hits += served.hits;
        by_copy += served.served_by_copy;
    }
    // Only expert 5 in step 1 was resident before its step; every other pair was copied in for it.
    Some(hits == 1 && by_copy == 5 && pool.is_resident(1))
}

#[entry]
fn main() -> ! {
    init_heap();
    exit(run() == Some(true))
}
