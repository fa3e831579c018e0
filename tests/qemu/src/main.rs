//! Test firmware: runs the core's device-side cases on an emulated Cortex-M4 or RISC-V core and
//! reports one line per case, then `N passed, M failed`, and exits non-zero through semihosting
//! when any case failed or the firmware panicked. The cases are the same on both instruction sets;
//! what differs (start-up, exit, timer, fault handling) is in the library's `arch` module.

#![no_std]
#![no_main]

extern crate alloc;

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU32, Ordering};

use expertslab::{
    migrate, ArenaSink, ExpertLayout, ExpertPool, LayerStacks, LockedPool, MigrateError, MigrationPlan, PoolConfig,
    SlotArena, SlotSink, SlotWrite, Step,
};
use expertslab_golden::{
    blob_layout, blob_stacks, check_layouts, parse_scenario, replay, BLOB_EXPERTS, EXPERT_BLOB, LAYOUT_VECTORS,
    ROUTING_VECTORS,
};
use expertslab_qemu::{delay, entry, exit, init_heap, interrupt_free, log, start_ticks, stop_ticks, HEAP};

type Outcome = Result<(), String>;
/// A named test case.
type Case = (&'static str, fn() -> Outcome);

/// An error as a failure reason.
fn text(e: impl core::fmt::Display) -> String {
    format!("{e}")
}

fn ensure(condition: bool, what: impl FnOnce() -> String) -> Outcome {
    if condition {
        Ok(())
    } else {
        Err(what())
    }
}

/// Layout math of every format against the values the host computed (tests/vectors/layout.txt).
fn layouts() -> Outcome {
    let cases = check_layouts(LAYOUT_VECTORS).map_err(text)?;
    log!("  {} layout cases agree with the host", cases as u32);
    Ok(())
}

/// Several layers, every schedule kind, prefill and explicit modes over a fixed trace: the digest
/// after every step equals the host's (tests/vectors/routing.txt).
fn routing_digest() -> Outcome {
    digest_of(ROUTING_VECTORS)
}

/// Demand policies (LRU, LFU, LRU-2, tinylfu) over a fixed trace, with the case that pins before
/// it admits: the digest after every step equals the host's (tests/vectors/demand.txt).
#[cfg(feature = "demand")]
fn demand_digest() -> Outcome {
    digest_of(expertslab_golden::DEMAND_VECTORS)
}

/// Replays a vector file's scenario, checking the digest after every step.
fn digest_of(vectors: &str) -> Outcome {
    let scenario = parse_scenario(vectors).map_err(text)?;
    let replayed = replay(&scenario).map_err(text)?;
    let last = replayed.digests.last().copied().unwrap_or(0);
    let last = format!("{last:016x}");
    log!(
        "  {} steps x {} layers, final digest {}",
        replayed.digests.len() as u32,
        scenario.layers.len() as u32,
        last.as_str()
    );
    ensure(scenario.steps.iter().all(|s| s.expected.is_some()), || "the vector file lacks digests".into())
}

fn model(layout: &ExpertLayout) -> Result<[LayerStacks<&'static [u8]>; 1], String> {
    let stacks = blob_stacks(&EXPERT_BLOB.0).map_err(text)?;
    Ok([LayerStacks::new(layout.clone(), &stacks).map_err(text)?])
}

/// Every slot the pool names holds exactly its expert's slabs (compared with flash).
fn slots_hold_their_experts(pool: &ExpertPool, sink: &ArenaSink<'_>, model: &[LayerStacks<&[u8]>]) -> Outcome {
    let layout = model[0].layout();
    for (slot, expert) in pool.residents() {
        for (index, &(projection, _)) in layout.projections().iter().enumerate() {
            let want = expertslab::ExpertSource::expert(model, 0, projection, expert).map_err(text)?;
            let got = sink.slab(slot, index).map_err(text)?;
            ensure(got == want, || format!("slot {slot} does not hold expert {expert}"))?;
        }
    }
    Ok(())
}

const STEPS: [&[u32]; 5] = [&[7, 7, 6, 5], &[0, 1, 0, 2], &[3, 3, 3, 4], &[5, 6, 7, 1], &[2, 2, 4, 0]];

/// Expert slabs in flash migrated into a slot arena in RAM through the core's slice sink.
fn flash_to_sram() -> Outcome {
    let layout = blob_layout().map_err(text)?;
    let model = model(&layout)?;
    let arena = SlotArena::new(&layout, 3, 16).map_err(text)?;
    let mut sram = sram_for(&arena);
    let mut sink = ArenaSink::new(arena.clone(), 0, arena.fit(&mut sram).map_err(text)?).map_err(text)?;
    let mut pool = ExpertPool::new(PoolConfig::new(BLOB_EXPERTS, 3)).map_err(text)?;
    let mut plan = MigrationPlan::new(pool.slots());
    pool.initial_plan(&mut plan);
    migrate(&mut pool, &plan, &layout, &model[..], &mut sink).map_err(text)?;
    slots_hold_their_experts(&pool, &sink, &model)?;
    for (step, ids) in (0..).zip(STEPS) {
        pool.step(Step::decode(step), ids, &mut plan, &layout, &model[..], &mut sink).map_err(text)?;
        slots_hold_their_experts(&pool, &sink, &model)?;
    }
    log!(
        "  {} promotions, {} bytes copied from flash",
        pool.stats().promotions as u32,
        pool.stats().bytes_promoted as u32
    );
    ensure(pool.stats().promotions > 6, || "the steps must move experts".into())
}

/// A heap buffer for `arena` with room to align its start.
fn sram_for(arena: &SlotArena) -> Vec<u8> {
    vec![0u8; arena.total_bytes() + arena.align()]
}

/// A sink that fails its `fail_at`-th write after writing garbage over half of it.
struct FailingSink<'a> {
    inner: ArenaSink<'a>,
    writes: usize,
    fail_at: usize,
}

impl SlotSink for FailingSink<'_> {
    type Error = &'static str;

    fn write(&mut self, dest: SlotWrite, bytes: &[u8]) -> Result<(), &'static str> {
        self.writes += 1;
        if self.writes - 1 == self.fail_at {
            let garbage = vec![0xA5u8; bytes.len()];
            self.inner.write(dest, &garbage).map_err(|_| "range")?;
            return Err("injected fault");
        }
        self.inner.write(dest, bytes).map_err(|_| "range")
    }
}

/// A sink failing at every possible write: the pool stays consistent with slot contents, the
/// failed slot is free, and a retry converges.
fn failing_sink() -> Outcome {
    let layout = blob_layout().map_err(text)?;
    let model = model(&layout)?;
    let arena = SlotArena::new(&layout, 3, 16).map_err(text)?;
    for fail_at in 0..9 {
        let mut sram = sram_for(&arena);
        let inner = ArenaSink::new(arena.clone(), 0, arena.fit(&mut sram).map_err(text)?).map_err(text)?;
        let mut sink = FailingSink { inner, writes: 0, fail_at };
        let mut pool = ExpertPool::new(PoolConfig::new(BLOB_EXPERTS, 3)).map_err(text)?;
        let mut plan = MigrationPlan::new(pool.slots());
        pool.initial_plan(&mut plan);
        match migrate(&mut pool, &plan, &layout, &model[..], &mut sink) {
            Ok(_) => return Err(format!("write {fail_at} did not fail")),
            Err(failure) => {
                ensure(failure.error == MigrateError::Sink("injected fault"), || "wrong error".into())?;
                ensure(pool.expert_in(usize::from(failure.failed.slot)).is_none(), || "failed slot not free".into())?;
                ensure(pool.resident() == fail_at / 3, || {
                    format!("{} resident after write {fail_at}", pool.resident())
                })?;
                slots_hold_their_experts(&pool, &sink.inner, &model)?;
            }
        }
        sink.fail_at = usize::MAX;
        migrate(&mut pool, &plan, &layout, &model[..], &mut sink).map_err(text)?;
        ensure(pool.resident() == 3, || "retry did not converge".into())?;
        slots_hold_their_experts(&pool, &sink.inner, &model)?;
    }
    Ok(())
}

/// The heap's high-water mark after the pool is built equals the one after 1000 refreshes,
/// migrations and serves: nothing grows on the hot paths.
fn heap_high_water() -> Outcome {
    let layout = blob_layout().map_err(text)?;
    let model = model(&layout)?;
    let arena = SlotArena::new(&layout, 4, 16).map_err(text)?;
    let mut sram = sram_for(&arena);
    let mut sink = ArenaSink::new(arena.clone(), 0, arena.fit(&mut sram).map_err(text)?).map_err(text)?;
    let mut pool = ExpertPool::new(PoolConfig::new(BLOB_EXPERTS, 4)).map_err(text)?;
    let mut plan = MigrationPlan::new(pool.slots());
    HEAP.reset_peak();
    let built = HEAP.peak();
    for step in 0..1000u32 {
        let ids = [step % 8, (step / 3) % 8, (step * 5 + 1) % 8, 9];
        pool.step(Step::decode(step.into()), &ids, &mut plan, &layout, &model[..], &mut sink).map_err(text)?;
    }
    let after = HEAP.peak();
    log!("  heap high-water mark: {} bytes after build, {} bytes after 1000 refreshes", built as u32, after as u32);
    ensure(pool.stats().promotions > 100, || "the steps must move experts".into())?;
    ensure(after == built, || format!("the heap grew from {built} to {after} bytes"))
}

/// Heap bytes a pool takes per expert and per slot, measured by building pools of different
/// sizes.
fn pool_state_size() -> Outcome {
    let cost = |experts: usize, slots: usize| -> Result<usize, String> {
        let before = HEAP.used();
        let pool = ExpertPool::new(PoolConfig::new(experts, slots)).map_err(text)?;
        let bytes = HEAP.used() - before;
        drop(pool);
        Ok(bytes)
    };
    let per_expert = (cost(512, 16)? - cost(256, 16)?) / 256;
    let per_slot = (cost(256, 32)? - cost(256, 16)?) / 16;
    log!("  pool state: {} bytes per expert, {} bytes per slot", per_expert as u32, per_slot as u32);
    ensure(per_expert <= 4, || format!("{per_expert} bytes per expert"))
}

static SHARED: LockedPool<Option<ExpertPool>> = LockedPool::new(None);
static TICK_SERVED: AtomicU32 = AtomicU32::new(0);
static TICK_BUSY: AtomicU32 = AtomicU32::new(0);

/// The timer interrupt's work (SysTick on the Cortex-M4, the machine timer on RISC-V).
fn tick() {
    // An interrupt must never spin on a lock the code it preempted holds: try, or count a miss.
    match SHARED.try_with(|pool| pool.as_mut().map(|p| p.serve(&[1, 2]))) {
        Some(Some(_)) => TICK_SERVED.fetch_add(1, Ordering::Relaxed),
        _ => TICK_BUSY.fetch_add(1, Ordering::Relaxed),
    };
}

/// The timer period: 2000 core cycles for SysTick, 200 ticks of the 10 MHz machine timer.
const TICK_PERIOD: u32 = if cfg!(target_arch = "arm") { 2_000 } else { 200 };

/// The spin-locked pool shared by the main loop and a timer interrupt: every serve of either
/// context is counted, none is lost.
fn shared_with_interrupt() -> Outcome {
    let pool = ExpertPool::new(PoolConfig::new(16, 4)).map_err(text)?;
    SHARED.with(|shared| *shared = Some(pool));
    start_ticks(TICK_PERIOD, tick);
    let mut main_serves = 0u64;
    // Hold the lock for a serve, then work outside it, so ticks land both inside and outside.
    while TICK_SERVED.load(Ordering::Relaxed) < 200 && main_serves < 2_000_000 {
        SHARED.with(|shared| shared.as_mut().map(|p| p.serve(&[3, 4, 5])));
        main_serves += 1;
        delay(200);
    }
    stop_ticks();
    // Read the counters and the pool's statistics with interrupts off so no handler runs in
    // between.
    let (ticks, busy, stats) = interrupt_free(|| {
        let ticks = u64::from(TICK_SERVED.load(Ordering::Relaxed));
        let busy = TICK_BUSY.load(Ordering::Relaxed);
        (ticks, busy, SHARED.with(|shared| shared.as_ref().map(|p| *p.stats())))
    });
    let stats = stats.ok_or("pool missing")?;
    log!(
        "  main loop {} serves, timer interrupt {} serves, {} ticks found the lock held",
        main_serves as u32,
        ticks as u32,
        busy
    );
    ensure(ticks >= 200, || "the timer interrupt did not fire".into())?;
    let ids = stats.served.pairs() + stats.served.invalid_ids;
    ensure(ids == main_serves * 3 + ticks * 2, || {
        format!("{ids} ids counted, expected {}", main_serves * 3 + ticks * 2)
    })
}

#[entry]
fn main() -> ! {
    init_heap();
    let cases: &[Case] = &[
        ("layouts_match_host_vectors", layouts),
        ("routing_digest_matches_host", routing_digest),
        #[cfg(feature = "demand")]
        ("demand_digest_matches_host", demand_digest),
        ("flash_slabs_migrate_into_sram_slots", flash_to_sram),
        ("failing_sink_keeps_pool_consistent", failing_sink),
        ("heap_high_water_mark_does_not_grow", heap_high_water),
        ("pool_state_bytes_per_expert", pool_state_size),
        ("spin_pool_shared_with_timer_interrupt", shared_with_interrupt),
    ];
    let (mut passed, mut failed) = (0u32, 0u32);
    for &(name, case) in cases {
        match case() {
            Ok(()) => {
                log!("test {} ... ok", name);
                passed += 1;
            }
            Err(reason) => {
                log!("test {} ... FAILED: {}", name, reason.as_str());
                failed += 1;
            }
        }
    }
    log!("{} passed, {} failed", passed, failed);
    exit(failed == 0)
}
