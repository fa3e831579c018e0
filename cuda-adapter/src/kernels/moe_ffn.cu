// MoE feed-forward for decode and small batches, reading expert weights through the device
// slot table.
//
// For each (token, k) pair: h = SiLU(gate · x) * (up · x) and part = down · h; then y[token] =
// sum over k, in k order, of weight[k] * part[k] (three kernels: gate/up and down over a list
// of pairs, so a step's pairs can run in two phases, then combine). Weights are F32, BF16 or one
// of ggml's block formats, read in place: Q8_0 (blocks of 32: an f16 scale, then 32 signed
// bytes), Q4_K and Q6_K (super-blocks of 256); each weight is widened in registers by the
// operations the host uses (expertslab-std's `ffn::order`), activations and accumulation f32.
//
// The order of operations is the host's (expertslab-std's `ffn::order`, which documents it):
// a pair computed on the host has the same bits as on the GPU.
//
// Where an expert's weights live does not change the arithmetic: every dot product gives each
// lane's CHUNK accumulators the same elements in the same order (element j to accumulator
// j mod BLOCK, lane l holding accumulators CHUNK·l to CHUNK·l + CHUNK − 1), sums each lane's
// accumulators by the same halving and reduces the warp with the same butterfly,
// whether the row is read from a slot, a scratch slot or mapped host memory, and whether it is
// loaded by the wide path or element by element. So the output is bit-identical to the run
// with every expert resident.
//
// Speed at one token is bound by instructions and latency more than by bytes, so a warp picks
// its load width once: rows aligned for the format (and activations 16-byte aligned) take the
// wide path for their whole passes, each lane's place in a pass worked out once, the pass's raw
// words fetched one pass ahead of their widening, integers widened by placing their bits in a
// float's mantissa; any other row goes element by element. The last, partial pass of a row
// always goes element by element.
//
// No headers: NVRTC compiles this without the CUDA toolkit's include files.

typedef unsigned long long u64;
typedef unsigned int u32;
typedef unsigned short u16;

#define FMT_F32 0
#define FMT_BF16 1
#define FMT_Q8_0 2
#define FMT_Q4_K 3
#define FMT_Q6_K 4
#define Q8_0_ELEMS 32
#define Q8_0_BYTES 34
#define QK_ELEMS 256
#define Q4_K_BYTES 144
#define Q6_K_BYTES 210

#define WARPS 8
#define ROWS_PER_WARP 2
#define CHUNK 8
#define BLOCK (32 * CHUNK)

// Status bits written when a pair cannot be computed (the host reads them after a sync).
#define STATUS_NO_SOURCE 1u
#define STATUS_BAD_EXPERT 2u

__device__ __forceinline__ float bf16_to_f32(u32 bits16) { return __uint_as_float(bits16 << 16); }

// An IEEE half widened to f32, exactly (expertslab-std's `ffn::order::f16_to_f32` gives the same
// bits): the half's exponent and mantissa placed in a float's low bits and scaled by 2^112
// (exact for normal and subnormal halves: denormals are not flushed), infinities and NaNs
// rebuilt, the sign put back. No branch.
__device__ __forceinline__ float f16_to_f32(u32 h) {
    const u32 low = (h & 0x7fffu) << 13;
    const u32 scaled = __float_as_uint(__fmul_rn(__uint_as_float(low), __uint_as_float(0x77800000u)));
    const u32 magnitude = (h & 0x7c00u) == 0x7c00u ? (0x7f800000u | low) : scaled;
    return __uint_as_float(magnitude | ((h & 0x8000u) << 16));
}

// e^x exactly as the host computes it (expertslab-std's `ffn::order::exp`): every operation
// rounds once and none is contracted, so both sides give the same bits. The math library's
// expf is not used: its last bit is not the host's.
__device__ __forceinline__ float shared_exp(float x) {
    if (x != x) return x;
    if (x < -87.0f) return 0.0f;
    if (x > 88.0f) return __uint_as_float(0x7f800000u);
    const float n = rintf(__fmul_rn(x, __uint_as_float(0x3FB8AA3Bu)));  // round(x · log2 e)
    float r = __fmaf_rn(n, -__uint_as_float(0x3F317200u), x);           // x − n · ln2 (high)
    r = __fmaf_rn(n, -__uint_as_float(0x35BFBE8Eu), r);                 // − n · ln2 (low)
    float p = __uint_as_float(0x39500D01u);                              // 1/5040
    p = __fmaf_rn(p, r, __uint_as_float(0x3AB60B61u));                   // 1/720
    p = __fmaf_rn(p, r, __uint_as_float(0x3C088889u));                   // 1/120
    p = __fmaf_rn(p, r, __uint_as_float(0x3D2AAAABu));                   // 1/24
    p = __fmaf_rn(p, r, __uint_as_float(0x3E2AAAABu));                   // 1/6
    p = __fmaf_rn(p, r, 0.5f);
    p = __fmaf_rn(p, r, 1.0f);
    p = __fmaf_rn(p, r, 1.0f);
    return __fmul_rn(p, __uint_as_float((u32)((int)n + 127) << 23));     // · 2^n
}

// The activation of a row, as the host computes it: (g / (1 + e^−g)) · u.
__device__ __forceinline__ float silu_mul(float g, float u) {
    return __fmul_rn(__fdiv_rn(g, __fadd_rn(1.0f, shared_exp(-g))), u);
}

// Eight weights of a row starting at element j (a multiple of CHUNK), zero past `cols`, read
// byte by byte or element by element: any alignment. The tail pass of a row and rows whose
// alignment rules out the wide path (`fetch`, `widen`) read this way.
template <int FMT>
__device__ __forceinline__ void load_chunk(const unsigned char* row, int j, int cols, float w[CHUNK]) {
    if (FMT == FMT_Q4_K) {
        // A chunk lies in one sub-block of 32: one scale and min, one nibble of 8 bytes.
        if (j < cols) {
            const unsigned char* block = row + (u64)(j / QK_ELEMS) * Q4_K_BYTES;
            const int e = j % QK_ELEMS, group = e / 64, high = (e % 64) / 32;
            const int sub = 2 * group + high;
            const unsigned char* packed = block + 4;
            u32 sc, m;
            if (sub < 4) {
                sc = packed[sub] & 63u;
                m = packed[sub + 4] & 63u;
            } else {
                sc = (packed[sub + 4] & 0xFu) | ((packed[sub - 4] >> 6) << 4);
                m = (packed[sub + 4] >> 4) | ((packed[sub] >> 6) << 4);
            }
            const float d = f16_to_f32((u32)block[0] | ((u32)block[1] << 8));
            const float dmin = f16_to_f32((u32)block[2] | ((u32)block[3] << 8));
            const float scale = __fmul_rn(d, (float)sc), min = __fmul_rn(dmin, (float)m);
            const unsigned char* q = block + 16 + group * 32 + (e % 32);
#pragma unroll
            for (int i = 0; i < CHUNK; i++) {
                const u32 v = high ? (u32)(q[i] >> 4) : (u32)(q[i] & 0xFu);
                w[i] = __fsub_rn(__fmul_rn(scale, (float)v), min);
            }
        } else {
#pragma unroll
            for (int i = 0; i < CHUNK; i++) w[i] = 0.0f;
        }
    } else if (FMT == FMT_Q6_K) {
        // A chunk lies in one group of 16: one scale; its low and high bits at fixed offsets.
        if (j < cols) {
            const unsigned char* block = row + (u64)(j / QK_ELEMS) * Q6_K_BYTES;
            const int e = j % QK_ELEMS, half = e / 128, p = e % 128, quarter = p / 32, l = p % 32;
            const float d = f16_to_f32((u32)block[208] | ((u32)block[209] << 8));
            const int s = 8 * half + l / 16 + 2 * quarter;
            const float scale = __fmul_rn(d, (float)(signed char)block[192 + s]);
            const unsigned char* ql = block + 64 * half + 32 * (quarter % 2) + l;
            const unsigned char* qh = block + 128 + 32 * half + l;
#pragma unroll
            for (int i = 0; i < CHUNK; i++) {
                const u32 low = quarter >= 2 ? (u32)(ql[i] >> 4) : (u32)(ql[i] & 0xFu);
                const u32 high = ((u32)qh[i] >> (2 * quarter)) & 3u;
                w[i] = __fmul_rn(scale, (float)((int)(low | (high << 4)) - 32));
            }
        } else {
#pragma unroll
            for (int i = 0; i < CHUNK; i++) w[i] = 0.0f;
        }
    } else if (FMT == FMT_Q8_0) {
        // `cols` is whole blocks and `j` a multiple of CHUNK, so a chunk lies in one block.
        if (j < cols) {
            const unsigned char* block = row + (u64)(j / Q8_0_ELEMS) * Q8_0_BYTES;
            const float d = f16_to_f32((u32)block[0] | ((u32)block[1] << 8));
            const signed char* q = reinterpret_cast<const signed char*>(block + 2 + (j % Q8_0_ELEMS));
#pragma unroll
            for (int e = 0; e < CHUNK; e++) w[e] = __fmul_rn(d, (float)q[e]);
        } else {
#pragma unroll
            for (int e = 0; e < CHUNK; e++) w[e] = 0.0f;
        }
    } else if (FMT == FMT_BF16) {
        const u16* p = reinterpret_cast<const u16*>(row) + j;
#pragma unroll
        for (int e = 0; e < CHUNK; e++) w[e] = (j + e < cols) ? bf16_to_f32((u32)p[e]) : 0.0f;
    } else {
        const float* p = reinterpret_cast<const float*>(row) + j;
#pragma unroll
        for (int e = 0; e < CHUNK; e++) w[e] = (j + e < cols) ? p[e] : 0.0f;
    }
}

// Byte `i` (0 to 3) of `word` as a float less `bias`, exactly: the byte is placed in the
// mantissa of 2^23 and 2^23 + bias subtracted (every value exact), as (float)(byte − bias)
// gives it.
__device__ __forceinline__ float byte_to_f32(u32 word, int i, float bias) {
    return __fsub_rn(__uint_as_float(__byte_perm(word, 0x4B000000u, 0x7440u | (u32)i)), __fadd_rn(8388608.0f, bias));
}

// Loads through the read-only path: a kernel's weights and inputs are not written while it runs.
__device__ __forceinline__ u32 ld_u16(const unsigned char* p) {
    return (u32)__ldg(reinterpret_cast<const unsigned short*>(p));
}
__device__ __forceinline__ u32 ld_u32(const unsigned char* p) {
    return __ldg(reinterpret_cast<const unsigned int*>(p));
}
__device__ __forceinline__ u32 ld_u16_pair(const unsigned char* p) {
    return __byte_perm(ld_u16(p), ld_u16(p + 2), 0x5410u);
}

// The wide path. A pass of a warp covers BLOCK elements of a row (`pass_bytes` of it); a lane's
// chunk of it sits at the same place in every pass, so where its bytes are and how they are
// widened is worked out once per lane (`LanePlan`), and the loop only moves a pointer. A chunk's
// raw words (`Raw`) are fetched a pass ahead of their widening. Every weight is the same value
// `load_chunk` gives, bit for bit.
template <int FMT>
__device__ __forceinline__ int pass_bytes() {
    return FMT == FMT_F32 ? BLOCK * 4
         : FMT == FMT_BF16 ? BLOCK * 2
         : FMT == FMT_Q8_0 ? (BLOCK / Q8_0_ELEMS) * Q8_0_BYTES
         : FMT == FMT_Q4_K ? Q4_K_BYTES
                           : Q6_K_BYTES;
}

struct LanePlan {
    int at;     // F32, BF16: the chunk; Q8_0: its block; Q4_K, Q6_K: its low bits
    int q;      // Q8_0: the chunk's bytes; Q6_K: its high bits
    int scale;  // Q6_K: the half-word holding its scale
    u32 shift;  // Q4_K: the nibble; Q6_K: the low bits' nibble
    u32 shift2; // Q4_K: the byte of the packed scale words; Q6_K: the high bits' pair
    u32 pick;   // Q4_K: sub-block past 3 (the packed 6-bit layout's second half); Q6_K: the scale's byte
};

template <int FMT>
__device__ __forceinline__ LanePlan lane_plan(int lane) {
    LanePlan p = {0, 0, 0, 0u, 0u, 0u};
    const int e = lane * CHUNK;  // the chunk's first element within the pass
    if (FMT == FMT_F32) {
        p.at = e * 4;
    } else if (FMT == FMT_BF16) {
        p.at = e * 2;
    } else if (FMT == FMT_Q8_0) {
        p.at = (e / Q8_0_ELEMS) * Q8_0_BYTES;
        p.q = p.at + 2 + e % Q8_0_ELEMS;
    } else if (FMT == FMT_Q4_K) {
        const int group = e / 64, high = (e % 64) / 32, sub = 2 * group + high;
        p.at = 16 + group * 32 + e % 32;
        p.shift = (u32)high * 4u;
        p.shift2 = (u32)(sub & 3) * 8u;
        p.pick = sub >= 4 ? 1u : 0u;
    } else {
        const int half = e / 128, r = e % 128, quarter = r / 32, l = r % 32;
        const int s = 8 * half + l / 16 + 2 * quarter;
        p.at = 64 * half + 32 * (quarter % 2) + l;
        p.q = 128 + 32 * half + l;
        p.scale = 192 + (s & ~1);
        p.shift = (u32)(quarter / 2) * 4u;
        p.shift2 = (u32)quarter * 2u;
        p.pick = (u32)(s & 1) * 8u;
    }
    return p;
}

// A chunk's raw words: F32 eight, BF16 four, Q8_0 the scale and its eight bytes as two words,
// Q4_K d and dmin, the packed scales and the nibbles, Q6_K d, the scale's half-word and the low
// and high bits.
struct Raw {
    u32 w[8];
};

template <int FMT>
__device__ __forceinline__ void fetch(const unsigned char* pass, const LanePlan& p, Raw& r) {
    if (FMT == FMT_F32) {
        const uint4 a = __ldg(reinterpret_cast<const uint4*>(pass + p.at));
        const uint4 b = __ldg(reinterpret_cast<const uint4*>(pass + p.at + 16));
        r.w[0] = a.x; r.w[1] = a.y; r.w[2] = a.z; r.w[3] = a.w;
        r.w[4] = b.x; r.w[5] = b.y; r.w[6] = b.z; r.w[7] = b.w;
    } else if (FMT == FMT_BF16) {
        const uint4 a = __ldg(reinterpret_cast<const uint4*>(pass + p.at));
        r.w[0] = a.x; r.w[1] = a.y; r.w[2] = a.z; r.w[3] = a.w;
    } else if (FMT == FMT_Q8_0) {
        r.w[0] = ld_u16(pass + p.at);
        r.w[1] = ld_u16_pair(pass + p.q);
        r.w[2] = ld_u16_pair(pass + p.q + 4);
    } else if (FMT == FMT_Q4_K) {
        r.w[0] = ld_u32(pass);
        r.w[1] = ld_u32(pass + 4);
        r.w[2] = ld_u32(pass + 8);
        r.w[3] = ld_u32(pass + 12);
        r.w[4] = ld_u32(pass + p.at);
        r.w[5] = ld_u32(pass + p.at + 4);
    } else {
        r.w[0] = ld_u16(pass + 208);
        r.w[1] = ld_u16(pass + p.scale);
        r.w[2] = ld_u16_pair(pass + p.at);
        r.w[3] = ld_u16_pair(pass + p.at + 4);
        r.w[4] = ld_u16_pair(pass + p.q);
        r.w[5] = ld_u16_pair(pass + p.q + 4);
    }
}

template <int FMT>
__device__ __forceinline__ void widen(const Raw& r, const LanePlan& p, float w[CHUNK]) {
    if (FMT == FMT_F32) {
#pragma unroll
        for (int i = 0; i < CHUNK; i++) w[i] = __uint_as_float(r.w[i]);
    } else if (FMT == FMT_BF16) {
#pragma unroll
        for (int i = 0; i < 4; i++) {
            w[2 * i] = bf16_to_f32(r.w[i] & 0xffffu);
            w[2 * i + 1] = __uint_as_float(r.w[i] & 0xffff0000u);
        }
    } else if (FMT == FMT_Q8_0) {
        const float d = f16_to_f32(r.w[0]);
#pragma unroll
        for (int h = 0; h < 2; h++) {
            // Four signed bytes made unsigned (+128).
            const u32 v = r.w[1 + h] ^ 0x80808080u;
#pragma unroll
            for (int i = 0; i < 4; i++) w[4 * h + i] = __fmul_rn(d, byte_to_f32(v, i, 128.0f));
        }
    } else if (FMT == FMT_Q4_K) {
        const u32 a0 = (r.w[1] >> p.shift2) & 0xFFu, a1 = (r.w[2] >> p.shift2) & 0xFFu, a2 = (r.w[3] >> p.shift2) & 0xFFu;
        const u32 sc = p.pick ? ((a2 & 0xFu) | ((a0 >> 6) << 4)) : (a0 & 63u);
        const u32 m = p.pick ? ((a2 >> 4) | ((a1 >> 6) << 4)) : (a1 & 63u);
        const float scale = __fmul_rn(f16_to_f32(r.w[0] & 0xFFFFu), (float)sc);
        const float min = __fmul_rn(f16_to_f32(r.w[0] >> 16), (float)m);
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const u32 v = (r.w[4 + h] >> p.shift) & 0x0F0F0F0Fu;
#pragma unroll
            for (int i = 0; i < 4; i++) w[4 * h + i] = __fsub_rn(__fmul_rn(scale, byte_to_f32(v, i, 0.0f)), min);
        }
    } else {
        const int sc = (int)(signed char)(unsigned char)(r.w[1] >> p.pick);
        const float scale = __fmul_rn(f16_to_f32(r.w[0]), (float)sc);
#pragma unroll
        for (int h = 0; h < 2; h++) {
            // Each byte low | high << 4, 0 to 63: less 32, the signed value.
            const u32 v = ((r.w[2 + h] >> p.shift) & 0x0F0F0F0Fu) | (((r.w[4 + h] >> p.shift2) & 0x03030303u) << 4);
#pragma unroll
            for (int i = 0; i < 4; i++) w[4 * h + i] = __fmul_rn(scale, byte_to_f32(v, i, 32.0f));
        }
    }
}

// Whether rows of `bytes_per_row` bytes from `base` are aligned for the wide path: 16 bytes for
// F32 and BF16 (vector loads), 4 for Q4_K (words; its blocks are 144 bytes), 2 for Q8_0 and
// Q6_K (half-words; their blocks are 34 and 210 bytes).
template <int FMT>
__device__ __forceinline__ bool wide_rows(const unsigned char* base, int bytes_per_row) {
    const u64 mask = FMT == FMT_Q4_K ? 3ull : (FMT == FMT_Q8_0 || FMT == FMT_Q6_K) ? 1ull : 15ull;
    return ((reinterpret_cast<u64>(base) | (u64)bytes_per_row) & mask) == 0ull;
}

// Eight activations starting at element j, zero past `cols`, element by element.
__device__ __forceinline__ void load_x(const float* x, int j, int cols, float v[CHUNK]) {
#pragma unroll
    for (int e = 0; e < CHUNK; e++) v[e] = (j + e < cols) ? x[j + e] : 0.0f;
}

// The sum of a lane's CHUNK accumulators by halving (offsets 4, 2, 1), as the host's
// `ffn::order::reduce` forms it.
__device__ __forceinline__ float lane_reduce(const float v[CHUNK]) {
    const float t0 = v[0] + v[4], t1 = v[1] + v[5], t2 = v[2] + v[6], t3 = v[3] + v[7];
    return (t0 + t2) + (t1 + t3);
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
    return v;
}

__device__ __forceinline__ int row_bytes(int fmt, int cols) {
    switch (fmt) {
        case FMT_Q8_0: return (cols / Q8_0_ELEMS) * Q8_0_BYTES;
        case FMT_Q4_K: return (cols / QK_ELEMS) * Q4_K_BYTES;
        case FMT_Q6_K: return (cols / QK_ELEMS) * Q6_K_BYTES;
        case FMT_BF16: return cols * 2;
        default: return cols * 4;
    }
}

// The base of projection `proj` (0 gate, 1 up, 2 down) of pair `pair`'s expert: its slot when
// the pair has no miss pointer and the table says resident, the miss pointer when it has one;
// null (and a status bit) when neither exists.
__device__ __forceinline__ const unsigned char* resolve(
    int pair, int proj, const int* ids, int experts, const int* table, u64 slot_base, u64 slot_stride,
    const u64* proj_offset, const u64* miss, u32* status) {
    int expert = ids[pair];
    if (expert < 0 || expert >= experts) {
        atomicOr(status, STATUS_BAD_EXPERT);
        return nullptr;
    }
    // An explicit source (a scratch slot, mapped host memory) wins over the table: the table a
    // kernel reads may still list an expert this step demoted.
    u64 p = miss[(u64)pair * 3ull + (u64)proj];
    if (p != 0ull) return reinterpret_cast<const unsigned char*>(p);
    int slot = table[expert];
    if (slot >= 0) {
        return reinterpret_cast<const unsigned char*>(slot_base + (u64)slot * slot_stride + proj_offset[proj]);
    }
    atomicOr(status, STATUS_NO_SOURCE);
    return nullptr;
}

struct LayerArgs {
    u64 slot_base;     // device address of slot 0
    u64 slot_stride;   // bytes between slots
    u64 proj_offset[3];  // gate, up, down offsets inside a slot
    u64 table;         // const int* table[experts]
    int experts;
};

struct StepArgs {
    u64 ids;       // const int*   [tokens * top_k]
    u64 weights;   // const float* [tokens * top_k]
    u64 miss;      // const u64*   [tokens * top_k * 3]
    u64 x;         // const float* [tokens * hidden]
    u64 h;         // float*       [tokens * top_k * ffn]
    u64 part;      // float*       [tokens * top_k * hidden]: each pair's down output
    u64 y;         // float*       [tokens * hidden]
    u64 status;    // u32*
    int tokens;
    int top_k;
    int hidden;
    int ffn;
    u64 counts;    // u32*         [tokens * down's row tiles]: pairs done per tile, back to 0 after
    int fused;     // 1: down combines (every pair of the step is launched on the device)
};

// One pass of a warp over its rows of MATS matrices (gate and up, or down) from element `base`,
// element by element, zero past `cols`: passes the wide path does not take.
template <int FMT, int MATS>
__device__ __forceinline__ void pass_elements(const unsigned char* const mats[MATS], const int rows[ROWS_PER_WARP], int rb,
                                              const float* x, int base, int cols,
                                              float acc[MATS][ROWS_PER_WARP][CHUNK]) {
    const int j = base + (threadIdx.x & 31) * CHUNK;
    float xv[CHUNK];
    load_x(x, j, cols, xv);
#pragma unroll
    for (int r = 0; r < ROWS_PER_WARP; r++) {
#pragma unroll
        for (int m = 0; m < MATS; m++) {
            float w[CHUNK];
            load_chunk<FMT>(mats[m] + (u64)rows[r] * (u64)rb, j, cols, w);
#pragma unroll
            for (int e = 0; e < CHUNK; e++) acc[m][r][e] = fmaf(w[e], xv[e], acc[m][r][e]);
        }
    }
}

// Eight activations of a wide pass from `x` (16-byte aligned).
__device__ __forceinline__ void fetch_x(const float* x, float4& a, float4& b) {
    a = __ldg(reinterpret_cast<const float4*>(x));
    b = __ldg(reinterpret_cast<const float4*>(x) + 1);
}

__device__ __forceinline__ void unpack_x(const float4& a, const float4& b, float v[CHUNK]) {
    v[0] = a.x; v[1] = a.y; v[2] = a.z; v[3] = a.w;
    v[4] = b.x; v[5] = b.y; v[6] = b.z; v[7] = b.w;
}

// Every pass of a warp's rows of MATS matrices (gate and up, or down) against `x`. When `wide`,
// the whole passes go by the wide path (each pass's raw words fetched while the one before is
// widened) and the last, partial pass element by element; otherwise every pass goes element by
// element. Every lane takes every block (its elements past `cols` are 0 · 0).
template <int FMT, int MATS>
__device__ __forceinline__ void rows_dot(bool wide, const unsigned char* const mats[MATS], const int rows[ROWS_PER_WARP],
                                         int rb, const float* x, int cols, float acc[MATS][ROWS_PER_WARP][CHUNK]) {
    const int lane = threadIdx.x & 31;
    int base = 0;
    const int passes = cols / BLOCK;
    if (wide && passes > 0) {
        const LanePlan plan = lane_plan<FMT>(lane);
        const u64 pb = (u64)pass_bytes<FMT>();
        const unsigned char* at[MATS][ROWS_PER_WARP];
        Raw raw[MATS][ROWS_PER_WARP];
#pragma unroll
        for (int m = 0; m < MATS; m++) {
#pragma unroll
            for (int r = 0; r < ROWS_PER_WARP; r++) {
                at[m][r] = mats[m] + (u64)rows[r] * (u64)rb;
                fetch<FMT>(at[m][r], plan, raw[m][r]);
            }
        }
        const float* xl = x + lane * CHUNK;
        float4 xa, xb;
        fetch_x(xl, xa, xb);
        for (int pass = 0; pass < passes; pass++) {
            // The next pass (the last one again at the end, unused).
            const int next = min(pass + 1, passes - 1);
            Raw ahead[MATS][ROWS_PER_WARP];
#pragma unroll
            for (int m = 0; m < MATS; m++) {
#pragma unroll
                for (int r = 0; r < ROWS_PER_WARP; r++) fetch<FMT>(at[m][r] + (u64)next * pb, plan, ahead[m][r]);
            }
            float4 na, nb;
            fetch_x(xl + next * BLOCK, na, nb);
            float xv[CHUNK];
            unpack_x(xa, xb, xv);
#pragma unroll
            for (int r = 0; r < ROWS_PER_WARP; r++) {
#pragma unroll
                for (int m = 0; m < MATS; m++) {
                    float w[CHUNK];
                    widen<FMT>(raw[m][r], plan, w);
#pragma unroll
                    for (int e = 0; e < CHUNK; e++) acc[m][r][e] = fmaf(w[e], xv[e], acc[m][r][e]);
                    raw[m][r] = ahead[m][r];
                }
            }
            xa = na;
            xb = nb;
        }
        base = passes * BLOCK;
    }
    for (; base < cols; base += BLOCK) pass_elements<FMT, MATS>(mats, rows, rb, x, base, cols, acc);
}

// A warp's first row. Its rows are clamped to the last row (a warp past the end reads that row
// again and writes nothing), so the passes carry no row test.
__device__ __forceinline__ int first_row() { return (blockIdx.x * WARPS + (threadIdx.x >> 5)) * ROWS_PER_WARP; }

// h[pair] = SiLU(gate · x) * (up · x).
// Grid: (ceil(ffn / (WARPS * ROWS_PER_WARP)), number of pairs in `pairs`). Block: WARPS * 32.
template <int FMT>
__device__ void gate_up(const LayerArgs& layer, const StepArgs& step, const int* pairs) {
    const int pair = pairs[blockIdx.y];
    const int* ids = reinterpret_cast<const int*>(step.ids);
    const int* table = reinterpret_cast<const int*>(layer.table);
    const u64* miss = reinterpret_cast<const u64*>(step.miss);
    u32* status = reinterpret_cast<u32*>(step.status);
    const unsigned char* gate = resolve(pair, 0, ids, layer.experts, table, layer.slot_base, layer.slot_stride,
                                        layer.proj_offset, miss, status);
    const unsigned char* up = resolve(pair, 1, ids, layer.experts, table, layer.slot_base, layer.slot_stride,
                                      layer.proj_offset, miss, status);
    if (gate == nullptr || up == nullptr) return;

    const int hidden = step.hidden;
    const int ffn = step.ffn;
    const int token = pair / step.top_k;
    const float* x = reinterpret_cast<const float*>(step.x) + (u64)token * (u64)hidden;
    float* h = reinterpret_cast<float*>(step.h) + (u64)pair * (u64)ffn;

    const int row0 = first_row();
    int rows[ROWS_PER_WARP];
#pragma unroll
    for (int r = 0; r < ROWS_PER_WARP; r++) rows[r] = min(row0 + r, ffn - 1);
    const int rb = row_bytes(FMT, hidden);
    // One load width for the whole warp, chosen once: the rows' alignment and x's.
    const bool wide = wide_rows<FMT>(gate, rb) && wide_rows<FMT>(up, rb) && wide_rows<FMT_F32>(reinterpret_cast<const unsigned char*>(x), 0);

    float acc[2][ROWS_PER_WARP][CHUNK] = {};
    const unsigned char* const mats[2] = {gate, up};
    rows_dot<FMT, 2>(wide, mats, rows, rb, x, hidden, acc);
#pragma unroll
    for (int r = 0; r < ROWS_PER_WARP; r++) {
        const float g = warp_sum(lane_reduce(acc[0][r]));
        const float u = warp_sum(lane_reduce(acc[1][r]));
        if ((threadIdx.x & 31) == 0 && row0 + r < ffn) h[row0 + r] = silu_mul(g, u);
    }
}

template <int FMT>
__device__ __forceinline__ void down_part(const LayerArgs& layer, const StepArgs& step, const int* pairs);

// Row `row` of token `token`'s output (nothing past `hidden`): y = sum over k, in k order, of
// weight[k] * part[token, k]. The combine's arithmetic, whether a launch of its own or the last
// block of a row tile in `down` does it.
__device__ __forceinline__ void combine_rows(const StepArgs& step, int token, int row) {
    if (row >= step.hidden) return;
    const float* weights = reinterpret_cast<const float*>(step.weights);
    const float* part = reinterpret_cast<const float*>(step.part);
    float out = 0.0f;
    for (int k = 0; k < step.top_k; k++) {
        const int pair = token * step.top_k + k;
        // Past L1: other blocks wrote these rows during this launch or the one before.
        out = fmaf(weights[pair], __ldcg(part + (u64)pair * (u64)step.hidden + (u64)row), out);
    }
    reinterpret_cast<float*>(step.y)[(u64)token * (u64)step.hidden + (u64)row] = out;
}

// Each pair's down output: part[pair] = down · h[pair]. When `step.fused`, the block that
// finishes a row tile's last pair of a token (counted in `step.counts`, over every down launch
// of the step) then combines that tile's rows for the token, so no combine launch follows.
// Grid: (ceil(hidden / (WARPS * ROWS_PER_WARP)), number of pairs in `pairs`). Block: WARPS * 32.
template <int FMT>
__device__ void down(const LayerArgs& layer, const StepArgs& step, const int* pairs) {
    down_part<FMT>(layer, step, pairs);
    if (!step.fused) return;
    __shared__ int last;
    // Every warp's rows are written (and fenced, below) before the tile's count moves.
    __syncthreads();
    const int token = pairs[blockIdx.y] / step.top_k;
    if (threadIdx.x == 0) {
        u32* count = reinterpret_cast<u32*>(step.counts) + (u64)token * gridDim.x + blockIdx.x;
        last = atomicAdd(count, 1u) == (u32)(step.top_k - 1);
        if (last) *count = 0u;
    }
    __syncthreads();
    if (last) {
        __threadfence();
        if (threadIdx.x < WARPS * ROWS_PER_WARP) combine_rows(step, token, blockIdx.x * WARPS * ROWS_PER_WARP + threadIdx.x);
    }
}

template <int FMT>
__device__ __forceinline__ void down_part(const LayerArgs& layer, const StepArgs& step, const int* pairs) {
    const int pair = pairs[blockIdx.y];
    const int* ids = reinterpret_cast<const int*>(step.ids);
    const int* table = reinterpret_cast<const int*>(layer.table);
    const u64* miss = reinterpret_cast<const u64*>(step.miss);
    u32* status = reinterpret_cast<u32*>(step.status);
    const int hidden = step.hidden;
    const int ffn = step.ffn;
    const int lane = threadIdx.x & 31;
    const int row0 = first_row();
    const int rb = row_bytes(FMT, ffn);
    const unsigned char* dw = resolve(pair, 2, ids, layer.experts, table, layer.slot_base, layer.slot_stride,
                                      layer.proj_offset, miss, status);
    float* part = reinterpret_cast<float*>(step.part) + (u64)pair * (u64)hidden;
    if (dw == nullptr) {
        // Reported through the status word; the output is not used.
        if (lane == 0) {
            for (int r = 0; r < ROWS_PER_WARP; r++)
                if (row0 + r < hidden) part[row0 + r] = 0.0f;
            __threadfence();
        }
        return;
    }
    const float* hk = reinterpret_cast<const float*>(step.h) + (u64)pair * (u64)ffn;
    int rows[ROWS_PER_WARP];
#pragma unroll
    for (int r = 0; r < ROWS_PER_WARP; r++) rows[r] = min(row0 + r, hidden - 1);
    const bool wide = wide_rows<FMT>(dw, rb) && wide_rows<FMT_F32>(reinterpret_cast<const unsigned char*>(hk), 0);
    float acc[1][ROWS_PER_WARP][CHUNK] = {};
    const unsigned char* const mats[1] = {dw};
    rows_dot<FMT, 1>(wide, mats, rows, rb, hk, ffn, acc);
#pragma unroll
    for (int r = 0; r < ROWS_PER_WARP; r++) {
        const float d = warp_sum(lane_reduce(acc[0][r]));
        if (lane == 0 && row0 + r < hidden) part[row0 + r] = d;
    }
    // Visible to the block that combines this tile.
    if (lane == 0) __threadfence();
}

// y[token] = sum over k, in k order, of weight[k] * part[token, k].
// Grid: (ceil(hidden / blockDim.x), tokens).
extern "C" __global__ void moe_combine(const StepArgs step) {
    combine_rows(step, blockIdx.y, blockIdx.x * blockDim.x + threadIdx.x);
}

extern "C" __global__ void __launch_bounds__(WARPS * 32)
    moe_gate_up_f32(const LayerArgs layer, const StepArgs step, const int* pairs) {
    gate_up<FMT_F32>(layer, step, pairs);
}

extern "C" __global__ void __launch_bounds__(WARPS * 32)
    moe_gate_up_bf16(const LayerArgs layer, const StepArgs step, const int* pairs) {
    gate_up<FMT_BF16>(layer, step, pairs);
}

extern "C" __global__ void __launch_bounds__(WARPS * 32)
    moe_down_f32(const LayerArgs layer, const StepArgs step, const int* pairs) {
    down<FMT_F32>(layer, step, pairs);
}

extern "C" __global__ void __launch_bounds__(WARPS * 32)
    moe_down_bf16(const LayerArgs layer, const StepArgs step, const int* pairs) {
    down<FMT_BF16>(layer, step, pairs);
}

extern "C" __global__ void __launch_bounds__(WARPS * 32)
    moe_gate_up_q8_0(const LayerArgs layer, const StepArgs step, const int* pairs) {
    gate_up<FMT_Q8_0>(layer, step, pairs);
}

extern "C" __global__ void __launch_bounds__(WARPS * 32)
    moe_down_q8_0(const LayerArgs layer, const StepArgs step, const int* pairs) {
    down<FMT_Q8_0>(layer, step, pairs);
}

extern "C" __global__ void __launch_bounds__(WARPS * 32)
    moe_gate_up_q4_k(const LayerArgs layer, const StepArgs step, const int* pairs) {
    gate_up<FMT_Q4_K>(layer, step, pairs);
}

extern "C" __global__ void __launch_bounds__(WARPS * 32)
    moe_down_q4_k(const LayerArgs layer, const StepArgs step, const int* pairs) {
    down<FMT_Q4_K>(layer, step, pairs);
}

extern "C" __global__ void __launch_bounds__(WARPS * 32)
    moe_gate_up_q6_k(const LayerArgs layer, const StepArgs step, const int* pairs) {
    gate_up<FMT_Q6_K>(layer, step, pairs);
}

extern "C" __global__ void __launch_bounds__(WARPS * 32)
    moe_down_q6_k(const LayerArgs layer, const StepArgs step, const int* pairs) {
    down<FMT_Q6_K>(layer, step, pairs);
}

// Deterministic weights for demos and benchmarks: element i of a buffer is the (i+1)-th output
// of SplitMix64 seeded with `seed`, mapped to [-scale, scale).
__device__ __forceinline__ float splitmix_unit(u64 seed, u64 i) {
    u64 z = seed + (i + 1ull) * 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z = z ^ (z >> 31);
    // 24 random bits to [-1, 1).
    return (float)(z >> 40) * (2.0f / 16777216.0f) - 1.0f;
}

extern "C" __global__ void fill_f32(float* out, u64 n, u64 seed, float scale) {
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x) {
        out[i] = splitmix_unit(seed, i) * scale;
    }
}

extern "C" __global__ void fill_bf16(u16* out, u64 n, u64 seed, float scale) {
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x) {
        u32 bits = __float_as_uint(splitmix_unit(seed, i) * scale);
        // Round to nearest even (the values are finite).
        bits += 0x7fffu + ((bits >> 16) & 1u);
        out[i] = (u16)(bits >> 16);
    }
}

// Q8_0 blocks for demos and benchmarks: block i's scale is the half nearest `scale / 127` (a
// normal half for the scales used) and its values the rounded products of 127 and SplitMix64
// units, so the weights are uniform in about [-scale, scale].
extern "C" __global__ void fill_q8_0(unsigned char* out, u64 blocks, u64 seed, float scale) {
    const float d = scale / 127.0f;
    // Round to the nearest half: 13 mantissa bits dropped, ties to even.
    u32 bits = __float_as_uint(d);
    // At least the smallest normal half (2^−14).
    if (((bits >> 23) & 0xffu) < 113u) bits = 113u << 23;
    const u32 exponent = ((bits >> 23) & 0xffu) - 112u;
    u32 mantissa = bits & 0x7fffffu;
    u32 half = (exponent << 10) | (mantissa >> 13);
    const u32 rest = mantissa & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (half & 1u))) half += 1u;
    for (u64 b = blockIdx.x * (u64)blockDim.x + threadIdx.x; b < blocks; b += (u64)gridDim.x * blockDim.x) {
        unsigned char* block = out + b * Q8_0_BYTES;
        block[0] = (unsigned char)(half & 0xffu);
        block[1] = (unsigned char)(half >> 8);
        for (int e = 0; e < Q8_0_ELEMS; e++) {
            const float v = rintf(splitmix_unit(seed, b * Q8_0_ELEMS + (u64)e) * 127.0f);
            block[2 + e] = (unsigned char)(signed char)(int)v;
        }
    }
}

// K-quant super-blocks for demos and benchmarks: random bytes (SplitMix64), then each block's
// f16 scales set to `half` (Q4_K: d and dmin at bytes 0 and 2; Q6_K: d at byte 208), so its
// weights are about uniform in [-scale, scale] for the scale the caller turned into `half`.
extern "C" __global__ void fill_k_quant(unsigned char* out, u64 blocks, u64 seed, u32 block_bytes, u32 half) {
    for (u64 b = blockIdx.x * (u64)blockDim.x + threadIdx.x; b < blocks; b += (u64)gridDim.x * blockDim.x) {
        unsigned char* block = out + b * block_bytes;
        for (u32 i = 0; i < block_bytes; i++) {
            block[i] = (unsigned char)((splitmix_unit(seed, b * block_bytes + i) + 1.0f) * 127.9f);
        }
        const u32 at = block_bytes == Q6_K_BYTES ? 208u : 0u;
        block[at] = (unsigned char)(half & 0xffu);
        block[at + 1] = (unsigned char)(half >> 8);
        if (block_bytes == Q4_K_BYTES) {
            block[2] = (unsigned char)(half & 0xffu);
            block[3] = (unsigned char)(half >> 8);
        }
    }
}
