//! Status codes: what every entry point returns.

/// What a call did. Every function returns one; on anything but `ES_STATUS_OK` the handle the
/// call was made on (its first handle argument) keeps a text saying why, which
/// [`es_last_error`](crate::es_last_error) copies out: a refused output pointer, step or caller
/// buffer as much as a refused expert or plan. A function that builds a handle from nothing
/// (`es_expert_layout_new`, `es_expert_layout_init`, `es_pool_new`, `es_trace_parse`) writes the
/// text to its `message` buffer instead, whatever failed.
///
/// No text is kept where there is nowhere to keep it, and the documentation of each such
/// function says so:
/// - the first handle itself is refused (null, misaligned, freed, never a handle, or a handle of
///   another kind): the status alone says why, and no handle's text changes;
/// - the function takes no handle and no message buffer (`es_status_name`,
///   `es_handle_footprint`, `es_policy_from_name`, `es_source_from_callbacks`,
///   `es_sink_from_callbacks`, and `es_firmware_init` on firmware);
/// - a `free` function, which fails only on its handle;
/// - [`es_last_error`](crate::es_last_error), which never changes the text it reads.
///
/// A handle passed as `const` keeps its text all the same: the text is not part of what `const`
/// protects.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EsStatus {
    /// Success.
    Ok = 0,
    /// A required pointer was null.
    NullPointer = 1,
    /// A pointer was not aligned for what it points to (or a slot buffer not for its arena).
    Misaligned = 2,
    /// A handle of another kind, or memory that holds no live handle: a handle placed in caller
    /// memory and freed since, or memory that was never one. A freed handle the library
    /// allocated cannot be told (its memory went back to the allocator): using it is undefined
    /// behaviour.
    WrongHandle = 3,
    /// A caller buffer (memory, bit words, a slot buffer, a text buffer) is too small; text
    /// buffers still receive what fits, NUL-terminated.
    BufferTooSmall = 4,
    /// An expert, slot, projection, layer, promotion index or kind out of range.
    OutOfRange = 5,
    /// A value outside its domain: a layout, format name, policy name or setting, schedule,
    /// a name that is not ASCII or a string that is not UTF-8, or a policy this build of the
    /// library leaves out (a demand policy without the `demand` feature).
    InvalidArgument = 6,
    /// A step with more ids than a pool takes at once; nothing was planned, moved or served.
    TooManyIds = 7,
    /// A plan that does not fit the pool it is migrated into (made for another pool, or stale).
    PlanMismatch = 8,
    /// The source failed to give an expert's bytes (its callback returned nonzero or gave no
    /// bytes), or gave a slab of the wrong length.
    SourceFailed = 9,
    /// The sink failed to write or finish a slot (its callback returned nonzero, or the slab did
    /// not fit the arena).
    SinkFailed = 10,
    /// A routing trace that does not parse, or a replay that cannot run.
    TraceInvalid = 11,
    /// The library panicked; the call was stopped before the panic could reach C. A bug: please
    /// report it with the error text (the panic's message, kept as any failure's text).
    Panic = 12,
}

impl EsStatus {
    /// Every status, in value order.
    pub const ALL: [EsStatus; 13] = [
        EsStatus::Ok,
        EsStatus::NullPointer,
        EsStatus::Misaligned,
        EsStatus::WrongHandle,
        EsStatus::BufferTooSmall,
        EsStatus::OutOfRange,
        EsStatus::InvalidArgument,
        EsStatus::TooManyIds,
        EsStatus::PlanMismatch,
        EsStatus::SourceFailed,
        EsStatus::SinkFailed,
        EsStatus::TraceInvalid,
        EsStatus::Panic,
    ];

    /// The status's name as the header spells it, NUL-terminated.
    pub const fn name(self) -> &'static core::ffi::CStr {
        match self {
            EsStatus::Ok => c"ES_STATUS_OK",
            EsStatus::NullPointer => c"ES_STATUS_NULL_POINTER",
            EsStatus::Misaligned => c"ES_STATUS_MISALIGNED",
            EsStatus::WrongHandle => c"ES_STATUS_WRONG_HANDLE",
            EsStatus::BufferTooSmall => c"ES_STATUS_BUFFER_TOO_SMALL",
            EsStatus::OutOfRange => c"ES_STATUS_OUT_OF_RANGE",
            EsStatus::InvalidArgument => c"ES_STATUS_INVALID_ARGUMENT",
            EsStatus::TooManyIds => c"ES_STATUS_TOO_MANY_IDS",
            EsStatus::PlanMismatch => c"ES_STATUS_PLAN_MISMATCH",
            EsStatus::SourceFailed => c"ES_STATUS_SOURCE_FAILED",
            EsStatus::SinkFailed => c"ES_STATUS_SINK_FAILED",
            EsStatus::TraceInvalid => c"ES_STATUS_TRACE_INVALID",
            EsStatus::Panic => c"ES_STATUS_PANIC",
        }
    }
}

impl core::fmt::Display for EsStatus {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name().to_str().unwrap_or("ES_STATUS_?"))
    }
}
