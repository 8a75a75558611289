// Matmuls that read GGUF quant blocks in place ("gguf" kernel format): the weights are the file's
// bytes (usually a view of the memory-mapped file), so a model takes its file's size in memory and a
// forward reads as many weight bytes as llama.cpp's does.
//
// Types: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, IQ4_NL (blocks of 32) and Q2_K, Q3_K, Q4_K, Q5_K, Q6_K,
// IQ4_XS, IQ3_XXS, IQ3_S, IQ2_XXS, IQ2_XS, IQ2_S, IQ1_S, IQ1_M (super-blocks of 256), with the byte
// layouts of ggml's block_* structs. Every block is decoded into 32-wide sub-blocks (`Sub`,
// gguf_blocks.h)
//   w[i] = d * s[i / 16] * c[i] + m * ms[i / 16]
// with int8 codes c (the type's offset already subtracted for the symmetric types; the signed grid
// values for the i-quants), small integer scales s per 16, a float scale d and, for Q4_1 / Q5_1 /
// Q4_K / Q5_K / Q2_K, a float zero m (ms: Q2_K's mins per 16, else 1). This is exactly what
// `gguf.quants.dequantize` computes; the low-bit decoders are in gguf_lowbit.h.
//
// Activations are those of q8_mm.cpp: each row rounded to int8 per 32 inputs with scale
// max|x| / 127 (llama.cpp does the same for its Q8_0-type dot products); a sub-block's sum of
// products is exact in int32, then scaled and accumulated in float32. Q4_K, Q5_K and Q6_K (most of
// a Q4_K_M / Q5_K_M file) take activations rounded per 256 inputs instead and sum a whole
// super-block in int32, as llama.cpp's Q8_K dot products do (gguf_k256.h). Each weight block is decoded
// once for up to 4 rows of activations, so a forward over a few drafted positions reads the weights
// once; over more than kTiledRows rows (prefill) a tile of super-block rows is decoded once for all
// of them. Either way the arithmetic per row is the same: every row's result is independent of the
// other rows and of M, and the same input gives the same bits.
//
// Q4_K and Q5_0 matrices of a multiple of 8 rows are normally repacked at load (types Q4_K_X8,
// Q5_0_X8, gguf_x8.h): 8 rows interleaved so that the int32 lanes of a dot product are 8 weight rows,
// every M taking the same loop; 1.6-1.8x the products per second of the file layout here.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include "common.h"
#include "gguf_blocks.h"
#include "gguf_k256.h"
#include "gguf_lowbit.h"
#include "gguf_x8.h"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>
#include <vector>

namespace gguf_blocks {

// Q4_K / Q5_K: the 6-bit scale and min of sub-block j from the 12 packed bytes.
inline void scale_min_k4(int j, const uint8_t* q, int& sc, int& m) {
  if (j < 4) {
    sc = q[j] & 63;
    m = q[j + 4] & 63;
  } else {
    sc = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
    m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
  }
}

// Sub-block j (0 for the 32-wide types, 0..7 for the K types) of the block at `b`.
inline void decode_sub(int64_t type, const uint8_t* b, int j, Sub& o) {
  o.s[0] = o.s[1] = 1;
  o.ms[0] = o.ms[1] = 1;
  o.m = 0.f;
  switch (type) {
    case Q8_0:
      o.d = f16(b);
      std::memcpy(o.c, b + 2, 32);
      return;
    case Q4_0:
    case Q4_1: {
      const bool zero = type == Q4_1;
      const uint8_t* qs = b + (zero ? 4 : 2);
      o.d = f16(b);
      if (zero) o.m = f16(b + 2);
      const int off = zero ? 0 : 8;
      for (int i = 0; i < 16; ++i) {
        o.c[i] = int8_t((qs[i] & 0xF) - off);
        o.c[i + 16] = int8_t((qs[i] >> 4) - off);
      }
      return;
    }
    case Q5_0:
    case Q5_1: {
      const bool zero = type == Q5_1;
      const uint8_t* p = b + (zero ? 4 : 2);
      o.d = f16(b);
      if (zero) o.m = f16(b + 2);
      const uint32_t qh = u32(p);
      const uint8_t* qs = p + 4;
      const int off = zero ? 0 : 16;
      for (int i = 0; i < 16; ++i) {
        o.c[i] = int8_t(((qs[i] & 0xF) | (((qh >> i) & 1) << 4)) - off);
        o.c[i + 16] = int8_t(((qs[i] >> 4) | (((qh >> (i + 16)) & 1) << 4)) - off);
      }
      return;
    }
    case Q4_K:
    case Q5_K: {
      int sc, mn;
      scale_min_k4(j, b + 4, sc, mn);
      o.d = f16(b) * float(sc);
      o.m = -(f16(b + 2) * float(mn));
      const bool five = type == Q5_K;
      const uint8_t* qh = b + 16;
      const uint8_t* qs = b + (five ? 48 : 16) + 32 * (j / 2);
      const int shift = (j % 2) * 4;
      for (int i = 0; i < 32; ++i) {
        int v = (qs[i] >> shift) & 0xF;
        if (five) v |= ((qh[i] >> j) & 1) << 4;
        o.c[i] = int8_t(v);
      }
      return;
    }
    case Q6_K: {
      const int half = j / 4, k = j % 4;
      const uint8_t* ql = b + 64 * half + (k % 2) * 32;
      const uint8_t* qh = b + 128 + 32 * half;
      const int8_t* sc = reinterpret_cast<const int8_t*>(b + 192) + 8 * half + 2 * k;
      o.d = f16(b + 208);
      o.s[0] = sc[0];
      o.s[1] = sc[1];
      const int lshift = (k / 2) * 4, hshift = 2 * k;
      for (int i = 0; i < 32; ++i) o.c[i] = int8_t((((ql[i] >> lshift) & 0xF) | (((qh[i] >> hshift) & 3) << 4)) - 32);
      return;
    }
    default:
      decode_sub_lowbit(type, b, j, o);
  }
}

struct Acts {
  const int8_t* q;    // [M, K]
  const float* d;     // [M, K/32]
  const float* s;     // [M, K/32]: d * sum of the codes
  const int16_t* bs;  // [M, K/16]: sums of the codes per 16 (for Q2_K's per-16 mins)
  int64_t K;
};

// out[m * ldo + n] for weight rows [n0, n1) of one matrix and MB activation rows.
template <int MB>
void rows_scalar(int64_t type, const uint8_t* w, int64_t pitch, const Acts& a, int64_t n0, int64_t n1, float* out,
                 int64_t ldo, const int64_t* idx) {
  const Layout L = layout_of(type);
  const int64_t nblk = a.K / L.elems, subs = L.elems / 32, nb = a.K / 32;
  Sub sub;
  for (int64_t n = n0; n < n1; ++n) {
    float acc[MB] = {};
    for (int64_t blk = 0; blk < nblk; ++blk) {
      const uint8_t* bp = w + (idx ? idx[n] : n) * pitch + blk * L.bytes;
      for (int j = 0; j < subs; ++j) {
        decode_sub(type, bp, j, sub);
        const int64_t b = blk * subs + j;
        for (int m = 0; m < MB; ++m) {
          const int8_t* x = a.q + m * a.K + b * 32;
          int32_t lo = 0, hi = 0;
          for (int i = 0; i < 16; ++i) lo += int32_t(sub.c[i]) * x[i];
          for (int i = 16; i < 32; ++i) hi += int32_t(sub.c[i]) * x[i];
          const int32_t isum = lo * sub.s[0] + hi * sub.s[1];
          // = sub.m * a.s[m * nb + b] bit for bit when ms = {1, 1}
          const int16_t* bs = a.bs + m * 2 * nb + 2 * b;
          const float zero = sub.m * (a.d[m * nb + b] * float(sub.ms[0] * bs[0] + sub.ms[1] * bs[1]));
          acc[m] += float(isum) * (sub.d * a.d[m * nb + b]) + zero;
        }
      }
    }
    for (int m = 0; m < MB; ++m) out[m * ldo + n] = acc[m];
  }
}

#if GG_AVX2
using native::hsum;

template <int T>
inline void decode_vec(const uint8_t* b, VBlock& o) {
  const __m256i ones = _mm256_set1_epi16(1);
  if constexpr (T == Q8_0) {
    o.n = 1;
    o.d[0] = f16(b);
    o.m[0] = 0.f;
    o.s[0] = ones;
    o.c[0] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + 2));
  } else if constexpr (T == Q4_0 || T == Q4_1) {
    o.n = 1;
    o.d[0] = f16(b);
    o.s[0] = ones;
    if constexpr (T == Q4_0) {  // codes kept unsigned: the -8 offset is a zero of -8 d
      o.m[0] = -8.f * o.d[0];
      o.c[0] = nibbles16(b + 2);
    } else {
      o.m[0] = f16(b + 2);
      o.c[0] = nibbles16(b + 4);
    }
  } else if constexpr (T == Q5_0 || T == Q5_1) {
    o.n = 1;
    o.d[0] = f16(b);
    o.s[0] = ones;
    const uint8_t* p = b + (T == Q5_1 ? 4 : 2);
    const __m256i v = _mm256_or_si256(nibbles16(p + 4), bit4_from_bits(u32(p)));
    if constexpr (T == Q5_0) {  // codes kept unsigned: the -16 offset is a zero of -16 d
      o.m[0] = -16.f * o.d[0];
      o.c[0] = v;
    } else {
      o.m[0] = f16(b + 2);
      o.c[0] = v;
    }
  } else {
    decode_vec_lowbit<T>(b, o);
  }
}

// Codes that are never negative go straight into maddubs' unsigned operand.
template <int T>
constexpr bool unsigned_codes() {
  return T == Q4_0 || T == Q4_1 || T == Q5_0 || T == Q5_1 || T == Q2_K;
}
// A zero per 32 (applied with the activations' per-32 sums); Q2_K's zeros are per 16.
template <int T>
constexpr bool has_zero() {
  return unsigned_codes<T>() && T != Q2_K;
}
// Types whose decoders always give the scales per 16 as 1 (the sub-block's whole scale is d).
template <int T>
constexpr bool unit_scales() {
  return T == Q8_0 || T == Q4_0 || T == Q4_1 || T == Q5_0 || T == Q5_1 || T == IQ4_NL || T == IQ2_XXS || T == IQ3_XXS;
}

// Sub-block b of every row accumulates into acc[b % 2][m]: two independent chains of FMAs, so
// one row of activations is not held up by the FMA latency. The order of the additions is the
// same for any number of rows, so each row's result is too.
// US: the scales per 16 are 1 (unit_scales<T>), so with VNNI one dpbusd gives the int32 sums
// (the same integers as maddubs then madd by ones: a pair never exceeds 2 * 128 * 127).
template <int MB, bool US>
inline void dot_sub(const __m256i c, const __m256i ac, const __m256i s, float d, float zm, bool unsigned_c,
                    bool with_zero, const Acts& a, int64_t b, int64_t nb, __m256* acc, float* zacc) {
  for (int m = 0; m < MB; ++m) {
    const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.q + m * a.K + b * 32));
    const __m256i xs = unsigned_c ? xv : _mm256_sign_epi8(xv, c);
    __m256i p;
#if GG_K256_VNNI
    if constexpr (US) {
      p = dp_u8s8(ac, xs);
    } else {
      p = _mm256_madd_epi16(_mm256_maddubs_epi16(ac, xs), s);
    }
#else
    p = _mm256_madd_epi16(_mm256_maddubs_epi16(ac, xs), s);
#endif
    acc[m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(d * a.d[m * nb + b]), acc[m]);
    if (with_zero) zacc[m] += zm * a.s[m * nb + b];
  }
}

// One decoded 32-wide sub-block kept for reuse (what decode_vec gives for it, unchanged), and
// Q2_K's per-block mins.
struct alignas(32) PSub {
  __m256i c, s;
  float d, m;
};
struct alignas(32) PMins {
  __m256i ms;
  float dm;
};

// Weight rows [n0, n1) decoded once into ps (and pm for Q2_K), row by row, block by block.
template <int T>
void decode_tile(const uint8_t* w, int64_t pitch, int64_t K, int64_t n0, int64_t n1, PSub* ps, PMins* pm) {
  constexpr Layout L = layout_of(T);
  constexpr int subs = L.elems / 32;
  const int64_t nblk = K / L.elems;
  VBlock blk;
  for (int64_t n = n0; n < n1; ++n) {
    for (int64_t bi = 0; bi < nblk; ++bi) {
      decode_vec<T>(w + n * pitch + bi * L.bytes, blk);
      PSub* o = ps + ((n - n0) * nblk + bi) * subs;
      for (int j = 0; j < subs; ++j) o[j] = {blk.c[j], blk.s[j], blk.d[j], blk.m[j]};
      if constexpr (T == Q2_K) pm[(n - n0) * nblk + bi] = {blk.ms, blk.dm};
    }
  }
}

// With P false each block is decoded here; with P rows [n0, n1) come decoded by decode_tile
// (ps, pm start at row n0). The arithmetic is the same either way, so is every bit of the result.
// P is a template parameter so that the decode path (1-8 rows) carries no branch for the tiled one.
template <int T, int MB, bool P = false>
void rows_avx2(const uint8_t* w, int64_t pitch, const Acts& a, int64_t n0, int64_t n1, float* out, int64_t ldo,
               const int64_t* idx, const PSub* ps = nullptr, const PMins* pm = nullptr) {
  constexpr Layout L = layout_of(T);
  constexpr int subs = L.elems / 32;
  constexpr bool uc = unsigned_codes<T>(), wz = has_zero<T>();
  const int64_t nblk = a.K / L.elems, nb = a.K / 32;
  VBlock blk;
  auto sub = [&](const __m256i c, const __m256i s, float d, float zm, int64_t b, __m256* acc, float* zacc) {
    dot_sub<MB, unit_scales<T>()>(c, uc ? c : _mm256_sign_epi8(c, c), s, d, zm, uc, wz, a, b, nb, acc, zacc);
  };
  for (int64_t n = n0; n < n1; ++n) {
    __m256 even[MB], odd[MB], zero16[MB];
    float zacc[MB];
    for (int m = 0; m < MB; ++m) {
      even[m] = odd[m] = zero16[m] = _mm256_setzero_ps();
      zacc[m] = 0.f;
    }
    const uint8_t* row = w + (idx ? idx[n] : n) * pitch;
    const PSub* prow = P ? ps + (n - n0) * nb : nullptr;
    // sub-block j of block bi into acc
    auto one = [&](int64_t bi, int j, __m256* acc) {
      const int64_t b = bi * subs + j;
      if constexpr (P) {
        const PSub& p = prow[b];
        sub(p.c, p.s, p.d, p.m, b, acc, zacc);
      } else {
        sub(blk.c[j], blk.s[j], blk.d[j], blk.m[j], b, acc, zacc);
      }
    };
    auto load = [&](int64_t bi) {
      if constexpr (!P) decode_vec<T>(row + bi * L.bytes, blk);
    };
    if constexpr (subs == 1) {
      int64_t bi = 0;
      for (; bi + 1 < nblk; bi += 2) {
        load(bi);
        one(bi, 0, even);
        load(bi + 1);
        one(bi + 1, 0, odd);
      }
      if (bi < nblk) {
        load(bi);
        one(bi, 0, even);
      }
    } else {
      for (int64_t bi = 0; bi < nblk; ++bi) {
        load(bi);
        for (int j = 0; j < subs; j += 2) {
          one(bi, j, even);
          one(bi, j + 1, odd);
        }
        if constexpr (T == Q2_K) {  // the 16 mins: lane j = its two per-16 sums for sub-block j
          const __m256i bms = P ? pm[(n - n0) * nblk + bi].ms : blk.ms;
          const __m256 dm = _mm256_set1_ps(P ? pm[(n - n0) * nblk + bi].dm : blk.dm);
          for (int m = 0; m < MB; ++m) {
            const __m256i bs = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.bs + m * 2 * nb + bi * 16));
            const __m256 ad = _mm256_mul_ps(_mm256_loadu_ps(a.d + m * nb + bi * 8), dm);
            zero16[m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_madd_epi16(bms, bs)), ad, zero16[m]);
          }
        }
      }
    }
    for (int m = 0; m < MB; ++m) {
      float y = hsum(_mm256_add_ps(even[m], odd[m])) + zacc[m];
      if constexpr (T == Q2_K) y += hsum(zero16[m]);
      out[m * ldo + n] = y;
    }
  }
}

// Many activation rows: weight rows [n0, n1) are decoded once per tile into a buffer of at most
// ~512 KB (per thread) and every group of 4 activation rows reads the tile from there, instead of
// decoding every block again for each group. Same arithmetic as rows_avx2 without a buffer, so the
// same bits for each row, whatever M.
template <int T>
void rows_tiled(const uint8_t* w, int64_t pitch, const Acts& a, int64_t M, int64_t n0, int64_t n1, float* out,
                int64_t ldo) {
  constexpr Layout L = layout_of(T);
  const int64_t nb = a.K / 32, nblk = a.K / L.elems;
  const int64_t tile = std::max<int64_t>(4, (512 << 10) / (nb * int64_t(sizeof(PSub))));
  // kept per thread between calls: a fresh buffer of this size would be page-faulted in every call
  thread_local std::vector<PSub> ps;
  thread_local std::vector<PMins> pm;
  const int64_t rows = std::min(tile, n1 - n0);
  if (int64_t(ps.size()) < rows * nb) ps.resize(rows * nb);
  if (T == Q2_K && int64_t(pm.size()) < rows * nblk) pm.resize(rows * nblk);
  for (int64_t t0 = n0; t0 < n1; t0 += tile) {
    const int64_t t1 = std::min(n1, t0 + tile);
    decode_tile<T>(w, pitch, a.K, t0, t1, ps.data(), pm.data());
    for (int64_t m0 = 0; m0 < M; m0 += 4) {
      const int64_t mb = std::min<int64_t>(4, M - m0);
      const Acts am{a.q + m0 * a.K, a.d + m0 * nb, a.s + m0 * nb, a.bs + m0 * 2 * nb, a.K};
      float* om = out + m0 * ldo;
      switch (mb) {
        case 1: rows_avx2<T, 1, true>(w, pitch, am, t0, t1, om, ldo, nullptr, ps.data(), pm.data()); break;
        case 2: rows_avx2<T, 2, true>(w, pitch, am, t0, t1, om, ldo, nullptr, ps.data(), pm.data()); break;
        case 3: rows_avx2<T, 3, true>(w, pitch, am, t0, t1, om, ldo, nullptr, ps.data(), pm.data()); break;
        default: rows_avx2<T, 4, true>(w, pitch, am, t0, t1, om, ldo, nullptr, ps.data(), pm.data()); break;
      }
    }
  }
}

void rows_tiled_any(int64_t type, const uint8_t* w, int64_t pitch, const Acts& a, int64_t M, int64_t n0, int64_t n1,
                    float* out, int64_t ldo) {
  switch (type) {
    case Q4_0: return rows_tiled<Q4_0>(w, pitch, a, M, n0, n1, out, ldo);
    case Q4_1: return rows_tiled<Q4_1>(w, pitch, a, M, n0, n1, out, ldo);
    case Q5_0: return rows_tiled<Q5_0>(w, pitch, a, M, n0, n1, out, ldo);
    case Q5_1: return rows_tiled<Q5_1>(w, pitch, a, M, n0, n1, out, ldo);
    case Q8_0: return rows_tiled<Q8_0>(w, pitch, a, M, n0, n1, out, ldo);
    case Q2_K: return rows_tiled<Q2_K>(w, pitch, a, M, n0, n1, out, ldo);
    case Q3_K: return rows_tiled<Q3_K>(w, pitch, a, M, n0, n1, out, ldo);
    case IQ4_NL: return rows_tiled<IQ4_NL>(w, pitch, a, M, n0, n1, out, ldo);
    case IQ4_XS: return rows_tiled<IQ4_XS>(w, pitch, a, M, n0, n1, out, ldo);
    case IQ3_XXS: return rows_tiled<IQ3_XXS>(w, pitch, a, M, n0, n1, out, ldo);
    case IQ3_S: return rows_tiled<IQ3_S>(w, pitch, a, M, n0, n1, out, ldo);
    case IQ2_XXS: return rows_tiled<IQ2_XXS>(w, pitch, a, M, n0, n1, out, ldo);
    case IQ2_XS: return rows_tiled<IQ2_XS>(w, pitch, a, M, n0, n1, out, ldo);
    case IQ2_S: return rows_tiled<IQ2_S>(w, pitch, a, M, n0, n1, out, ldo);
    case IQ1_S: return rows_tiled<IQ1_S>(w, pitch, a, M, n0, n1, out, ldo);
    default: return rows_tiled<IQ1_M>(w, pitch, a, M, n0, n1, out, ldo);
  }
}

template <int MB>
void rows_vec(int64_t type, const uint8_t* w, int64_t pitch, const Acts& a, int64_t n0, int64_t n1, float* out,
              int64_t ldo, const int64_t* idx) {
  switch (type) {
    case Q4_0: return rows_avx2<Q4_0, MB>(w, pitch, a, n0, n1, out, ldo, idx);
    case Q4_1: return rows_avx2<Q4_1, MB>(w, pitch, a, n0, n1, out, ldo, idx);
    case Q5_0: return rows_avx2<Q5_0, MB>(w, pitch, a, n0, n1, out, ldo, idx);
    case Q5_1: return rows_avx2<Q5_1, MB>(w, pitch, a, n0, n1, out, ldo, idx);
    case Q8_0: return rows_avx2<Q8_0, MB>(w, pitch, a, n0, n1, out, ldo, idx);
    case Q2_K: return rows_avx2<Q2_K, MB>(w, pitch, a, n0, n1, out, ldo, idx);
    case Q3_K: return rows_avx2<Q3_K, MB>(w, pitch, a, n0, n1, out, ldo, idx);
    case IQ4_NL: return rows_avx2<IQ4_NL, MB>(w, pitch, a, n0, n1, out, ldo, idx);
    case IQ4_XS: return rows_avx2<IQ4_XS, MB>(w, pitch, a, n0, n1, out, ldo, idx);
    case IQ3_XXS: return rows_avx2<IQ3_XXS, MB>(w, pitch, a, n0, n1, out, ldo, idx);
    case IQ3_S: return rows_avx2<IQ3_S, MB>(w, pitch, a, n0, n1, out, ldo, idx);
    case IQ2_XXS: return rows_avx2<IQ2_XXS, MB>(w, pitch, a, n0, n1, out, ldo, idx);
    case IQ2_XS: return rows_avx2<IQ2_XS, MB>(w, pitch, a, n0, n1, out, ldo, idx);
    case IQ2_S: return rows_avx2<IQ2_S, MB>(w, pitch, a, n0, n1, out, ldo, idx);
    case IQ1_S: return rows_avx2<IQ1_S, MB>(w, pitch, a, n0, n1, out, ldo, idx);
    default: return rows_avx2<IQ1_M, MB>(w, pitch, a, n0, n1, out, ldo, idx);
  }
}
#endif

template <int MB>
void rows_any(bool vec, int64_t type, const uint8_t* w, int64_t pitch, const Acts& a, int64_t n0, int64_t n1,
              float* out, int64_t ldo, const int64_t* idx = nullptr) {
#if GG_AVX2
  if (vec) return rows_vec<MB>(type, w, pitch, a, n0, n1, out, ldo, idx);
#endif
  rows_scalar<MB>(type, w, pitch, a, n0, n1, out, ldo, idx);
}

struct Part {
  const uint8_t* w;
  int64_t pitch, type, n, start;  // rows n, output columns [start, start + n)
};

std::vector<Part> check_parts(const std::vector<torch::Tensor>& ws, const std::vector<int64_t>& types, int64_t K,
                              int64_t& total) {
  TORCH_CHECK(!ws.empty() && ws.size() == types.size(), "gguf_mm: one type per weight");
  std::vector<Part> parts;
  total = 0;
  for (size_t i = 0; i < ws.size(); ++i) {
    const auto& w = ws[i];
    if (is_x8(types[i])) {  // repacked Q4_K / Q5_0: [N / 8, K / block * group bytes]
      const int64_t gb = x8_group_bytes(types[i]), be = x8_block_elems(types[i]);
      TORCH_CHECK(w.dim() == 2 && w.scalar_type() == torch::kUInt8 && w.is_contiguous() && w.is_cpu(),
                  "gguf_mm: a repacked weight must be a contiguous uint8 [N / 8, bytes] CPU tensor");
      TORCH_CHECK(K % be == 0 && w.size(1) == K / be * gb, "gguf_mm: repacked weight ", i, " has groups of ",
                  w.size(1), " bytes; ", K, " inputs take ", K / be * gb);
      parts.push_back({w.data_ptr<uint8_t>(), w.stride(0), types[i], kX8Rows * w.size(0), total});
      total += kX8Rows * w.size(0);
      continue;
    }
    const Layout L = layout_of(types[i]);
    TORCH_CHECK(L.elems > 0, "gguf_mm: unsupported GGUF type ", types[i]);
    TORCH_CHECK(w.dim() == 2 && w.scalar_type() == torch::kUInt8 && w.stride(1) == 1 && w.is_cpu(),
                "gguf_mm: weights must be uint8 [N, bytes per row] CPU tensors with contiguous rows");
    TORCH_CHECK(K % L.elems == 0 && w.size(1) == K / L.elems * L.bytes, "gguf_mm: weight ", i, " has rows of ",
                w.size(1), " bytes; ", K, " inputs of type ", types[i], " take ", K / L.elems * L.bytes);
    parts.push_back({w.data_ptr<uint8_t>(), w.stride(0), types[i], w.size(0), total});
    total += w.size(0);
  }
  return parts;
}

// Above this many activation rows (prefill chunks) gguf_mm decodes each tile of weight rows of the
// super-block types once for all rows (rows_tiled); at or below it (decoding, verifying drafts), and
// for the 32-wide types (cheap to decode: measured no faster tiled, Q8_0 slower), each group of 4
// rows decodes the blocks itself. Both give the same bits, so the choice is speed only.
constexpr int64_t kTiledRows = 8;

// The activations of one call, rounded the ways its weights need: per 32 inputs for most types,
// per 256 for Q4_K / Q5_K / Q6_K (gguf_k256.h). Each is made only if some weight needs it.
struct CallActs {
  std::optional<native::QuantizedActs> a32;
  std::optional<Acts256> a256;
  int64_t K;

  CallActs(const torch::Tensor& x, const std::vector<int64_t>& types) : K(x.size(1)) {
    const auto wide = [](int64_t t) { return is_k256(t) || t == Q4_K_X8; };
    const bool k256 = std::any_of(types.begin(), types.end(), wide);
    const bool other = std::any_of(types.begin(), types.end(), [&](int64_t t) { return !wide(t); });
    const auto xf = x.to(torch::kFloat32).contiguous();
    if (other) a32.emplace(xf.data_ptr<float>(), xf.size(0), K);
    if (k256) a256.emplace(xf.data_ptr<float>(), xf.size(0), K);
  }
  Acts at32(int64_t m0) const {
    const int64_t nb = K / 32;
    return {a32->q.data() + m0 * K, a32->d.data() + m0 * nb, a32->s.data() + m0 * nb, a32->bs.data() + m0 * 2 * nb, K};
  }
  A256 at256(int64_t m0) const {
    return {a256->q.data() + m0 * K, a256->d.data() + m0 * (K / 256), a256->bs.data() + m0 * (K / 16), K};
  }
};

// Weight rows [r0, r1) of one matrix times MB activation rows from m0, into out (row stride ldo).
template <int MB>
void rows_of(bool vec, int64_t type, const uint8_t* w, int64_t pitch, const CallActs& acts, int64_t m0, int64_t r0,
             int64_t r1, float* out, int64_t ldo, const int64_t* idx = nullptr) {
  if (is_k256(type)) return rows_k256_any<MB>(vec, type, w, pitch, acts.at256(m0), r0, r1, out, ldo, idx);
  rows_any<MB>(vec, type, w, pitch, acts.at32(m0), r0, r1, out, ldo, idx);
}

}  // namespace gguf_blocks

// x [M, K] (any float dtype) times each weight (uint8 [N_i, bytes per row] of GGUF blocks of
// types[i]) -> float32 [M, sum N_i], the weights' outputs side by side.
torch::Tensor gguf_mm(const torch::Tensor& x, const std::vector<torch::Tensor>& ws, const std::vector<int64_t>& types,
                      bool vectorized) {
  using namespace gguf_blocks;
  TORCH_CHECK(x.dim() == 2, "gguf_mm: x must be 2-D");
  const int64_t M = x.size(0), K = x.size(1);
  TORCH_CHECK(K % 32 == 0, "gguf_mm: inputs must be a multiple of 32");
  int64_t N = 0;
  const auto parts = check_parts(ws, types, K, N);
  auto out = torch::empty({M, N}, x.options().dtype(torch::kFloat32));
  if (M == 0 || N == 0) return out;
  const CallActs acts(x, types);
  float* o = out.data_ptr<float>();
  const int64_t row_bytes = std::max<int64_t>(1, K);  // ~ bytes of weights per row (int8 granularity)
  // tiles of weight rows small enough to stay in L2 while every group of 4 activation rows passes
  const int64_t tile = std::max<int64_t>(16, (256 << 10) / row_bytes);
  // at least ~256K weights per chunk: smaller matrices run on the calling thread
  const int64_t grain = std::max<int64_t>(64, (int64_t(1) << 18) / (row_bytes * std::min<int64_t>(M, 4)));
  at::parallel_for(0, N, grain, [&](int64_t c0, int64_t c1) {
    for (const Part& p : parts) {
      const int64_t lo = std::max(c0, p.start), hi = std::min(c1, p.start + p.n);
      if (lo >= hi) continue;
      if (is_x8(p.type)) {  // the groups whose first row is in [lo, hi): each group in one chunk
        const int64_t g0 = (lo - p.start + kX8Rows - 1) / kX8Rows, g1 = (hi - p.start + kX8Rows - 1) / kX8Rows;
        if (p.type == Q4_K_X8) {
          rows_x8(vectorized, p.w, acts.at256(0), M, g0, g1, o + p.start, N);
        } else {
          const Acts a = acts.at32(0);
          rows_x8_50(vectorized, p.w, A32{a.q, a.d, a.bs, a.K}, M, g0, g1, o + p.start, N);
        }
        continue;
      }
#if GG_AVX2
      if (vectorized && M > kTiledRows && layout_of(p.type).elems == 256) {
        if (is_k256(p.type)) {
          rows_k256_tiled_any(p.type, p.w, p.pitch, acts.at256(0), M, lo - p.start, hi - p.start, o + p.start, N);
        } else {
          rows_tiled_any(p.type, p.w, p.pitch, acts.at32(0), M, lo - p.start, hi - p.start, o + p.start, N);
        }
        continue;
      }
#endif
      for (int64_t t0 = lo; t0 < hi; t0 += tile) {
        const int64_t t1 = std::min(hi, t0 + tile);
        for (int64_t m0 = 0; m0 < M; m0 += 4) {
          const int64_t mb = std::min<int64_t>(4, M - m0);
          float* om = o + m0 * N + p.start;
          const int64_t r0 = t0 - p.start, r1 = t1 - p.start;
          switch (mb) {
            case 1: rows_of<1>(vectorized, p.type, p.w, p.pitch, acts, m0, r0, r1, om, N); break;
            case 2: rows_of<2>(vectorized, p.type, p.w, p.pitch, acts, m0, r0, r1, om, N); break;
            case 3: rows_of<3>(vectorized, p.type, p.w, p.pitch, acts, m0, r0, r1, om, N); break;
            default: rows_of<4>(vectorized, p.type, p.w, p.pitch, acts, m0, r0, r1, om, N); break;
          }
        }
      }
    }
  });
  return out;
}

// Rows `ids` of a GGUF block matrix (uint8 [N, bytes per row]) dequantized to float32 [len(ids), K].
torch::Tensor gguf_rows(const torch::Tensor& w, int64_t type, const torch::Tensor& ids, int64_t K) {
  using namespace gguf_blocks;
  TORCH_CHECK(!is_x8(type), "gguf_rows: a repacked matrix has no rows to read; use its file blocks");
  int64_t total = 0;
  check_parts({w}, {type}, K, total);
  TORCH_CHECK(ids.dim() == 1 && ids.scalar_type() == torch::kLong, "gguf_rows: ids must be 1-D int64");
  auto idc = ids.contiguous();
  const int64_t n = idc.size(0);
  const int64_t* ip = idc.data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i) TORCH_CHECK(ip[i] >= 0 && ip[i] < total, "gguf_rows: row ", ip[i], " out of range");
  auto out = torch::empty({n, K}, torch::dtype(torch::kFloat32));
  float* o = out.data_ptr<float>();
  const Layout L = layout_of(type);
  const uint8_t* base = w.data_ptr<uint8_t>();
  const int64_t pitch = w.stride(0), nblk = K / L.elems, subs = L.elems / 32;
  const bool zero = has_zero_term(type);  // adding a zero of 0 would turn -0 into +0
  at::parallel_for(0, n, std::max<int64_t>(1, (int64_t(1) << 16) / K), [&](int64_t r0, int64_t r1) {
    Sub s;
    for (int64_t r = r0; r < r1; ++r) {
      float* orow = o + r * K;
      for (int64_t bi = 0; bi < nblk; ++bi) {
        for (int j = 0; j < subs; ++j) {
          decode_sub(type, base + ip[r] * pitch + bi * L.bytes, j, s);
          float* y = orow + (bi * subs + j) * 32;
          for (int i = 0; i < 32; ++i) {
            const float v = s.d * float(s.s[i / 16]) * float(s.c[i]);
            y[i] = zero ? v + s.m * float(s.ms[i / 16]) : v;
          }
        }
      }
    }
  });
  return out;
}

// For each row m of x [M, K], its dot products with the weight rows ids[m, :] -> float32 [M, n]:
// a sparse head (the candidates of a centroid head) read straight from the blocks. Each product is
// the one `gguf_mm` computes for that row and weight row.
torch::Tensor gguf_mm_rows(const torch::Tensor& x, const torch::Tensor& w, int64_t type, const torch::Tensor& ids,
                           bool vectorized) {
  using namespace gguf_blocks;
  TORCH_CHECK(x.dim() == 2 && ids.dim() == 2 && ids.size(0) == x.size(0) && ids.scalar_type() == torch::kLong,
              "gguf_mm_rows: x [M, K] and int64 ids [M, n]");
  const int64_t M = x.size(0), K = x.size(1), n = ids.size(1);
  TORCH_CHECK(K % 32 == 0, "gguf_mm_rows: inputs must be a multiple of 32");
  TORCH_CHECK(!is_x8(type), "gguf_mm_rows: a repacked matrix has no rows to gather; use its file blocks");
  int64_t N = 0;
  const auto parts = check_parts({w}, {type}, K, N);
  auto idc = ids.contiguous();
  const int64_t* ip = idc.data_ptr<int64_t>();
  for (int64_t i = 0; i < M * n; ++i) TORCH_CHECK(ip[i] >= 0 && ip[i] < N, "gguf_mm_rows: row ", ip[i], " out of range");
  auto out = torch::empty({M, n}, x.options().dtype(torch::kFloat32));
  if (M == 0 || n == 0) return out;
  const CallActs acts(x, {type});
  float* o = out.data_ptr<float>();
  const int64_t grain = std::max<int64_t>(64, (int64_t(1) << 18) / K);
  for (int64_t m = 0; m < M; ++m) {
    at::parallel_for(0, n, grain, [&](int64_t r0, int64_t r1) {
      rows_of<1>(vectorized, type, parts[0].w, parts[0].pitch, acts, m, r0, r1, o + m * n, 0, ip + m * n);
    });
  }
  return out;
}

// A Q4_K or Q5_0 matrix (uint8 [N, K / block * block bytes], N a multiple of 8) in the layout of
// gguf_x8.h: uint8 [N / 8, K / block * group bytes], which gguf_mm takes with type 1000 + type.
torch::Tensor gguf_repack(const torch::Tensor& w, int64_t type) {
  using namespace gguf_blocks;
  TORCH_CHECK(type == Q4_K || type == Q5_0,
              "gguf_repack: only Q4_K and Q5_0 (types 12, 6) have a repacked layout, not type ", type);
  const Layout L = layout_of(type);
  const int64_t gb = x8_group_bytes(1000 + type);
  TORCH_CHECK(w.dim() == 2 && w.scalar_type() == torch::kUInt8 && w.stride(1) == 1 && w.is_cpu() &&
                  w.size(1) % L.bytes == 0,
              "gguf_repack: a uint8 [N, K / ", L.elems, " * ", L.bytes, "] CPU tensor of blocks with contiguous rows");
  const int64_t N = w.size(0), nb = w.size(1) / L.bytes;
  TORCH_CHECK(N % kX8Rows == 0, "gguf_repack: ", N, " rows are not a multiple of ", kX8Rows);
  auto out = torch::empty({N / kX8Rows, nb * gb}, torch::dtype(torch::kUInt8));
  const uint8_t* src = w.data_ptr<uint8_t>();
  uint8_t* dst = out.data_ptr<uint8_t>();
  const int64_t pitch = w.stride(0);
  at::parallel_for(0, N / kX8Rows, 16, [&](int64_t g0, int64_t g1) {
    for (int64_t g = g0; g < g1; ++g) {
      if (type == Q4_K) {
        repack_q4k_x8(src + g * kX8Rows * pitch, pitch, nb, dst + g * nb * gb);
      } else {
        repack_q50_x8(src + g * kX8Rows * pitch, pitch, nb, dst + g * nb * gb);
      }
    }
  });
  return out;
}
