//! Tests on a real GPU. A plain binary (`harness = false`): without a CUDA driver or device it
//! prints one line saying the GPU tests were not run and succeeds; with one it runs every test
//! and prints libtest's summary line (`test result: ...`), which `scripts/gpu-test.sh` reads.
//! A name given on the command line runs only the tests containing it; libtest's flags
//! (`--include-ignored`, `--test-threads=1`) are accepted and ignored.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::process::ExitCode;
use std::sync::Arc;

use expertslab::{ExpertLayout, Format, Policy, StackLayout};
use expertslab_cuda::{CudaDriver, CudaError, Driver, Faults, HostMemory, RingConfig, VramArena};
use expertslab_std::SharedBytes;

/// 64 experts of gate/up/down 16 × 1024 BF16 (32 KiB each), 16 slots per layer.
const SHAPE: (usize, usize, usize) = (64, 16, 1024);

type Test = fn(&CudaDriver) -> Result<(), String>;

fn copies_are_byte_exact_over_many_plans(driver: &CudaDriver) -> Result<(), String> {
    let configs = [
        (true, RingConfig::default()),
        (false, RingConfig { entries: 3, entry_bytes: 40_000 }),
        (false, RingConfig { entries: 0, entry_bytes: 0 }),
    ];
    for (register, ring) in configs {
        for policy in [Policy::Tide, Policy::Lru] {
            let mut lane = common::lane(driver.clone(), SHAPE, register, ring, policy);
            common::steps_stay_exact(&mut lane, 40).map_err(|e| format!("{register} {ring:?} {policy:?}: {e}"))?;
            let stats = *lane.sink.stats();
            let promotions: u64 = lane.pools.iter().map(|p| p.stats().promotions).sum();
            if promotions < 40 {
                return Err(format!("only {promotions} promotions: the test moved too little"));
            }
            let used = match (register, ring.entries) {
                (true, _) => stats.registered_copies,
                (false, 0) => stats.synchronous_copies,
                _ => stats.staged_copies,
            };
            if used != promotions * 3 {
                return Err(format!("{register} {ring:?}: {stats:?} for {promotions} promotions"));
            }
        }
    }
    Ok(())
}

fn an_enqueue_failure_frees_the_slot_and_a_retry_converges(driver: &CudaDriver) -> Result<(), String> {
    let faults = Arc::new(Faults::new(driver.clone()));
    let lane = common::lane(Arc::clone(&faults), SHAPE, true, RingConfig::default(), Policy::Tide);
    common::enqueue_failure_converges(&faults, lane);
    Ok(())
}

fn a_late_failure_frees_the_suspects_and_migrating_again_converges(driver: &CudaDriver) -> Result<(), String> {
    let faults = Arc::new(Faults::new(driver.clone()));
    let lane = common::lane(Arc::clone(&faults), SHAPE, true, RingConfig::default(), Policy::Lru);
    common::late_failure_converges(&faults, lane);
    Ok(())
}

fn polling_confirms_copies_once_they_completed(driver: &CudaDriver) -> Result<(), String> {
    let mut lane = common::lane(driver.clone(), SHAPE, true, RingConfig::default(), Policy::Tide);
    for step in 0..10 {
        lane.step(step)?;
        let start = std::time::Instant::now();
        while !lane.sink.poll().map_err(|e| e.to_string())? {
            if start.elapsed().as_secs() > 10 {
                return Err("copies still running after 10 s".into());
            }
            std::thread::yield_now();
        }
        lane.check()?;
    }
    Ok(())
}

fn registered_memory_is_readable_by_the_device(driver: &CudaDriver) -> Result<(), String> {
    let bytes: Vec<u8> = (0..3 << 20).map(|i: usize| (i % 251) as u8).collect();
    let shared = SharedBytes::copy_from(&bytes);
    let mut host =
        HostMemory::new(driver.clone(), RingConfig { entries: 0, entry_bytes: 0 }).map_err(|e| e.to_string())?;
    let report = host.register([shared.clone()]);
    if report.registered != 1 {
        return Err(format!("registration refused: {report:?}"));
    }
    let slab = &shared.as_bytes()[12345..12345 + (1 << 20)];
    let device = host.device_ptr_of(slab).ok_or("no device pointer for registered bytes")?;
    let mut back = vec![0u8; slab.len()];
    // SAFETY: `device` maps 1 MiB of registered host memory, kept alive by `host`.
    unsafe { driver.copy_to_host(&mut back, device) }.map_err(|e| e.to_string())?;
    if back != slab {
        return Err("the device pointer of registered memory reads other bytes".into());
    }
    Ok(())
}

fn too_many_slots_say_how_many_fit(driver: &CudaDriver) -> Result<(), String> {
    // 3 GiB per slot.
    let stack = StackLayout::new(Format::F32, 1, 1 << 14, 1 << 14).map_err(|e| e.to_string())?;
    let layout = ExpertLayout::gate_up_down(stack, stack, stack).map_err(|e| e.to_string())?;
    let free = driver.free_memory().map_err(|e| e.to_string())?;
    let stride = 3usize << 30;
    let slots = free / stride + 10;
    match VramArena::for_layout(driver.clone(), 7, &layout, slots) {
        Err(CudaError::DoesNotFit { layer: Some(7), slots_that_fit: fit, .. })
            if fit + 10 == slots || fit + 11 == slots =>
        {
            Ok(())
        }
        Err(e) => Err(format!("unexpected error: {e}")),
        Ok(_) => Err(format!("{slots} slots of 3 GiB fit {free} free bytes")),
    }
}

/// Kernels stand-in: device-to-device copies out of slot 0 on the compute stream, enqueued
/// before the promotion that overwrites the slot. With the read fence the copy stream waits for
/// them, so the last one still sees the old expert whole (without it, the 64 MiB upload would
/// overlap them).
fn a_slot_is_overwritten_only_after_its_readers(driver: &CudaDriver) -> Result<(), String> {
    use expertslab::{migrate, ExpertSource, MigrationPlan, PoolConfig, SlotArena, Step};
    let (store, layout) = common::store(1, 2, 1024, 11 * 1024); // 22 MiB per projection
    let arena = SlotArena::new(&layout, 1, expertslab_cuda::DEVICE_ALIGN).map_err(|e| e.to_string())?;
    let mut sink = expertslab_cuda::CudaSlotSink::new(driver.clone(), [(0, arena)], RingConfig::default())
        .map_err(|e| e.to_string())?;
    sink.host_mut().register_store(&store);
    let compute = driver.new_stream().map_err(|e| e.to_string())?;
    let mut pool = expertslab::ExpertPool::new(PoolConfig::new(2, 1).policy(Policy::Lru)).map_err(|e| e.to_string())?;
    let mut plan = MigrationPlan::new(1);
    let mut promote = |expert: u32, index, sink: &mut expertslab_cuda::CudaSlotSink<CudaDriver>| {
        pool.plan_step(Step::decode(index), &[expert], &mut plan).map_err(|e| e.to_string())?;
        migrate(&mut pool, &plan, &layout, &store, sink).map_err(|e| e.to_string())?;
        pool.serve(&[expert]);
        Ok::<_, String>(())
    };
    promote(0, 0, &mut sink)?;
    sink.synchronize().map_err(|e| e.to_string())?;
    let slab = stack_bytes(&store, 0);
    let src = sink.vram(0).ok_or("no arena")?.slot_ptr(0, 0).map_err(|e| e.to_string())?;
    let scratch = driver.alloc(slab).map_err(|e| e.to_string())?;
    sink.order_before(&compute).map_err(|e| e.to_string())?;
    for _ in 0..40 {
        // SAFETY: both ranges are `slab` bytes of live device allocations (slot 0's gate
        // projection and the scratch buffer).
        unsafe { cudarc::driver::result::memcpy_dtod_async(scratch, src, slab, compute.cu_stream()) }
            .map_err(|e| e.to_string())?;
    }
    sink.after_reads(&compute).map_err(|e| e.to_string())?;
    promote(1, 1, &mut sink)?; // expert 1 replaces expert 0 in slot 0
    driver.sync_stream(&compute).map_err(|e| e.to_string())?;
    sink.synchronize().map_err(|e| e.to_string())?;
    let mut seen = vec![0u8; slab];
    // SAFETY: `scratch` holds `slab` bytes.
    unsafe { driver.copy_to_host(&mut seen, scratch) }.map_err(|e| e.to_string())?;
    // SAFETY: allocated above, no work pending (both streams synchronized).
    unsafe { driver.free(scratch) }.map_err(|e| e.to_string())?;
    let old = store.expert(0, expertslab::Projection::Gate, 0).map_err(|e| e.to_string())?;
    if seen != old {
        return Err("a reader saw the slot being overwritten".into());
    }
    let mut now = vec![0u8; slab];
    sink.read_slot(0, 0, 0, &mut now).map_err(|e| e.to_string())?;
    let new = store.expert(0, expertslab::Projection::Gate, 1).map_err(|e| e.to_string())?;
    if now != new {
        return Err("the promotion did not land".into());
    }
    Ok(())
}

fn stack_bytes(store: &expertslab_std::ExpertStore, layer: usize) -> usize {
    store.layer(layer).map_or(0, |w| w.layout().projections()[0].1.expert_bytes())
}

fn main() -> ExitCode {
    let driver = match CudaDriver::new(0) {
        Ok(driver) => driver,
        Err(e) => {
            println!("GPU tests not run: {e}");
            return ExitCode::SUCCESS;
        }
    };
    let tests: [(&str, Test); 7] = [
        ("polling_confirms_copies_once_they_completed", polling_confirms_copies_once_they_completed),
        ("a_slot_is_overwritten_only_after_its_readers", a_slot_is_overwritten_only_after_its_readers),
        ("copies_are_byte_exact_over_many_plans", copies_are_byte_exact_over_many_plans),
        (
            "an_enqueue_failure_frees_the_slot_and_a_retry_converges",
            an_enqueue_failure_frees_the_slot_and_a_retry_converges,
        ),
        (
            "a_late_failure_frees_the_suspects_and_migrating_again_converges",
            a_late_failure_frees_the_suspects_and_migrating_again_converges,
        ),
        ("registered_memory_is_readable_by_the_device", registered_memory_is_readable_by_the_device),
        ("too_many_slots_say_how_many_fit", too_many_slots_say_how_many_fit),
    ];
    let filters: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let (mut passed, mut failed, mut filtered) = (0, 0, 0);
    println!("running GPU tests on {}", driver.context().name().unwrap_or_default());
    for (name, test) in tests {
        if !filters.is_empty() && !filters.iter().any(|f| name.contains(f.as_str())) {
            filtered += 1;
            continue;
        }
        let outcome = catch_unwind(AssertUnwindSafe(|| test(&driver)));
        match outcome {
            Ok(Ok(())) => {
                passed += 1;
                println!("test {name} ... ok");
            }
            Ok(Err(e)) => {
                failed += 1;
                println!("test {name} ... FAILED: {e}");
            }
            Err(_) => {
                failed += 1;
                println!("test {name} ... FAILED (panicked)");
            }
        }
    }
    let verdict = if failed == 0 { "ok" } else { "FAILED" };
    println!(
        "test result: {verdict}. {passed} passed; {failed} failed; 0 ignored; 0 measured; {filtered} filtered out"
    );
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
