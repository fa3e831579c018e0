/* expertslab C interface. Generated from the expertslab-ffi crate by cbindgen: do not edit; run
 * `EXPERTSLAB_BLESS_HEADER=1 cargo test -p expertslab-ffi --test header` to regenerate. */

#ifndef EXPERTSLAB_H
#define EXPERTSLAB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/**
 * Bytes of error text a handle keeps (the text is cut at a character boundary to fit).
 */
#define ES_ERROR_CAPACITY 160

/**
 * What a call did. Every function returns one; on anything but `ES_STATUS_OK` the handle the
 * call was made on (its first handle argument) keeps a text saying why, which
 * [`es_last_error`](crate::es_last_error) copies out: a refused output pointer, step or caller
 * buffer as much as a refused expert or plan. A function that builds a handle from nothing
 * (`es_expert_layout_new`, `es_expert_layout_init`, `es_pool_new`, `es_trace_parse`) writes the
 * text to its `message` buffer instead, whatever failed.
 *
 * No text is kept where there is nowhere to keep it, and the documentation of each such
 * function says so:
 * - the first handle itself is refused (null, misaligned, freed, never a handle, or a handle of
 *   another kind): the status alone says why, and no handle's text changes;
 * - the function takes no handle and no message buffer (`es_status_name`,
 *   `es_handle_footprint`, `es_policy_from_name`, `es_source_from_callbacks`,
 *   `es_sink_from_callbacks`, and `es_firmware_init` on firmware);
 * - a `free` function, which fails only on its handle;
 * - [`es_last_error`](crate::es_last_error), which never changes the text it reads.
 *
 * A handle passed as `const` keeps its text all the same: the text is not part of what `const`
 * protects.
 */
typedef enum EsStatus {
  /**
   * Success.
   */
  ES_STATUS_OK = 0,
  /**
   * A required pointer was null.
   */
  ES_STATUS_NULL_POINTER = 1,
  /**
   * A pointer was not aligned for what it points to (or a slot buffer not for its arena).
   */
  ES_STATUS_MISALIGNED = 2,
  /**
   * A handle of another kind, or memory that holds no live handle: a handle placed in caller
   * memory and freed since, or memory that was never one. A freed handle the library
   * allocated cannot be told (its memory went back to the allocator): using it is undefined
   * behaviour.
   */
  ES_STATUS_WRONG_HANDLE = 3,
  /**
   * A caller buffer (memory, bit words, a slot buffer, a text buffer) is too small; text
   * buffers still receive what fits, NUL-terminated.
   */
  ES_STATUS_BUFFER_TOO_SMALL = 4,
  /**
   * An expert, slot, projection, layer, promotion index or kind out of range.
   */
  ES_STATUS_OUT_OF_RANGE = 5,
  /**
   * A value outside its domain: a layout, format name, policy name or setting, schedule,
   * a name that is not ASCII or a string that is not UTF-8, or a policy this build of the
   * library leaves out (a demand policy without the `demand` feature).
   */
  ES_STATUS_INVALID_ARGUMENT = 6,
  /**
   * A step with more ids than a pool takes at once; nothing was planned, moved or served.
   */
  ES_STATUS_TOO_MANY_IDS = 7,
  /**
   * A plan that does not fit the pool it is migrated into (made for another pool, or stale).
   */
  ES_STATUS_PLAN_MISMATCH = 8,
  /**
   * The source failed to give an expert's bytes (its callback returned nonzero or gave no
   * bytes), or gave a slab of the wrong length.
   */
  ES_STATUS_SOURCE_FAILED = 9,
  /**
   * The sink failed to write or finish a slot (its callback returned nonzero, or the slab did
   * not fit the arena).
   */
  ES_STATUS_SINK_FAILED = 10,
  /**
   * A routing trace that does not parse, or a replay that cannot run.
   */
  ES_STATUS_TRACE_INVALID = 11,
  /**
   * The library panicked; the call was stopped before the panic could reach C. A bug: please
   * report it with the error text (the panic's message, kept as any failure's text).
   */
  ES_STATUS_PANIC = 12,
} EsStatus;

/**
 * The kinds of handle, as [`es_handle_footprint`](crate::es_handle_footprint) takes them.
 */
enum EsKind
#if defined(__cplusplus) || __STDC_VERSION__ >= 202311L
  : uint32_t
#endif // defined(__cplusplus) || __STDC_VERSION__ >= 202311L
 {
  /**
   * An [`EsExpertLayout`](crate::EsExpertLayout).
   */
  ES_KIND_EXPERT_LAYOUT = 1,
  /**
   * An [`EsArena`](crate::EsArena).
   */
  ES_KIND_ARENA = 2,
  /**
   * An [`EsPool`](crate::EsPool).
   */
  ES_KIND_POOL = 3,
  /**
   * An [`EsPlan`](crate::EsPlan).
   */
  ES_KIND_PLAN = 4,
  /**
   * An [`EsSource`](crate::EsSource).
   */
  ES_KIND_SOURCE = 5,
  /**
   * An [`EsSink`](crate::EsSink).
   */
  ES_KIND_SINK = 6,
  /**
   * An [`EsTrace`](crate::EsTrace).
   */
  ES_KIND_TRACE = 7,
};
#ifndef __cplusplus
#if __STDC_VERSION__ >= 202311L
typedef enum EsKind EsKind;
#else
typedef uint32_t EsKind;
#endif // __STDC_VERSION__ >= 202311L
#endif // __cplusplus

/**
 * A projection of an expert.
 */
enum EsProjection
#if defined(__cplusplus) || __STDC_VERSION__ >= 202311L
  : uint32_t
#endif // defined(__cplusplus) || __STDC_VERSION__ >= 202311L
 {
  /**
   * The gate projection.
   */
  ES_PROJECTION_GATE = 0,
  /**
   * The up projection.
   */
  ES_PROJECTION_UP = 1,
  /**
   * The down projection.
   */
  ES_PROJECTION_DOWN = 2,
  /**
   * Gate and up fused in one matrix, gate rows first.
   */
  ES_PROJECTION_GATE_UP = 3,
};
#ifndef __cplusplus
#if __STDC_VERSION__ >= 202311L
typedef enum EsProjection EsProjection;
#else
typedef uint32_t EsProjection;
#endif // __STDC_VERSION__ >= 202311L
#endif // __cplusplus

/**
 * What placement policy a pool runs.
 */
enum EsPolicyKind
#if defined(__cplusplus) || __STDC_VERSION__ >= 202311L
  : uint32_t
#endif // defined(__cplusplus) || __STDC_VERSION__ >= 202311L
 {
  /**
   * TIDE: on refresh steps, the experts with the most hits in that step.
   */
  ES_POLICY_KIND_TIDE = 0,
  /**
   * Decayed hit frequency on refresh steps (`half_life`, `margin`, `max_promotions`).
   */
  ES_POLICY_KIND_DECAY = 1,
  /**
   * Demand caching, demoting the least recently used.
   */
  ES_POLICY_KIND_LRU = 2,
  /**
   * Demand caching, demoting the least frequently used.
   */
  ES_POLICY_KIND_LFU = 3,
  /**
   * Demand caching, demoting by the second-to-last use.
   */
  ES_POLICY_KIND_LRU2 = 4,
  /**
   * Cost-aware demand caching (`half_life`, `horizon`, `threshold`).
   */
  ES_POLICY_KIND_TINYLFU = 5,
};
#ifndef __cplusplus
#if __STDC_VERSION__ >= 202311L
typedef enum EsPolicyKind EsPolicyKind;
#else
typedef uint32_t EsPolicyKind;
#endif // __STDC_VERSION__ >= 202311L
#endif // __cplusplus

/**
 * When a layer refreshes its placement.
 */
enum EsScheduleKind
#if defined(__cplusplus) || __STDC_VERSION__ >= 202311L
  : uint32_t
#endif // defined(__cplusplus) || __STDC_VERSION__ >= 202311L
 {
  /**
   * Every forward pass (`interval` unused).
   */
  ES_SCHEDULE_KIND_EVERY_FORWARD = 0,
  /**
   * Every `interval` decode steps.
   */
  ES_SCHEDULE_KIND_EVERY_DECODE_STEPS = 1,
  /**
   * Every `interval` denoising steps.
   */
  ES_SCHEDULE_KIND_EVERY_DENOISE_STEPS = 2,
};
#ifndef __cplusplus
#if __STDC_VERSION__ >= 202311L
typedef enum EsScheduleKind EsScheduleKind;
#else
typedef uint32_t EsScheduleKind;
#endif // __STDC_VERSION__ >= 202311L
#endif // __cplusplus

/**
 * Which experts are resident when a pool is built.
 */
enum EsInitialPlacement
#if defined(__cplusplus) || __STDC_VERSION__ >= 202311L
  : uint32_t
#endif // defined(__cplusplus) || __STDC_VERSION__ >= 202311L
 {
  /**
   * Experts `0..slots` planned into slots `0..slots` ([`es_pool_initial_plan`](crate::es_pool_initial_plan)).
   */
  ES_INITIAL_PLACEMENT_WARM = 0,
  /**
   * No expert resident until the first refresh.
   */
  ES_INITIAL_PLACEMENT_COLD = 1,
};
#ifndef __cplusplus
#if __STDC_VERSION__ >= 202311L
typedef enum EsInitialPlacement EsInitialPlacement;
#else
typedef uint32_t EsInitialPlacement;
#endif // __STDC_VERSION__ >= 202311L
#endif // __cplusplus

/**
 * The order in which a demand policy admits a step's misses (`MissOrder` in Rust).
 */
enum EsMissOrder
#if defined(__cplusplus) || __STDC_VERSION__ >= 202311L
  : uint32_t
#endif // defined(__cplusplus) || __STDC_VERSION__ >= 202311L
 {
  /**
   * As the step routes them, token by token.
   */
  ES_MISS_ORDER_ROUTING = 0,
  /**
   * On a step of more pairs than slots (a prefill), the slots go to the step's busiest
   * experts, each copied once.
   */
  ES_MISS_ORDER_BUSIEST = 1,
};
#ifndef __cplusplus
#if __STDC_VERSION__ >= 202311L
typedef enum EsMissOrder EsMissOrder;
#else
typedef uint32_t EsMissOrder;
#endif // __STDC_VERSION__ >= 202311L
#endif // __cplusplus

/**
 * What a step asks of placement besides its schedule.
 */
enum EsMode
#if defined(__cplusplus) || __STDC_VERSION__ >= 202311L
  : uint32_t
#endif // defined(__cplusplus) || __STDC_VERSION__ >= 202311L
 {
  /**
   * Refresh when the schedule (or a prefill) says so.
   */
  ES_MODE_SCHEDULED = 0,
  /**
   * Keep the current placement.
   */
  ES_MODE_REUSE = 1,
  /**
   * Refresh whatever the schedule says.
   */
  ES_MODE_REFRESH = 2,
};
#ifndef __cplusplus
#if __STDC_VERSION__ >= 202311L
typedef enum EsMode EsMode;
#else
typedef uint32_t EsMode;
#endif // __STDC_VERSION__ >= 202311L
#endif // __cplusplus

/**
 * A slot arena: where each slot of one layer, and each projection in it, lies in a caller's
 * slot buffer (opaque).
 */
typedef struct EsArena EsArena;

/**
 * An expert layout: the projections one expert needs, each a stack layout (opaque).
 */
typedef struct EsExpertLayout EsExpertLayout;

/**
 * A reusable migration plan: the promotions one refresh wants (opaque).
 */
typedef struct EsPlan EsPlan;

/**
 * One layer's expert pool: residency, planning, serving and statistics (opaque).
 */
typedef struct EsPool EsPool;

/**
 * Where expert bytes go: C callbacks or a slot arena over a caller buffer (opaque).
 */
typedef struct EsSink EsSink;

/**
 * Where expert bytes come from: C callbacks or stacks in caller memory (opaque).
 */
typedef struct EsSource EsSource;

/**
 * A parsed routing trace (opaque).
 */
typedef struct EsTrace EsTrace;

#if defined(ES_FIRMWARE)
/**
 * Called once when the library panics (a bug), with the panic's text (`length` bytes, UTF-8,
 * not NUL-terminated): where in the library's source it happened, then its message when that
 * is a fixed text (a message with values is left out: firmware builds link no text
 * formatting). The library stops after it returns; the callback may instead reset the device
 * or end the program.
 */
typedef void (*EsPanicFn)(const char *message, size_t length);
#endif

/**
 * One projection's `[experts, rows, cols]` stack: the element format by its ggml name (`"f32"`,
 * `"f16"`, `"q4_K"`, …) and the dimensions.
 */
typedef struct EsStackLayout {
  /**
   * An [`EsProjection`] value.
   */
  uint32_t projection;
  /**
   * The element format's name, NUL-terminated.
   */
  const char *format;
  /**
   * Experts in the stack.
   */
  size_t experts;
  /**
   * Rows per expert.
   */
  size_t rows;
  /**
   * Columns per row (elements).
   */
  size_t cols;
} EsStackLayout;

/**
 * A placement policy with its settings. [`es_policy_from_name`](crate::es_policy_from_name)
 * fills one with a policy's defaults.
 */
typedef struct EsPolicy {
  /**
   * An [`EsPolicyKind`] value.
   */
  uint32_t kind;
  /**
   * Decay and tinylfu: scores halve every `half_life` steps (positive, finite).
   */
  float half_life;
  /**
   * Decay: a target replaces a resident only above `margin` times its score (at least 1).
   */
  float margin;
  /**
   * Decay: the cap on promotions per refresh; 0 for none.
   */
  uint16_t max_promotions;
  /**
   * Tinylfu: the steps over which a use rate is credited (at least 0).
   */
  float horizon;
  /**
   * Tinylfu: a miss is copied only above the victim's score by more than this (at least 0).
   */
  float threshold;
} EsPolicy;

/**
 * A refresh schedule.
 */
typedef struct EsSchedule {
  /**
   * An [`EsScheduleKind`] value.
   */
  uint32_t kind;
  /**
   * The interval in steps (at least 1) for the counted kinds.
   */
  uint32_t interval;
} EsSchedule;

/**
 * How one pool is built. Zero-initialised fields past `slots` take their defaults (routing
 * order, warm start).
 */
typedef struct EsPoolConfig {
  /**
   * The layer index (plans and sink writes carry it).
   */
  size_t layer;
  /**
   * Experts in the layer.
   */
  size_t experts;
  /**
   * Slots (clamped to the expert count).
   */
  size_t slots;
  /**
   * The placement policy.
   */
  struct EsPolicy policy;
  /**
   * The refresh schedule.
   */
  struct EsSchedule schedule;
  /**
   * An [`EsInitialPlacement`] value.
   */
  uint32_t initial;
  /**
   * An [`EsMissOrder`] value.
   */
  uint32_t miss_order;
} EsPoolConfig;

/**
 * How token–expert pairs were served: one step's, or a pool's or a replay's over many steps
 * (embedded in [`EsStepStats`], [`EsPoolStats`] and [`EsReplayStats`]).
 */
typedef struct EsServeStats {
  /**
   * Pairs whose expert was resident before their step.
   */
  uint64_t hits;
  /**
   * Pairs that were not hits (`served_by_copy + served_in_place`).
   */
  uint64_t misses;
  /**
   * Misses served from a slot their step's copy filled.
   */
  uint64_t served_by_copy;
  /**
   * Misses computed from slow memory.
   */
  uint64_t served_in_place;
  /**
   * Ids outside the pool's experts.
   */
  uint64_t invalid_ids;
} EsServeStats;

/**
 * A pool's counters since it was built.
 */
typedef struct EsPoolStats {
  /**
   * Refresh steps.
   */
  uint64_t refreshes;
  /**
   * Promotions committed.
   */
  uint64_t promotions;
  /**
   * Demotions.
   */
  uint64_t demotions;
  /**
   * How the pool's pairs were served.
   */
  struct EsServeStats served;
  /**
   * Bytes copied into slots.
   */
  uint64_t bytes_promoted;
} EsPoolStats;

/**
 * One step of one layer.
 */
typedef struct EsStep {
  /**
   * The step index the schedule counts.
   */
  uint64_t index;
  /**
   * A prefill block (always refreshes unless the mode is reuse).
   */
  bool prefill;
  /**
   * An [`EsMode`] value.
   */
  uint32_t mode;
} EsStep;

/**
 * The hardware a replay prices.
 */
typedef struct EsCostModel {
  /**
   * Bytes of one expert.
   */
  uint64_t expert_bytes;
  /**
   * Seconds to compute one pair from slow memory.
   */
  double slow_pair_seconds;
  /**
   * Bytes per second into a slot (0: copies cost nothing).
   */
  double link_bytes_per_second;
} EsCostModel;

/**
 * A replay's counters over all layers.
 */
typedef struct EsReplayStats {
  /**
   * How the pairs were served.
   */
  struct EsServeStats served;
  /**
   * Promotions.
   */
  uint64_t promotions;
  /**
   * Demotions.
   */
  uint64_t demotions;
  /**
   * Bytes copied into slots.
   */
  uint64_t bytes_promoted;
  /**
   * Modeled seconds under the cost model.
   */
  double modeled_time_s;
  /**
   * Experts copied by prefetch (counted in `promotions` and `bytes_promoted` too).
   */
  uint64_t prefetched;
  /**
   * Prefetched experts the step they were prefetched for used.
   */
  uint64_t prefetch_hits;
  /**
   * Bytes of prefetched experts that step did not use.
   */
  uint64_t prefetch_wasted_bytes;
  /**
   * Under the overlapped cost model: experts fetched for misses served in place.
   */
  uint64_t fetched;
  /**
   * Under the overlapped cost model with split misses: experts whose down was fetched while
   * their pairs' gate and up were computed in place.
   */
  uint64_t split;
} EsReplayStats;

/**
 * Gives expert `expert`'s slab of projection `projection` (an `EsProjection` value) in layer
 * `layer`: writes a pointer to its bytes to `*bytes` and their count to `*length`, and returns 0.
 * The bytes must stay valid and unchanged until the call that asked for them returns. Any
 * other return value is a failure (`ES_STATUS_SOURCE_FAILED`; the value is in the error text).
 */
typedef int32_t (*EsSourceExpertFn)(void *context,
                                    size_t layer,
                                    uint32_t projection,
                                    size_t expert,
                                    const uint8_t **bytes,
                                    size_t *length);

/**
 * A source as C callbacks: `expert` (required) is called with `context`. A callback must not
 * call this library with the handles of the call it runs in (the pool, plan, layout, source or
 * sink of that `es_migrate` or `es_step`).
 */
typedef struct EsSourceCallbacks {
  /**
   * Passed to the callback unchanged.
   */
  void *context;
  /**
   * Gives one slab.
   */
  EsSourceExpertFn expert;
} EsSourceCallbacks;

/**
 * Where one slab goes.
 */
typedef struct EsSlotWrite {
  /**
   * The layer.
   */
  size_t layer;
  /**
   * The slot within the layer.
   */
  size_t slot;
  /**
   * The projection (an `EsProjection` value).
   */
  uint32_t projection;
  /**
   * The projection's position in the expert layout.
   */
  size_t index;
} EsSlotWrite;

/**
 * Writes `length` bytes (one expert's slab of one projection) to `*write`; returns 0 on
 * success, anything else on failure (`ES_STATUS_SINK_FAILED`). A sink that copies
 * asynchronously starts the copy here and waits in its finish callback.
 */
typedef int32_t (*EsSinkWriteFn)(void *context,
                                 const struct EsSlotWrite *write,
                                 const uint8_t *bytes,
                                 size_t length);

/**
 * Completes every write into slot `slot` of layer `layer`; returns 0 once the slot's bytes are
 * final, anything else on failure. The pool commits the slot's expert only after this returned 0.
 */
typedef int32_t (*EsSinkFinishFn)(void *context, size_t layer, size_t slot);

/**
 * A sink as C callbacks: `write` is required, `finish` may be null (nothing to wait for). As
 * for a source, a callback must not call this library with the handles of the call it runs in.
 */
typedef struct EsSinkCallbacks {
  /**
   * Passed to the callbacks unchanged.
   */
  void *context;
  /**
   * Writes one slab.
   */
  EsSinkWriteFn write;
  /**
   * Finishes one slot, or null.
   */
  EsSinkFinishFn finish;
} EsSinkCallbacks;

/**
 * What one migration copied.
 */
typedef struct EsMigrateStats {
  /**
   * Promotions copied and committed by this call.
   */
  size_t copied;
  /**
   * Promotions found committed by an earlier, interrupted call and skipped.
   */
  size_t skipped;
  /**
   * Bytes copied by this call.
   */
  uint64_t bytes_promoted;
} EsMigrateStats;

/**
 * What one step of one layer did.
 */
typedef struct EsStepStats {
  /**
   * Whether the layer refreshed (or admitted misses) on this step.
   */
  bool refreshed;
  /**
   * What migration copied (on a failure, what completed before it).
   */
  struct EsMigrateStats migrated;
  /**
   * The step's pairs, counted against the residency after migration.
   */
  struct EsServeStats served;
} EsStepStats;

/**
 * Every status, in value order.
 */
#define EsStatus_ALL { EsStatus_Ok, EsStatus_NullPointer, EsStatus_Misaligned, EsStatus_WrongHandle, EsStatus_BufferTooSmall, EsStatus_OutOfRange, EsStatus_InvalidArgument, EsStatus_TooManyIds, EsStatus_PlanMismatch, EsStatus_SourceFailed, EsStatus_SinkFailed, EsStatus_TraceInvalid, EsStatus_Panic, }

#ifdef __cplusplus
extern "C" {
#endif // __cplusplus

/**
 * Copies the last error text kept by `handle` (a handle of any kind) into `buffer` of
 * `capacity` bytes, NUL-terminated, and writes its full length (without the NUL) to `*length`
 * when `length` is not null. A text cut to fit returns `ES_STATUS_BUFFER_TOO_SMALL`. The text
 * stays until the handle's next failure.
 *
 * This function changes no text: its own failures (a `handle` that is null, misaligned or no
 * live handle, a misaligned `length`, a `buffer` too small) are their status alone, and the
 * text it was asked for stays to be read again.
 *
 * # Safety
 * `handle` a handle from this library or null; `buffer` writable for `capacity` bytes or null;
 * `length` writable or null.
 */
enum EsStatus es_last_error(const void *handle, char *buffer, size_t capacity, size_t *length);

/**
 * Writes the name of `status` as the header spells it (`"ES_STATUS_OK"`, …) to `*name`: a
 * NUL-terminated string of static life. A value that is no status is
 * `ES_STATUS_OUT_OF_RANGE`. Takes no handle, so its failures keep no text.
 *
 * # Safety
 * `name` writable.
 */
enum EsStatus es_status_name(uint32_t status, const char **name);

/**
 * Writes the size and alignment in bytes of a handle of kind `kind` (an `EsKind` value) to
 * `*size` and `*align`, for placing it in caller memory with [`es_expert_layout_init`] or
 * [`es_arena_init`]; the other kinds are allocated by the library and report
 * `ES_STATUS_INVALID_ARGUMENT`. Takes no handle, so its failures keep no text.
 *
 * # Safety
 * `size` and `align` writable.
 */
enum EsStatus es_handle_footprint(uint32_t kind, size_t *size, size_t *align);

#if defined(ES_FIRMWARE)
/**
 * Hands the library its heap: `size` bytes at `heap`, which the library owns from now on, and
 * the callback a panic reports through (null: none). Call it once, before any other function.
 * A second call is `ES_STATUS_INVALID_ARGUMENT`; a null heap `ES_STATUS_NULL_POINTER`; an empty
 * one `ES_STATUS_BUFFER_TOO_SMALL`. Takes no handle, so its failures keep no text.
 *
 * # Safety
 * `heap` must be valid for reads and writes of `size` bytes for the program's life and used by
 * nothing else.
 */
enum EsStatus es_firmware_init(uint8_t *heap, size_t size, EsPanicFn on_panic);
#endif

/**
 * Builds an expert layout from `count` stack layouts (one per projection, in slot order) and
 * writes its handle, allocated by the library, to `*out`.
 *
 * On failure `message` (when not null) receives `message_capacity` bytes at most of why,
 * NUL-terminated: there is no handle yet to keep it. Every failure writes it, a null or
 * misaligned `out` included.
 *
 * # Safety
 * `stacks` must point to `count` readable `EsStackLayout`s whose `format` strings are
 * NUL-terminated; `out` must be writable; `message` writable for `message_capacity` bytes.
 */
enum EsStatus es_expert_layout_new(const struct EsStackLayout *stacks,
                                   size_t count,
                                   struct EsExpertLayout **out,
                                   char *message,
                                   size_t message_capacity);

/**
 * As [`es_expert_layout_new`], placing the handle in caller memory `memory` of `size` bytes,
 * aligned as [`es_handle_footprint`](crate::es_handle_footprint) says for
 * `ES_KIND_EXPERT_LAYOUT` (no allocation). Free it with [`es_expert_layout_free`] before
 * reusing the memory. `memory` null, misaligned or smaller than the footprint is a failure
 * whose text `message` receives, as for every other failure.
 *
 * # Safety
 * As [`es_expert_layout_new`]; `memory` must be writable for `size` bytes and left to the
 * library until the handle is freed.
 */
enum EsStatus es_expert_layout_init(uint8_t *memory,
                                    size_t size,
                                    const struct EsStackLayout *stacks,
                                    size_t count,
                                    struct EsExpertLayout **out,
                                    char *message,
                                    size_t message_capacity);

/**
 * Writes the layout's expert count to `*experts`, its projection count to `*projections` and
 * the bytes one expert needs over all projections to `*expert_bytes`.
 *
 * # Safety
 * `layout` must be a handle from this library or null; the outputs writable.
 */
enum EsStatus es_expert_layout_info(const struct EsExpertLayout *layout,
                                    size_t *experts,
                                    size_t *projections,
                                    size_t *expert_bytes);

/**
 * Writes the bytes of one row of projection number `index` (in the layout's order: the order
 * of the stacks it was built from) to `*row_bytes`: the columns' whole blocks of its format.
 * An `index` past the layout's projections is `ES_STATUS_OUT_OF_RANGE`.
 *
 * # Safety
 * `layout` must be a handle from this library or null; `row_bytes` writable.
 */
enum EsStatus es_expert_layout_row_bytes(struct EsExpertLayout *layout,
                                         size_t index,
                                         size_t *row_bytes);

/**
 * Frees an expert layout (null is accepted). Handles built from it keep their own copy.
 *
 * A layout placed in caller memory ([`es_expert_layout_init`]) is marked freed: until the memory
 * is reused, using or freeing it again returns `ES_STATUS_WRONG_HANDLE`. A layout the library
 * allocated ([`es_expert_layout_new`]) gives its memory back: using or freeing it again is
 * undefined behaviour, which the library cannot detect.
 * It fails only when `layout` is not a live handle of its kind, and then keeps no text: there is
 * no handle to keep it on.
 *
 * # Safety
 * `layout` must be a handle from this library or null, not used after this call (a layout
 * placed in caller memory may be passed again, and is reported freed).
 */
enum EsStatus es_expert_layout_free(struct EsExpertLayout *layout);

/**
 * Builds the slot arena of `slots` slots for experts of `layout`, every projection aligned to
 * `align` bytes (a power of two), and writes its handle, allocated by the library, to `*out`.
 * Failures are kept on `layout`, a null or misaligned `out` included.
 *
 * # Safety
 * `layout` must be a handle from this library or null; `out` writable.
 */
enum EsStatus es_arena_new(struct EsExpertLayout *layout,
                           size_t slots,
                           size_t align,
                           struct EsArena **out);

/**
 * As [`es_arena_new`], placing the handle in caller memory `memory` of `size` bytes (see
 * [`es_handle_footprint`](crate::es_handle_footprint) for `ES_KIND_ARENA`; no allocation).
 * `memory` null, misaligned or smaller than the footprint is a failure kept on `layout`, as
 * every other is.
 *
 * # Safety
 * As [`es_arena_new`]; `memory` writable for `size` bytes and left to the library until the
 * handle is freed.
 */
enum EsStatus es_arena_init(uint8_t *memory,
                            size_t size,
                            struct EsExpertLayout *layout,
                            size_t slots,
                            size_t align,
                            struct EsArena **out);

/**
 * Writes the bytes a slot buffer for this arena needs to `*total_bytes`, its slot count to
 * `*slots` and the alignment its start needs to `*align`.
 *
 * # Safety
 * `arena` must be a handle from this library or null; the outputs writable.
 */
enum EsStatus es_arena_info(const struct EsArena *arena,
                            size_t *total_bytes,
                            size_t *slots,
                            size_t *align);

/**
 * Writes where projection number `index` of slot `slot` lies in a slot buffer: its byte
 * offset to `*offset` and length to `*length`.
 *
 * # Safety
 * `arena` must be a handle from this library or null; the outputs writable.
 */
enum EsStatus es_arena_projection_range(struct EsArena *arena,
                                        size_t slot,
                                        size_t index,
                                        size_t *offset,
                                        size_t *length);

/**
 * Writes a pointer to projection number `index` of slot `slot` within the caller's slot
 * buffer `buffer` of `length` bytes to `*slab`, and its length to `*slab_length`. `buffer`
 * must start aligned as the arena says, also when it is empty; null stands for an empty buffer
 * (`length` 0) only.
 *
 * # Safety
 * `arena` must be a handle from this library or null; `buffer` readable for `length` bytes;
 * the outputs writable.
 */
enum EsStatus es_arena_slab(struct EsArena *arena,
                            const uint8_t *buffer,
                            size_t length,
                            size_t slot,
                            size_t index,
                            const uint8_t **slab,
                            size_t *slab_length);

/**
 * Frees an arena (null is accepted).
 *
 * An arena placed in caller memory ([`es_arena_init`]) is marked freed: until the memory is
 * reused, using or freeing it again returns `ES_STATUS_WRONG_HANDLE`. An arena the library
 * allocated ([`es_arena_new`]) gives its memory back: using or freeing it again is undefined
 * behaviour, which the library cannot detect.
 * It fails only when `arena` is not a live handle of its kind, and then keeps no text: there is
 * no handle to keep it on.
 *
 * # Safety
 * `arena` must be a handle from this library or null, not used after this call (an arena
 * placed in caller memory may be passed again, and is reported freed).
 */
enum EsStatus es_arena_free(struct EsArena *arena);

/**
 * Fills `*policy` with the deployable policy named `name` (`"tide"`, `"decay"`, `"lru"`,
 * `"lfu"`, `"lru2"`, `"tinylfu"`) and its default settings. `"belady"` needs the future: it is
 * an `ES_STATUS_INVALID_ARGUMENT` here (replay it with [`es_trace_replay`](crate::es_trace_replay)).
 * Takes no handle, so its failures keep no text.
 *
 * # Safety
 * `name` must be a NUL-terminated string or null; `policy` writable.
 */
enum EsStatus es_policy_from_name(const char *name,
                                  struct EsPolicy *policy);

/**
 * Builds a pool of `*config` and writes its handle, allocated by the library, to `*out`.
 * Stepping, migrating and serving it allocate nothing.
 *
 * On failure `message` (when not null) receives at most `message_capacity` bytes of why,
 * NUL-terminated: there is no handle yet to keep it. Every failure writes it, a null or
 * misaligned `config` or `out` included.
 *
 * # Safety
 * `config` readable; `out` writable; `message` writable for `message_capacity` bytes or null.
 */
enum EsStatus es_pool_new(const struct EsPoolConfig *config,
                          struct EsPool **out,
                          char *message,
                          size_t message_capacity);

/**
 * Frees a pool (null is accepted). The library allocated it, so its memory goes back: using or
 * freeing it again is undefined behaviour, which the library cannot detect.
 * It fails only when `pool` is not a live handle of its kind, and then keeps no text: there is
 * no handle to keep it on.
 *
 * # Safety
 * `pool` must be a handle from this library or null, not used after this call.
 */
enum EsStatus es_pool_free(struct EsPool *pool);

/**
 * Writes the pool's expert count to `*experts` and slot count to `*slots`.
 *
 * # Safety
 * `pool` must be a handle from this library or null; the outputs writable.
 */
enum EsStatus es_pool_info(struct EsPool *pool, size_t *experts, size_t *slots);

/**
 * Writes whether `expert` is resident to `*resident` and, when it is, its slot to `*slot`
 * (untouched otherwise).
 *
 * # Safety
 * `pool` must be a handle from this library or null; the outputs writable.
 */
enum EsStatus es_pool_slot_of(struct EsPool *pool, size_t expert, size_t *slot, bool *resident);

/**
 * Writes whether `slot` holds an expert to `*occupied` and, when it does, the expert to
 * `*expert` (untouched otherwise).
 *
 * # Safety
 * `pool` must be a handle from this library or null; the outputs writable.
 */
enum EsStatus es_pool_expert_in(struct EsPool *pool, size_t slot, size_t *expert, bool *occupied);

/**
 * Writes the resident set as bits (bit `e % 32` of word `e / 32` for expert `e`) into `bits`
 * of `words` words; `ES_STATUS_BUFFER_TOO_SMALL` when fewer than `(experts + 31) / 32`.
 *
 * # Safety
 * `pool` must be a handle from this library or null; `bits` writable for `words` words.
 */
enum EsStatus es_pool_resident_bits(struct EsPool *pool, uint32_t *bits, size_t words);

/**
 * Frees slot `slot`, writing the expert it held to `*expert` and whether it held one to
 * `*was_occupied`. For a sink that learns after the fact that a slot's copy failed.
 *
 * # Safety
 * `pool` must be a handle from this library or null; the outputs writable.
 */
enum EsStatus es_pool_demote_slot(struct EsPool *pool,
                                  size_t slot,
                                  size_t *expert,
                                  bool *was_occupied);

/**
 * Writes the pool's counters since it was built to `*stats`.
 *
 * # Safety
 * `pool` must be a handle from this library or null; `stats` writable.
 */
enum EsStatus es_pool_stats(struct EsPool *pool, struct EsPoolStats *stats);

/**
 * Fills `plan` with the pool's initial placement (warm: experts `0..slots`; cold: nothing).
 * Migrating the plan fills the slots.
 *
 * # Safety
 * `pool` and `plan` must be handles from this library or null.
 */
enum EsStatus es_pool_initial_plan(struct EsPool *pool, struct EsPlan *plan);

/**
 * Plans step `*step` from its `count` router ids (top-k per token, flattened) into `plan`,
 * writing whether the layer refreshed to `*refreshed`. [`es_migrate`](crate::es_migrate) and
 * then [`es_pool_serve`] must see the same ids; [`es_step`](crate::es_step) runs all three.
 *
 * # Safety
 * `pool`, `plan` handles from this library or null; `step` readable; `ids` readable for
 * `count` ids; `refreshed` writable.
 */
enum EsStatus es_pool_plan_step(struct EsPool *pool,
                                const struct EsStep *step,
                                const uint32_t *ids,
                                size_t count,
                                struct EsPlan *plan,
                                bool *refreshed);

/**
 * Serves one step's `count` ids against the residency and writes the counts to `*stats`
 * (when not null); they are added to the pool's statistics.
 *
 * # Safety
 * `pool` a handle from this library or null; `ids` readable for `count` ids; `stats`
 * writable or null.
 */
enum EsStatus es_pool_serve(struct EsPool *pool,
                            const uint32_t *ids,
                            size_t count,
                            struct EsServeStats *stats);

/**
 * Builds an empty plan sized for `pool` (it never allocates when used with pools of at most
 * as many slots and experts) and writes its handle, allocated by the library, to `*out`.
 *
 * # Safety
 * `pool` a handle from this library or null; `out` writable.
 */
enum EsStatus es_plan_new(struct EsPool *pool, struct EsPlan **out);

/**
 * Writes the plan's promotion count to `*count`.
 *
 * # Safety
 * `plan` a handle from this library or null; `count` writable.
 */
enum EsStatus es_plan_len(struct EsPlan *plan, size_t *count);

/**
 * Writes promotion number `index` of the plan: the expert to `*expert` and its slot to
 * `*slot`.
 *
 * # Safety
 * `plan` a handle from this library or null; the outputs writable.
 */
enum EsStatus es_plan_promotion(struct EsPlan *plan, size_t index, size_t *expert, size_t *slot);

/**
 * Frees a plan (null is accepted). The library allocated it, so its memory goes back: using or
 * freeing it again is undefined behaviour, which the library cannot detect.
 * It fails only when `plan` is not a live handle of its kind, and then keeps no text: there is
 * no handle to keep it on.
 *
 * # Safety
 * `plan` must be a handle from this library or null, not used after this call.
 */
enum EsStatus es_plan_free(struct EsPlan *plan);

/**
 * Parses a routing trace (the NDJSON format of the core's `trace` module: a header line, then
 * one line per layer and step) from `length` UTF-8 bytes and writes its handle, allocated by
 * the library, to `*out`. On failure `message` (when not null) receives at most
 * `message_capacity` bytes of why, NUL-terminated, a null or misaligned `out` included.
 *
 * # Safety
 * `bytes` readable for `length` bytes; `out` writable; `message` writable for
 * `message_capacity` bytes or null.
 */
enum EsStatus es_trace_parse(const uint8_t *bytes,
                             size_t length,
                             struct EsTrace **out,
                             char *message,
                             size_t message_capacity);

/**
 * Writes the trace's record count (one per layer and step) to `*records` and its header's
 * expert count, layer count and top-k to `*experts`, `*layers` and `*top_k`.
 *
 * # Safety
 * `trace` a handle from this library or null; the outputs writable.
 */
enum EsStatus es_trace_info(struct EsTrace *trace,
                            size_t *records,
                            uint32_t *experts,
                            uint32_t *layers,
                            uint32_t *top_k);

/**
 * Replays the trace with per-layer pools of `slots` slots under the policy named `policy` (a
 * deployable one, `"belady"`, or a reference: `"oracle"`, `"uniform"`, `"markov"` (for few
 * experts per layer; past its limits the replay fails with `ES_STATUS_TRACE_INVALID`), `"optimal"`,
 * `"optimal-shared"`), refreshing on `*schedule`, starting warm, priced by `*cost` (null: no
 * cost, modeled time 0). Writes the counters over all layers to `*stats`.
 *
 * # Safety
 * `trace` a handle from this library or null; `policy` NUL-terminated; `schedule` readable;
 * `cost` readable or null; `stats` writable.
 */
enum EsStatus es_trace_replay(struct EsTrace *trace,
                              const char *policy,
                              size_t slots,
                              const struct EsSchedule *schedule,
                              const struct EsCostModel *cost,
                              struct EsReplayStats *stats);

/**
 * Frees a trace (null is accepted). The library allocated it, so its memory goes back: using or
 * freeing it again is undefined behaviour, which the library cannot detect.
 * It fails only when `trace` is not a live handle of its kind, and then keeps no text: there is
 * no handle to keep it on.
 *
 * # Safety
 * `trace` must be a handle from this library or null, not used after this call.
 */
enum EsStatus es_trace_free(struct EsTrace *trace);

/**
 * Builds a source from C callbacks and writes its handle, allocated by the library, to `*out`.
 * Takes no handle and no message buffer, so its failures keep no text: a null or misaligned
 * `callbacks` or `out`, or a null `expert` callback, is `ES_STATUS_NULL_POINTER` or
 * `ES_STATUS_MISALIGNED` alone.
 *
 * # Safety
 * `callbacks` readable; `out` writable; the callback must keep the contract of
 * [`EsSourceExpertFn`] for the source's life.
 */
enum EsStatus es_source_from_callbacks(const struct EsSourceCallbacks *callbacks,
                                       struct EsSource **out);

/**
 * Builds a source over one layer's stacks in caller memory (flash, a mapped file): `stacks`
 * holds `count` pointers, one per projection of `layout` in its order, each to the whole
 * `[experts, rows, cols]` stack of `lengths[i]` bytes. The bytes are not copied: they must stay
 * valid and unchanged until the source is freed. Writes its handle, allocated by the library,
 * to `*out`; failures are kept on `layout`, null or misaligned `stacks`, `lengths` or `out`
 * included.
 *
 * # Safety
 * `layout` a handle from this library or null; `stacks` and `lengths` readable for `count`
 * elements, each stack readable for its length for the source's life; `out` writable.
 */
enum EsStatus es_source_from_stacks(struct EsExpertLayout *layout,
                                    size_t layer,
                                    const uint8_t *const *stacks,
                                    const size_t *lengths,
                                    size_t count,
                                    struct EsSource **out);

/**
 * Frees a source (null is accepted). The library allocated it, so its memory goes back: using
 * or freeing it again is undefined behaviour, which the library cannot detect.
 * It fails only when `source` is not a live handle of its kind, and then keeps no text: there is
 * no handle to keep it on.
 *
 * # Safety
 * `source` must be a handle from this library or null, not used after this call.
 */
enum EsStatus es_source_free(struct EsSource *source);

/**
 * Builds a sink from C callbacks and writes its handle, allocated by the library, to `*out`.
 * Takes no handle and no message buffer, so its failures keep no text: a null or misaligned
 * `callbacks` or `out`, or a null `write` callback, is `ES_STATUS_NULL_POINTER` or
 * `ES_STATUS_MISALIGNED` alone.
 *
 * # Safety
 * `callbacks` readable; `out` writable; the callbacks must keep the contracts of
 * [`EsSinkWriteFn`] and [`EsSinkFinishFn`] for the sink's life.
 */
enum EsStatus es_sink_from_callbacks(const struct EsSinkCallbacks *callbacks, struct EsSink **out);

/**
 * Builds a sink writing layer `layer`'s slots into the caller's slot buffer `buffer` of
 * `length` bytes as `arena` lays them out (the buffer must hold the arena's total bytes, its
 * start aligned as the arena says), and writes its handle, allocated by the library, to
 * `*out`. The library writes the buffer only during [`es_migrate`] and [`es_step`]. Failures are
 * kept on `arena`, a null `buffer` or `out` included.
 *
 * The buffer's start is checked as given, also when it is empty: an arena of no slots (for a
 * layer served only from slow memory) takes `length` 0 with any `buffer` aligned as it says,
 * or a null `buffer`, which stands for an empty one.
 *
 * # Safety
 * `arena` a handle from this library or null; `buffer` writable for `length` bytes until the
 * sink is freed, and not accessed by C while a migration runs; `out` writable.
 */
enum EsStatus es_sink_from_arena(struct EsArena *arena,
                                 size_t layer,
                                 uint8_t *buffer,
                                 size_t length,
                                 struct EsSink **out);

/**
 * Frees a sink (null is accepted); a slot buffer stays the caller's. The library allocated the
 * sink, so its memory goes back: using or freeing it again is undefined behaviour, which the
 * library cannot detect.
 * It fails only when `sink` is not a live handle of its kind, and then keeps no text: there is
 * no handle to keep it on.
 *
 * # Safety
 * `sink` must be a handle from this library or null, not used after this call.
 */
enum EsStatus es_sink_free(struct EsSink *sink);

/**
 * Copies each promotion of `plan` from `source` into `sink` (write each slab, finish the slot)
 * and commits it to `pool` once copied. Writes what was copied to `*stats` (when not null),
 * also on failure: then the failed promotion's slot is free, every expert the pool holds is in
 * its slot, and migrating the same plan again skips what completed and retries the rest.
 * Allocates nothing.
 *
 * # Safety
 * Handles from this library or null; `stats` writable or null.
 */
enum EsStatus es_migrate(struct EsPool *pool,
                         struct EsPlan *plan,
                         const struct EsExpertLayout *layout,
                         const struct EsSource *source,
                         struct EsSink *sink,
                         struct EsMigrateStats *stats);

/**
 * One step of the pool's layer: plans from the step's `count` ids, migrates the plan's
 * promotions from `source` into `sink`, and serves the ids. Writes the step's counts to
 * `*stats` (when not null), also when a copy failed (the ids were served; the failed
 * promotion's pairs count as served in place, and stepping again retries it). Allocates nothing.
 *
 * # Safety
 * Handles from this library or null; `step` readable; `ids` readable for `count` ids; `stats`
 * writable or null.
 */
enum EsStatus es_step(struct EsPool *pool,
                      const struct EsStep *step,
                      const uint32_t *ids,
                      size_t count,
                      struct EsPlan *plan,
                      const struct EsExpertLayout *layout,
                      const struct EsSource *source,
                      struct EsSink *sink,
                      struct EsStepStats *stats);

#ifdef __cplusplus
}  // extern "C"
#endif  // __cplusplus

#endif  /* EXPERTSLAB_H */
