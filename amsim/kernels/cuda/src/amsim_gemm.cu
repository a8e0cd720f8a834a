// amsim_gemm.cu: CUDA kernels of the CuPy backend (planned in amsim/kernels/cuda/_plan.py).
//
// Every kernel is bit-identical to the golden model (amsim/_golden.py, docs/semantics.md):
//   - each output is the float32 sum over k = 0..K-1 in order, starting from +0.0, one rounding per add
//     (no split-K, no reassociation);
//   - products follow amsim_product.cuh. The fast path multiplies a power-of-two scale into a table value,
//     which is exact as long as the operand exponents are "tame" (see amsim_operand_code); because that
//     product is exact, fma(scale_a, t, acc) rounds exactly once, like the separate multiply and add of the
//     semantics, so the fma is bit-identical and saves an instruction. Operands that are not tame (Inf, NaN,
//     extreme exponents) flag their row of A / column of B, and amsim_gemm_fixup_f32 recomputes every
//     flagged output through the scalar path afterwards.
//   - zero padding of partial tiles is harmless: a padded operand has code 0 (scale +0), so it adds a +-0,
//     and a sum that starts at +0.0 is never -0.0, so adding +-0 never changes it.
// All float arithmetic goes through amsim_fadd / amsim_fmul / amsim_fma (amsim_product.cuh): explicit PTX that
// keeps subnormals even though CuPy compiles with -ftz=true, and is never contracted. -fmad=false (_source.py)
// guards anything else.
//
// Layout codes (template parameter LAYOUT): bit 1 set = A is stored transposed (K x M, element (i, k) at
// k * lda + i), bit 0 set = B is stored transposed (N x K, element (k, j) at j * ldb + k). 0 = NN, 1 = NT,
// 2 = TN, 3 = TT. Transposes are never materialised.
//
// Tile sizes come from _config.py (KERNEL_DEFINES) so that the launcher and the kernels cannot disagree.
#include "amsim_product.cuh"

#if !defined(AMSIM_EXP_WARPS) || !defined(AMSIM_EXP_TM) || !defined(AMSIM_EXP_BK) || !defined(AMSIM_GAT_BK) || \
    !defined(AMSIM_E16_WARPS) || !defined(AMSIM_E16_TM) || !defined(AMSIM_E16_BK) || !defined(AMSIM_WIDE_TM)
#error "compile amsim_gemm.cu through amsim.kernels.cuda._source, which defines the tile sizes"
#endif

// Dynamic shared memory (all kernels use only dynamic shared memory; the host emulation in the tests
// redefines this macro).
#ifndef AMSIM_DYN_SMEM
#define AMSIM_DYN_SMEM(name) extern __shared__ __align__(16) unsigned char name[]
#endif

// Two 16-bit halves into one word: the low halves of x and y (lo = true) or their high halves, x's first.
// One PRMT on the device; the compiler does not always find it for the shift-and-mask form.
template <bool LO>
__device__ __forceinline__ unsigned int amsim_pack_halves(unsigned int x, unsigned int y) {
#if defined(__CUDA_ARCH__)
    return __byte_perm(x, y, LO ? 0x5410 : 0x7632);
#else
    return LO ? ((x & 0xFFFFu) | (y << 16)) : ((x >> 16) | (y & 0xFFFF0000u));
#endif
}

template <int LAYOUT>
struct amsim_layout {
    static constexpr bool a_t = (LAYOUT & 2) != 0;
    static constexpr bool b_t = (LAYOUT & 1) != 0;
};

// An operand tile of BR "rows" (rows of A, or columns of B) by BK contraction steps, stored in shared memory
// k-major: s[k * BR + r]. KCONTIG: the operand is stored with k contiguous (element (r, k) at r * ld + k),
// otherwise r is contiguous (k * ld + r); consecutive threads walk the contiguous index, so loads coalesce.
template <bool KCONTIG, int BR, int BK, int THREADS>
struct amsim_tile {
    static constexpr int ELEMS = BR * BK;
    static constexpr int PER_THREAD = (ELEMS + THREADS - 1) / THREADS;

    static __device__ __forceinline__ void coords(int e, int& r, int& k) {
        if (KCONTIG) {
            k = e % BK;
            r = e / BK;
        } else {
            r = e % BR;
            k = e / BR;
        }
    }

    static __device__ __forceinline__ long long offset(int r, int k, long long ld) {
        return KCONTIG ? (long long)r * ld + k : (long long)k * ld + r;
    }

    // Fetch this thread's share of the tile at (r0, k0) into registers; outside the matrix: `pad`.
    template <typename T>
    static __device__ __forceinline__ void load(T (&raw)[PER_THREAD], const T* __restrict__ x, long long ld,
                                                int r0, int nr, int k0, int nk, int tid, T pad) {
#pragma unroll
        for (int s = 0; s < PER_THREAD; ++s) {
            const int e = tid + s * THREADS;
            raw[s] = pad;
            if (e < ELEMS) {
                int r, k;
                coords(e, r, k);
                if (r0 + r < nr && k0 + k < nk) raw[s] = x[offset(r0 + r, k0 + k, ld)];
            }
        }
    }

    // Round and decode the fetched float32 values into fast-path codes; flag the row of any special operand.
    template <int M>
    static __device__ __forceinline__ void store_codes(const float (&raw)[PER_THREAD], unsigned int* s_codes,
                                                       int* flag, int r0, int tid, bool trunc, int lo, int hi) {
#pragma unroll
        for (int s = 0; s < PER_THREAD; ++s) {
            const int e = tid + s * THREADS;
            if (e < ELEMS) {
                int r, k;
                coords(e, r, k);
                bool special;
                const unsigned int code =
                    amsim_operand_code(amsim_round_bits(amsim_f2u(raw[s]), M, trunc), M, lo, hi, &special);
                s_codes[k * BR + r] = code;
                if (special) flag[r0 + r] = 1;  // padding is +0.0, never special, so r0 + r is in range
            }
        }
    }

    // Like store_codes, but hands (k, r, code) to `put`, for kernels that keep more than the code.
    template <int M, typename Put>
    static __device__ __forceinline__ void decode(const float (&raw)[PER_THREAD], int* flag, int r0, int tid,
                                                  bool trunc, int lo, int hi, Put put) {
#pragma unroll
        for (int s = 0; s < PER_THREAD; ++s) {
            const int e = tid + s * THREADS;
            if (e < ELEMS) {
                int r, k;
                coords(e, r, k);
                bool special;
                const unsigned int code =
                    amsim_operand_code(amsim_round_bits(amsim_f2u(raw[s]), M, trunc), M, lo, hi, &special);
                put(k, r, code);
                if (special) flag[r0 + r] = 1;
            }
        }
    }

    template <typename T>
    static __device__ __forceinline__ void store_raw(const T (&raw)[PER_THREAD], T* s_idx, int tid) {
#pragma unroll
        for (int s = 0; s < PER_THREAD; ++s) {
            const int e = tid + s * THREADS;
            if (e < ELEMS) {
                int r, k;
                coords(e, r, k);
                s_idx[k * BR + r] = raw[s];
            }
        }
    }
};

// ---------------------------------------------------------------------------------------------------------
// Shared by the expanded-table kernels (expand, expand16, wide, lutw): one contraction step over a thread's TM
// rows, whose codes (scale | T-row offset) are at ak, reading its 16-byte chunk (q16) of each row's T row in tk
// and folding it into the row's accumulators (amsim_fold below).
// ---------------------------------------------------------------------------------------------------------
__device__ __forceinline__ int amsim_add(int acc, int v) { return acc + v; }
__device__ __forceinline__ float amsim_add(float acc, float v) { return amsim_fadd(acc, v); }
template <typename T>
__device__ __forceinline__ T amsim_bits_as(unsigned int u);
template <>
__device__ __forceinline__ int amsim_bits_as<int>(unsigned int u) { return (int)u; }
template <>
__device__ __forceinline__ float amsim_bits_as<float>(unsigned int u) { return amsim_u2f(u); }

// Float32 T, 4 columns per chunk: acc[c] = fma(scale_a, T[c], acc[c]).
__device__ __forceinline__ void amsim_fold(float (&a)[4], float sa, uint4 v) {
    const unsigned int w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int c = 0; c < 4; ++c) a[c] = amsim_fma(sa, amsim_u2f(w[c]), a[c]);
}

// Bfloat16 T, 8 columns per chunk, each unpacked by one integer op (low half shifted up, high half masked).
__device__ __forceinline__ void amsim_fold(float (&a)[8], float sa, uint4 v) {
    const unsigned int w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int c = 0; c < 4; ++c) {
        a[2 * c] = amsim_fma(sa, amsim_u2f(w[c] << 16), a[2 * c]);
        a[2 * c + 1] = amsim_fma(sa, amsim_u2f(w[c] & 0xFFFF0000u), a[2 * c + 1]);
    }
}

// SCALED = false (table GEMMs, lutw): acc[c] = acc[c] + T[c], int32 or float32 in k order.
template <typename T, int TM, int NC, bool SCALED = true>
__device__ __forceinline__ void amsim_t_step(T (&acc)[TM][NC], const unsigned char* tk, const unsigned int* ak,
                                             unsigned int q16) {
    static_assert(TM % 4 == 0, "codes are read four rows at a time");
#pragma unroll
    for (int t4 = 0; t4 < TM; t4 += 4) {
        const uint4 w4 = *reinterpret_cast<const uint4*>(ak + t4);
        const unsigned int ws[4] = {w4.x, w4.y, w4.z, w4.w};
#pragma unroll
        for (int q = 0; q < 4; ++q) {
            const uint4 v = *reinterpret_cast<const uint4*>(tk + ((ws[q] & AMSIM_FRAC_MASK) ^ q16));
            if constexpr (SCALED) {
                amsim_fold(acc[t4 + q], amsim_u2f(ws[q] & AMSIM_SCALE_MASK), v);
            } else {
                T* a = acc[t4 + q];
                const unsigned int w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
                for (int c = 0; c < NC; ++c) a[c] = amsim_add(a[c], amsim_bits_as<T>(w[c]));
            }
        }
    }
}

template <typename T, int TM, int NC>
__device__ __forceinline__ void amsim_zero(T (&acc)[TM][NC]) {
#pragma unroll
    for (int t = 0; t < TM; ++t) {
#pragma unroll
        for (int c = 0; c < NC; ++c) acc[t][c] = T(0);
    }
}

// Rows r0 .. r0 + TM - 1 and columns jc .. jc + NC - 1 of the accumulators to C, where inside the matrix.
template <typename T, int TM, int NC>
__device__ __forceinline__ void amsim_store_rows(const T (&acc)[TM][NC], T* C, long long ldc, int r0, int rows,
                                                 int jc, int cols) {
#pragma unroll
    for (int t = 0; t < TM; ++t) {
        if (r0 + t < rows) {
            T* crow = C + (long long)(r0 + t) * ldc + jc;
#pragma unroll
            for (int c = 0; c < NC; ++c) {
                if (jc + c < cols) crow[c] = acc[t][c];
            }
        }
    }
}

// Byte offset of row ia of a 128-byte-row expanded table (expand, expand16) | the XOR swizzle of its 16-byte
// chunks, (ia >> 2) & 7: rows written four at a time by consecutive lanes land in distinct banks.
__host__ __device__ __forceinline__ unsigned int amsim_e16_row(unsigned int ia) {
    return ia * 128u | (((ia >> 2) & 7u) << 4);
}

// ---------------------------------------------------------------------------------------------------------
// Float GEMM, "expand" kernel (2 <= m <= 7, any table): for each contraction step k of a tile, the table is
// expanded against the decoded B operand, T[k][r][j] = lut[r, ib(k, j)] * scale_b(k, j) (exact), so that every
// output update is one 16-byte shared load of four T values plus four fmas:
//     C[i, j..j+3] = fma(scale_a(i, k), T[k][ia(i, k)][j..j+3], C[i, j..j+3]).
// Block: WARPS warps, 32 columns (BN) and 4 * TM * WARPS rows (BM); 8 lanes share a row (a 128-byte row of T,
// one 16-byte chunk each), a thread owns TM consecutive rows. T rows are swizzled like expand16's (chunk
// position ^= (r >> 2) & 7) and A arrives pre-encoded in the same format (amsim_encode_a<M, A_T, 0>), so the
// expansion's stores and the main loop's loads are conflict-free and a T address is one logic op. Building T:
// a unit is 4 rows x 4 columns, four 16-byte reads of the staged transposed table (lanes walk groups of four
// rows: contiguous) and 16 multiplies; it costs ~2**m / BM of the main loop, hence the tall block.
// Shared memory: the transposed table (2**2m floats), T (BK * 2**m rows of 128 bytes), the codes.
// ---------------------------------------------------------------------------------------------------------
template <int M, int B_T>
__global__ void __launch_bounds__(AMSIM_EXP_WARPS * 32, 1)
amsim_gemm_expand_f32(const unsigned int* __restrict__ Acode, const float* __restrict__ B, float* __restrict__ C,
                      const float* __restrict__ lut_t, int* __restrict__ colflag, int rows, int cols, int depth,
                      long long ldac, long long ldb, long long ldc, long long stride_ac, long long stride_b,
                      long long stride_c, int truncate, int b_lo, int b_hi) {
    static_assert(M >= 2 && M <= 7, "the expand kernel keeps the whole table in shared memory: 2 <= m <= 7");
    constexpr int NL = 1 << M;
    constexpr unsigned int MASK = NL - 1;
    constexpr int THREADS = AMSIM_EXP_WARPS * 32;
    constexpr int TM = AMSIM_EXP_TM;
    constexpr int BK = AMSIM_EXP_BK;
    constexpr int BN = 32;
    constexpr int ROWB = 4 * BN;
    constexpr int BM = AMSIM_EXP_WARPS * 4 * TM;
    constexpr int RQ = NL / 4;
    static_assert(TM % 4 == 0, "codes are read four rows at a time");
    using TileA = amsim_tile<false, BM, BK, THREADS>;  // codes: rows contiguous
    using TileB = amsim_tile<B_T != 0, BN, BK, THREADS>;

    AMSIM_DYN_SMEM(smem);
    float* s_lut_t = reinterpret_cast<float*>(smem);                             // [NL][NL]: [ib][r] = lut[r, ib]
    unsigned char* s_t = reinterpret_cast<unsigned char*>(s_lut_t + NL * NL);    // [BK][NL] rows of ROWB bytes
    unsigned int* s_a = reinterpret_cast<unsigned int*>(s_t + BK * NL * ROWB);   // [BK][BM] scale | row offset
    unsigned int* s_boff = s_a + BK * BM;                                        // [BK][BN] ib * NL * 4
    float* s_bs = reinterpret_cast<float*>(s_boff + BK * BN);                    // [BK][BN] scale_b

    const int tid = threadIdx.x;
    const long long bat = blockIdx.z;
    Acode += bat * stride_ac;
    B += bat * stride_b;
    C += bat * stride_c;
    colflag += bat * cols;
    const int i0 = blockIdx.y * BM;
    const int j0 = blockIdx.x * BN;
    const bool trunc = truncate != 0;

    for (int e = tid; e < NL * NL; e += THREADS) s_lut_t[e] = amsim_ldg(lut_t + e);

    unsigned int raw_a[TileA::PER_THREAD];
    float raw_b[TileB::PER_THREAD];
    TileA::load(raw_a, Acode, ldac, i0, rows, 0, depth, tid, 0u);  // padding: code 0 = scale +0
    TileB::load(raw_b, B, ldb, j0, cols, 0, depth, tid, 0.0f);

    float acc[TM][4];
    amsim_zero(acc);
    const int warp = tid >> 5;
    const int lane = tid & 31;
    const int rbase = warp * 4 * TM + (lane >> 3) * TM;      // this thread's rows: rbase .. rbase + TM - 1
    const unsigned int q16 = (unsigned int)(lane & 7) << 4;  // and its chunk: columns 4 * (lane & 7) + 0..3

    for (int k0 = 0; k0 < depth; k0 += BK) {
        TileA::store_raw(raw_a, s_a, tid);
        TileB::template decode<M>(raw_b, colflag, j0, tid, trunc, b_lo, b_hi,
                                  [&](int k, int j, unsigned int code) {
                                      s_boff[k * BN + j] = (code & MASK) * (NL * 4);
                                      s_bs[k * BN + j] = amsim_u2f(code & AMSIM_SCALE_MASK);
                                  });
        __syncthreads();
        // expansion: unit = (kk, 4-column chunk jq, row group rq), lanes walk rq
        for (unsigned int u = tid; u < BK * (BN / 4) * RQ; u += THREADS) {
            const unsigned int rq = u % RQ;
            const unsigned int task = u / RQ;  // kk * (BN / 4) + jq
            const unsigned int jb = task * 4;
            const unsigned char* lrow = reinterpret_cast<const unsigned char*>(s_lut_t) + 16 * rq;
            float4 v[4];
            float sb[4];
#pragma unroll
            for (int c = 0; c < 4; ++c) {
                v[c] = *reinterpret_cast<const float4*>(lrow + s_boff[jb + c]);
                sb[c] = s_bs[jb + c];
            }
            const unsigned int kk = task / (BN / 4), jq = task % (BN / 4);
            unsigned char* tk = s_t + kk * NL * ROWB;
            const unsigned int j16 = jq << 4;
            *reinterpret_cast<float4*>(tk + (amsim_e16_row(4 * rq) ^ j16)) =
                make_float4(amsim_fmul(v[0].x, sb[0]), amsim_fmul(v[1].x, sb[1]), amsim_fmul(v[2].x, sb[2]),
                            amsim_fmul(v[3].x, sb[3]));
            *reinterpret_cast<float4*>(tk + (amsim_e16_row(4 * rq + 1) ^ j16)) =
                make_float4(amsim_fmul(v[0].y, sb[0]), amsim_fmul(v[1].y, sb[1]), amsim_fmul(v[2].y, sb[2]),
                            amsim_fmul(v[3].y, sb[3]));
            *reinterpret_cast<float4*>(tk + (amsim_e16_row(4 * rq + 2) ^ j16)) =
                make_float4(amsim_fmul(v[0].z, sb[0]), amsim_fmul(v[1].z, sb[1]), amsim_fmul(v[2].z, sb[2]),
                            amsim_fmul(v[3].z, sb[3]));
            *reinterpret_cast<float4*>(tk + (amsim_e16_row(4 * rq + 3) ^ j16)) =
                make_float4(amsim_fmul(v[0].w, sb[0]), amsim_fmul(v[1].w, sb[1]), amsim_fmul(v[2].w, sb[2]),
                            amsim_fmul(v[3].w, sb[3]));
        }
        __syncthreads();
        if (k0 + BK < depth) {  // fetch the next tile while this one is being multiplied
            TileA::load(raw_a, Acode, ldac, i0, rows, k0 + BK, depth, tid, 0u);
            TileB::load(raw_b, B, ldb, j0, cols, k0 + BK, depth, tid, 0.0f);
        }
#pragma unroll  // constant T offsets per step: the row address is one logic op
        for (int kk = 0; kk < BK; ++kk) {
            const unsigned char* tk = s_t + kk * NL * ROWB;
            const unsigned int* ak = s_a + kk * BM + rbase;
            amsim_t_step(acc, tk, ak, q16);
        }
        __syncthreads();
    }

    amsim_store_rows(acc, C, ldc, i0 + rbase, rows, j0 + 4 * (lane & 7), cols);
}

// ---------------------------------------------------------------------------------------------------------
// Float GEMM, "expand16" kernel (2 <= m <= 7, tables whose entries are all normal floats with at most 7
// fraction bits, i.e. exact in bfloat16: MBM, Mitchell and truncated-exact tables are). Same idea as expand,
// with T stored as bfloat16, which halves the shared-memory bytes per product, the bound of the expand kernel
// (one 4-byte T read per product against a 128-byte-per-clock shared memory). Unpacking a bf16 into a float
// is one integer instruction; the fma stays bit-identical because T = lut * scale_b is the same exact value.
//   - Building T needs no float multiply: the table is staged as bf16 pairs lutp[ib][p] = (lut[2p, ib],
//     lut[2p+1, ib]), and multiplying a bf16 by a tame power of two is an integer add to its exponent field
//     (and its sign bit), done for both halves by one add of a * 0x10001 (no carry crosses the halves because
//     both results are valid bf16 patterns). A zero or subnormal B operand (scale +-0) gives T = 0 by a multiply
//     with keep = 0: T = word * keep + add * keep, one integer multiply-add per pair.
//   - T rows are 128 bytes (64 columns), the 16-byte chunks of row r stored at position chunk ^ ((r >> 2) & 7):
//     the expansion's float4 stores (lanes walk groups of 4 rows) and the main loop's reads (8 lanes read one
//     row) are both conflict-free. The A code carries that swizzled row offset in its low bits, so a T address
//     is one logic op: (code & 0x7FFFFF) ^ (16 * chunk).
// Block: WARPS warps, 64 columns, 4 * TM * WARPS rows; a thread owns TM consecutive rows x 8 columns.
// A arrives as codes from amsim_encode_a<M, A_T, 0> (below), k-major ([depth][rows] per batch): each code is
// decoded once instead of once per column block, and the row flags are already set.
// ---------------------------------------------------------------------------------------------------------
template <int M, int B_T>
__global__ void __launch_bounds__(AMSIM_E16_WARPS * 32, 1)
amsim_gemm_expand16_f32(const unsigned int* __restrict__ Acode, const float* __restrict__ B, float* __restrict__ C,
                        const float* __restrict__ lut_p, int* __restrict__ colflag, int rows, int cols, int depth,
                        long long ldac, long long ldb, long long ldc, long long stride_ac, long long stride_b,
                        long long stride_c, int truncate, int b_lo, int b_hi) {
    static_assert(M >= 2 && M <= 7, "the expand16 kernel handles 2 <= m <= 7");
    constexpr int NL = 1 << M;
    constexpr unsigned int MASK = NL - 1;
    constexpr int THREADS = AMSIM_E16_WARPS * 32;
    constexpr int TM = AMSIM_E16_TM;
    constexpr int BK = AMSIM_E16_BK;
    constexpr int BN = 64;
    constexpr int ROWB = 2 * BN;  // bytes per row of T
    constexpr int BM = AMSIM_E16_WARPS * 4 * TM;
    constexpr int RQ = NL / 4;  // groups of four table rows
    static_assert(TM % 4 == 0, "codes are read four rows at a time");
    using TileA = amsim_tile<false, BM, BK, THREADS>;  // codes: rows contiguous
    using TileB = amsim_tile<B_T != 0, BN, BK, THREADS>;

    AMSIM_DYN_SMEM(smem);
    unsigned int* s_lutp = reinterpret_cast<unsigned int*>(smem);                 // [NL][NL / 2] bf16 pairs
    unsigned char* s_t = reinterpret_cast<unsigned char*>(s_lutp + NL * NL / 2);  // [BK][NL] rows of ROWB bytes
    unsigned int* s_a = reinterpret_cast<unsigned int*>(s_t + BK * NL * ROWB);    // [BK][BM] scale | row offset
    unsigned int* s_boff = s_a + BK * BM;                                         // [BK][BN] ib * NL * 2
    unsigned int* s_bkeep = s_boff + BK * BN;                                     // [BK][BN] 0 or 1
    unsigned int* s_badd = s_bkeep + BK * BN;                                     // [BK][BN] exponent/sign add

    const int tid = threadIdx.x;
    const long long bat = blockIdx.z;
    Acode += bat * stride_ac;
    B += bat * stride_b;
    C += bat * stride_c;
    colflag += bat * cols;
    const int i0 = blockIdx.y * BM;
    const int j0 = blockIdx.x * BN;
    const bool trunc = truncate != 0;
    const unsigned int* lutp = reinterpret_cast<const unsigned int*>(lut_p);

    for (int e = tid; e < NL * NL / 2; e += THREADS) s_lutp[e] = amsim_ldg(lutp + e);

    unsigned int raw_a[TileA::PER_THREAD];
    float raw_b[TileB::PER_THREAD];
    TileA::load(raw_a, Acode, ldac, i0, rows, 0, depth, tid, 0u);  // padding: code 0 = scale +0
    TileB::load(raw_b, B, ldb, j0, cols, 0, depth, tid, 0.0f);

    float acc[TM][8];
    amsim_zero(acc);
    const int warp = tid >> 5;
    const int lane = tid & 31;
    const int rbase = warp * 4 * TM + (lane >> 3) * TM;  // this thread's rows: rbase .. rbase + TM - 1
    const unsigned int q16 = (unsigned int)(lane & 7) << 4;  // and its 16-byte chunk: columns 8 * (lane & 7) + 0..7

    for (int k0 = 0; k0 < depth; k0 += BK) {
        TileA::store_raw(raw_a, s_a, tid);
        TileB::template decode<M>(raw_b, colflag, j0, tid, trunc, b_lo, b_hi,
                                  [&](int k, int j, unsigned int code) {
                                      const unsigned int e = (code >> 23) & 0xFFu;
                                      const unsigned int a = (e - 127u) * 128u + (code >> 31) * 32768u;
                                      s_boff[k * BN + j] = (code & MASK) * (NL / 2) * 4;  // bytes
                                      s_bkeep[k * BN + j] = e != 0u;
                                      s_badd[k * BN + j] = e != 0u ? a * 0x10001u : 0u;
                                  });
        __syncthreads();
        // expansion: unit = (kk, 8-column chunk jq, row group rq), lanes walk rq
        for (unsigned int u = tid; u < BK * (BN / 8) * RQ; u += THREADS) {
            const unsigned int rq = u % RQ;  // powers of two: shifts and masks
            const unsigned int task = u / RQ;
            const unsigned int jb = task * 8;  // (kk, jq) -> kk * BN + 8 * jq
            const unsigned char* lrow = reinterpret_cast<const unsigned char*>(s_lutp) + 8 * rq;
            unsigned int w01[8], w23[8];  // column c: rows (4rq, 4rq+1) and (4rq+2, 4rq+3)
#pragma unroll
            for (int c = 0; c < 8; ++c) {
                const uint2 pw = *reinterpret_cast<const uint2*>(lrow + s_boff[jb + c]);
                const unsigned int keep = s_bkeep[jb + c], add = s_badd[jb + c];
                w01[c] = pw.x * keep + add;
                w23[c] = pw.y * keep + add;
            }
            const unsigned int kk = task / (BN / 8), jq = task % (BN / 8);
            unsigned char* trow = s_t + (kk * NL + 4 * rq) * ROWB + ((jq ^ (rq & 7u)) << 4);
            *reinterpret_cast<uint4*>(trow) = make_uint4(
                amsim_pack_halves<true>(w01[0], w01[1]), amsim_pack_halves<true>(w01[2], w01[3]),
                amsim_pack_halves<true>(w01[4], w01[5]), amsim_pack_halves<true>(w01[6], w01[7]));
            *reinterpret_cast<uint4*>(trow + ROWB) = make_uint4(
                amsim_pack_halves<false>(w01[0], w01[1]), amsim_pack_halves<false>(w01[2], w01[3]),
                amsim_pack_halves<false>(w01[4], w01[5]), amsim_pack_halves<false>(w01[6], w01[7]));
            *reinterpret_cast<uint4*>(trow + 2 * ROWB) = make_uint4(
                amsim_pack_halves<true>(w23[0], w23[1]), amsim_pack_halves<true>(w23[2], w23[3]),
                amsim_pack_halves<true>(w23[4], w23[5]), amsim_pack_halves<true>(w23[6], w23[7]));
            *reinterpret_cast<uint4*>(trow + 3 * ROWB) = make_uint4(
                amsim_pack_halves<false>(w23[0], w23[1]), amsim_pack_halves<false>(w23[2], w23[3]),
                amsim_pack_halves<false>(w23[4], w23[5]), amsim_pack_halves<false>(w23[6], w23[7]));
        }
        __syncthreads();
        if (k0 + BK < depth) {  // fetch the next tile while this one is being multiplied
            TileA::load(raw_a, Acode, ldac, i0, rows, k0 + BK, depth, tid, 0u);
            TileB::load(raw_b, B, ldb, j0, cols, k0 + BK, depth, tid, 0.0f);
        }
#pragma unroll  // constant T offsets per step: the row address is one logic op
        for (int kk = 0; kk < BK; ++kk) {
            const unsigned char* tk = s_t + kk * NL * ROWB;
            const unsigned int* ak = s_a + kk * BM + rbase;
            amsim_t_step(acc, tk, ak, q16);
        }
        __syncthreads();
    }

    amsim_store_rows(acc, C, ldc, i0 + rbase, rows, j0 + 8 * (lane & 7), cols);
}

// ---------------------------------------------------------------------------------------------------------
// Float GEMM, "wide" kernel (8 <= m <= 11): the expand scheme for tables too large for shared memory (m = 10:
// 4 MiB). For each contraction step the block reads, for each of its BN = 16 columns, the column of the table
// that the column's B operand selects (lut_t[ib], 2**m floats, contiguous, from L2), scales it by scale_b and
// stores it as T[r][j]; then every output update is a 16-byte shared load of four T values and four fmas, as
// in expand. Table traffic is 4 * 2**m bytes per (k, column) for BM = 2048 rows, i.e. 2**m / 512 bytes per
// product (2 bytes at m = 10, against ~32 bytes of a sector per product for the gather kernel's random reads).
//   - T rows are 64 bytes (16 columns, chunks of 4); row r lives in 64-byte slot r ^ ((r >> 4) & 1) with its
//     chunks swizzled by (r >> 2) & 3, which makes the expansion's float4 stores conflict-free (lanes walk
//     groups of 4 rows) and the address one logic op, (code & 0x7FFFFF) ^ (16 * chunk), as in expand16.
//   - A arrives as codes from amsim_encode_a<M, A_T, 1>: with 16 columns per block, decoding A in the GEMM would
//     cost more than the products.
//   - H16: tables whose entries are all exact normal fp16 values (MBM, Mitchell, truncated tables up to m = 10)
//     are read as fp16, half the L2 traffic. A positive normal fp16 h becomes float32 bits (h << 13) + (112 << 23);
//     times a tame power of two 2**eb with sign s that is h * 8192 + 0x38000000 + (eb << 23) + (s << 31), one
//     integer multiply-add, with keep = 0 (multiplier 0, add 0) giving T = 0 for a zero B operand.
// Block: 256 threads; 4 lanes share a row (one chunk each); a thread owns TM consecutive rows x 4 columns.
// ---------------------------------------------------------------------------------------------------------
__host__ __device__ __forceinline__ unsigned int amsim_wide_row(unsigned int ia) {
    return ((ia ^ ((ia >> 4) & 1u)) * 64u) | (((ia >> 2) & 3u) << 4);
}

template <int M, int B_T, int H16>
__global__ void __launch_bounds__(256, 1)
amsim_gemm_wide_f32(const unsigned int* __restrict__ Acode, const float* __restrict__ B, float* __restrict__ C,
                    const float* __restrict__ lut_t, int* __restrict__ colflag, int rows, int cols, int depth,
                    long long ldac, long long ldb, long long ldc, long long stride_ac, long long stride_b,
                    long long stride_c, int truncate, int b_lo, int b_hi) {
    static_assert(M >= 2 && M <= 11, "the wide kernel handles 2 <= m <= 11 (it is meant for m >= 8)");
    constexpr int NL = 1 << M;
    constexpr unsigned int MASK = NL - 1;
    constexpr int THREADS = 256;
    constexpr int TM = AMSIM_WIDE_TM;
    constexpr int BN = 16;
    constexpr int ROWB = 4 * BN;
    constexpr int BM = THREADS / 4 * TM;
    constexpr int BK = NL <= 512 ? 2 : 1;  // T: 32 / 64 / 64 / 128 KiB for m = 8 / 9 / 10 / 11
    constexpr int RQ = NL / 4;
    static_assert(TM % 4 == 0, "codes are read four rows at a time");
    using TileA = amsim_tile<false, BM, BK, THREADS>;
    using TileB = amsim_tile<B_T != 0, BN, BK, THREADS>;

    AMSIM_DYN_SMEM(smem);
    unsigned char* s_t = smem;                                                 // [BK][NL] rows of ROWB bytes
    unsigned int* s_a = reinterpret_cast<unsigned int*>(s_t + BK * NL * ROWB);  // [BK][BM] scale | row offset
    unsigned int* s_boff = s_a + BK * BM;                                       // [BK][BN] table column offset
    float* s_bs = reinterpret_cast<float*>(s_boff + BK * BN);                   // [BK][BN] scale_b (H16: keep)
    unsigned int* s_badd = reinterpret_cast<unsigned int*>(s_bs + BK * BN);     // [BK][BN] H16: exponent add

    const int tid = threadIdx.x;
    const long long bat = blockIdx.z;
    Acode += bat * stride_ac;
    B += bat * stride_b;
    C += bat * stride_c;
    colflag += bat * cols;
    const int i0 = blockIdx.y * BM;
    const int j0 = blockIdx.x * BN;
    const bool trunc = truncate != 0;
    const unsigned char* lut_bytes = reinterpret_cast<const unsigned char*>(lut_t);

    unsigned int raw_a[TileA::PER_THREAD];
    float raw_b[TileB::PER_THREAD];
    TileA::load(raw_a, Acode, ldac, i0, rows, 0, depth, tid, 0u);  // padding: code 0 = scale +0
    TileB::load(raw_b, B, ldb, j0, cols, 0, depth, tid, 0.0f);

    float acc[TM][4];
    amsim_zero(acc);
    const int rbase = (tid >> 2) * TM;                      // this thread's rows: rbase .. rbase + TM - 1
    const unsigned int q16 = (unsigned int)(tid & 3) << 4;  // and its chunk: columns 4 * (tid & 3) + 0..3

    for (int k0 = 0; k0 < depth; k0 += BK) {
        TileA::store_raw(raw_a, s_a, tid);
        TileB::template decode<M>(raw_b, colflag, j0, tid, trunc, b_lo, b_hi,
                                  [&](int k, int j, unsigned int code) {
                                      if (H16) {  // T = h * keep + add * keep, h an fp16 table entry (see above)
                                          const unsigned int e = (code >> 23) & 0xFFu;
                                          const unsigned int add =
                                              0x38000000u + ((e - 127u) << 23) + (code & 0x80000000u);
                                          s_boff[k * BN + j] = (code & MASK) * (NL * 2);
                                          s_bs[k * BN + j] = amsim_u2f(e != 0u ? 8192u : 0u);
                                          s_badd[k * BN + j] = e != 0u ? add : 0u;
                                      } else {
                                          s_boff[k * BN + j] = (code & MASK) * (NL * 4);
                                          s_bs[k * BN + j] = amsim_u2f(code & AMSIM_SCALE_MASK);
                                      }
                                  });
        __syncthreads();
        // expansion: unit = (kk, 4-column chunk jq, row group rq), lanes walk rq (coalesced table reads)
#pragma unroll 2
        for (unsigned int u = tid; u < BK * (BN / 4) * RQ; u += THREADS) {
            const unsigned int rq = u % RQ;
            const unsigned int task = u / RQ;  // kk * (BN / 4) + jq
            const unsigned int jb = task * 4;
            float4 v[4];  // column c of T, rows 4rq .. 4rq + 3: table entries times scale_b
#pragma unroll
            for (int c = 0; c < 4; ++c) {
                if (H16) {  // four fp16 entries, rebuilt as the float32 bits of entry * scale_b by integer ops
                    const uint2 h = *reinterpret_cast<const uint2*>(lut_bytes + s_boff[jb + c] + 8 * rq);
                    const unsigned int keep = amsim_f2u(s_bs[jb + c]), add = s_badd[jb + c];
                    v[c] = make_float4(amsim_u2f((h.x & 0xFFFFu) * keep + add), amsim_u2f((h.x >> 16) * keep + add),
                                       amsim_u2f((h.y & 0xFFFFu) * keep + add), amsim_u2f((h.y >> 16) * keep + add));
                } else {
                    const float4 t = *reinterpret_cast<const float4*>(lut_bytes + s_boff[jb + c] + 16 * rq);
                    const float sb = s_bs[jb + c];
                    v[c] = make_float4(amsim_fmul(t.x, sb), amsim_fmul(t.y, sb), amsim_fmul(t.z, sb),
                                       amsim_fmul(t.w, sb));
                }
            }
            const unsigned int kk = task / (BN / 4), jq = task % (BN / 4);
            unsigned char* tk = s_t + kk * NL * ROWB;
            const unsigned int j16 = jq << 4;
            *reinterpret_cast<float4*>(tk + (amsim_wide_row(4 * rq) ^ j16)) =
                make_float4(v[0].x, v[1].x, v[2].x, v[3].x);
            *reinterpret_cast<float4*>(tk + (amsim_wide_row(4 * rq + 1) ^ j16)) =
                make_float4(v[0].y, v[1].y, v[2].y, v[3].y);
            *reinterpret_cast<float4*>(tk + (amsim_wide_row(4 * rq + 2) ^ j16)) =
                make_float4(v[0].z, v[1].z, v[2].z, v[3].z);
            *reinterpret_cast<float4*>(tk + (amsim_wide_row(4 * rq + 3) ^ j16)) =
                make_float4(v[0].w, v[1].w, v[2].w, v[3].w);
        }
        __syncthreads();
        if (k0 + BK < depth) {  // fetch the next tile while this one is being multiplied
            TileA::load(raw_a, Acode, ldac, i0, rows, k0 + BK, depth, tid, 0u);
            TileB::load(raw_b, B, ldb, j0, cols, k0 + BK, depth, tid, 0.0f);
        }
#pragma unroll
        for (int kk = 0; kk < BK; ++kk) {
            const unsigned char* tk = s_t + kk * NL * ROWB;
            const unsigned int* ak = s_a + kk * BM + rbase;
            amsim_t_step(acc, tk, ak, q16);
        }
        __syncthreads();
    }

    amsim_store_rows(acc, C, ldc, i0 + rbase, rows, j0 + 4 * (tid & 3), cols);
}

// The dot kernel's codes carry the table offset in bytes (shift 2) when (2**2m - 1) * 4 fits below the exponent
// field, i.e. m <= 10; for m = 11 they carry the index.
__host__ __device__ constexpr int amsim_dot_shift(int m) { return 2 * m + 2 <= 23 ? 2 : 0; }

// ---------------------------------------------------------------------------------------------------------
// Float GEMM, "dot" kernel (any m): one output per thread, for problems with few outputs and long contractions
// (weight gradients: M x N of a few hundred, K = batch x pixels), where the tiled kernels leave most of the GPU
// idle and give each busy thread 16 to 128 outputs to run through K in sequence. Both operands arrive as
// codes from amsim_encode_a (A: FMT 2, B as B^T: FMT 3), row-major, so four products take two 16-byte loads,
// and each then one logic op for the table offset, the table read (shared memory for m <= 7, L1/L2 beyond),
// two masks, a multiply and an fma. Threads walk i fastest; a warp's B codes are mostly one row (broadcast).
// ---------------------------------------------------------------------------------------------------------
template <int M>
__global__ void __launch_bounds__(128)
amsim_gemm_dot_f32(const unsigned int* __restrict__ Acode, const unsigned int* __restrict__ Bcode,
                   float* __restrict__ C, const float* __restrict__ lut, int rows, int cols, int ldk,
                   long long ldc, long long stride_ac, long long stride_bc, long long stride_c) {
    constexpr int NL = 1 << M;
    constexpr bool LUT_SHARED = M <= 7;
    constexpr int SHIFT = amsim_dot_shift(M);
    AMSIM_DYN_SMEM(smem);
    float* s_lut = reinterpret_cast<float*>(smem);
    const long long bat = blockIdx.z;
    if (LUT_SHARED) {
        for (int e = threadIdx.x; e < NL * NL; e += blockDim.x) s_lut[e] = amsim_ldg(lut + e);
        __syncthreads();
    }
    const long long o = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (o >= (long long)rows * cols) return;
    const int i = (int)(o % rows);
    const int j = (int)(o / rows);
    // rows of ldk codes (a multiple of 4, padded with code 0, which adds +0): 16-byte loads of four steps
    const uint4* ap = reinterpret_cast<const uint4*>(Acode + bat * stride_ac + (long long)i * ldk);
    const uint4* bp = reinterpret_cast<const uint4*>(Bcode + bat * stride_bc + (long long)j * ldk);
    const unsigned char* table = LUT_SHARED ? reinterpret_cast<const unsigned char*>(s_lut)
                                            : reinterpret_cast<const unsigned char*>(lut);
    float acc = 0.0f;
    auto step = [&](unsigned int ca, unsigned int cb) {
        const unsigned int off = (ca | cb) & AMSIM_FRAC_MASK;  // (ia << m | ib) << SHIFT
        const float* pp = reinterpret_cast<const float*>(table + (SHIFT == 2 ? off : off * 4u));
        const float p = LUT_SHARED ? *pp : amsim_ldg(pp);
        acc = amsim_fma(amsim_u2f(ca & AMSIM_SCALE_MASK), amsim_fmul(p, amsim_u2f(cb & AMSIM_SCALE_MASK)), acc);
    };
#pragma unroll 2
    for (int k4 = 0; k4 < ldk / 4; ++k4) {
        const uint4 a4 = ap[k4], b4 = bp[k4];
        step(a4.x, b4.x);
        step(a4.y, b4.y);
        step(a4.z, b4.z);
        step(a4.w, b4.w);
    }
    C[bat * stride_c + (long long)i * ldc + j] = acc;
}

// Operand codes for the expand, expand16, wide and dot kernels: scale(a) | low(ia) per batch (grid.y), with
// low() the kernel's T-row byte offset and swizzle (FMT 0: amsim_e16_row, 1: amsim_wide_row, stored k-major) or
// the table-offset part (FMT 2: A's ia << m, 3: B's ib, B encoded as B^T; both scaled to bytes where that fits
// below the exponent, stored row-major so the dot kernel reads four steps at once). The operand is read in its
// stored layout (A_T: stored K x M), consecutive threads on the contiguous axis. A special operand gets code 0
// and flags its row in every one of `nflag` batches (more than one when A is broadcast over the batch and
// encoded once).
template <int M, int A_T, int FMT>
__global__ void __launch_bounds__(256)
amsim_encode_a(const float* __restrict__ A, unsigned int* __restrict__ codes, int* __restrict__ rowflag,
               int rows, int depth, long long lda, long long stride_a, long long ldcodes, long long stride_codes,
               int nflag, int truncate, int lo, int hi) {
    const long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= (long long)rows * depth) return;
    const long long bat = blockIdx.y;
    int i, k;
    if (A_T) {
        i = (int)(e % rows);
        k = (int)(e / rows);
    } else {
        k = (int)(e % depth);
        i = (int)(e / depth);
    }
    const float a = A[bat * stride_a + (A_T ? (long long)k * lda + i : (long long)i * lda + k)];
    bool special;
    const unsigned int code = amsim_operand_code(amsim_round_bits(amsim_f2u(a), M, truncate != 0), M, lo, hi, &special);
    const unsigned int ia = code & ((1u << M) - 1u);
    unsigned int low;
    if (FMT == 0) {
        low = amsim_e16_row(ia);
    } else if (FMT == 1) {
        low = amsim_wide_row(ia);
    } else if (FMT == 2) {
        low = ia << (M + amsim_dot_shift(M));  // dot kernel, A side: (ia << m | ib) << shift is the table offset
    } else {
        low = ia << amsim_dot_shift(M);  // dot kernel, B side
    }
    // expand, expand16, wide: k-major (codes[k * ldcodes + i]); dot: row-major (codes[i * ldcodes + k])
    const long long at = FMT < 2 ? (long long)k * ldcodes + i : (long long)i * ldcodes + k;
    codes[bat * stride_codes + at] = (code & AMSIM_SCALE_MASK) | low;
    if (special) {
        for (int b = 0; b < nflag; ++b) rowflag[(bat + b) * rows + i] = 1;
    }
}

// ---------------------------------------------------------------------------------------------------------
// Float GEMM, "gather" kernel (any m; the only one for m >= 8 and for small problems): 64 x 64 outputs per
// block of 256 threads, 4 x 4 per thread, table entries gathered per product, from shared memory when the
// table fits (m <= 7, up to 64 KiB) and through the read-only cache (__ldg) beyond.
// ---------------------------------------------------------------------------------------------------------
template <int M, int LAYOUT>
__global__ void __launch_bounds__(256, 2)
amsim_gemm_gather_f32(const float* __restrict__ A, const float* __restrict__ B, float* __restrict__ C,
                      const float* __restrict__ lut, int* __restrict__ rowflag, int* __restrict__ colflag,
                      int rows, int cols, int depth, long long lda, long long ldb, long long ldc,
                      long long stride_a, long long stride_b, long long stride_c, int truncate,
                      int a_lo, int a_hi, int b_lo, int b_hi) {
    constexpr int NL = 1 << M;
    constexpr unsigned int MASK = NL - 1;
    constexpr bool LUT_SHARED = M <= 7;
    constexpr int THREADS = 256;
    constexpr int BM = 64;
    constexpr int BN = 64;
    constexpr int BK = AMSIM_GAT_BK;
    using TileA = amsim_tile<!amsim_layout<LAYOUT>::a_t, BM, BK, THREADS>;
    using TileB = amsim_tile<amsim_layout<LAYOUT>::b_t, BN, BK, THREADS>;

    AMSIM_DYN_SMEM(smem);
    unsigned int* s_a = reinterpret_cast<unsigned int*>(smem);  // [BK][BM]
    unsigned int* s_b = s_a + BK * BM;                          // [BK][BN]
    float* s_lut = reinterpret_cast<float*>(s_b + BK * BN);     // [NL][NL] when LUT_SHARED

    const int tid = threadIdx.x;
    const long long bat = blockIdx.z;
    A += bat * stride_a;
    B += bat * stride_b;
    C += bat * stride_c;
    rowflag += bat * rows;
    colflag += bat * cols;
    const int i0 = blockIdx.y * BM;
    const int j0 = blockIdx.x * BN;
    const bool trunc = truncate != 0;

    if (LUT_SHARED) {
        for (int e = tid; e < NL * NL; e += THREADS) s_lut[e] = amsim_ldg(lut + e);
    }

    float raw_a[TileA::PER_THREAD];
    float raw_b[TileB::PER_THREAD];
    TileA::load(raw_a, A, lda, i0, rows, 0, depth, tid, 0.0f);
    TileB::load(raw_b, B, ldb, j0, cols, 0, depth, tid, 0.0f);

    float acc[4][4];
#pragma unroll
    for (int r = 0; r < 4; ++r) {
#pragma unroll
        for (int c = 0; c < 4; ++c) acc[r][c] = 0.0f;
    }
    const int ty = tid >> 4;
    const int tx = tid & 15;

    for (int k0 = 0; k0 < depth; k0 += BK) {
        TileA::template store_codes<M>(raw_a, s_a, rowflag, i0, tid, trunc, a_lo, a_hi);
        TileB::template store_codes<M>(raw_b, s_b, colflag, j0, tid, trunc, b_lo, b_hi);
        __syncthreads();
        if (k0 + BK < depth) {
            TileA::load(raw_a, A, lda, i0, rows, k0 + BK, depth, tid, 0.0f);
            TileB::load(raw_b, B, ldb, j0, cols, k0 + BK, depth, tid, 0.0f);
        }
#pragma unroll 2  // 16 independent table loads per step; deeper unrolling spills on sm_80
        for (int kk = 0; kk < BK; ++kk) {
            const uint4 aw = *reinterpret_cast<const uint4*>(s_a + kk * BM + 4 * ty);
            const uint4 bw = *reinterpret_cast<const uint4*>(s_b + kk * BN + 4 * tx);
            const unsigned int acode[4] = {aw.x, aw.y, aw.z, aw.w};
            const unsigned int bcode[4] = {bw.x, bw.y, bw.z, bw.w};
            float sa[4], sb[4];
            unsigned int ra[4], ib[4];
#pragma unroll
            for (int q = 0; q < 4; ++q) {
                sa[q] = amsim_u2f(acode[q] & AMSIM_SCALE_MASK);
                ra[q] = (acode[q] & MASK) << M;
                sb[q] = amsim_u2f(bcode[q] & AMSIM_SCALE_MASK);
                ib[q] = bcode[q] & MASK;
            }
#pragma unroll
            for (int r = 0; r < 4; ++r) {
#pragma unroll
                for (int c = 0; c < 4; ++c) {
                    float p;
                    if (LUT_SHARED) {
                        p = s_lut[ra[r] + ib[c]];
                    } else {
                        p = amsim_ldg(lut + (ra[r] + ib[c]));
                    }
                    acc[r][c] = amsim_fma(sa[r], amsim_fmul(p, sb[c]), acc[r][c]);
                }
            }
        }
        __syncthreads();
    }

#pragma unroll
    for (int r = 0; r < 4; ++r) {
        const int i = i0 + 4 * ty + r;
        if (i < rows) {
            float* crow = C + (long long)i * ldc + j0 + 4 * tx;
#pragma unroll
            for (int c = 0; c < 4; ++c) {
                if (j0 + 4 * tx + c < cols) crow[c] = acc[r][c];
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// Exact recomputation of every output whose row of A or column of B holds a special operand (flags set by
// the GEMM kernels): the scalar semantics of amsim_product.cuh, summed in k order with float32 adds.
// Grid: x over columns, y strides over rows, z = batch.
// ---------------------------------------------------------------------------------------------------------
template <int M, int LAYOUT>
__global__ void __launch_bounds__(128)
amsim_gemm_fixup_f32(const float* __restrict__ A, const float* __restrict__ B, float* __restrict__ C,
                     const float* __restrict__ lut, const int* __restrict__ rowflag,
                     const int* __restrict__ colflag, int rows, int cols, int depth, long long lda,
                     long long ldb, long long ldc, long long stride_a, long long stride_b, long long stride_c,
                     int truncate) {
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= cols) return;
    const long long bat = blockIdx.z;
    A += bat * stride_a;
    B += bat * stride_b;
    C += bat * stride_c;
    rowflag += bat * rows;
    colflag += bat * cols;
    const bool trunc = truncate != 0;
    const bool col_special = colflag[j] != 0;
    for (int i = blockIdx.y; i < rows; i += gridDim.y) {
        if (!col_special && rowflag[i] == 0) continue;
        float acc = 0.0f;
        for (int k = 0; k < depth; ++k) {
            const float a = amsim_layout<LAYOUT>::a_t ? A[(long long)k * lda + i] : A[(long long)i * lda + k];
            const float b = amsim_layout<LAYOUT>::b_t ? B[(long long)j * ldb + k] : B[(long long)k * ldb + j];
            acc = amsim_fadd(acc, amsim_product(a, b, M, trunc, lut));
        }
        C[(long long)i * ldc + j] = acc;
    }
}

// ---------------------------------------------------------------------------------------------------------
// Table GEMM: C[i, j] = sum_k lut[ia(i, k), ib(k, j)] on operand codes (int32, in [0, 2**BITS)).
//   T = int: integer multipliers (codes = operand - lowest value); exact int32 sums (the launcher has checked
//            that K * max|LUT| fits), so the order would not matter.
//   T = float: full-operand tables of formats of at most 8 bits (entries may be NaN or Inf); float32 sums in
//            k order from +0.0, one rounding per add.
// Same tiling as the float gather kernel; the table is in shared memory for BITS <= 7 and read through __ldg
// for 8 bits. The contraction tail is cut off by the loop bound: padding with code 0 would add lut[0, 0].
// ---------------------------------------------------------------------------------------------------------

template <typename T, int BITS, int LAYOUT>
__global__ void __launch_bounds__(256, 2)
amsim_gemm_lut(const int* __restrict__ A, const int* __restrict__ B, T* __restrict__ C,
               const T* __restrict__ lut, int rows, int cols, int depth, long long lda, long long ldb,
               long long ldc, long long stride_a, long long stride_b, long long stride_c) {
    constexpr int NL = 1 << BITS;
    constexpr bool LUT_SHARED = BITS <= 7;
    constexpr int THREADS = 256;
    constexpr int BM = 64;
    constexpr int BN = 64;
    constexpr int BK = AMSIM_GAT_BK;
    using TileA = amsim_tile<!amsim_layout<LAYOUT>::a_t, BM, BK, THREADS>;
    using TileB = amsim_tile<amsim_layout<LAYOUT>::b_t, BN, BK, THREADS>;

    AMSIM_DYN_SMEM(smem);
    int* s_a = reinterpret_cast<int*>(smem);         // [BK][BM]
    int* s_b = s_a + BK * BM;                        // [BK][BN]
    T* s_lut = reinterpret_cast<T*>(s_b + BK * BN);  // [NL][NL] when LUT_SHARED

    const int tid = threadIdx.x;
    const long long bat = blockIdx.z;
    A += bat * stride_a;
    B += bat * stride_b;
    C += bat * stride_c;
    const int i0 = blockIdx.y * BM;
    const int j0 = blockIdx.x * BN;

    if (LUT_SHARED) {
        for (int e = tid; e < NL * NL; e += THREADS) s_lut[e] = amsim_ldg(lut + e);
    }

    int raw_a[TileA::PER_THREAD];
    int raw_b[TileB::PER_THREAD];
    TileA::load(raw_a, A, lda, i0, rows, 0, depth, tid, 0);
    TileB::load(raw_b, B, ldb, j0, cols, 0, depth, tid, 0);

    T acc[4][4];
#pragma unroll
    for (int r = 0; r < 4; ++r) {
#pragma unroll
        for (int c = 0; c < 4; ++c) acc[r][c] = T(0);
    }
    const int ty = tid >> 4;
    const int tx = tid & 15;

    for (int k0 = 0; k0 < depth; k0 += BK) {
        TileA::store_raw(raw_a, s_a, tid);
        TileB::store_raw(raw_b, s_b, tid);
        __syncthreads();
        if (k0 + BK < depth) {
            TileA::load(raw_a, A, lda, i0, rows, k0 + BK, depth, tid, 0);
            TileB::load(raw_b, B, ldb, j0, cols, k0 + BK, depth, tid, 0);
        }
        const int kmax = depth - k0 < BK ? depth - k0 : BK;  // uniform across the block
#pragma unroll 2  // 16 independent table loads per step already; deeper unrolling only costs registers
        for (int kk = 0; kk < kmax; ++kk) {
            const int4 aw = *reinterpret_cast<const int4*>(s_a + kk * BM + 4 * ty);
            const int4 bw = *reinterpret_cast<const int4*>(s_b + kk * BN + 4 * tx);
            const int ra[4] = {aw.x << BITS, aw.y << BITS, aw.z << BITS, aw.w << BITS};
            const int ib[4] = {bw.x, bw.y, bw.z, bw.w};
#pragma unroll
            for (int r = 0; r < 4; ++r) {
#pragma unroll
                for (int c = 0; c < 4; ++c) {
                    if (LUT_SHARED) {
                        acc[r][c] = amsim_add(acc[r][c], s_lut[ra[r] + ib[c]]);
                    } else {
                        acc[r][c] = amsim_add(acc[r][c], amsim_ldg(lut + (ra[r] + ib[c])));
                    }
                }
            }
        }
        __syncthreads();
    }

#pragma unroll
    for (int r = 0; r < 4; ++r) {
        const int i = i0 + 4 * ty + r;
        if (i < rows) {
            T* crow = C + (long long)i * ldc + j0 + 4 * tx;
#pragma unroll
            for (int c = 0; c < 4; ++c) {
                if (j0 + 4 * tx + c < cols) crow[c] = acc[r][c];
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// Table GEMM, "wide" scheme (integer multipliers and full-operand tables, 2..8-bit codes): the float wide
// kernel's structure without scales. For each contraction step the block copies, for each of its 16 columns,
// the table column its B code selects (lut_t[ib], contiguous) into T[r][j]; every output update is then a
// 16-byte shared load of four T values and four adds (int32, exact; or float32 in k order). A codes become
// T-row offsets when their tile is stored. The last stage stops at K (code 0 would add lut[0, .]).
// ---------------------------------------------------------------------------------------------------------
template <typename T>
struct alignas(16) amsim_vec4 {
    T x, y, z, w;
};

template <typename T, int BITS, int LAYOUT>
__global__ void __launch_bounds__(256, 1)
amsim_gemm_lutw(const int* __restrict__ A, const int* __restrict__ B, T* __restrict__ C,
                const T* __restrict__ lut_t, int rows, int cols, int depth, long long lda, long long ldb,
                long long ldc, long long stride_a, long long stride_b, long long stride_c) {
    static_assert(BITS >= 2 && BITS <= 8, "table codes of 2..8 bits");
    static_assert(sizeof(T) == 4, "int32 or float32 tables");
    constexpr int NL = 1 << BITS;
    constexpr int THREADS = 256;
    constexpr int TM = AMSIM_WIDE_TM;
    constexpr int BN = 16;
    constexpr int ROWB = 4 * BN;
    constexpr int BM = THREADS / 4 * TM;
    constexpr int BK = 2;
    constexpr int RQ = NL / 4;
    using TileA = amsim_tile<!amsim_layout<LAYOUT>::a_t, BM, BK, THREADS>;
    using TileB = amsim_tile<amsim_layout<LAYOUT>::b_t, BN, BK, THREADS>;

    AMSIM_DYN_SMEM(smem);
    unsigned char* s_t = smem;                                  // [BK][NL] rows of ROWB bytes
    int* s_a = reinterpret_cast<int*>(s_t + BK * NL * ROWB);    // [BK][BM] T-row offsets
    int* s_boff = s_a + BK * BM;                                // [BK][BN] ib * NL * 4

    const int tid = threadIdx.x;
    const long long bat = blockIdx.z;
    A += bat * stride_a;
    B += bat * stride_b;
    C += bat * stride_c;
    const int i0 = blockIdx.y * BM;
    const int j0 = blockIdx.x * BN;
    const unsigned char* lut_bytes = reinterpret_cast<const unsigned char*>(lut_t);

    int raw_a[TileA::PER_THREAD];
    int raw_b[TileB::PER_THREAD];
    TileA::load(raw_a, A, lda, i0, rows, 0, depth, tid, 0);
    TileB::load(raw_b, B, ldb, j0, cols, 0, depth, tid, 0);

    T acc[TM][4];
    amsim_zero(acc);
    const int rbase = (tid >> 2) * TM;
    const unsigned int q16 = (unsigned int)(tid & 3) << 4;

    for (int k0 = 0; k0 < depth; k0 += BK) {
#pragma unroll
        for (int q = 0; q < TileA::PER_THREAD; ++q) raw_a[q] = (int)amsim_wide_row((unsigned int)raw_a[q]);
#pragma unroll
        for (int q = 0; q < TileB::PER_THREAD; ++q) raw_b[q] *= NL * 4;
        TileA::store_raw(raw_a, s_a, tid);
        TileB::store_raw(raw_b, s_boff, tid);
        __syncthreads();
        for (unsigned int u = tid; u < BK * (BN / 4) * RQ; u += THREADS) {
            const unsigned int rq = u % RQ;
            const unsigned int task = u / RQ;
            const unsigned int jb = task * 4;
            using V = amsim_vec4<T>;
            V v[4];
#pragma unroll
            for (int c = 0; c < 4; ++c) v[c] = *reinterpret_cast<const V*>(lut_bytes + s_boff[jb + c] + 16 * rq);
            const unsigned int kk = task / (BN / 4), jq = task % (BN / 4);
            unsigned char* tk = s_t + kk * NL * ROWB;
            const unsigned int j16 = jq << 4;
            *reinterpret_cast<V*>(tk + (amsim_wide_row(4 * rq) ^ j16)) = V{v[0].x, v[1].x, v[2].x, v[3].x};
            *reinterpret_cast<V*>(tk + (amsim_wide_row(4 * rq + 1) ^ j16)) = V{v[0].y, v[1].y, v[2].y, v[3].y};
            *reinterpret_cast<V*>(tk + (amsim_wide_row(4 * rq + 2) ^ j16)) = V{v[0].z, v[1].z, v[2].z, v[3].z};
            *reinterpret_cast<V*>(tk + (amsim_wide_row(4 * rq + 3) ^ j16)) = V{v[0].w, v[1].w, v[2].w, v[3].w};
        }
        __syncthreads();
        if (k0 + BK < depth) {
            TileA::load(raw_a, A, lda, i0, rows, k0 + BK, depth, tid, 0);
            TileB::load(raw_b, B, ldb, j0, cols, k0 + BK, depth, tid, 0);
        }
#pragma unroll
        for (int kk = 0; kk < BK; ++kk) {
            if (k0 + kk < depth) {
                amsim_t_step<T, TM, 4, false>(acc, s_t + kk * NL * ROWB,
                                              reinterpret_cast<const unsigned int*>(s_a + kk * BM + rbase), q16);
            }
        }
        __syncthreads();
    }
    amsim_store_rows(acc, C, ldc, i0 + rbase, rows, j0 + 4 * (tid & 3), cols);
}

// ---------------------------------------------------------------------------------------------------------
// Elementwise products of equally long flat arrays (grid-stride loops, 64-bit indices).
// ---------------------------------------------------------------------------------------------------------
template <int M>
__global__ void amsim_multiply_f32(const float* __restrict__ a, const float* __restrict__ b,
                                   float* __restrict__ out, const float* __restrict__ lut, long long n,
                                   int truncate) {
    const bool trunc = truncate != 0;
    const long long step = (long long)gridDim.x * blockDim.x;
    for (long long q = (long long)blockIdx.x * blockDim.x + threadIdx.x; q < n; q += step) {
        out[q] = amsim_product(a[q], b[q], M, trunc, lut);
    }
}

// table products of operand codes (integer multipliers, full-operand float tables)
template <typename T, int BITS>
__global__ void amsim_multiply_lut(const int* __restrict__ ia, const int* __restrict__ ib, T* __restrict__ out,
                                   const T* __restrict__ lut, long long n) {
    const long long step = (long long)gridDim.x * blockDim.x;
    for (long long q = (long long)blockIdx.x * blockDim.x + threadIdx.x; q < n; q += step) {
        out[q] = amsim_ldg(lut + ((ia[q] << BITS) + ib[q]));
    }
}

// ---------------------------------------------------------------------------------------------------------
// im2col for NHWC convolution, one chunk of output pixels [p0, p0 + npix) at a time:
//   col[g][p][(kh * KW + kw) * cg + c] = x[n, oh * sh - ph + kh * dh, ow * sw - pw + kw * dw, g * cg + c]
// with pixel p0 + p = (n * OH + oh) * OW + ow, and `pad` outside the image. This column order matches HWIO
// weights reshaped to (KH * KW * cg, Cout), and it is the contraction order of the convolution.
// ---------------------------------------------------------------------------------------------------------
template <typename T>
__global__ void amsim_im2col_nhwc(const T* __restrict__ x, T* __restrict__ col, T pad, int height, int width,
                                  int channels, int out_h, int out_w, int kh_size, int kw_size, int stride_h,
                                  int stride_w, int pad_h, int pad_w, int dil_h, int dil_w, int groups, int cg,
                                  long long p0, long long npix) {
    const long long total = (long long)groups * npix * kh_size * kw_size * cg;
    const long long step = (long long)gridDim.x * blockDim.x;
    for (long long q = (long long)blockIdx.x * blockDim.x + threadIdx.x; q < total; q += step) {
        long long t = q;
        const int c = (int)(t % cg);
        t /= cg;
        const int kw = (int)(t % kw_size);
        t /= kw_size;
        const int kh = (int)(t % kh_size);
        t /= kh_size;
        const long long p = t % npix;
        const int g = (int)(t / npix);
        const long long pix = p0 + p;
        const long long n = pix / ((long long)out_h * out_w);
        const int rem = (int)(pix % ((long long)out_h * out_w));
        const int oh = rem / out_w;
        const int ow = rem % out_w;
        const int ih = oh * stride_h - pad_h + kh * dil_h;
        const int iw = ow * stride_w - pad_w + kw * dil_w;
        T v = pad;
        if (ih >= 0 && ih < height && iw >= 0 && iw < width) {
            v = x[((n * height + ih) * (long long)width + iw) * channels + (long long)g * cg + c];
        }
        col[q] = v;
    }
}
