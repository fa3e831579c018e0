/* The host C test of the expertslab C interface: every function, every status code but
 * ES_STATUS_PANIC (a library bug; the Rust tests check that a panic becomes that code), a
 * failing sink, and the error text every failure keeps. Built by ffi/tests/c_host.rs under AddressSanitizer and UndefinedBehaviorSanitizer;
 * prints "N passed, 0 failed" and exits 0 when everything holds. */

#define _DEFAULT_SOURCE
#include <stdalign.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "expertslab.h"

static int passed, failed;
static int seen[ES_STATUS_PANIC + 1];

#define CHECK(cond)                                                                 \
  do {                                                                              \
    if (cond) {                                                                     \
      passed++;                                                                     \
    } else {                                                                        \
      failed++;                                                                     \
      fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);      \
    }                                                                               \
  } while (0)

/* A call and the status it must return; the status counts as covered. */
#define EXPECT(call, code)                                                          \
  do {                                                                              \
    enum EsStatus got_ = (call);                                                    \
    if ((int)got_ >= 0 && (int)got_ <= ES_STATUS_PANIC) seen[got_] = 1;             \
    if (got_ == (code)) {                                                           \
      passed++;                                                                     \
    } else {                                                                        \
      failed++;                                                                     \
      fprintf(stderr, "%s:%d: %s returned %d, expected %s\n", __FILE__, __LINE__,    \
              #call, (int)got_, #code);                                             \
    }                                                                               \
  } while (0)

#define OK(call) EXPECT(call, ES_STATUS_OK)

/* Whether the last error kept by `handle` contains `part`. */
static int error_mentions(const void *handle, const char *part) {
  char text[ES_ERROR_CAPACITY + 1];
  size_t length = 0;
  if (es_last_error(handle, text, sizeof text, &length) != ES_STATUS_OK) return 0;
  if (strstr(text, part) == NULL) {
    fprintf(stderr, "error text \"%s\" does not mention \"%s\"\n", text, part);
    return 0;
  }
  return 1;
}

/* ---- the README's example: one layer of 4 experts, 2 slots in a buffer of ours ---- */

enum { EXPERTS = 4, ROWS = 2, COLS = 4, SLAB = ROWS * COLS * 4 /* f32 */, SLOTS = 2 };

/* Slow memory: each projection's stack is 4 experts x 32 bytes; expert e's bytes are all e. */
static uint8_t stack_bytes[EXPERTS * SLAB];

/* Fast memory: the slot buffer, 16-byte aligned. */
static alignas(16) uint8_t sram[SLOTS * 3 * SLAB];

static int example(void) {
  for (int e = 0; e < EXPERTS; e++) memset(stack_bytes + e * SLAB, e, SLAB);
  char message[128] = "";

  EsStackLayout stacks[3] = {
      {ES_PROJECTION_GATE, "f32", EXPERTS, ROWS, COLS},
      {ES_PROJECTION_UP, "f32", EXPERTS, ROWS, COLS},
      {ES_PROJECTION_DOWN, "f32", EXPERTS, ROWS, COLS},
  };
  EsExpertLayout *layout = NULL;
  if (es_expert_layout_new(stacks, 3, &layout, message, sizeof message) != ES_STATUS_OK) {
    fprintf(stderr, "layout: %s\n", message);
    return 1;
  }

  /* Two slots, each projection 16-byte aligned, over `sram`. */
  EsArena *arena = NULL;
  EsSink *sink = NULL;
  OK(es_arena_new(layout, SLOTS, 16, &arena));
  OK(es_sink_from_arena(arena, 0, sram, sizeof sram, &sink));

  /* The source reads the stacks where they lie (flash, a mapped file). */
  const uint8_t *pointers[3] = {stack_bytes, stack_bytes, stack_bytes};
  size_t lengths[3] = {sizeof stack_bytes, sizeof stack_bytes, sizeof stack_bytes};
  EsSource *source = NULL;
  OK(es_source_from_stacks(layout, 0, pointers, lengths, 3, &source));

  /* A TIDE pool refreshing every step, warm start (experts 0 and 1). */
  EsPoolConfig config = {.layer = 0, .experts = EXPERTS, .slots = SLOTS};
  OK(es_policy_from_name("tide", &config.policy));
  config.schedule = (EsSchedule){ES_SCHEDULE_KIND_EVERY_FORWARD, 0};
  config.initial = ES_INITIAL_PLACEMENT_WARM;
  EsPool *pool = NULL;
  if (es_pool_new(&config, &pool, message, sizeof message) != ES_STATUS_OK) {
    fprintf(stderr, "pool: %s\n", message);
    return 1;
  }
  EsPlan *plan = NULL;
  OK(es_plan_new(pool, &plan));
  OK(es_pool_initial_plan(pool, plan));
  EsMigrateStats migrated;
  OK(es_migrate(pool, plan, layout, source, sink, &migrated));
  CHECK(migrated.copied == 2 && migrated.bytes_promoted == 2 * 3 * SLAB);

  /* One decode step, two tokens routed top-2: plan, migrate and serve in one call. */
  const uint32_t ids[4] = {3, 1, 3, 2};
  EsStep step = {.index = 0, .prefill = false, .mode = ES_MODE_SCHEDULED};
  EsStepStats stats;
  OK(es_step(pool, &step, ids, 4, plan, layout, source, sink, &stats));
  CHECK(stats.migrated.bytes_promoted == 96); /* expert 3 replaced expert 0: three 32-byte slabs */
  CHECK(stats.served.hits == 1 && stats.served.served_by_copy == 2 && stats.served.served_in_place == 1);

  /* Expert 3's down projection now lies in its slot of `sram`. */
  size_t slot = 0;
  bool resident = false;
  OK(es_pool_slot_of(pool, 3, &slot, &resident));
  const uint8_t *slab = NULL;
  size_t slab_length = 0;
  OK(es_arena_slab(arena, sram, sizeof sram, slot, 2, &slab, &slab_length));
  CHECK(resident && slab_length == SLAB && slab[0] == 3 && slab[SLAB - 1] == 3);

  OK(es_plan_free(plan));
  OK(es_pool_free(pool));
  OK(es_source_free(source));
  OK(es_sink_free(sink));
  OK(es_arena_free(arena));
  OK(es_expert_layout_free(layout));
  return 0;
}

/* ---- C callbacks: a source over `stack_bytes` and a sink that can be told to fail ---- */

typedef struct {
  int fail_code;         /* returned instead of giving bytes when nonzero */
  size_t short_by;       /* gives this many bytes too few */
  int calls;
} SourceState;

static int32_t give_expert(void *context, size_t layer, uint32_t projection, size_t expert,
                           const uint8_t **bytes, size_t *length) {
  SourceState *state = context;
  state->calls++;
  if (state->fail_code != 0) return state->fail_code;
  if (layer != 0 || projection > ES_PROJECTION_DOWN || expert >= EXPERTS) return 99;
  *bytes = stack_bytes + expert * SLAB;
  *length = SLAB - state->short_by;
  return 0;
}

typedef struct {
  uint8_t slots[SLOTS][3][SLAB]; /* the sink's own copy of each slot */
  int writes, finishes;
  int fail_write_at;  /* the write number (1-based) that fails; 0: none */
  int fail_finish_at; /* the finish number (1-based) that fails; 0: none */
} SinkState;

static int32_t write_slab(void *context, const EsSlotWrite *write, const uint8_t *bytes, size_t length) {
  SinkState *state = context;
  state->writes++;
  if (state->writes == state->fail_write_at) return -7;
  if (write->slot >= SLOTS || write->index >= 3 || length != SLAB) return -1;
  memcpy(state->slots[write->slot][write->index], bytes, length);
  return 0;
}

static int32_t finish_slot(void *context, size_t layer, size_t slot) {
  SinkState *state = context;
  state->finishes++;
  (void)layer;
  (void)slot;
  return state->finishes == state->fail_finish_at ? -8 : 0;
}

/* Every resident expert's bytes are in its slot of the sink's copy. */
static int consistent(EsPool *pool, SinkState *sink) {
  for (size_t e = 0; e < EXPERTS; e++) {
    size_t slot = 0;
    bool resident = false;
    if (es_pool_slot_of(pool, e, &slot, &resident) != ES_STATUS_OK) return 0;
    if (!resident) continue;
    for (int i = 0; i < 3; i++)
      for (int b = 0; b < SLAB; b++)
        if (sink->slots[slot][i][b] != e) return 0;
  }
  return 1;
}

static void failing_sink(EsExpertLayout *layout) {
  SourceState source_state = {0};
  EsSourceCallbacks source_callbacks = {&source_state, give_expert};
  EsSource *source = NULL;
  OK(es_source_from_callbacks(&source_callbacks, &source));

  static SinkState state;
  memset(&state, 0xff, sizeof state.slots);
  state.writes = state.finishes = 0;
  state.fail_write_at = 4; /* the first slab of the second promotion */
  state.fail_finish_at = 0;
  EsSinkCallbacks sink_callbacks = {&state, write_slab, finish_slot};
  EsSink *sink = NULL;
  OK(es_sink_from_callbacks(&sink_callbacks, &sink));

  EsPoolConfig config = {.layer = 0, .experts = EXPERTS, .slots = SLOTS};
  OK(es_policy_from_name("lru", &config.policy));
  config.schedule = (EsSchedule){ES_SCHEDULE_KIND_EVERY_FORWARD, 0};
  config.initial = ES_INITIAL_PLACEMENT_WARM;
  EsPool *pool = NULL;
  OK(es_pool_new(&config, &pool, NULL, 0));
  EsPlan *plan = NULL;
  OK(es_plan_new(pool, &plan));
  OK(es_pool_initial_plan(pool, plan));

  /* The second promotion's first write fails: expert 0 is in, expert 1 is not, slot 1 free. */
  EsMigrateStats migrated;
  EXPECT(es_migrate(pool, plan, layout, source, sink, &migrated), ES_STATUS_SINK_FAILED);
  CHECK(migrated.copied == 1 && migrated.skipped == 0 && migrated.bytes_promoted == 3 * SLAB);
  CHECK(error_mentions(pool, "returned -7"));
  size_t slot = 9, expert = 9;
  bool resident = true, occupied = true;
  OK(es_pool_slot_of(pool, 1, &slot, &resident));
  CHECK(!resident);
  OK(es_pool_expert_in(pool, 1, &expert, &occupied));
  CHECK(!occupied);
  CHECK(consistent(pool, &state));

  /* The retry skips expert 0 and copies expert 1: it converges. */
  OK(es_migrate(pool, plan, layout, source, sink, &migrated));
  CHECK(migrated.copied == 1 && migrated.skipped == 1);
  OK(es_migrate(pool, plan, layout, source, sink, &migrated));
  CHECK(migrated.copied == 0 && migrated.skipped == 2);
  CHECK(consistent(pool, &state));

  /* A finish that fails: the step serves its ids from slow memory, the pool stays consistent,
   * stepping again copies the expert. */
  state.fail_finish_at = state.finishes + 1;
  const uint32_t ids[2] = {2, 0};
  EsStep step = {1, false, ES_MODE_SCHEDULED};
  EsStepStats stats;
  EXPECT(es_step(pool, &step, ids, 2, plan, layout, source, sink, &stats), ES_STATUS_SINK_FAILED);
  CHECK(stats.served.hits + stats.served.misses == 2 && stats.served.served_by_copy == 0 && stats.migrated.copied == 0);
  CHECK(error_mentions(pool, "finish callback returned -8"));
  OK(es_pool_slot_of(pool, 2, &slot, &resident));
  CHECK(!resident);
  CHECK(consistent(pool, &state));
  step.index = 2;
  OK(es_step(pool, &step, ids, 2, plan, layout, source, sink, &stats));
  CHECK(stats.served.served_by_copy >= 1 && stats.migrated.copied >= 1);
  OK(es_pool_slot_of(pool, 2, &slot, &resident));
  CHECK(resident);
  CHECK(consistent(pool, &state));

  /* A failing source, and a source giving a short slab. */
  const uint32_t three[1] = {3};
  step.index = 3;
  source_state.fail_code = 5;
  EXPECT(es_step(pool, &step, three, 1, plan, layout, source, sink, &stats), ES_STATUS_SOURCE_FAILED);
  CHECK(error_mentions(pool, "source callback returned 5"));
  source_state.fail_code = 0;
  source_state.short_by = 1;
  step.index = 4;
  EXPECT(es_step(pool, &step, three, 1, plan, layout, source, sink, &stats), ES_STATUS_SOURCE_FAILED);
  source_state.short_by = 0;
  CHECK(consistent(pool, &state));

  /* Demoting a slot by hand (a copy found failed after the fact). The failed steps' victims
   * were demoted and their slots left free; one slot still holds an expert. */
  size_t held = EXPERTS;
  for (slot = 0; slot < SLOTS && held == EXPERTS; slot++) {
    OK(es_pool_expert_in(pool, slot, &expert, &occupied));
    if (occupied) held = expert;
  }
  CHECK(held < EXPERTS);
  slot--;
  OK(es_pool_demote_slot(pool, slot, &expert, &occupied));
  CHECK(occupied && expert == held);
  OK(es_pool_slot_of(pool, held, &slot, &resident));
  CHECK(!resident);
  OK(es_pool_demote_slot(pool, slot, &expert, &occupied));
  CHECK(!occupied);
  EXPECT(es_pool_demote_slot(pool, SLOTS, &expert, &occupied), ES_STATUS_OUT_OF_RANGE);

  EsPoolStats totals;
  OK(es_pool_stats(pool, &totals));
  CHECK(totals.served.hits + totals.served.misses == 2 + 2 + 1 + 1 &&
        totals.served.misses == totals.served.served_by_copy + totals.served.served_in_place);

  OK(es_plan_free(plan));
  OK(es_pool_free(pool));
  OK(es_source_free(source));
  OK(es_sink_free(sink));
}

/* ---- a prompt's slots to its busiest experts ---- */

/* The experts (one bit each) that LRU with 2 free slots promotes for a prompt routing 0 and 1
 * once, 2 three times and 3 twice, admitting misses in `order`. */
static unsigned prompt_promotions(uint32_t order) {
  EsPoolConfig config = {.layer = 0, .experts = 8, .slots = 2, .miss_order = order};
  OK(es_policy_from_name("lru", &config.policy));
  config.initial = ES_INITIAL_PLACEMENT_COLD;
  EsPool *pool = NULL;
  OK(es_pool_new(&config, &pool, NULL, 0));
  EsPlan *plan = NULL;
  OK(es_plan_new(pool, &plan));
  const uint32_t ids[7] = {0, 2, 2, 3, 2, 3, 1};
  EsStep step = {0, true, ES_MODE_SCHEDULED};
  bool refreshed = false;
  OK(es_pool_plan_step(pool, &step, ids, 7, plan, &refreshed));
  size_t count = 0;
  unsigned promoted = 0;
  OK(es_plan_len(plan, &count));
  for (size_t i = 0; i < count; i++) {
    size_t expert = 0, slot = 0;
    OK(es_plan_promotion(plan, i, &expert, &slot));
    promoted |= 1u << expert;
  }
  OK(es_plan_free(plan));
  OK(es_pool_free(pool));
  return promoted;
}

static void busiest_first(void) {
  CHECK(prompt_promotions(ES_MISS_ORDER_ROUTING) == ((1u << 0) | (1u << 2))); /* first routed */
  CHECK(prompt_promotions(ES_MISS_ORDER_BUSIEST) == ((1u << 2) | (1u << 3))); /* most pairs */
}

/* ---- every policy, the plan and the pool's queries ---- */

static void policies_and_pools(void) {
  static const char *names[] = {"tide", "decay", "lru", "lfu", "lru2", "tinylfu"};
  static const uint32_t kinds[] = {ES_POLICY_KIND_TIDE, ES_POLICY_KIND_DECAY, ES_POLICY_KIND_LRU,
                                   ES_POLICY_KIND_LFU, ES_POLICY_KIND_LRU2, ES_POLICY_KIND_TINYLFU};
  for (int p = 0; p < 6; p++) {
    EsPoolConfig config = {.layer = 0, .experts = 8, .slots = 3};
    OK(es_policy_from_name(names[p], &config.policy));
    CHECK(config.policy.kind == kinds[p]);
    config.schedule = (EsSchedule){ES_SCHEDULE_KIND_EVERY_DECODE_STEPS, 2};
    config.initial = ES_INITIAL_PLACEMENT_COLD;
    EsPool *pool = NULL;
    OK(es_pool_new(&config, &pool, NULL, 0));
    EsPlan *plan = NULL;
    OK(es_plan_new(pool, &plan));
    size_t experts = 0, slots = 0, count = 9;
    OK(es_pool_info(pool, &experts, &slots));
    CHECK(experts == 8 && slots == 3);
    OK(es_pool_initial_plan(pool, plan));
    OK(es_plan_len(plan, &count));
    CHECK(count == 0); /* cold */

    const uint32_t ids[6] = {5, 6, 5, 7, 5, 6};
    EsStep step = {0, true, ES_MODE_SCHEDULED};
    bool refreshed = false;
    OK(es_pool_plan_step(pool, &step, ids, 6, plan, &refreshed));
    CHECK(refreshed);
    OK(es_plan_len(plan, &count));
    CHECK(count >= 1 && count <= 3);
    for (size_t i = 0; i < count; i++) {
      size_t expert = 0, slot = 0;
      OK(es_plan_promotion(plan, i, &expert, &slot));
      CHECK(expert >= 5 && expert <= 7 && slot < 3);
    }
    size_t expert = 0, slot = 0;
    EXPECT(es_plan_promotion(plan, count, &expert, &slot), ES_STATUS_OUT_OF_RANGE);
    CHECK(error_mentions(plan, "promotion"));
    /* Serving without migrating: nothing was copied, every pair is served in place. */
    EsServeStats served;
    OK(es_pool_serve(pool, ids, 6, &served));
    CHECK(served.hits == 0 && served.misses == 6 && served.served_in_place == 6);
    OK(es_pool_serve(pool, ids, 6, NULL));
    uint32_t bits[1] = {0xffffffffu};
    OK(es_pool_resident_bits(pool, bits, 1));
    CHECK(bits[0] == 0);
    EXPECT(es_pool_resident_bits(pool, bits, 0), ES_STATUS_BUFFER_TOO_SMALL);
    OK(es_plan_free(plan));
    OK(es_pool_free(pool));
  }

  /* Policy settings out of range, names unknown or not deployable, enum values outside. */
  EsPolicy policy;
  EXPECT(es_policy_from_name("nope", &policy), ES_STATUS_INVALID_ARGUMENT);
  EXPECT(es_policy_from_name("belady", &policy), ES_STATUS_INVALID_ARGUMENT);
  EXPECT(es_policy_from_name(NULL, &policy), ES_STATUS_NULL_POINTER);
  EXPECT(es_policy_from_name("\xff", &policy), ES_STATUS_INVALID_ARGUMENT);
  EsPoolConfig config = {.layer = 0, .experts = 8, .slots = 3};
  OK(es_policy_from_name("decay", &config.policy));
  config.policy.half_life = -1.0f;
  char message[96] = "";
  EsPool *pool = NULL;
  EXPECT(es_pool_new(&config, &pool, message, sizeof message), ES_STATUS_INVALID_ARGUMENT);
  CHECK(strstr(message, "half-life") != NULL && pool == NULL);
  OK(es_policy_from_name("tinylfu", &config.policy));
  config.policy.threshold = -1.0f;
  EXPECT(es_pool_new(&config, &pool, message, sizeof message), ES_STATUS_INVALID_ARGUMENT);
  OK(es_policy_from_name("tide", &config.policy));
  config.policy.kind = 77;
  EXPECT(es_pool_new(&config, &pool, message, sizeof message), ES_STATUS_INVALID_ARGUMENT);
  OK(es_policy_from_name("tide", &config.policy));
  config.schedule = (EsSchedule){ES_SCHEDULE_KIND_EVERY_DENOISE_STEPS, 0};
  EXPECT(es_pool_new(&config, &pool, message, sizeof message), ES_STATUS_INVALID_ARGUMENT);
  CHECK(strstr(message, "interval") != NULL);
  config.schedule = (EsSchedule){9, 1};
  EXPECT(es_pool_new(&config, &pool, message, sizeof message), ES_STATUS_INVALID_ARGUMENT);
  config.schedule = (EsSchedule){ES_SCHEDULE_KIND_EVERY_FORWARD, 0};
  config.initial = 5;
  EXPECT(es_pool_new(&config, &pool, message, sizeof message), ES_STATUS_INVALID_ARGUMENT);
  config.initial = ES_INITIAL_PLACEMENT_WARM;
  config.miss_order = 2;
  EXPECT(es_pool_new(&config, &pool, message, sizeof message), ES_STATUS_INVALID_ARGUMENT);
  CHECK(strstr(message, "EsMissOrder") != NULL && pool == NULL);
  config.miss_order = ES_MISS_ORDER_ROUTING;
  config.experts = 0;
  EXPECT(es_pool_new(&config, &pool, message, sizeof message), ES_STATUS_INVALID_ARGUMENT);
  config.experts = 8;
  EXPECT(es_pool_new(NULL, &pool, message, sizeof message), ES_STATUS_NULL_POINTER);
  EXPECT(es_pool_new(&config, NULL, message, sizeof message), ES_STATUS_NULL_POINTER);
  OK(es_pool_new(&config, &pool, NULL, 0));

  /* Out-of-range ids and modes, null and misaligned outputs. */
  size_t slot = 0, expert = 0;
  bool flag = false;
  EXPECT(es_pool_slot_of(pool, 8, &slot, &flag), ES_STATUS_OUT_OF_RANGE);
  CHECK(error_mentions(pool, "expert 8"));
  EXPECT(es_pool_expert_in(pool, 3, &expert, &flag), ES_STATUS_OUT_OF_RANGE);
  EXPECT(es_pool_slot_of(pool, 0, NULL, &flag), ES_STATUS_NULL_POINTER);
  alignas(8) unsigned char raw[2 * sizeof(size_t)];
  EXPECT(es_pool_info(pool, (size_t *)(void *)(raw + 1), &slot), ES_STATUS_MISALIGNED);
  EsPlan *plan = NULL;
  OK(es_plan_new(pool, &plan));
  EsStep step = {0, false, 3};
  const uint32_t ids[2] = {1, 2};
  EXPECT(es_pool_plan_step(pool, &step, ids, 2, plan, &flag), ES_STATUS_INVALID_ARGUMENT);
  step.mode = ES_MODE_REUSE;
  OK(es_pool_plan_step(pool, &step, ids, 2, plan, &flag));
  CHECK(!flag);
  step.mode = ES_MODE_REFRESH;
  EXPECT(es_pool_plan_step(pool, &step, NULL, 2, plan, &flag), ES_STATUS_NULL_POINTER);
  OK(es_pool_plan_step(pool, &step, NULL, 0, plan, &flag));

  /* More ids than a step takes (2^29 + 1, in untouched pages). */
  size_t too_many = ((size_t)1 << 29) + 1;
  void *pages = mmap(NULL, too_many * sizeof(uint32_t), PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  CHECK(pages != MAP_FAILED);
  if (pages != MAP_FAILED) {
    EXPECT(es_pool_plan_step(pool, &step, pages, too_many, plan, &flag), ES_STATUS_TOO_MANY_IDS);
    CHECK(error_mentions(pool, "ids"));
    munmap(pages, too_many * sizeof(uint32_t));
  }

  /* Handles of the wrong kind. */
  EXPECT(es_pool_info((EsPool *)(void *)plan, &expert, &slot), ES_STATUS_WRONG_HANDLE);
  EXPECT(es_pool_initial_plan(pool, (EsPlan *)(void *)pool), ES_STATUS_WRONG_HANDLE);
  CHECK(error_mentions(pool, "plan handle"));
  EXPECT(es_plan_len((EsPlan *)(void *)pool, &slot), ES_STATUS_WRONG_HANDLE);
  EXPECT(es_pool_free((EsPool *)(void *)plan), ES_STATUS_WRONG_HANDLE);
  EXPECT(es_pool_stats(NULL, NULL), ES_STATUS_NULL_POINTER);
  OK(es_plan_free(plan));
  OK(es_pool_free(pool));
  OK(es_pool_free(NULL));
}

/* ---- layouts and arenas in our own memory, and their errors ---- */

static alignas(64) unsigned char layout_memory[1024];
static alignas(64) unsigned char arena_memory[1024];

static void layouts_and_arenas(EsExpertLayout **kept) {
  size_t size = 0, align = 0;
  OK(es_handle_footprint(ES_KIND_EXPERT_LAYOUT, &size, &align));
  CHECK(size <= sizeof layout_memory && align <= 64);
  OK(es_handle_footprint(ES_KIND_ARENA, &size, &align));
  CHECK(size <= sizeof arena_memory && align <= 64);
  EXPECT(es_handle_footprint(ES_KIND_POOL, &size, &align), ES_STATUS_INVALID_ARGUMENT);
  EXPECT(es_handle_footprint(99, &size, &align), ES_STATUS_OUT_OF_RANGE);

  EsStackLayout stacks[3] = {
      {ES_PROJECTION_GATE, "f32", EXPERTS, ROWS, COLS},
      {ES_PROJECTION_UP, "f32", EXPERTS, ROWS, COLS},
      {ES_PROJECTION_DOWN, "f32", EXPERTS, ROWS, COLS},
  };
  char message[96];
  EsExpertLayout *layout = NULL;
  EXPECT(es_expert_layout_init(layout_memory, 1, stacks, 3, &layout, message, sizeof message), ES_STATUS_BUFFER_TOO_SMALL);
  EXPECT(es_expert_layout_init(layout_memory + 1, sizeof layout_memory - 1, stacks, 3, &layout, message, sizeof message),
         ES_STATUS_MISALIGNED);
  OK(es_expert_layout_init(layout_memory, sizeof layout_memory, stacks, 3, &layout, message, sizeof message));
  CHECK((void *)layout == (void *)layout_memory);
  size_t experts = 0, projections = 0, expert_bytes = 0;
  OK(es_expert_layout_info(layout, &experts, &projections, &expert_bytes));
  CHECK(experts == EXPERTS && projections == 3 && expert_bytes == 3 * SLAB);
  size_t row_bytes = 0;
  OK(es_expert_layout_row_bytes(layout, 2, &row_bytes));
  CHECK(row_bytes == COLS * sizeof(float));
  EXPECT(es_expert_layout_row_bytes(layout, 3, &row_bytes), ES_STATUS_OUT_OF_RANGE);
  CHECK(error_mentions(layout, "projection 3 of a layout of 3"));
  EXPECT(es_expert_layout_row_bytes(layout, 0, NULL), ES_STATUS_NULL_POINTER);

  EsArena *arena = NULL;
  OK(es_arena_init(arena_memory, sizeof arena_memory, layout, SLOTS, 16, &arena));
  size_t total = 0, slots = 0;
  OK(es_arena_info(arena, &total, &slots, &align));
  CHECK(total == sizeof sram && slots == SLOTS && align == 16);
  size_t offset = 0, length = 0;
  OK(es_arena_projection_range(arena, 1, 2, &offset, &length));
  CHECK(offset == 5 * SLAB && length == SLAB);
  EXPECT(es_arena_projection_range(arena, SLOTS, 0, &offset, &length), ES_STATUS_OUT_OF_RANGE);
  CHECK(error_mentions(arena, "slot"));
  const uint8_t *slab = NULL;
  EXPECT(es_arena_slab(arena, sram, sizeof sram - 1, 0, 0, &slab, &length), ES_STATUS_BUFFER_TOO_SMALL);
  static alignas(16) uint8_t spare[sizeof sram + 16];
  EXPECT(es_arena_slab(arena, spare + 1, sizeof sram, 0, 0, &slab, &length), ES_STATUS_MISALIGNED);
  EsSink *sink = NULL;
  EXPECT(es_sink_from_arena(arena, 0, sram, 8, &sink), ES_STATUS_BUFFER_TOO_SMALL);
  EXPECT(es_sink_from_arena(arena, 0, spare + 1, sizeof sram, &sink), ES_STATUS_MISALIGNED);
  EXPECT(es_arena_new(layout, 2, 3, &arena), ES_STATUS_INVALID_ARGUMENT);
  CHECK(error_mentions(layout, "power of two"));

  /* Bad layouts: unknown format, bad projection number, no stacks, experts that disagree. */
  EsExpertLayout *bad = NULL;
  EsStackLayout wrong[2] = {{ES_PROJECTION_GATE, "f33", 4, 2, 4}, {ES_PROJECTION_DOWN, "f32", 4, 2, 4}};
  EXPECT(es_expert_layout_new(wrong, 2, &bad, message, sizeof message), ES_STATUS_INVALID_ARGUMENT);
  CHECK(strstr(message, "f33") != NULL);
  wrong[0].format = "f32";
  wrong[0].projection = 7;
  EXPECT(es_expert_layout_new(wrong, 2, &bad, message, sizeof message), ES_STATUS_INVALID_ARGUMENT);
  wrong[0].projection = ES_PROJECTION_GATE_UP;
  wrong[1].experts = 5;
  EXPECT(es_expert_layout_new(wrong, 2, &bad, message, sizeof message), ES_STATUS_INVALID_ARGUMENT);
  EXPECT(es_expert_layout_new(wrong, 0, &bad, message, sizeof message), ES_STATUS_OUT_OF_RANGE);
  EXPECT(es_expert_layout_new(NULL, 2, &bad, message, sizeof message), ES_STATUS_NULL_POINTER);
  wrong[1].experts = 4;
  /* A quantized stack: 64 columns of q8_0 are two blocks of 32 elements in 34 bytes. */
  wrong[1].format = "q8_0";
  wrong[1].cols = 64;
  OK(es_expert_layout_new(wrong, 2, &bad, NULL, 0));
  OK(es_expert_layout_row_bytes(bad, 1, &row_bytes));
  CHECK(row_bytes == 68);
  OK(es_expert_layout_row_bytes(bad, 0, &row_bytes));
  CHECK(row_bytes == 4 * sizeof(float));
  OK(es_expert_layout_free(bad));

  /* Sources over stacks: the wrong count, a short stack, a null stack. */
  EsSource *source = NULL;
  const uint8_t *pointers[3] = {stack_bytes, stack_bytes, stack_bytes};
  size_t lengths[3] = {sizeof stack_bytes, sizeof stack_bytes, sizeof stack_bytes - 1};
  EXPECT(es_source_from_stacks(layout, 0, pointers, lengths, 2, &source), ES_STATUS_OUT_OF_RANGE);
  EXPECT(es_source_from_stacks(layout, 0, pointers, lengths, 3, &source), ES_STATUS_BUFFER_TOO_SMALL);
  pointers[1] = NULL;
  lengths[2] = sizeof stack_bytes;
  EXPECT(es_source_from_stacks(layout, 0, pointers, lengths, 3, &source), ES_STATUS_NULL_POINTER);
  EsSourceCallbacks no_source = {NULL, NULL};
  EXPECT(es_source_from_callbacks(&no_source, &source), ES_STATUS_NULL_POINTER);
  EsSinkCallbacks no_sink = {NULL, NULL, NULL};
  EXPECT(es_sink_from_callbacks(&no_sink, &sink), ES_STATUS_NULL_POINTER);

  /* The arena placed in our memory is freed; its memory then holds no handle. */
  OK(es_arena_free(arena));
  EXPECT(es_arena_info(arena, &total, &slots, &align), ES_STATUS_WRONG_HANDLE);
  EXPECT(es_arena_free(arena), ES_STATUS_WRONG_HANDLE);
  *kept = layout;
}

/* ---- plans of another pool, the stack source's layer ---- */

static void plan_mismatch(EsExpertLayout *layout) {
  EsPoolConfig config = {.layer = 1, .experts = EXPERTS, .slots = SLOTS};
  OK(es_policy_from_name("tide", &config.policy));
  config.schedule = (EsSchedule){ES_SCHEDULE_KIND_EVERY_FORWARD, 0};
  config.initial = ES_INITIAL_PLACEMENT_WARM;
  EsPool *other = NULL, *pool = NULL;
  OK(es_pool_new(&config, &other, NULL, 0));
  config.layer = 0;
  OK(es_pool_new(&config, &pool, NULL, 0));
  EsPlan *plan = NULL;
  OK(es_plan_new(other, &plan));
  OK(es_pool_initial_plan(other, plan));

  const uint8_t *pointers[3] = {stack_bytes, stack_bytes, stack_bytes};
  size_t lengths[3] = {sizeof stack_bytes, sizeof stack_bytes, sizeof stack_bytes};
  EsSource *source = NULL;
  OK(es_source_from_stacks(layout, 0, pointers, lengths, 3, &source));
  static SinkState state;
  EsSinkCallbacks callbacks = {&state, write_slab, NULL};
  EsSink *sink = NULL;
  OK(es_sink_from_callbacks(&callbacks, &sink));
  EsMigrateStats migrated;
  EXPECT(es_migrate(pool, plan, layout, source, sink, &migrated), ES_STATUS_PLAN_MISMATCH);
  CHECK(migrated.copied == 0);
  /* The layer-1 pool asks the layer-0 source. */
  EXPECT(es_migrate(other, plan, layout, source, sink, NULL), ES_STATUS_SOURCE_FAILED);
  CHECK(error_mentions(other, "layer 1"));
  EXPECT(es_migrate(pool, plan, layout, (EsSource *)(void *)sink, sink, NULL), ES_STATUS_WRONG_HANDLE);
  CHECK(error_mentions(pool, "source handle"));
  EXPECT(es_step(pool, NULL, NULL, 0, plan, layout, source, sink, NULL), ES_STATUS_NULL_POINTER);
  OK(es_plan_free(plan));
  OK(es_pool_free(other));
  OK(es_pool_free(pool));
  OK(es_source_free(source));
  OK(es_sink_free(sink));
  OK(es_source_free(NULL));
  OK(es_sink_free(NULL));
}

/* ---- trace replay, against stepping a pool through the same ids ---- */

static const char trace_text[] =
    "{\"format\":\"expertslab-trace\",\"version\":1,\"experts\":4,\"layers\":1,\"top_k\":2}\n"
    "{\"layer\":0,\"step\":0,\"prefill\":true,\"ids\":[3,1,3,2]}\n"
    "{\"layer\":0,\"step\":1,\"prefill\":false,\"ids\":[2,3]}\n"
    "{\"layer\":0,\"step\":2,\"prefill\":false,\"ids\":[0,3,1,3]}\n";

static void trace_replay(EsExpertLayout *layout) {
  char message[128] = "";
  EsTrace *trace = NULL;
  OK(es_trace_parse((const uint8_t *)trace_text, sizeof trace_text - 1, &trace, message, sizeof message));
  size_t records = 0;
  uint32_t experts = 0, layers = 0, top_k = 0;
  OK(es_trace_info(trace, &records, &experts, &layers, &top_k));
  CHECK(records == 3 && experts == 4 && layers == 1 && top_k == 2);

  EsSchedule every = {ES_SCHEDULE_KIND_EVERY_FORWARD, 0};
  EsCostModel cost = {3 * SLAB, 1e-3, 1e6};
  EsReplayStats tide, lru, optimal, markov;
  OK(es_trace_replay(trace, "tide", SLOTS, &every, &cost, &tide));
  OK(es_trace_replay(trace, "lru", SLOTS, &every, NULL, &lru));
  OK(es_trace_replay(trace, "optimal", SLOTS, &every, &cost, &optimal));
  OK(es_trace_replay(trace, "markov", SLOTS, &every, &cost, &markov));
  CHECK(tide.served.hits + tide.served.misses == 10 && lru.served.hits + lru.served.misses == 10);
  CHECK(tide.modeled_time_s > 0.0 && lru.modeled_time_s == 0.0);
  CHECK(optimal.modeled_time_s <= tide.modeled_time_s);
  /* The Markov reference sees no future: never below the optimum. */
  CHECK(markov.served.hits + markov.served.misses == 10 && markov.modeled_time_s >= optimal.modeled_time_s);

  /* The same ids stepped through a TIDE pool count the same hits and misses. */
  EsPoolConfig config = {.layer = 0, .experts = EXPERTS, .slots = SLOTS};
  OK(es_policy_from_name("tide", &config.policy));
  config.schedule = every;
  config.initial = ES_INITIAL_PLACEMENT_WARM;
  EsPool *pool = NULL;
  OK(es_pool_new(&config, &pool, NULL, 0));
  EsPlan *plan = NULL;
  OK(es_plan_new(pool, &plan));
  const uint8_t *pointers[3] = {stack_bytes, stack_bytes, stack_bytes};
  size_t lengths[3] = {sizeof stack_bytes, sizeof stack_bytes, sizeof stack_bytes};
  EsSource *source = NULL;
  OK(es_source_from_stacks(layout, 0, pointers, lengths, 3, &source));
  static SinkState state;
  EsSinkCallbacks callbacks = {&state, write_slab, finish_slot};
  state.fail_write_at = state.fail_finish_at = 0;
  EsSink *sink = NULL;
  OK(es_sink_from_callbacks(&callbacks, &sink));
  OK(es_pool_initial_plan(pool, plan));
  OK(es_migrate(pool, plan, layout, source, sink, NULL));
  const uint32_t steps[3][4] = {{3, 1, 3, 2}, {2, 3, 0, 0}, {0, 3, 1, 3}};
  const size_t counts[3] = {4, 2, 4};
  for (int s = 0; s < 3; s++) {
    EsStep step = {(uint64_t)s, s == 0, ES_MODE_SCHEDULED};
    OK(es_step(pool, &step, steps[s], counts[s], plan, layout, source, sink, NULL));
  }
  EsPoolStats stats;
  OK(es_pool_stats(pool, &stats));
  CHECK(stats.served.hits == tide.served.hits && stats.served.served_by_copy == tide.served.served_by_copy &&
        stats.served.served_in_place == tide.served.served_in_place);
  CHECK(consistent(pool, &state));

  /* Errors: a replay that cannot run, unknown names, a trace that does not parse. */
  EXPECT(es_trace_replay(trace, "tide", SLOTS, &every, NULL, NULL), ES_STATUS_NULL_POINTER);
  EXPECT(es_trace_replay(trace, "nope", SLOTS, &every, NULL, &lru), ES_STATUS_INVALID_ARGUMENT);
  CHECK(error_mentions(trace, "nope"));
  EsSchedule zero = {ES_SCHEDULE_KIND_EVERY_DECODE_STEPS, 0};
  EXPECT(es_trace_replay(trace, "tide", SLOTS, &zero, NULL, &lru), ES_STATUS_INVALID_ARGUMENT);
  EXPECT(es_trace_replay(trace, "tide", 70000, &every, NULL, &lru), ES_STATUS_OK);
  EsTrace *bad = NULL;
  static const char broken[] = "{\"format\":\"expertslab-trace\",\"version\":1,\"experts\":4,\"layers\":1,\"top_k\":2}\n{\"layer\":5}\n";
  EXPECT(es_trace_parse((const uint8_t *)broken, sizeof broken - 1, &bad, message, sizeof message), ES_STATUS_TRACE_INVALID);
  CHECK(strstr(message, "line") != NULL && bad == NULL);
  static const char wide[] =
      "{\"format\":\"expertslab-trace\",\"version\":1,\"experts\":70000,\"layers\":1,\"top_k\":1}\n"
      "{\"layer\":0,\"step\":0,\"prefill\":true,\"ids\":[1]}\n";
  EsTrace *too_wide = NULL;
  OK(es_trace_parse((const uint8_t *)wide, sizeof wide - 1, &too_wide, message, sizeof message));
  EXPECT(es_trace_replay(too_wide, "tide", 2, &every, NULL, &lru), ES_STATUS_TRACE_INVALID);
  CHECK(error_mentions(too_wide, "layer 0"));
  EXPECT(es_trace_parse((const uint8_t *)"\xff", 1, &bad, message, sizeof message), ES_STATUS_INVALID_ARGUMENT);

  OK(es_trace_free(trace));
  OK(es_trace_free(too_wide));
  OK(es_trace_free(NULL));
  OK(es_plan_free(plan));
  OK(es_pool_free(pool));
  OK(es_source_free(source));
  OK(es_sink_free(sink));
}

/* ---- every failure keeps its text: on the call's first handle, or in a constructor's message.
 * Each failure below follows one with another text, so a failure that kept none would leave
 * that text and fail its check. ---- */

static alignas(64) unsigned char placed_layout[1024];
static alignas(64) unsigned char placed_arena[1024];
static alignas(64) uint8_t empty_buffer[64];

static void error_texts(EsExpertLayout *layout) {
  EsStackLayout stacks[3] = {
      {ES_PROJECTION_GATE, "f32", EXPERTS, ROWS, COLS},
      {ES_PROJECTION_UP, "f32", EXPERTS, ROWS, COLS},
      {ES_PROJECTION_DOWN, "f32", EXPERTS, ROWS, COLS},
  };

  /* The pool: outputs and steps refused after an out-of-range expert. */
  EsPoolConfig config = {.layer = 0, .experts = 16, .slots = 4};
  OK(es_policy_from_name("tide", &config.policy));
  config.schedule = (EsSchedule){ES_SCHEDULE_KIND_EVERY_FORWARD, 0};
  config.initial = ES_INITIAL_PLACEMENT_WARM;
  EsPool *pool = NULL;
  OK(es_pool_new(&config, &pool, NULL, 0));
  size_t slot = 0, experts = 0;
  bool resident = false;
  EXPECT(es_pool_slot_of(pool, 999, &slot, &resident), ES_STATUS_OUT_OF_RANGE);
  CHECK(error_mentions(pool, "expert 999 of a pool of 16"));
  EXPECT(es_pool_stats(pool, NULL), ES_STATUS_NULL_POINTER);
  CHECK(error_mentions(pool, "`stats` is null"));
  EXPECT(es_pool_slot_of(pool, 0, NULL, &resident), ES_STATUS_NULL_POINTER);
  CHECK(error_mentions(pool, "`slot` is null"));
  alignas(8) unsigned char raw[2 * sizeof(size_t)];
  EXPECT(es_pool_info(pool, (size_t *)(void *)(raw + 1), &slot), ES_STATUS_MISALIGNED);
  CHECK(error_mentions(pool, "`experts` is not aligned to"));
  EsPlan *plan = NULL;
  OK(es_plan_new(pool, &plan));
  const uint32_t ids[2] = {1, 2};
  bool refreshed = false;
  EXPECT(es_pool_plan_step(pool, NULL, ids, 2, plan, &refreshed), ES_STATUS_NULL_POINTER);
  CHECK(error_mentions(pool, "`step` is null"));
  EXPECT(es_plan_new(pool, NULL), ES_STATUS_NULL_POINTER);
  CHECK(error_mentions(pool, "`out` is null"));

  /* The plan. A call refused for its first handle keeps no text: the plan's stays. */
  size_t expert = 0, count = 0;
  EXPECT(es_plan_promotion(plan, 99, &expert, &slot), ES_STATUS_OUT_OF_RANGE);
  CHECK(error_mentions(plan, "promotion 99"));
  EXPECT(es_plan_len(plan, NULL), ES_STATUS_NULL_POINTER);
  CHECK(error_mentions(plan, "`count` is null"));
  EXPECT(es_pool_info((EsPool *)(void *)plan, &experts, &slot), ES_STATUS_WRONG_HANDLE);
  CHECK(error_mentions(plan, "`count` is null"));
  EXPECT(es_pool_initial_plan(pool, (EsPlan *)(void *)pool), ES_STATUS_WRONG_HANDLE);
  CHECK(error_mentions(pool, "`plan` is a pool handle, not a plan handle"));
  (void)count;

  /* The layout: outputs, caller memory and stacks. */
  size_t row_bytes = 0;
  EXPECT(es_expert_layout_row_bytes(layout, 3, &row_bytes), ES_STATUS_OUT_OF_RANGE);
  CHECK(error_mentions(layout, "projection 3 of a layout of 3"));
  EXPECT(es_expert_layout_row_bytes(layout, 0, NULL), ES_STATUS_NULL_POINTER);
  CHECK(error_mentions(layout, "`row_bytes` is null"));
  EXPECT(es_expert_layout_info(layout, NULL, &slot, &expert), ES_STATUS_NULL_POINTER);
  CHECK(error_mentions(layout, "`experts` is null"));
  EsArena *arena = NULL;
  EXPECT(es_arena_init(placed_arena + 1, sizeof placed_arena - 1, layout, SLOTS, 16, &arena), ES_STATUS_MISALIGNED);
  CHECK(error_mentions(layout, "`memory` is not aligned to"));
  EXPECT(es_arena_init(placed_arena, 8, layout, SLOTS, 16, &arena), ES_STATUS_BUFFER_TOO_SMALL);
  CHECK(error_mentions(layout, "`memory` holds 8 bytes"));
  EXPECT(es_arena_new(layout, 4, 64, NULL), ES_STATUS_NULL_POINTER);
  CHECK(error_mentions(layout, "`out` is null"));
  EsSource *source = NULL;
  size_t lengths[3] = {sizeof stack_bytes, sizeof stack_bytes, sizeof stack_bytes};
  EXPECT(es_source_from_stacks(layout, 0, NULL, lengths, 3, &source), ES_STATUS_NULL_POINTER);
  CHECK(error_mentions(layout, "`stacks` is null"));
  const uint8_t *pointers[3] = {stack_bytes, NULL, stack_bytes};
  EXPECT(es_source_from_stacks(layout, 0, pointers, lengths, 3, &source), ES_STATUS_NULL_POINTER);
  CHECK(error_mentions(layout, "stack 1 is null"));

  /* The arena: outputs and the slot buffer. */
  OK(es_arena_new(layout, SLOTS, 16, &arena));
  size_t offset = 0, length = 0, total = 0, align = 0;
  EXPECT(es_arena_projection_range(arena, SLOTS, 0, &offset, &length), ES_STATUS_OUT_OF_RANGE);
  CHECK(error_mentions(arena, "slot"));
  EXPECT(es_arena_projection_range(arena, 0, 0, NULL, &length), ES_STATUS_NULL_POINTER);
  CHECK(error_mentions(arena, "`offset` is null"));
  EXPECT(es_arena_info(arena, NULL, &slot, &align), ES_STATUS_NULL_POINTER);
  CHECK(error_mentions(arena, "`total_bytes` is null"));
  OK(es_arena_info(arena, &total, &slot, &align));
  EsSink *sink = NULL;
  EXPECT(es_sink_from_arena(arena, 0, NULL, total, &sink), ES_STATUS_NULL_POINTER);
  CHECK(error_mentions(arena, "`buffer` is null"));
  EXPECT(es_sink_from_arena(arena, 0, sram, sizeof sram, NULL), ES_STATUS_NULL_POINTER);
  CHECK(error_mentions(arena, "`out` is null"));
  const uint8_t *slab = NULL;
  EXPECT(es_arena_slab(arena, sram, sizeof sram, 0, 0, NULL, &length), ES_STATUS_NULL_POINTER);
  CHECK(error_mentions(arena, "`slab` is null"));
  OK(es_arena_free(arena));
  (void)slab;

  /* Constructors write why to their message, whatever failed. */
  char message[128];
  EsExpertLayout *placed = NULL;
  strcpy(message, "untouched");
  EXPECT(es_expert_layout_init(placed_layout + 1, sizeof placed_layout - 1, stacks, 3, &placed, message, sizeof message),
         ES_STATUS_MISALIGNED);
  CHECK(strstr(message, "`memory` is not aligned to") != NULL);
  strcpy(message, "untouched");
  EXPECT(es_expert_layout_init(placed_layout, 1, stacks, 3, &placed, message, sizeof message), ES_STATUS_BUFFER_TOO_SMALL);
  CHECK(strstr(message, "`memory` holds 1 bytes") != NULL);
  strcpy(message, "untouched");
  EXPECT(es_expert_layout_new(stacks, 3, NULL, message, sizeof message), ES_STATUS_NULL_POINTER);
  CHECK(strstr(message, "`out` is null") != NULL);
  strcpy(message, "untouched");
  EXPECT(es_pool_new(&config, NULL, message, sizeof message), ES_STATUS_NULL_POINTER);
  CHECK(strstr(message, "`out` is null") != NULL);
  strcpy(message, "untouched");
  EXPECT(es_pool_new(NULL, &pool, message, sizeof message), ES_STATUS_NULL_POINTER);
  CHECK(strstr(message, "`config` is null") != NULL);
  strcpy(message, "untouched");
  EXPECT(es_trace_parse((const uint8_t *)"x", 1, NULL, message, sizeof message), ES_STATUS_TRACE_INVALID);
  CHECK(strcmp(message, "untouched") != 0);
  static const char header_only[] = "{\"format\":\"expertslab-trace\",\"version\":1,\"experts\":4,\"layers\":1,\"top_k\":2}\n";
  strcpy(message, "untouched");
  EXPECT(es_trace_parse((const uint8_t *)header_only, sizeof header_only - 1, NULL, message, sizeof message),
         ES_STATUS_NULL_POINTER);
  CHECK(strstr(message, "`out` is null") != NULL);

  /* es_last_error changes no text: a buffer too small leaves it to be read again. */
  char small[4];
  EXPECT(es_last_error(pool, small, sizeof small, NULL), ES_STATUS_BUFFER_TOO_SMALL);
  CHECK(error_mentions(pool, "`plan` is a pool handle"));
  OK(es_plan_free(plan));
  OK(es_pool_free(pool));

  /* A layer served only from slow memory: an arena of no slots, aligned to 64, takes a sink
   * over an empty buffer (aligned, or null), and a pool of no slots steps through it. */
  EsArena *empty = NULL;
  OK(es_arena_new(layout, 0, 64, &empty));
  OK(es_arena_info(empty, &total, &slot, &align));
  CHECK(total == 0 && slot == 0 && align == 64);
  EsSink *aligned_sink = NULL, *null_sink = NULL, *refused = NULL;
  OK(es_sink_from_arena(empty, 0, empty_buffer, 0, &aligned_sink));
  OK(es_sink_from_arena(empty, 0, NULL, 0, &null_sink));
  EXPECT(es_sink_from_arena(empty, 0, empty_buffer + 1, 0, &refused), ES_STATUS_MISALIGNED);
  CHECK(error_mentions(empty, "aligned to 64") && refused == NULL);
  EXPECT(es_arena_slab(empty, empty_buffer, 0, 0, 0, &slab, &length), ES_STATUS_OUT_OF_RANGE);
  CHECK(error_mentions(empty, "slot 0"));
  config.experts = EXPERTS;
  config.slots = 0;
  OK(es_pool_new(&config, &pool, message, sizeof message));
  OK(es_plan_new(pool, &plan));
  pointers[1] = stack_bytes;
  OK(es_source_from_stacks(layout, 0, pointers, lengths, 3, &source));
  EsStep step = {0, false, ES_MODE_SCHEDULED};
  EsStepStats stats;
  const uint32_t routed[4] = {3, 1, 0, 2};
  OK(es_step(pool, &step, routed, 4, plan, layout, source, aligned_sink, &stats));
  CHECK(stats.served.hits == 0 && stats.served.served_in_place == 4 && stats.migrated.copied == 0);
  step.index = 1;
  OK(es_step(pool, &step, routed, 4, plan, layout, source, null_sink, &stats));
  CHECK(stats.served.served_in_place == 4);
  OK(es_plan_free(plan));
  OK(es_pool_free(pool));
  OK(es_source_free(source));
  OK(es_sink_free(aligned_sink));
  OK(es_sink_free(null_sink));
  OK(es_arena_free(empty));
}

/* ---- the error text and status names ---- */

static void errors_and_names(EsExpertLayout *layout) {
  EsArena *arena = NULL;
  EXPECT(es_arena_new(layout, 2, 3, &arena), ES_STATUS_INVALID_ARGUMENT);
  char small[4];
  size_t length = 0;
  EXPECT(es_last_error(layout, small, sizeof small, &length), ES_STATUS_BUFFER_TOO_SMALL);
  CHECK(length > 3 && strlen(small) == 3);
  OK(es_last_error(layout, NULL, 0, NULL) == ES_STATUS_BUFFER_TOO_SMALL ? ES_STATUS_OK : ES_STATUS_PANIC);
  EXPECT(es_last_error(NULL, small, sizeof small, &length), ES_STATUS_NULL_POINTER);
  static alignas(8) unsigned char not_a_handle[64];
  EXPECT(es_last_error(not_a_handle, small, sizeof small, &length), ES_STATUS_WRONG_HANDLE);
  EXPECT(es_last_error(not_a_handle + 1, small, sizeof small, &length), ES_STATUS_MISALIGNED);

  for (uint32_t s = 0; s <= ES_STATUS_PANIC; s++) {
    const char *name = NULL;
    OK(es_status_name(s, &name));
    CHECK(name != NULL && strncmp(name, "ES_STATUS_", 10) == 0);
  }
  const char *name = NULL;
  OK(es_status_name(ES_STATUS_SINK_FAILED, &name));
  CHECK(strcmp(name, "ES_STATUS_SINK_FAILED") == 0);
  EXPECT(es_status_name(ES_STATUS_PANIC + 1, &name), ES_STATUS_OUT_OF_RANGE);
}

int main(void) {
  if (example() != 0) failed++;
  EsExpertLayout *layout = NULL;
  layouts_and_arenas(&layout);
  failing_sink(layout);
  policies_and_pools();
  busiest_first();
  plan_mismatch(layout);
  trace_replay(layout);
  error_texts(layout);
  errors_and_names(layout);
  OK(es_expert_layout_free(layout));
  EXPECT(es_expert_layout_info(layout, NULL, NULL, NULL), ES_STATUS_WRONG_HANDLE);

  /* Every status code was returned somewhere above, except ES_STATUS_PANIC (a library bug). */
  for (int s = 0; s < ES_STATUS_PANIC; s++) {
    if (!seen[s]) fprintf(stderr, "status %d was never returned\n", s);
    CHECK(seen[s]);
  }
  printf("%d passed, %d failed\n", passed, failed);
  return failed == 0 ? 0 : 1;
}
