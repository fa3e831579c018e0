//! Through the C interface, stepping, migrating and serving allocate nothing once the handles
//! are built, on success and on a failing sink alike. One test in this file, so the counting
//! allocator sees only its thread.

use std::alloc::{GlobalAlloc, Layout, System};
use std::ffi::c_void;
use std::ptr;
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};

use expertslab_ffi::*;

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call goes unchanged to the system allocator; allocations are only counted.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const EXPERTS: usize = 16;
const SLAB: usize = 2 * 4 * 4;

/// What the failing sink's write returns.
static FAIL: AtomicI32 = AtomicI32::new(0);

/// A sink callback that returns [`FAIL`].
unsafe extern "C" fn write(_: *mut c_void, _: *const EsSlotWrite, _: *const u8, _: usize) -> i32 {
    FAIL.load(Ordering::Relaxed)
}

#[test]
fn steps_migrations_and_serving_allocate_nothing_after_setup() {
    let stacks_bytes: Vec<u8> = (0..EXPERTS as u8).flat_map(|e| [e; SLAB]).collect();
    let f32 = c"f32".as_ptr();
    let stacks = [
        EsStackLayout { projection: EsProjection::Gate as u32, format: f32, experts: EXPERTS, rows: 2, cols: 4 },
        EsStackLayout { projection: EsProjection::Up as u32, format: f32, experts: EXPERTS, rows: 2, cols: 4 },
        EsStackLayout { projection: EsProjection::Down as u32, format: f32, experts: EXPERTS, rows: 2, cols: 4 },
    ];
    let mut sram = vec![0u128; 4 * 3 * SLAB / 16];
    let callbacks = EsSinkCallbacks { context: ptr::null_mut(), write: Some(write), finish: None };
    for name in [c"tide", c"decay", c"lru", c"lfu", c"lru2", c"tinylfu"] {
        // SAFETY: every pointer below points to a live local of the right type; the handles are
        // this library's and freed at the end; `stacks_bytes` and `sram` outlive them.
        unsafe {
            let (mut layout, mut arena, mut pool, mut plan) =
                (ptr::null_mut(), ptr::null_mut(), ptr::null_mut(), ptr::null_mut());
            let (mut source, mut sink, mut failing) = (ptr::null_mut(), ptr::null_mut(), ptr::null_mut());
            assert_eq!(es_expert_layout_new(stacks.as_ptr(), 3, &mut layout, ptr::null_mut(), 0), EsStatus::Ok);
            assert_eq!(es_arena_new(layout, 4, 16, &mut arena), EsStatus::Ok);
            let buffer = sram.as_mut_ptr().cast::<u8>();
            assert_eq!(es_sink_from_arena(arena, 0, buffer, sram.len() * 16, &mut sink), EsStatus::Ok);
            assert_eq!(es_sink_from_callbacks(&callbacks, &mut failing), EsStatus::Ok);
            let pointers = [stacks_bytes.as_ptr(); 3];
            let lengths = [stacks_bytes.len(); 3];
            assert_eq!(
                es_source_from_stacks(layout, 0, pointers.as_ptr(), lengths.as_ptr(), 3, &mut source),
                EsStatus::Ok
            );
            let mut config = EsPoolConfig {
                layer: 0,
                experts: EXPERTS,
                slots: 4,
                policy: std::mem::zeroed(),
                schedule: EsSchedule { kind: EsScheduleKind::EveryForward as u32, interval: 0 },
                initial: EsInitialPlacement::Warm as u32,
                miss_order: EsMissOrder::Routing as u32,
            };
            assert_eq!(es_policy_from_name(name.as_ptr(), &mut config.policy), EsStatus::Ok);
            assert_eq!(es_pool_new(&config, &mut pool, ptr::null_mut(), 0), EsStatus::Ok);
            assert_eq!(es_plan_new(pool, &mut plan), EsStatus::Ok);
            assert_eq!(es_pool_initial_plan(pool, plan), EsStatus::Ok);

            let mut failures = 0;
            let before = ALLOCATIONS.load(Ordering::Relaxed);
            assert_eq!(es_migrate(pool, plan, layout, source, sink, ptr::null_mut()), EsStatus::Ok);
            let mut stats = EsStepStats::default();
            for index in 0..64u64 {
                let ids = [(index * 7 % 16) as u32, (index * 3 % 16) as u32, 5, 99];
                let step = EsStep { index, prefill: false, mode: EsMode::Scheduled as u32 };
                let to = if index % 5 == 0 { failing } else { sink };
                FAIL.store(i32::from(index % 10 == 0), Ordering::Relaxed);
                let status = es_step(pool, &step, ids.as_ptr(), ids.len(), plan, layout, source, to, &mut stats);
                assert!(matches!(status, EsStatus::Ok | EsStatus::SinkFailed), "{status}");
                failures += usize::from(status == EsStatus::SinkFailed);
                let mut served = EsServeStats::default();
                assert_eq!(es_pool_serve(pool, ids.as_ptr(), 2, &mut served), EsStatus::Ok);
            }
            let mut text = [0 as std::ffi::c_char; 64];
            let _ = es_last_error(pool.cast_const().cast(), text.as_mut_ptr(), text.len(), ptr::null_mut());
            assert_eq!(ALLOCATIONS.load(Ordering::Relaxed), before, "{}", name.to_string_lossy());
            assert!(failures > 0, "{} never met the failing sink", name.to_string_lossy());

            let mut totals = EsPoolStats::default();
            assert_eq!(es_pool_stats(pool, &mut totals), EsStatus::Ok);
            assert!(totals.served.hits > 0 && totals.served.invalid_ids == 64);
            for status in [
                es_plan_free(plan),
                es_pool_free(pool),
                es_source_free(source),
                es_sink_free(sink),
                es_sink_free(failing),
                es_arena_free(arena),
                es_expert_layout_free(layout),
            ] {
                assert_eq!(status, EsStatus::Ok);
            }
        }
    }
}
