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
// loaded with 16-byte vectors or element by element. So the output is bit-identical to the run
// with every expert resident.
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

// An IEEE half widened to f32, exactly (expertslab-std's `ffn::order::f16_to_f32`).
__device__ __forceinline__ float f16_to_f32(u32 h) {
    const u32 sign = (h & 0x8000u) << 16;
    const u32 exponent = (h >> 10) & 0x1fu;
    const u32 mantissa = h & 0x3ffu;
    float magnitude;
    if (exponent == 0u) {
        magnitude = __fmul_rn((float)mantissa, __uint_as_float(0x33800000u));  // · 2^−24, exact
    } else if (exponent == 31u) {
        magnitude = __uint_as_float(0x7f800000u | (mantissa << 13));
    } else {
        magnitude = __uint_as_float(((exponent + 112u) << 23) | (mantissa << 13));
    }
    return __uint_as_float(__float_as_uint(magnitude) | sign);
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

// Eight weights of a row starting at element j (a multiple of CHUNK), zero past `cols`.
// `vec`: the row starts 16-byte aligned and its length in bytes is a multiple of 16.
template <int FMT>
__device__ __forceinline__ void load_chunk(const unsigned char* row, int j, int cols, bool vec, float w[CHUNK]) {
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
        if (vec && j + CHUNK <= cols) {
            uint4 v = *reinterpret_cast<const uint4*>(p);
            u32 words[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
            for (int i = 0; i < 4; i++) {
                w[2 * i] = bf16_to_f32(words[i] & 0xffffu);
                w[2 * i + 1] = bf16_to_f32(words[i] >> 16);
            }
        } else {
#pragma unroll
            for (int e = 0; e < CHUNK; e++) w[e] = (j + e < cols) ? bf16_to_f32((u32)p[e]) : 0.0f;
        }
    } else {
        const float* p = reinterpret_cast<const float*>(row) + j;
        if (vec && j + CHUNK <= cols) {
            float4 a = *reinterpret_cast<const float4*>(p);
            float4 b = *reinterpret_cast<const float4*>(p + 4);
            w[0] = a.x; w[1] = a.y; w[2] = a.z; w[3] = a.w;
            w[4] = b.x; w[5] = b.y; w[6] = b.z; w[7] = b.w;
        } else {
#pragma unroll
            for (int e = 0; e < CHUNK; e++) w[e] = (j + e < cols) ? p[e] : 0.0f;
        }
    }
}

// Eight activations starting at element j, zero past `cols`; `vec`: x is 16-byte aligned.
__device__ __forceinline__ void load_x(const float* x, int j, int cols, bool vec, float v[CHUNK]) {
    if (vec && j + CHUNK <= cols) {
        float4 a = *reinterpret_cast<const float4*>(x + j);
        float4 b = *reinterpret_cast<const float4*>(x + j + 4);
        v[0] = a.x; v[1] = a.y; v[2] = a.z; v[3] = a.w;
        v[4] = b.x; v[5] = b.y; v[6] = b.z; v[7] = b.w;
    } else {
#pragma unroll
        for (int e = 0; e < CHUNK; e++) v[e] = (j + e < cols) ? x[j + e] : 0.0f;
    }
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

__device__ __forceinline__ bool vectorisable(const unsigned char* base, int bytes_per_row) {
    return ((reinterpret_cast<u64>(base) | (u64)bytes_per_row) & 15ull) == 0ull;
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
};

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

    const int warp = threadIdx.x >> 5;
    const int lane = threadIdx.x & 31;
    const int row0 = (blockIdx.x * WARPS + warp) * ROWS_PER_WARP;
    const int rb = row_bytes(FMT, hidden);
    const bool vec = vectorisable(gate, rb) && vectorisable(up, rb);
    const bool xvec = vectorisable(reinterpret_cast<const unsigned char*>(x), 0);

    float acc_g[ROWS_PER_WARP][CHUNK];
    float acc_u[ROWS_PER_WARP][CHUNK];
#pragma unroll
    for (int r = 0; r < ROWS_PER_WARP; r++) {
#pragma unroll
        for (int e = 0; e < CHUNK; e++) { acc_g[r][e] = 0.0f; acc_u[r][e] = 0.0f; }
    }

    // Every lane takes every block (its elements past `hidden` are 0 · 0).
#pragma unroll 2
    for (int base = 0; base < hidden; base += BLOCK) {
        const int j = base + lane * CHUNK;
        float xv[CHUNK];
        load_x(x, j, hidden, xvec, xv);
#pragma unroll
        for (int r = 0; r < ROWS_PER_WARP; r++) {
            const int row = row0 + r;
            if (row < ffn) {
                float wg[CHUNK];
                float wu[CHUNK];
                load_chunk<FMT>(gate + (u64)row * (u64)rb, j, hidden, vec, wg);
                load_chunk<FMT>(up + (u64)row * (u64)rb, j, hidden, vec, wu);
#pragma unroll
                for (int e = 0; e < CHUNK; e++) {
                    acc_g[r][e] = fmaf(wg[e], xv[e], acc_g[r][e]);
                    acc_u[r][e] = fmaf(wu[e], xv[e], acc_u[r][e]);
                }
            }
        }
    }
#pragma unroll
    for (int r = 0; r < ROWS_PER_WARP; r++) {
        const float g = warp_sum(lane_reduce(acc_g[r]));
        const float u = warp_sum(lane_reduce(acc_u[r]));
        const int row = row0 + r;
        if (lane == 0 && row < ffn) h[row] = silu_mul(g, u);
    }
}

// Each pair's down output: part[pair] = down · h[pair].
// Grid: (ceil(hidden / (WARPS * ROWS_PER_WARP)), number of pairs in `pairs`). Block: WARPS * 32.
template <int FMT>
__device__ void down(const LayerArgs& layer, const StepArgs& step, const int* pairs) {
    const int pair = pairs[blockIdx.y];
    const int* ids = reinterpret_cast<const int*>(step.ids);
    const int* table = reinterpret_cast<const int*>(layer.table);
    const u64* miss = reinterpret_cast<const u64*>(step.miss);
    u32* status = reinterpret_cast<u32*>(step.status);
    const int hidden = step.hidden;
    const int ffn = step.ffn;
    const int warp = threadIdx.x >> 5;
    const int lane = threadIdx.x & 31;
    const int row0 = (blockIdx.x * WARPS + warp) * ROWS_PER_WARP;
    const int rb = row_bytes(FMT, ffn);
    const unsigned char* dw = resolve(pair, 2, ids, layer.experts, table, layer.slot_base, layer.slot_stride,
                                      layer.proj_offset, miss, status);
    float* part = reinterpret_cast<float*>(step.part) + (u64)pair * (u64)hidden;
    if (dw == nullptr) {
        // Reported through the status word; the output is not used.
        if (lane == 0) {
            for (int r = 0; r < ROWS_PER_WARP; r++)
                if (row0 + r < hidden) part[row0 + r] = 0.0f;
        }
        return;
    }
    const float* hk = reinterpret_cast<const float*>(step.h) + (u64)pair * (u64)ffn;
    const bool vec = vectorisable(dw, rb);
    const bool hvec = vectorisable(reinterpret_cast<const unsigned char*>(hk), 0);
    float acc[ROWS_PER_WARP][CHUNK];
#pragma unroll
    for (int r = 0; r < ROWS_PER_WARP; r++) {
#pragma unroll
        for (int e = 0; e < CHUNK; e++) acc[r][e] = 0.0f;
    }
#pragma unroll 2
    for (int base = 0; base < ffn; base += BLOCK) {
        const int j = base + lane * CHUNK;
        float hv[CHUNK];
        load_x(hk, j, ffn, hvec, hv);
#pragma unroll
        for (int r = 0; r < ROWS_PER_WARP; r++) {
            const int row = row0 + r;
            if (row < hidden) {
                float w[CHUNK];
                load_chunk<FMT>(dw + (u64)row * (u64)rb, j, ffn, vec, w);
#pragma unroll
                for (int e = 0; e < CHUNK; e++) acc[r][e] = fmaf(w[e], hv[e], acc[r][e]);
            }
        }
    }
#pragma unroll
    for (int r = 0; r < ROWS_PER_WARP; r++) {
        const float d = warp_sum(lane_reduce(acc[r]));
        const int row = row0 + r;
        if (lane == 0 && row < hidden) part[row] = d;
    }
}

// y[token] = sum over k, in k order, of weight[k] * part[token, k].
// Grid: (ceil(hidden / blockDim.x), tokens).
extern "C" __global__ void moe_combine(const StepArgs step) {
    const int row = blockIdx.x * blockDim.x + threadIdx.x;
    const int token = blockIdx.y;
    if (row >= step.hidden) return;
    const float* weights = reinterpret_cast<const float*>(step.weights);
    const float* part = reinterpret_cast<const float*>(step.part);
    float out = 0.0f;
    for (int k = 0; k < step.top_k; k++) {
        const int pair = token * step.top_k + k;
        out = fmaf(weights[pair], part[(u64)pair * (u64)step.hidden + (u64)row], out);
    }
    reinterpret_cast<float*>(step.y)[(u64)token * (u64)step.hidden + (u64)row] = out;
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
