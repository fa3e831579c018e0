// MoE feed-forward for decode and small batches, reading expert weights through the device
// slot table.
//
// For each (token, k) pair: h = SiLU(gate · x) * (up · x) and part = down · h; then y[token] =
// sum over k, in k order, of weight[k] * part[k] (three kernels: gate/up and down over a list
// of pairs, so a step's pairs can run in two phases, then combine). Weights are F32, BF16 or one
// of ggml's block formats, read in place: Q8_0 (blocks of 32: an f16 scale, then 32 signed
// bytes), Q4_K and Q6_K (super-blocks of 256).
//
// The order of operations is the host's (expertslab-std's `ffn::order` for F32 and BF16,
// `ffn::blocks` for the block formats, which document it): a pair computed on the host has the
// same bits as on the GPU.
//
// F32 and BF16 rows: every dot product gives each lane's CHUNK accumulators the same elements in
// the same order (element j to accumulator j mod BLOCK, lane l holding accumulators CHUNK·l to
// CHUNK·l + CHUNK − 1), sums each lane's accumulators by the same halving and reduces the warp
// with the same butterfly, whether the row is read from a slot, a scratch slot or mapped host
// memory, and whether it is loaded by the wide path or element by element. A warp picks its
// load width once: rows aligned for the format (and activations 16-byte aligned) take the wide
// path for their whole passes, each lane's place in a pass worked out once, the pass's raw words
// fetched one pass ahead of their widening; any other row goes element by element, as does the
// last, partial pass of a row.
//
// Block-format rows: each block of threads first quantizes its activations (x, or a pair's h)
// to signed bytes in blocks of 32 in shared memory (`quantize_shared`); lane l of a warp then
// takes the row's blocks of 32 l, l + 32, ...: their products with the activations' bytes are
// summed in integers (dp4a, exact in any order), scaled by the block's scales in f32 and added
// to the lane's accumulator, and the warp's butterfly sums the lanes. Whether the row's words
// are loaded wide or byte by byte (rows not aligned for the format), the integers are the same.
// Q6_K's down rows of fewer than 32 blocks (a Q4_K_M file's) are laid end to end over a warp's
// four rows so every lane takes a term, each term put in its row's slot (`rows_dot_q8_spread`):
// the same accumulators, so the same sums.
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
// Q6_K's down: blocks of DWARPS warps of DROWS rows each (the same rows a block), whose rows of
// fewer than 32 blocks spread their terms over the lanes (`rows_dot_q8_spread`): a Q4_K_M
// file's down (expert FFN 768 is 24 blocks a row) left a quarter of the lanes idle. The crate
// reads each kernel's block size from its launch bounds.
#define Q6_K_SPREAD 1
#define DWARPS 4
#define DROWS (WARPS * ROWS_PER_WARP / DWARPS)
#define CHUNK 8
#define BLOCK (32 * CHUNK)

// Status bits written when a pair cannot be computed (the host reads them after a sync).
#define STATUS_NO_SOURCE 1u
#define STATUS_BAD_EXPERT 2u

// The warps of a block of down and the rows of each.
template <int FMT>
struct DownTile {
    static constexpr bool spread = Q6_K_SPREAD && FMT == FMT_Q6_K;
    static constexpr int warps = spread ? DWARPS : WARPS;
    static constexpr int rows = spread ? DROWS : ROWS_PER_WARP;
};

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
// element by element: any alignment. The tail pass of a row and rows whose alignment rules out
// the wide path (`fetch`, `widen`) read this way. F32 and BF16 only.
template <int FMT>
__device__ __forceinline__ void load_chunk(const unsigned char* row, int j, int cols, float w[CHUNK]) {
    if (FMT == FMT_BF16) {
        const u16* p = reinterpret_cast<const u16*>(row) + j;
#pragma unroll
        for (int e = 0; e < CHUNK; e++) w[e] = (j + e < cols) ? bf16_to_f32((u32)p[e]) : 0.0f;
    } else {
        const float* p = reinterpret_cast<const float*>(row) + j;
#pragma unroll
        for (int e = 0; e < CHUNK; e++) w[e] = (j + e < cols) ? p[e] : 0.0f;
    }
}

// Loads through the read-only path: a kernel's weights and inputs are not written while it runs.
__device__ __forceinline__ u32 ld_u16(const unsigned char* p) {
    return (u32)__ldg(reinterpret_cast<const unsigned short*>(p));
}
// Four bytes at any address, byte by byte, little-endian.
__device__ __forceinline__ u32 ld_bytes4(const unsigned char* p) {
    return (u32)__ldg(p) | ((u32)__ldg(p + 1) << 8) | ((u32)__ldg(p + 2) << 16) | ((u32)__ldg(p + 3) << 24);
}

// The wide path of F32 and BF16. A pass of a warp covers BLOCK elements of a row (`pass_bytes`
// of it); a lane's chunk of it sits at the same place in every pass, so the loop only moves a
// pointer. A chunk's raw words (`Raw`) are fetched a pass ahead of their widening. Every weight
// is the same value `load_chunk` gives, bit for bit.
template <int FMT>
__device__ __forceinline__ int pass_bytes() {
    return FMT == FMT_F32 ? BLOCK * 4 : BLOCK * 2;
}

// A chunk's raw words: F32 eight, BF16 four.
struct Raw {
    u32 w[8];
};

template <int FMT>
__device__ __forceinline__ void fetch(const unsigned char* pass, int at, Raw& r) {
    const uint4 a = __ldg(reinterpret_cast<const uint4*>(pass + at));
    r.w[0] = a.x; r.w[1] = a.y; r.w[2] = a.z; r.w[3] = a.w;
    if (FMT == FMT_F32) {
        const uint4 b = __ldg(reinterpret_cast<const uint4*>(pass + at + 16));
        r.w[4] = b.x; r.w[5] = b.y; r.w[6] = b.z; r.w[7] = b.w;
    }
}

template <int FMT>
__device__ __forceinline__ void widen(const Raw& r, float w[CHUNK]) {
    if (FMT == FMT_F32) {
#pragma unroll
        for (int i = 0; i < CHUNK; i++) w[i] = __uint_as_float(r.w[i]);
    } else {
#pragma unroll
        for (int i = 0; i < 4; i++) {
            w[2 * i] = bf16_to_f32(r.w[i] & 0xffffu);
            w[2 * i + 1] = __uint_as_float(r.w[i] & 0xffff0000u);
        }
    }
}

// Whether rows of `bytes_per_row` bytes from `base` are aligned for the wide path: 16 bytes for
// F32 and BF16 (vector loads) and Q4_K (its header and nibbles by 16-byte vectors; its blocks are
// 144 bytes), 4 for Q8_0 (rows of whole words, staged through shared memory:
// `rows_dot_q8_0_staged`), for Q6_K a matrix starting at a word and rows of whole half-words
// (its 210-byte super-blocks are read by aligned words and funnel shifts, `ld_words8_shifted`).
template <int FMT>
__device__ __forceinline__ bool wide_rows(const unsigned char* base, int bytes_per_row) {
    const u64 at = reinterpret_cast<u64>(base), rb = (u64)bytes_per_row;
    if (FMT == FMT_Q6_K) return (at & 3ull) == 0ull && (rb & 1ull) == 0ull;
    const u64 mask = FMT == FMT_Q8_0 ? 3ull : 15ull;
    return ((at | rb) & mask) == 0ull;
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
        const int lane_at = lane * CHUNK * (FMT == FMT_F32 ? 4 : 2);
        const u64 pb = (u64)pass_bytes<FMT>();
        const unsigned char* at[MATS][ROWS_PER_WARP];
        Raw raw[MATS][ROWS_PER_WARP];
#pragma unroll
        for (int m = 0; m < MATS; m++) {
#pragma unroll
            for (int r = 0; r < ROWS_PER_WARP; r++) {
                at[m][r] = mats[m] + (u64)rows[r] * (u64)rb;
                fetch<FMT>(at[m][r], lane_at, raw[m][r]);
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
                for (int r = 0; r < ROWS_PER_WARP; r++) fetch<FMT>(at[m][r] + (u64)next * pb, lane_at, ahead[m][r]);
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
                    widen<FMT>(raw[m][r], w);
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

// ---- Block formats: activations quantized to 8 bits (expertslab-std's `ffn::blocks`) ----

#define Q8_BLOCK 32
#define FULL_MASK 0xffffffffu

// Shared memory of a block-format launch: the activations' bytes (`cols`), each block's scale
// (`cols / 32` floats), each half-block's sum (`cols / 16` ints); `activation_smem` in the
// crate gives its size.
extern __shared__ __align__(16) unsigned char act_smem[];

// One activation's byte under its block's scale `d`, as the host's `quantize_one`.
__device__ __forceinline__ int quantize_one(float x, float d) {
    if (!(d > 0.0f)) return 0;
    const float r = __fdiv_rn(x, d);
    if (r > 127.0f) return 127;
    if (r < -127.0f) return -127;
    if (r != r) return 0;
    return (int)rintf(r);
}

// The block's `cols` activations from `x` quantized into `act_smem` by all its threads (`W`
// warps), a lane eight consecutive elements (a block of 32 is four lanes; warp w takes elements
// 256·w, 256·w + 256·W, ...), so a warp's loads go out together: the block's largest magnitude
// by the four lanes' maxima (a NaN counts as 0), d = amax / 127, the bytes, the half-blocks'
// sums (two lanes each). Maxima and integer sums are exact in any order, so the bytes, scales
// and sums are those of one lane per element. `cols` is a multiple of 32. Every thread of the
// block calls it.
template <int W>
__device__ __forceinline__ void quantize_shared(const float* x, int cols) {
    const int lane = threadIdx.x & 31;
    signed char* q = reinterpret_cast<signed char*>(act_smem);
    float* d = reinterpret_cast<float*>(act_smem + cols);
    int* sums = reinterpret_cast<int*>(act_smem + cols + 4 * (cols / Q8_BLOCK));
    const bool vector = (reinterpret_cast<u64>(x) & 15ull) == 0ull;
    for (int base = (threadIdx.x >> 5) * 256; base < cols; base += W * 256) {
        const int e0 = base + lane * 8;
        // A block's four lanes are all in or all out (`cols` is a multiple of 32).
        const bool in = e0 < cols;
        float v[8];
        if (in && vector) {
            const float4 a = __ldg(reinterpret_cast<const float4*>(x + e0));
            const float4 b = __ldg(reinterpret_cast<const float4*>(x + e0) + 1);
            v[0] = a.x; v[1] = a.y; v[2] = a.z; v[3] = a.w;
            v[4] = b.x; v[5] = b.y; v[6] = b.z; v[7] = b.w;
        } else {
#pragma unroll
            for (int e = 0; e < 8; e++) v[e] = in ? x[e0 + e] : 0.0f;
        }
        float amax = 0.0f;
#pragma unroll
        for (int e = 0; e < 8; e++) {
            const float m = fabsf(v[e]) > 0.0f ? fabsf(v[e]) : 0.0f;
            amax = m > amax ? m : amax;
        }
#pragma unroll
        for (int o = 1; o < 4; o <<= 1) {
            const float t = __shfl_xor_sync(FULL_MASK, amax, o);
            amax = t > amax ? t : amax;
        }
        const float scale = __fdiv_rn(amax, 127.0f);
        u32 packed[2] = {0u, 0u};
        int sum = 0;
#pragma unroll
        for (int e = 0; e < 8; e++) {
            const int qv = quantize_one(v[e], scale);
            sum += qv;
            packed[e >> 2] |= ((u32)qv & 0xffu) << (8 * (e & 3));
        }
        sum += __shfl_xor_sync(FULL_MASK, sum, 1);
        if (in) {
            *reinterpret_cast<uint2*>(q + e0) = make_uint2(packed[0], packed[1]);
            const int b = e0 / Q8_BLOCK;
            if ((lane & 3) == 0) d[b] = scale;
            if ((lane & 1) == 0) sums[2 * b + ((lane >> 1) & 1)] = sum;
        }
    }
    __syncthreads();
}

// A half-word at a 2-byte aligned address, or byte by byte.
__device__ __forceinline__ u32 ld_half(const unsigned char* p, bool wide) {
    return wide ? ld_u16(p) : ((u32)__ldg(p) | ((u32)__ldg(p + 1) << 8));
}

// Four words at a 16-byte aligned address, or byte by byte.
__device__ __forceinline__ void ld_words4(const unsigned char* p, bool wide, u32 w[4]) {
    if (wide) {
        const uint4 v = __ldg(reinterpret_cast<const uint4*>(p));
        w[0] = v.x; w[1] = v.y; w[2] = v.z; w[3] = v.w;
    } else {
#pragma unroll
        for (int i = 0; i < 4; i++) w[i] = ld_bytes4(p + 4 * i);
    }
}

// Eight words from `p` (2-byte aligned; the two bytes before it and the four after its 32 are
// readable, as in a Q6_K super-block of a row whose matrix starts at a word) by nine aligned
// word loads and funnel shifts.
__device__ __forceinline__ void ld_words8_shifted(const unsigned char* p, u32 w[8]) {
    const u32* a = reinterpret_cast<const u32*>(reinterpret_cast<u64>(p) & ~3ull);
    const u32 shift = ((u32)reinterpret_cast<u64>(p) & 3u) * 8u;
    u32 prev = __ldg(a);
#pragma unroll
    for (int k = 0; k < 8; k++) {
        const u32 next = __ldg(a + k + 1);
        w[k] = __funnelshift_r(prev, next, shift);
        prev = next;
    }
}

// Block b's weight `e` (0 to 31) of a row: its stored value (Q6_K's 0 to 63, before its −32),
// read byte by byte.
template <int FMT>
__device__ __forceinline__ int block_weight(const unsigned char* row, int b, int e) {
    if (FMT == FMT_Q8_0) return (int)(signed char)__ldg(row + (u64)b * Q8_0_BYTES + 2 + e);
    const int j = b & 7;
    if (FMT == FMT_Q4_K) {
        const unsigned char* sb = row + (u64)(b >> 3) * Q4_K_BYTES;
        return (int)((__ldg(sb + 16 + 32 * (j >> 1) + e) >> (4 * (j & 1))) & 15u);
    }
    const unsigned char* sb = row + (u64)(b >> 3) * Q6_K_BYTES;
    const int half = j >> 2, k = j & 3;
    const u32 lo = __ldg(sb + 64 * half + 32 * (k & 1) + e), hi = __ldg(sb + 128 + 32 * half + e);
    return (int)(((lo >> (4 * (k >> 1))) & 15u) | (((hi >> (2 * k)) & 3u) << 4));
}

// Block b's half-block sums (the host's `Blocks::sums`) element by element, for rows not
// aligned for the wide loads: one element at a time, so the path holds few registers (a kernel
// takes the most of its paths).
template <int FMT>
__device__ __forceinline__ int2 block_sums_bytes(const unsigned char* row, int b, const signed char* xq) {
    int s0 = 0, s1 = 0;
#pragma unroll 1
    for (int e = 0; e < 16; e++) {
        s0 += block_weight<FMT>(row, b, e) * (int)xq[e];
        s1 += block_weight<FMT>(row, b, e + 16) * (int)xq[e + 16];
    }
    return make_int2(s0, s1);
}

// Block b's term of a row (the host's `Blocks::terms`): `xw` the activations' 32 bytes as eight
// words (`xq` the same bytes in shared memory), `dx` their scale, `s0` and `s1` their
// half-blocks' sums. `wide`: the rows are aligned for the format's vector loads; otherwise the
// integer sums go element by element and the scales byte by byte.
template <int FMT, bool wide>
__device__ __forceinline__ float block_term(const unsigned char* row, int b, const int xw[8], const signed char* xq, float dx, int s0, int s1) {
    if (FMT == FMT_Q8_0) {
        // Rows aligned for Q8_0's wide loads are staged (`rows_dot_q8_0_staged`); the others
        // come here, element by element.
        const unsigned char* blk = row + (u64)b * Q8_0_BYTES;
        const int2 h = block_sums_bytes<FMT>(row, b, xq);
        return __fmul_rn(__fmul_rn(f16_to_f32(ld_half(blk, false)), dx), __int2float_rn(h.x + h.y));
    } else if (FMT == FMT_Q4_K) {
        const unsigned char* sb = row + (u64)(b >> 3) * Q4_K_BYTES;
        const int j = b & 7;
        u32 head[4];
        ld_words4(sb, wide, head);
        const float d = f16_to_f32(head[0] & 0xffffu), dmin = f16_to_f32(head[0] >> 16);
        // The 6-bit scale and min of sub-block j from the 12 packed bytes (head[1..3]).
        const u32 s8 = 8u * (u32)(j & 3);
        const u32 a = (head[1] >> s8) & 0xffu, c = (head[2] >> s8) & 0xffu, e = (head[3] >> s8) & 0xffu;
        const u32 sc = j < 4 ? (a & 63u) : ((e & 0xfu) | ((a >> 6) << 4));
        const u32 m = j < 4 ? (c & 63u) : ((e >> 4) | ((c >> 6) << 4));
        int acc = 0;
        if (wide) {
            u32 lo[4], hi[4];
            const unsigned char* nib = sb + 16 + 32 * (j >> 1);
            ld_words4(nib, true, lo);
            ld_words4(nib + 16, true, hi);
            const u32 shift = 4u * (u32)(j & 1);
#pragma unroll
            for (int k = 0; k < 4; k++) {
                acc = __dp4a((int)((lo[k] >> shift) & 0x0f0f0f0fu), xw[k], acc);
                acc = __dp4a((int)((hi[k] >> shift) & 0x0f0f0f0fu), xw[4 + k], acc);
            }
        } else {
            const int2 h = block_sums_bytes<FMT>(row, b, xq);
            acc = h.x + h.y;
        }
        const float dq = __fmul_rn(d, (float)sc), mq = __fmul_rn(dmin, (float)m);
        return __fmul_rn(dx, __fsub_rn(__fmul_rn(dq, __int2float_rn(acc)), __fmul_rn(mq, __int2float_rn(s0 + s1))));
    } else {
        const unsigned char* sb = row + (u64)(b >> 3) * Q6_K_BYTES;
        const int j = b & 7, half = j >> 2, k = j & 3;
        const float d = f16_to_f32(ld_half(sb + 208, wide));
        const u32 scales = ld_half(sb + 192 + 8 * half + 2 * k, wide);
        int j0 = 0, j1 = 0;
        if (wide) {
            u32 lo[8], hi[8];
            ld_words8_shifted(sb + 64 * half + 32 * (k & 1), lo);
            ld_words8_shifted(sb + 128 + 32 * half, hi);
            const u32 ls = 4u * (u32)(k >> 1), hs = 2u * (u32)k;
#pragma unroll
            for (int w = 0; w < 8; w++) {
                const u32 q = ((lo[w] >> ls) & 0x0f0f0f0fu) | (((hi[w] >> hs) & 0x03030303u) << 4);
                if (w < 4) j0 = __dp4a((int)q, xw[w], j0);
                else j1 = __dp4a((int)q, xw[w], j1);
            }
        } else {
            const int2 h = block_sums_bytes<FMT>(row, b, xq);
            j0 = h.x;
            j1 = h.y;
        }
        j0 -= 32 * s0;
        j1 -= 32 * s1;
        const float d0 = __fmul_rn(d, (float)(int)(signed char)(scales & 0xffu));
        const float d1 = __fmul_rn(d, (float)(int)(signed char)(scales >> 8));
        return __fmul_rn(dx, __fadd_rn(__fmul_rn(d0, __int2float_rn(j0)), __fmul_rn(d1, __int2float_rn(j1))));
    }
}

// A warp's rows of MATS matrices (gate and up, or down) of a block format against the
// activations quantized in `act_smem` (`cols` of them): lane l adds the terms of blocks l,
// l + 32, ... to its accumulator, then the warp's butterfly sums the lanes into `out`.
template <int FMT, int MATS, int R, bool WIDE>
__device__ __forceinline__ void rows_dot_q8_as(const unsigned char* const mats[MATS], const int rows[R],
                                               int rb, int cols, float out[MATS][R]) {
    const int lane = threadIdx.x & 31;
    const signed char* q = reinterpret_cast<const signed char*>(act_smem);
    const float* d = reinterpret_cast<const float*>(act_smem + cols);
    const int* sums = reinterpret_cast<const int*>(act_smem + cols + 4 * (cols / Q8_BLOCK));
    float acc[MATS][R] = {};
    // Two blocks a lane at a time, so the second's loads go out with the first's.
#pragma unroll 2
    for (int b = lane; b < cols / Q8_BLOCK; b += 32) {
        const int4 x0 = *reinterpret_cast<const int4*>(q + b * Q8_BLOCK);
        const int4 x1 = *reinterpret_cast<const int4*>(q + b * Q8_BLOCK + 16);
        const int xw[8] = {x0.x, x0.y, x0.z, x0.w, x1.x, x1.y, x1.z, x1.w};
        const float dx = d[b];
        const int s0 = sums[2 * b], s1 = sums[2 * b + 1];
#pragma unroll
        for (int r = 0; r < R; r++) {
#pragma unroll
            for (int m = 0; m < MATS; m++) {
                const float t = block_term<FMT, WIDE>(mats[m] + (u64)rows[r] * (u64)rb, b, xw, q + b * Q8_BLOCK, dx, s0, s1);
                acc[m][r] = __fadd_rn(acc[m][r], t);
            }
        }
    }
#pragma unroll
    for (int r = 0; r < R; r++) {
#pragma unroll
        for (int m = 0; m < MATS; m++) out[m][r] = warp_sum(acc[m][r]);
    }
}

// One of a warp's R rows, chosen without indexing the array by a variable (which would put it
// in local memory).
template <int R>
__device__ __forceinline__ int pick_row(const int rows[R], int r) {
    int v = rows[0];
#pragma unroll
    for (int j = 1; j < R; j++) v = r == j ? rows[j] : v;
    return v;
}

// `rows_dot_q8_as` for rows of fewer than 32 blocks, where one block a lane would leave lanes
// idle: the warp's R·MATS row-matrices are laid end to end and lane l takes their blocks l,
// l + 32, ... (row-matrix k = i / nb, block b = i % nb); each term goes to its row-matrix's slot
// b in shared memory (slots past nb are 0) and the butterfly sums each row-matrix's slots. Each
// slot holds one term, added to 0 as the host's accumulator is: the same sums.
template <int FMT, int MATS, int R, bool WIDE>
__device__ __forceinline__ void rows_dot_q8_spread(const unsigned char* const mats[MATS], const int rows[R],
                                                   int rb, int cols, float out[MATS][R]) {
    __shared__ float slots[WARPS * ROWS_PER_WARP * MATS * 32];
    const int lane = threadIdx.x & 31, nb = cols / Q8_BLOCK;
    const signed char* q = reinterpret_cast<const signed char*>(act_smem);
    const float* d = reinterpret_cast<const float*>(act_smem + cols);
    const int* sums = reinterpret_cast<const int*>(act_smem + cols + 4 * (cols / Q8_BLOCK));
    float* my = slots + (threadIdx.x >> 5) * (R * MATS * 32);
#pragma unroll 4
    for (int i = lane; i < R * MATS * nb; i += 32) {
        const int k = i / nb, b = i - k * nb;
        const int r = k / MATS, m = k - r * MATS;
        const unsigned char* row = (m == 0 ? mats[0] : mats[MATS - 1]) + (u64)pick_row<R>(rows, r) * (u64)rb;
        const int4 x0 = *reinterpret_cast<const int4*>(q + b * Q8_BLOCK);
        const int4 x1 = *reinterpret_cast<const int4*>(q + b * Q8_BLOCK + 16);
        const int xw[8] = {x0.x, x0.y, x0.z, x0.w, x1.x, x1.y, x1.z, x1.w};
        my[k * 32 + b] = __fadd_rn(0.0f, block_term<FMT, WIDE>(row, b, xw, q + b * Q8_BLOCK, d[b], sums[2 * b], sums[2 * b + 1]));
    }
    __syncwarp();
#pragma unroll
    for (int r = 0; r < R; r++) {
#pragma unroll
        for (int m = 0; m < MATS; m++) out[m][r] = warp_sum(lane < nb ? my[(r * MATS + m) * 32 + lane] : 0.0f);
    }
}

// Q8_0's words a lane holds while its warp stages a pass: a pass of 32 blocks is 272 words.
#define Q8_0_STAGE_WORDS (32 * Q8_0_BYTES / 4)
#define Q8_0_WORDS_PER_LANE ((Q8_0_STAGE_WORDS + 31) / 32)

// Block `lane` of a pass staged as words (block l at byte 34·l): its f16 scale and its 32 bytes
// as eight words. An odd block starts half a word in.
__device__ __forceinline__ void staged_block(const u32* stage, int lane, u32& scale, u32 w[8]) {
    const int first = 8 * lane + (lane >> 1);
    const bool odd = (lane & 1) != 0;
    u32 v[9];
#pragma unroll
    for (int k = 0; k < 9; k++) v[k] = stage[first + k];
    scale = odd ? (v[0] >> 16) : (v[0] & 0xffffu);
#pragma unroll
    for (int k = 0; k < 8; k++) w[k] = odd ? v[k + 1] : __funnelshift_r(v[k], v[k + 1], 16);
}

// `rows_dot_q8_as` for Q8_0 rows aligned to 4 bytes (a whole number of words: an even number of
// blocks). A lane's block is 34 bytes, so lanes reading their own blocks would each touch 32
// places 34 bytes apart per load; instead the warp reads a pass of a row (32 blocks, 1088
// bytes) with consecutive words, every row's pass before the first is used, and puts each row
// through its slice of shared memory (after the activations), from which each lane takes its
// block. Same terms, same order.
template <int MATS, int R>
__device__ __forceinline__ void rows_dot_q8_0_staged(const unsigned char* const mats[MATS], const int rows[R],
                                                     int rb, int cols, float out[MATS][R]) {
    const int lane = threadIdx.x & 31;
    const signed char* q = reinterpret_cast<const signed char*>(act_smem);
    const float* d = reinterpret_cast<const float*>(act_smem + cols);
    u32* stage = reinterpret_cast<u32*>(act_smem + cols + 12 * (cols / Q8_BLOCK)) + (threadIdx.x >> 5) * Q8_0_STAGE_WORDS;
    const int blocks = cols / Q8_BLOCK;
    float acc[MATS][R] = {};
    for (int base = 0; base < blocks; base += 32) {
        const int words = min(32, blocks - base) * Q8_0_BYTES / 4;
        // Row-matrix t (t / MATS the row, t % MATS the matrix): its pass's words, loaded one
        // row-matrix ahead of their use.
        const auto load = [&](int t, u32 raw[Q8_0_WORDS_PER_LANE]) {
            const u32* src = reinterpret_cast<const u32*>(mats[t % MATS] + (u64)rows[t / MATS] * (u64)rb + (u64)base * Q8_0_BYTES);
#pragma unroll
            for (int i = 0; i < Q8_0_WORDS_PER_LANE; i++) {
                const int w = lane + 32 * i;
                raw[i] = w < words ? __ldg(src + w) : 0u;
            }
        };
        u32 cur[Q8_0_WORDS_PER_LANE], next[Q8_0_WORDS_PER_LANE];
        load(0, cur);
        const int b = base + lane;
        int xw[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        float dx = 0.0f;
        if (b < blocks) {
            const int4 x0 = *reinterpret_cast<const int4*>(q + b * Q8_BLOCK);
            const int4 x1 = *reinterpret_cast<const int4*>(q + b * Q8_BLOCK + 16);
            xw[0] = x0.x; xw[1] = x0.y; xw[2] = x0.z; xw[3] = x0.w;
            xw[4] = x1.x; xw[5] = x1.y; xw[6] = x1.z; xw[7] = x1.w;
            dx = d[b];
        }
#pragma unroll
        for (int t = 0; t < MATS * R; t++) {
            if (t + 1 < MATS * R) load(t + 1, next);
#pragma unroll
            for (int i = 0; i < Q8_0_WORDS_PER_LANE; i++) {
                const int w = lane + 32 * i;
                if (w < words) stage[w] = cur[i];
            }
            __syncwarp();
            if (b < blocks) {
                u32 scale, w[8];
                staged_block(stage, lane, scale, w);
                int sum = 0;
#pragma unroll
                for (int k = 0; k < 8; k++) sum = __dp4a((int)w[k], xw[k], sum);
                const float dw = f16_to_f32(scale);
                acc[t % MATS][t / MATS] = __fadd_rn(acc[t % MATS][t / MATS], __fmul_rn(__fmul_rn(dw, dx), __int2float_rn(sum)));
            }
            __syncwarp();
#pragma unroll
            for (int i = 0; i < Q8_0_WORDS_PER_LANE; i++) cur[i] = next[i];
        }
    }
#pragma unroll
    for (int r = 0; r < R; r++) {
#pragma unroll
        for (int m = 0; m < MATS; m++) out[m][r] = warp_sum(acc[m][r]);
    }
}

// `rows_dot_q8_as` with the warp's load width, chosen once (`wide`: the rows are aligned for the
// format's wide loads, `wide_rows`), so the loop carries one width's loads. Aligned Q8_0 rows
// are staged (`rows_dot_q8_0_staged`); others go element by element.
template <int FMT, int MATS, int R>
__device__ __forceinline__ void rows_dot_q8(bool wide, const unsigned char* const mats[MATS], const int rows[R],
                                            int rb, int cols, float out[MATS][R]) {
    if constexpr (FMT == FMT_Q8_0) {
        if (wide) rows_dot_q8_0_staged<MATS, R>(mats, rows, rb, cols, out);
        else rows_dot_q8_as<FMT, MATS, R, false>(mats, rows, rb, cols, out);
    } else if constexpr (Q6_K_SPREAD && FMT == FMT_Q6_K && MATS == 1) {
        // Down's rows of fewer than 32 blocks: their terms spread over the lanes.
        if (cols / Q8_BLOCK < 32) {
            if (wide) rows_dot_q8_spread<FMT, MATS, R, true>(mats, rows, rb, cols, out);
            else rows_dot_q8_spread<FMT, MATS, R, false>(mats, rows, rb, cols, out);
        } else {
            if (wide) rows_dot_q8_as<FMT, MATS, R, true>(mats, rows, rb, cols, out);
            else rows_dot_q8_as<FMT, MATS, R, false>(mats, rows, rb, cols, out);
        }
    } else {
        if (wide) rows_dot_q8_as<FMT, MATS, R, true>(mats, rows, rb, cols, out);
        else rows_dot_q8_as<FMT, MATS, R, false>(mats, rows, rb, cols, out);
    }
}

// Programmatic dependent launch (compute capability 9.0 and up; elsewhere, and when a launch
// does not ask for it, both are no-ops). A down launched as a dependent of the gate/up before
// it may start while that gate/up still runs: its blocks are placed, look up their pair and its
// rows, then wait (`dependency_wait`) for the gate/up to finish and its writes (h) to be
// visible before they read h. A gate/up lets its dependent start (`dependents_launch`) once its
// own blocks have looked up their rows. The arithmetic does not move, so neither do the bits.
__device__ __forceinline__ void dependency_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void dependents_launch() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;");
#endif
}

// A warp's first row. Its rows are clamped to the last row (a warp past the end reads that row
// again and writes nothing), so the passes carry no row test.
template <int W = WARPS, int R = ROWS_PER_WARP>
__device__ __forceinline__ int first_row() { return (blockIdx.x * W + (threadIdx.x >> 5)) * R; }

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
    const unsigned char* const mats[2] = {gate, up};
    dependents_launch();
    float gu[2][ROWS_PER_WARP];
    if constexpr (FMT >= FMT_Q8_0) {
        quantize_shared<WARPS>(x, hidden);
        // One load width for the whole warp, chosen once: the rows' alignment.
        const bool wide = wide_rows<FMT>(gate, rb) && wide_rows<FMT>(up, rb);
        rows_dot_q8<FMT, 2, ROWS_PER_WARP>(wide, mats, rows, rb, hidden, gu);
    } else {
        // One load width for the whole warp, chosen once: the rows' alignment and x's.
        const bool wide = wide_rows<FMT>(gate, rb) && wide_rows<FMT>(up, rb) && wide_rows<FMT_F32>(reinterpret_cast<const unsigned char*>(x), 0);
        float acc[2][ROWS_PER_WARP][CHUNK] = {};
        rows_dot<FMT, 2>(wide, mats, rows, rb, x, hidden, acc);
#pragma unroll
        for (int r = 0; r < ROWS_PER_WARP; r++) {
            gu[0][r] = warp_sum(lane_reduce(acc[0][r]));
            gu[1][r] = warp_sum(lane_reduce(acc[1][r]));
        }
    }
#pragma unroll
    for (int r = 0; r < ROWS_PER_WARP; r++) {
        if ((threadIdx.x & 31) == 0 && row0 + r < ffn) h[row0 + r] = silu_mul(gu[0][r], gu[1][r]);
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
// Grid: (ceil(hidden / (WARPS * ROWS_PER_WARP)), number of pairs in `pairs`). Block:
// DownTile<FMT>::warps * 32.
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
    constexpr int R = DownTile<FMT>::rows;
    const int row0 = first_row<DownTile<FMT>::warps, R>();
    const int rb = row_bytes(FMT, ffn);
    const unsigned char* dw = resolve(pair, 2, ids, layer.experts, table, layer.slot_base, layer.slot_stride,
                                      layer.proj_offset, miss, status);
    float* part = reinterpret_cast<float*>(step.part) + (u64)pair * (u64)hidden;
    if (dw == nullptr) {
        // Reported through the status word; the output is not used.
        if (lane == 0) {
            for (int r = 0; r < R; r++)
                if (row0 + r < hidden) part[row0 + r] = 0.0f;
            __threadfence();
        }
        return;
    }
    const float* hk = reinterpret_cast<const float*>(step.h) + (u64)pair * (u64)ffn;
    int rows[R];
#pragma unroll
    for (int r = 0; r < R; r++) rows[r] = min(row0 + r, hidden - 1);
    const unsigned char* const mats[1] = {dw};
    // Nothing above reads what the gate/up before this launch writes; h is read below.
    dependency_wait();
    float out[1][R];
    if constexpr (FMT >= FMT_Q8_0) {
        quantize_shared<DownTile<FMT>::warps>(hk, ffn);
        rows_dot_q8<FMT, 1, R>(wide_rows<FMT>(dw, rb), mats, rows, rb, ffn, out);
    } else {
        const bool wide = wide_rows<FMT>(dw, rb) && wide_rows<FMT_F32>(reinterpret_cast<const unsigned char*>(hk), 0);
        float acc[1][R][CHUNK] = {};
        rows_dot<FMT, 1>(wide, mats, rows, rb, hk, ffn, acc);
#pragma unroll
        for (int r = 0; r < R; r++) out[0][r] = warp_sum(lane_reduce(acc[0][r]));
    }
#pragma unroll
    for (int r = 0; r < R; r++) {
        if (lane == 0 && row0 + r < hidden) part[row0 + r] = out[0][r];
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

extern "C" __global__ void __launch_bounds__(DownTile<FMT_Q6_K>::warps * 32)
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
