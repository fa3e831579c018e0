//! Trace replay on the host: [`EsTrace`], parsed from the core's NDJSON routing-trace format.

use core::ffi::c_char;

use expertslab::trace::replay::{replay, CostModel, ReplayConfig, ReplayPolicy};
use expertslab::trace::Trace;
use expertslab::InitialPlacement;

use crate::handle::{self, Keeper, Object, OrKeep};
use crate::status::EsStatus;
use crate::text::{Brief, Reason as _, Text};
use crate::types::{EsCostModel, EsReplayStats, EsSchedule};

/// A parsed routing trace (opaque).
pub struct EsTrace {
    _opaque: [u8; 0],
}

impl Object for Trace {
    const KIND: handle::EsKind = handle::EsKind::Trace;
    type Opaque = EsTrace;
}

/// Parses a routing trace (the NDJSON format of the core's `trace` module: a header line, then
/// one line per layer and step) from `length` UTF-8 bytes and writes its handle, allocated by
/// the library, to `*out`. On failure `message` (when not null) receives at most
/// `message_capacity` bytes of why, NUL-terminated, a null or misaligned `out` included.
///
/// # Safety
/// `bytes` readable for `length` bytes; `out` writable; `message` writable for
/// `message_capacity` bytes or null.
#[no_mangle]
pub unsafe extern "C" fn es_trace_parse(
    bytes: *const u8,
    length: usize,
    out: *mut *mut EsTrace,
    message: *mut c_char,
    message_capacity: usize,
) -> EsStatus {
    // SAFETY: forwarded contract, for every call below.
    unsafe {
        handle::build_into(message, message_capacity, |why| {
            let bytes = handle::slice(bytes, length).or_keep(why, "`bytes`")?;
            let text = core::str::from_utf8(bytes).map_err(|error| {
                why.fail(EsStatus::InvalidArgument, Brief { error: &error, brief: "the trace is not UTF-8" })
            })?;
            let trace = Trace::parse(text).map_err(|error| {
                why.fail(EsStatus::TraceInvalid, Brief { error: &error, brief: "the trace does not parse" })
            })?;
            handle::create(trace, out, why)
        })
    }
}

/// Writes the trace's record count (one per layer and step) to `*records` and its header's
/// expert count, layer count and top-k to `*experts`, `*layers` and `*top_k`.
///
/// # Safety
/// `trace` a handle from this library or null; the outputs writable.
#[no_mangle]
pub unsafe extern "C" fn es_trace_info(
    trace: *mut EsTrace,
    records: *mut usize,
    experts: *mut u32,
    layers: *mut u32,
    top_k: *mut u32,
) -> EsStatus {
    // SAFETY: forwarded contract, for every call below.
    unsafe {
        handle::on::<Trace>(trace, |trace| {
            let header = trace.value.header();
            handle::put(records, trace.value.records().len()).or_keep(trace, "`records`")?;
            handle::put(experts, header.experts).or_keep(trace, "`experts`")?;
            handle::put(layers, header.layers).or_keep(trace, "`layers`")?;
            handle::put(top_k, header.top_k).or_keep(trace, "`top_k`")
        })
    }
}

/// Replays the trace with per-layer pools of `slots` slots under the policy named `policy` (a
/// deployable one, `"belady"`, or a reference: `"oracle"`, `"uniform"`, `"markov"` (for few
/// experts per layer; past its limits the replay fails with `ES_STATUS_TRACE_INVALID`), `"optimal"`,
/// `"optimal-shared"`), refreshing on `*schedule`, starting warm, priced by `*cost` (null: no
/// cost, modeled time 0). Writes the counters over all layers to `*stats`.
///
/// # Safety
/// `trace` a handle from this library or null; `policy` NUL-terminated; `schedule` readable;
/// `cost` readable or null; `stats` writable.
#[no_mangle]
pub unsafe extern "C" fn es_trace_replay(
    trace: *mut EsTrace,
    policy: *const c_char,
    slots: usize,
    schedule: *const EsSchedule,
    cost: *const EsCostModel,
    stats: *mut EsReplayStats,
) -> EsStatus {
    // SAFETY: forwarded contract, for every call below.
    unsafe {
        handle::on::<Trace>(trace, |trace| {
            let name = handle::text(policy).or_keep(trace, "`policy`")?;
            let policy = ReplayPolicy::from_name(name).map_err(|error| {
                trace.fail(EsStatus::InvalidArgument, |t: &mut Text<'_>| {
                    t.put("\"").put(name).put("\": ");
                    Brief { error: &error, brief: "unknown policy name" }.write(t);
                })
            })?;
            let schedule = handle::get(schedule).or_keep(trace, "`schedule`")?;
            let schedule = schedule.to_schedule().map_err(|e| trace.fail(EsStatus::InvalidArgument, e))?;
            let cost =
                if cost.is_null() { EsCostModel::default() } else { handle::get(cost).or_keep(trace, "`cost`")? };
            handle::check_ptr(stats).or_keep(trace, "`stats`")?;
            let model = CostModel::new(cost.expert_bytes, cost.slow_pair_seconds, cost.link_bytes_per_second);
            let config = ReplayConfig::new(policy, slots, schedule, InitialPlacement::Warm, model);
            let report = replay(&trace.value, &config).map_err(|error| {
                trace.fail(EsStatus::TraceInvalid, Brief { error: &error, brief: "the replay cannot run" })
            })?;
            handle::put(stats, EsReplayStats::from(&report.total)).or_keep(trace, "`stats`")
        })
    }
}

/// Frees a trace (null is accepted). The library allocated it, so its memory goes back: using or
/// freeing it again is undefined behaviour, which the library cannot detect.
/// It fails only when `trace` is not a live handle of its kind, and then keeps no text: there is
/// no handle to keep it on.
///
/// # Safety
/// `trace` must be a handle from this library or null, not used after this call.
#[no_mangle]
pub unsafe extern "C" fn es_trace_free(trace: *mut EsTrace) -> EsStatus {
    // SAFETY: forwarded contract.
    unsafe { handle::free::<Trace>(trace) }
}
