/* The golden vectors (tests/vectors) as C data, generated at build time into golden_vectors.c by
 * the golden crate (`cargo run -p expertslab-golden --bin c-vectors -- OUT.c`): the routing
 * scenario, the words its replay folds into the digest, the digest after every step, the layout
 * cases and the expert blob. */
#ifndef GOLDEN_H
#define GOLDEN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "expertslab.h"

/* The most layers a scenario may have here. */
#define GOLDEN_MAX_LAYERS 8

/* One layer's pool: `layer EXPERTS SLOTS SCHEDULE INTERVAL INITIAL` in routing.txt. */
struct golden_layer {
  size_t experts;
  size_t slots;
  uint32_t schedule;   /* an EsScheduleKind value */
  uint32_t interval;
  uint32_t initial;    /* an EsInitialPlacement value */
};

/* One layer's ids within golden_ids. */
struct golden_ids {
  size_t start;
  size_t count;
};

/* One step: the step, each layer's ids, and the digest the host computed after it. */
struct golden_step {
  uint64_t index;
  bool prefill;
  uint32_t mode;       /* an EsMode value */
  struct golden_ids ids[GOLDEN_MAX_LAYERS];
  uint64_t digest;
};

/* One line of layout.txt; `ok` false for a layout the library must refuse. */
struct golden_layout {
  size_t line;
  const char *format;
  size_t experts, rows, cols;
  bool ok;
  size_t row_bytes, expert_bytes;
  uint64_t total_bytes;
};

extern const struct golden_layer golden_layers[];
extern const size_t golden_layer_count;
extern const struct golden_step golden_steps[];
extern const size_t golden_step_count;
extern const uint32_t golden_ids[];
/* Per step and layer, in order: refreshed (0/1), the plan's length, each promotion's expert, slot
 * and demoted expert (UINT32_MAX: none), the slot table after the commit (UINT32_MAX: empty), the
 * served hits, misses served by copy, misses served in place, invalid ids. */
extern const uint32_t golden_words[];
extern const size_t golden_word_count;
extern const struct golden_layout golden_layouts[];
extern const size_t golden_layout_count;
/* tests/vectors/experts.bin: gate, up and down F32 stacks of golden_blob_dims (experts, rows,
 * cols) each, one after the other. */
extern const uint8_t golden_experts[];
extern const size_t golden_experts_len;
extern const size_t golden_blob_dims[3];

#endif /* GOLDEN_H */
