//! Trace replay on the host: [`EsTrace`], parsed from the core's NDJSON routing-trace format.

use core::ffi::c_char;

use expertslab::trace::replay::{replay, CostModel, ReplayConfig, ReplayPolicy};
use expertslab::trace::Trace;
use expertslab::InitialPlacement;

use crate::handle::{self, guard, refuse, status, Object};
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
/// `message_capacity` bytes of why, NUL-terminated.
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
        handle::build_into(
            message,
            message_capacity,
            |why| {
                let bytes = handle::slice(bytes, length).map_err(|s| refuse(why, s, "the trace bytes"))?;
                let text = core::str::from_utf8(bytes).map_err(|error| {
                    refuse(why, EsStatus::InvalidArgument, Brief { error: &error, brief: "the trace is not UTF-8" })
                })?;
                Trace::parse(text).map_err(|error| {
                    refuse(why, EsStatus::TraceInvalid, Brief { error: &error, brief: "the trace does not parse" })
                })
            },
            |trace| handle::create(trace, out),
        )
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
    guard(|| {
        status((|| {
            // SAFETY: forwarded contract.
            let trace = unsafe { handle::handle_mut::<Trace>(trace) }?;
            let header = trace.value.header();
            // SAFETY: forwarded contract.
            unsafe {
                handle::put(records, trace.value.records().len())?;
                handle::put(experts, header.experts)?;
                handle::put(layers, header.layers)?;
                handle::put(top_k, header.top_k)
            }
        })())
    })
}

/// Replays the trace with per-layer pools of `slots` slots under the policy named `policy` (a
/// deployable one, `"belady"`, or a reference: `"oracle"`, `"uniform"`, `"optimal"`,
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
    guard(|| {
        status((|| {
            // SAFETY: forwarded contract.
            let trace = unsafe { handle::handle_mut::<Trace>(trace) }?;
            // SAFETY: forwarded contract.
            let name = unsafe { handle::text(policy) }.map_err(|s| trace.fail(s, "the policy name"))?;
            let policy = ReplayPolicy::from_name(name).map_err(|error| {
                trace.fail(EsStatus::InvalidArgument, |t: &mut Text<'_>| {
                    t.put("\"").put(name).put("\": ");
                    Brief { error: &error, brief: "unknown policy name" }.write(t);
                })
            })?;
            // SAFETY: forwarded contract.
            let schedule = unsafe { handle::get(schedule) }.map_err(|s| trace.fail(s, "the schedule"))?;
            let schedule = schedule.to_schedule().map_err(|e| trace.fail(EsStatus::InvalidArgument, e))?;
            let cost = if cost.is_null() {
                EsCostModel::default()
            } else {
                // SAFETY: forwarded contract.
                unsafe { handle::get(cost) }?
            };
            handle::check_ptr(stats)?;
            let model = CostModel::new(cost.expert_bytes, cost.slow_pair_seconds, cost.link_bytes_per_second);
            let config = ReplayConfig::new(policy, slots, schedule, InitialPlacement::Warm, model);
            let report = replay(&trace.value, &config).map_err(|error| {
                trace.fail(EsStatus::TraceInvalid, Brief { error: &error, brief: "the replay cannot run" })
            })?;
            // SAFETY: forwarded contract.
            unsafe { handle::put(stats, EsReplayStats::from(&report.total)) }
        })())
    })
}

/// Frees a trace (null is accepted).
///
/// # Safety
/// `trace` must be a handle from this library or null, not used after this call.
#[no_mangle]
pub unsafe extern "C" fn es_trace_free(trace: *mut EsTrace) -> EsStatus {
    // SAFETY: forwarded contract.
    guard(|| unsafe { handle::free::<Trace>(trace) })
}
