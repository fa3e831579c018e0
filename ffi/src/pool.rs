//! Policies, pools and plans: [`EsPool`], [`EsPlan`].

use core::ffi::c_char;

use expertslab::{ExpertPool, MigrationPlan, Policy, PoolConfig, PoolError};

use crate::handle::{self, ErrorText, Failed, Handle, Keeper, OrKeep};
use crate::status::EsStatus;
use crate::text::Text;
use crate::types::{EsPolicy, EsPoolConfig, EsPoolStats, EsServeStats, EsStep};

/// One layer's expert pool: residency, planning, serving and statistics (opaque).
pub struct EsPool {
    _opaque: [u8; 0],
}

/// A reusable migration plan: the promotions one refresh wants (opaque).
pub struct EsPlan {
    _opaque: [u8; 0],
}

impl handle::Object for ExpertPool {
    const KIND: handle::EsKind = handle::EsKind::Pool;
    type Opaque = EsPool;
}

impl handle::Object for MigrationPlan {
    const KIND: handle::EsKind = handle::EsKind::Plan;
    type Opaque = EsPlan;
}

/// Fills `*policy` with the deployable policy named `name` (`"tide"`, `"decay"`, `"lru"`,
/// `"lfu"`, `"lru2"`, `"tinylfu"`) and its default settings. `"belady"` needs the future: it is
/// an `ES_STATUS_INVALID_ARGUMENT` here (replay it with [`es_trace_replay`](crate::es_trace_replay)).
/// Takes no handle, so its failures keep no text.
///
/// # Safety
/// `name` must be a NUL-terminated string or null; `policy` writable.
#[no_mangle]
pub unsafe extern "C" fn es_policy_from_name(name: *const c_char, policy: *mut EsPolicy) -> EsStatus {
    handle::no_handle(|why| {
        // SAFETY: forwarded contract.
        let name = unsafe { handle::text(name) }.or_keep(why, "`name`")?;
        let parsed = Policy::from_name(name).map_err(|_| why.fail(EsStatus::InvalidArgument, "unknown policy name"))?;
        let value = EsPolicy::from_policy(parsed).map_err(|s| why.fail(s, "the policy needs the future"))?;
        // SAFETY: forwarded contract.
        unsafe { handle::put(policy, value) }.or_keep(why, "`policy`")
    })
}

/// The core's pool of `config`, or the failure, with why kept in `why`.
fn build_pool(config: EsPoolConfig, why: &ErrorText) -> Result<ExpertPool, Failed> {
    let policy = config.policy.to_policy().map_err(|e| why.fail(EsStatus::InvalidArgument, e))?;
    let schedule = config.schedule.to_schedule().map_err(|e| why.fail(EsStatus::InvalidArgument, e))?;
    let initial = config.initial_placement().map_err(|s| {
        why.fail(s, |t: &mut Text<'_>| {
            t.put("initial placement ").num(config.initial as usize).put(" is not an EsInitialPlacement");
        })
    })?;
    let miss_order = config.miss_order().map_err(|s| {
        why.fail(s, |t: &mut Text<'_>| {
            t.put("miss order ").num(config.miss_order as usize).put(" is not an EsMissOrder");
        })
    })?;
    let pool_config = PoolConfig::new(config.experts, config.slots)
        .layer(config.layer)
        .policy(policy)
        .schedule(schedule)
        .initial(initial)
        .miss_order(miss_order);
    ExpertPool::new(pool_config).map_err(|e| why.fail(pool_status(&e), e))
}

/// Builds a pool of `*config` and writes its handle, allocated by the library, to `*out`.
/// Stepping, migrating and serving it allocate nothing.
///
/// On failure `message` (when not null) receives at most `message_capacity` bytes of why,
/// NUL-terminated: there is no handle yet to keep it. Every failure writes it, a null or
/// misaligned `config` or `out` included.
///
/// # Safety
/// `config` readable; `out` writable; `message` writable for `message_capacity` bytes or null.
#[no_mangle]
pub unsafe extern "C" fn es_pool_new(
    config: *const EsPoolConfig,
    out: *mut *mut EsPool,
    message: *mut c_char,
    message_capacity: usize,
) -> EsStatus {
    // SAFETY: forwarded contract, for every call below.
    unsafe {
        handle::build_into(message, message_capacity, |why| {
            let config = handle::get(config).or_keep(why, "`config`")?;
            let pool = build_pool(config, why)?;
            handle::create(pool, out, why)
        })
    }
}

/// Frees a pool (null is accepted). The library allocated it, so its memory goes back: using or
/// freeing it again is undefined behaviour, which the library cannot detect.
/// It fails only when `pool` is not a live handle of its kind, and then keeps no text: there is
/// no handle to keep it on.
///
/// # Safety
/// `pool` must be a handle from this library or null, not used after this call.
#[no_mangle]
pub unsafe extern "C" fn es_pool_free(pool: *mut EsPool) -> EsStatus {
    // SAFETY: forwarded contract.
    unsafe { handle::free::<ExpertPool>(pool) }
}

/// Runs `body` on the pool behind `pool`, every failure kept on it.
///
/// # Safety
/// `pool` a handle from this library or null; `body`'s own contract.
unsafe fn with_pool(pool: *mut EsPool, body: impl FnOnce(&mut Handle<ExpertPool>) -> Result<(), Failed>) -> EsStatus {
    // SAFETY: forwarded contract.
    unsafe { handle::on::<ExpertPool>(pool, body) }
}

/// Writes the pool's expert count to `*experts` and slot count to `*slots`.
///
/// # Safety
/// `pool` must be a handle from this library or null; the outputs writable.
#[no_mangle]
pub unsafe extern "C" fn es_pool_info(pool: *mut EsPool, experts: *mut usize, slots: *mut usize) -> EsStatus {
    // SAFETY: forwarded contract.
    unsafe {
        with_pool(pool, |pool| {
            handle::check_ptr(experts).or_keep(pool, "`experts`")?;
            handle::check_ptr(slots).or_keep(pool, "`slots`")?;
            // SAFETY: both checked above (not null, aligned); writable by the caller's contract.
            core::ptr::write(experts, pool.value.experts());
            // SAFETY: as above.
            core::ptr::write(slots, pool.value.slots());
            Ok(())
        })
    }
}

/// Checks `expert` against the pool's expert count, recording a failure on the pool.
fn check_expert(pool: &Handle<ExpertPool>, expert: usize) -> Result<(), Failed> {
    let experts = pool.value.experts();
    if expert < experts {
        Ok(())
    } else {
        Err(pool.fail(EsStatus::OutOfRange, |t: &mut Text<'_>| {
            t.put("expert ").num(expert).put(" of a pool of ").num(experts);
        }))
    }
}

/// Checks `slot` against the pool's slot count, recording a failure on the pool.
fn check_slot(pool: &Handle<ExpertPool>, slot: usize) -> Result<(), Failed> {
    let slots = pool.value.slots();
    if slot < slots {
        Ok(())
    } else {
        Err(pool.fail(EsStatus::OutOfRange, |t: &mut Text<'_>| {
            t.put("slot ").num(slot).put(" of a pool of ").num(slots);
        }))
    }
}

/// Writes whether `expert` is resident to `*resident` and, when it is, its slot to `*slot`
/// (untouched otherwise).
///
/// # Safety
/// `pool` must be a handle from this library or null; the outputs writable.
#[no_mangle]
pub unsafe extern "C" fn es_pool_slot_of(
    pool: *mut EsPool,
    expert: usize,
    slot: *mut usize,
    resident: *mut bool,
) -> EsStatus {
    // SAFETY: forwarded contract.
    unsafe {
        with_pool(pool, |pool| {
            handle::check_ptr(slot).or_keep(pool, "`slot`")?;
            handle::check_ptr(resident).or_keep(pool, "`resident`")?;
            check_expert(pool, expert)?;
            let found = pool.value.slot_of(expert);
            if let Some(s) = found {
                // SAFETY: checked above (not null, aligned); writable by the caller's contract.
                core::ptr::write(slot, s);
            }
            // SAFETY: as above.
            core::ptr::write(resident, found.is_some());
            Ok(())
        })
    }
}

/// Writes whether `slot` holds an expert to `*occupied` and, when it does, the expert to
/// `*expert` (untouched otherwise).
///
/// # Safety
/// `pool` must be a handle from this library or null; the outputs writable.
#[no_mangle]
pub unsafe extern "C" fn es_pool_expert_in(
    pool: *mut EsPool,
    slot: usize,
    expert: *mut usize,
    occupied: *mut bool,
) -> EsStatus {
    // SAFETY: forwarded contract.
    unsafe {
        with_pool(pool, |pool| {
            handle::check_ptr(expert).or_keep(pool, "`expert`")?;
            handle::check_ptr(occupied).or_keep(pool, "`occupied`")?;
            check_slot(pool, slot)?;
            let found = pool.value.expert_in(slot);
            if let Some(e) = found {
                // SAFETY: checked above (not null, aligned); writable by the caller's contract.
                core::ptr::write(expert, e);
            }
            // SAFETY: as above.
            core::ptr::write(occupied, found.is_some());
            Ok(())
        })
    }
}

/// Writes the resident set as bits (bit `e % 32` of word `e / 32` for expert `e`) into `bits`
/// of `words` words; `ES_STATUS_BUFFER_TOO_SMALL` when fewer than `(experts + 31) / 32`.
///
/// # Safety
/// `pool` must be a handle from this library or null; `bits` writable for `words` words.
#[no_mangle]
pub unsafe extern "C" fn es_pool_resident_bits(pool: *mut EsPool, bits: *mut u32, words: usize) -> EsStatus {
    // SAFETY: forwarded contract.
    unsafe {
        with_pool(pool, |pool| {
            handle::check_ptr(bits).or_keep(pool, "`bits`")?;
            // SAFETY: `bits` is not null and aligned (checked), writable for `words` words by the
            // caller's contract; the size fits since the caller owns that memory.
            let out = core::slice::from_raw_parts_mut(bits, words);
            pool.value.resident_bits(out).map_err(|e| pool.fail(EsStatus::BufferTooSmall, e))
        })
    }
}

/// Frees slot `slot`, writing the expert it held to `*expert` and whether it held one to
/// `*was_occupied`. For a sink that learns after the fact that a slot's copy failed.
///
/// # Safety
/// `pool` must be a handle from this library or null; the outputs writable.
#[no_mangle]
pub unsafe extern "C" fn es_pool_demote_slot(
    pool: *mut EsPool,
    slot: usize,
    expert: *mut usize,
    was_occupied: *mut bool,
) -> EsStatus {
    // SAFETY: forwarded contract.
    unsafe {
        with_pool(pool, |pool| {
            handle::check_ptr(expert).or_keep(pool, "`expert`")?;
            handle::check_ptr(was_occupied).or_keep(pool, "`was_occupied`")?;
            check_slot(pool, slot)?;
            let freed = pool.value.demote_slot(slot);
            if let Some(e) = freed {
                // SAFETY: checked above (not null, aligned); writable by the caller's contract.
                core::ptr::write(expert, e);
            }
            // SAFETY: as above.
            core::ptr::write(was_occupied, freed.is_some());
            Ok(())
        })
    }
}

/// Writes the pool's counters since it was built to `*stats`.
///
/// # Safety
/// `pool` must be a handle from this library or null; `stats` writable.
#[no_mangle]
pub unsafe extern "C" fn es_pool_stats(pool: *mut EsPool, stats: *mut EsPoolStats) -> EsStatus {
    // SAFETY: forwarded contract.
    unsafe {
        with_pool(pool, |pool| handle::put(stats, EsPoolStats::from(pool.value.stats())).or_keep(pool, "`stats`"))
    }
}

/// Fills `plan` with the pool's initial placement (warm: experts `0..slots`; cold: nothing).
/// Migrating the plan fills the slots.
///
/// # Safety
/// `pool` and `plan` must be handles from this library or null.
#[no_mangle]
pub unsafe extern "C" fn es_pool_initial_plan(pool: *mut EsPool, plan: *mut EsPlan) -> EsStatus {
    // SAFETY: forwarded contract.
    unsafe {
        with_pool(pool, |pool| {
            let plan = plan_of(pool, plan)?;
            pool.value.initial_plan(&mut plan.value);
            Ok(())
        })
    }
}

/// The plan behind `plan`, a failure kept on `pool`.
///
/// # Safety
/// `plan` a handle from this library or null.
pub(crate) unsafe fn plan_of<'a>(
    pool: &Handle<ExpertPool>,
    plan: *mut EsPlan,
) -> Result<&'a mut Handle<MigrationPlan>, Failed> {
    // SAFETY: forwarded contract; memory overlapping the pool is refused unread.
    unsafe { handle::other_mut::<MigrationPlan>(plan, &[handle::Held::of(pool)]) }.or_keep(pool, "`plan`")
}

/// The `count` ids at `ids`, a failure kept on `pool`.
///
/// # Safety
/// `ids` readable for `count` ids (null allowed for none).
pub(crate) unsafe fn ids_of<'a>(pool: &Handle<ExpertPool>, ids: *const u32, count: usize) -> Result<&'a [u32], Failed> {
    // SAFETY: forwarded contract.
    unsafe { handle::slice(ids, count) }.or_keep(pool, "`ids`")
}

/// The status of a pool's refusal. A demand policy in a library built without the `demand`
/// feature is an invalid argument, as its text says.
pub(crate) fn pool_status(error: &PoolError) -> EsStatus {
    match error {
        PoolError::TooManyIds { .. } => EsStatus::TooManyIds,
        PoolError::BufferTooSmall { .. } => EsStatus::BufferTooSmall,
        // `PolicyNotBuilt` among them.
        _ => EsStatus::InvalidArgument,
    }
}

/// Plans step `*step` from its `count` router ids (top-k per token, flattened) into `plan`,
/// writing whether the layer refreshed to `*refreshed`. [`es_migrate`](crate::es_migrate) and
/// then [`es_pool_serve`] must see the same ids; [`es_step`](crate::es_step) runs all three.
///
/// # Safety
/// `pool`, `plan` handles from this library or null; `step` readable; `ids` readable for
/// `count` ids; `refreshed` writable.
#[no_mangle]
pub unsafe extern "C" fn es_pool_plan_step(
    pool: *mut EsPool,
    step: *const EsStep,
    ids: *const u32,
    count: usize,
    plan: *mut EsPlan,
    refreshed: *mut bool,
) -> EsStatus {
    // SAFETY: forwarded contract.
    unsafe {
        with_pool(pool, |pool| {
            let step = handle::get(step).or_keep(pool, "`step`")?;
            let step = step.to_step().map_err(|s| pool.fail(s, "the step's mode is not an EsMode"))?;
            let ids = ids_of(pool, ids, count)?;
            let plan = plan_of(pool, plan)?;
            handle::check_ptr(refreshed).or_keep(pool, "`refreshed`")?;
            let did = pool.value.plan_step(step, ids, &mut plan.value).map_err(|e| pool.fail(pool_status(&e), e))?;
            handle::put(refreshed, did).or_keep(pool, "`refreshed`")
        })
    }
}

/// Serves one step's `count` ids against the residency and writes the counts to `*stats`
/// (when not null); they are added to the pool's statistics.
///
/// # Safety
/// `pool` a handle from this library or null; `ids` readable for `count` ids; `stats`
/// writable or null.
#[no_mangle]
pub unsafe extern "C" fn es_pool_serve(
    pool: *mut EsPool,
    ids: *const u32,
    count: usize,
    stats: *mut EsServeStats,
) -> EsStatus {
    // SAFETY: forwarded contract.
    unsafe {
        with_pool(pool, |pool| {
            let ids = ids_of(pool, ids, count)?;
            let served = pool.value.serve(ids);
            if stats.is_null() {
                Ok(())
            } else {
                handle::put(stats, served.into()).or_keep(pool, "`stats`")
            }
        })
    }
}

/// Builds an empty plan sized for `pool` (it never allocates when used with pools of at most
/// as many slots and experts) and writes its handle, allocated by the library, to `*out`.
///
/// # Safety
/// `pool` a handle from this library or null; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn es_plan_new(pool: *mut EsPool, out: *mut *mut EsPlan) -> EsStatus {
    // SAFETY: forwarded contract.
    unsafe {
        with_pool(pool, |pool| {
            let plan = MigrationPlan::with_experts(pool.value.slots(), pool.value.experts());
            handle::create(plan, out, pool)
        })
    }
}

/// Writes the plan's promotion count to `*count`.
///
/// # Safety
/// `plan` a handle from this library or null; `count` writable.
#[no_mangle]
pub unsafe extern "C" fn es_plan_len(plan: *mut EsPlan, count: *mut usize) -> EsStatus {
    // SAFETY: forwarded contract, for every call below.
    unsafe { handle::on::<MigrationPlan>(plan, |plan| handle::put(count, plan.value.len()).or_keep(plan, "`count`")) }
}

/// Writes promotion number `index` of the plan: the expert to `*expert` and its slot to
/// `*slot`.
///
/// # Safety
/// `plan` a handle from this library or null; the outputs writable.
#[no_mangle]
pub unsafe extern "C" fn es_plan_promotion(
    plan: *mut EsPlan,
    index: usize,
    expert: *mut usize,
    slot: *mut usize,
) -> EsStatus {
    // SAFETY: forwarded contract, for every call below.
    unsafe {
        handle::on::<MigrationPlan>(plan, |plan| {
            let len = plan.value.len();
            let Some(&promotion) = plan.value.promotions().get(index) else {
                return Err(plan.fail(EsStatus::OutOfRange, |t: &mut Text<'_>| {
                    t.put("promotion ").num(index).put(" of a plan of ").num(len);
                }));
            };
            handle::check_ptr(expert).or_keep(plan, "`expert`")?;
            handle::check_ptr(slot).or_keep(plan, "`slot`")?;
            // SAFETY: both checked above (not null, aligned); writable by the caller's contract.
            core::ptr::write(expert, usize::from(promotion.expert));
            // SAFETY: as above.
            core::ptr::write(slot, usize::from(promotion.slot));
            Ok(())
        })
    }
}

/// Frees a plan (null is accepted). The library allocated it, so its memory goes back: using or
/// freeing it again is undefined behaviour, which the library cannot detect.
/// It fails only when `plan` is not a live handle of its kind, and then keeps no text: there is
/// no handle to keep it on.
///
/// # Safety
/// `plan` must be a handle from this library or null, not used after this call.
#[no_mangle]
pub unsafe extern "C" fn es_plan_free(plan: *mut EsPlan) -> EsStatus {
    // SAFETY: forwarded contract.
    unsafe { handle::free::<MigrationPlan>(plan) }
}

/// The configuration of a pool of layer 0 with the policy `name` (refreshed every step), for
/// this crate's tests.
#[cfg(test)]
pub(crate) fn test_config(name: &core::ffi::CStr, experts: usize, slots: usize) -> EsPoolConfig {
    use crate::types::{EsSchedule, EsScheduleKind};
    // SAFETY: an all-zero `EsPolicy` is a valid value to overwrite; the pointers are to live locals.
    let mut policy = unsafe { core::mem::zeroed::<EsPolicy>() };
    // SAFETY: `name` is NUL-terminated and `policy` writable.
    assert_eq!(unsafe { es_policy_from_name(name.as_ptr(), &mut policy) }, EsStatus::Ok);
    let schedule = EsSchedule { kind: EsScheduleKind::EveryForward as u32, interval: 1 };
    EsPoolConfig { layer: 0, experts, slots, policy, schedule, initial: 0, miss_order: 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pool of the policy `name` and the text of why not.
    fn pool_of(name: &core::ffi::CStr) -> (EsStatus, String) {
        let config = test_config(name, 8, 2);
        // SAFETY: every pointer below is to a live local.
        unsafe {
            let mut pool = core::ptr::null_mut();
            let mut message = [0 as c_char; crate::ES_ERROR_CAPACITY];
            let status = es_pool_new(&config, &mut pool, message.as_mut_ptr(), message.len());
            assert_eq!(es_pool_free(pool), EsStatus::Ok);
            (status, core::ffi::CStr::from_ptr(message.as_ptr()).to_string_lossy().into_owned())
        }
    }

    #[test]
    fn interval_policies_are_always_built() {
        assert_eq!(pool_of(c"tide").0, EsStatus::Ok);
        assert_eq!(pool_of(c"decay").0, EsStatus::Ok);
    }

    #[cfg(feature = "demand")]
    #[test]
    fn demand_policies_are_built_with_the_feature() {
        for name in [c"lru", c"lfu", c"lru2", c"tinylfu"] {
            assert_eq!(pool_of(name).0, EsStatus::Ok, "{name:?}");
        }
    }

    #[cfg(not(feature = "demand"))]
    #[test]
    fn demand_policies_are_refused_without_the_feature() {
        for name in [c"lru", c"lfu", c"lru2", c"tinylfu"] {
            let (status, text) = pool_of(name);
            assert_eq!(status, EsStatus::InvalidArgument, "{name:?}");
            assert!(text.contains("is not built") && text.contains("`demand` feature"), "{name:?}: {text}");
        }
    }
}
