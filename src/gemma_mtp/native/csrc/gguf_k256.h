// Q4_K, Q5_K and Q6_K against activations rounded per 256 inputs, with the super-block summed in
// int32 (what llama.cpp's K-quant dot products do with its Q8_K activations).
//
// A super-block's weights in integer form:
//   w[i] = D * S[i / 16] * q[i] + Mz * Z[i / 16]
// with unsigned codes q (Q4_K 0..15, Q5_K 0..31, Q6_K 0..63), integer scales S and zero
// multipliers Z per 16, and float D and Mz per super-block:
//   Q4_K / Q5_K: S = Z = the 6-bit scale / min of the 32-wide sub-block, D = d, Mz = -dmin
//   Q6_K: S = the int8 scale per 16, Z = -32 S, Mz = D (the -32 offset as a zero)
// This is exactly what `gguf.quants.dequantize` computes, reordered. With an activation row
// rounded to int8 codes x per 256 inputs (scale a = max|x| / 127) and per-16 code sums b,
//   sum_i w[i] * a x[i] = a * (D * sum_h S_h sum_{i in h} q x + Mz * sum_h Z_h b_h)
// where both sums are exact in int32 (|total| < 2^29 for every type here), so a super-block costs
// one float conversion per activation row instead of one per 32 inputs.
#pragma once

#include "gguf_blocks.h"

#include "common.h"

#include <cmath>
#include <cstdint>
#include <vector>

namespace gguf_blocks {

template <int T>
constexpr bool k256_type() {
  return T == Q4_K || T == Q5_K || T == Q6_K;
}
inline bool is_k256(int64_t type) { return type == Q4_K || type == Q5_K || type == Q6_K; }

// Activation rows rounded per 256 inputs: int8 codes with scale max|x| / 127 (round half to even),
// and the integer sums of the codes per 16.
struct Acts256 {
  int64_t M = 0, K = 0, nsb = 0;
  std::vector<int8_t> q;    // [M, K]
  std::vector<float> d;     // [M, K/256]
  std::vector<int16_t> bs;  // [M, K/16]

  Acts256() = default;
  Acts256(const float* x, int64_t rows, int64_t width)
      : M(rows), K(width), nsb(width / 256), q(rows * width), d(rows * (width / 256)), bs(rows * (width / 16)) {
    native::for_rows(M, K, [&](int64_t m0, int64_t m1) { round_rows(x, m0, m1); });
  }

 private:
  void round_rows(const float* x, int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; ++m) {
      for (int64_t sb = 0; sb < nsb; ++sb) {
        int sums[16];
        const float dd = native::round_group(x + m * K + sb * 256, 256, q.data() + m * K + sb * 256, sums);
        int16_t* out = bs.data() + m * (K / 16) + sb * 16;
        for (int h = 0; h < 16; ++h) out[h] = static_cast<int16_t>(sums[h]);
        d[m * nsb + sb] = dd;
      }
    }
  }
};

// A view of Acts256 rows (m0 onwards).
struct A256 {
  const int8_t* q;
  const float* d;
  const int16_t* bs;
  int64_t K;
};

// Q4_K / Q5_K: the 8 6-bit scales and the 8 mins of a super-block from its 12 packed bytes,
// as bytes sc[0..7] and mn[0..7] (ggml's get_scale_min_k4, four at a time).
inline void scales_mins_k4(const uint8_t* p, uint8_t* sc, uint8_t* mn) {
  const uint32_t u0 = u32(p), u1 = u32(p + 4), u2 = u32(p + 8);
  const uint32_t lo6 = 0x3f3f3f3fu, lo4 = 0x0f0f0f0fu, top2 = 0x03030303u;
  const uint32_t s_lo = u0 & lo6, m_lo = u1 & lo6;
  const uint32_t s_hi = (u2 & lo4) | (((u0 >> 6) & top2) << 4);
  const uint32_t m_hi = ((u2 >> 4) & lo4) | (((u1 >> 6) & top2) << 4);
  std::memcpy(sc, &s_lo, 4);
  std::memcpy(sc + 4, &s_hi, 4);
  std::memcpy(mn, &m_lo, 4);
  std::memcpy(mn + 4, &m_hi, 4);
}

// The integer form of one super-block, scalar: codes q[256], S[16], Z[16], D, Mz.
inline void decode_k256_scalar(int64_t type, const uint8_t* b, uint8_t* q, int16_t* S, int16_t* Z, float& D,
                               float& Mz) {
  if (type == Q6_K) {
    const int8_t* sc = reinterpret_cast<const int8_t*>(b + 192);
    D = f16(b + 208);
    Mz = D;
    for (int h = 0; h < 16; ++h) {
      S[h] = sc[h];
      Z[h] = int16_t(-32 * sc[h]);
    }
    for (int j = 0; j < 8; ++j) {
      const int half = j / 4, k = j % 4;
      const uint8_t* ql = b + 64 * half + (k % 2) * 32;
      const uint8_t* qh = b + 128 + 32 * half;
      const int lshift = (k / 2) * 4, hshift = 2 * k;
      for (int i = 0; i < 32; ++i) q[32 * j + i] = uint8_t(((ql[i] >> lshift) & 0xF) | (((qh[i] >> hshift) & 3) << 4));
    }
    return;
  }
  uint8_t sc[8], mn[8];
  scales_mins_k4(b + 4, sc, mn);
  D = f16(b);
  Mz = -f16(b + 2);
  for (int h = 0; h < 16; ++h) {
    S[h] = sc[h / 2];
    Z[h] = mn[h / 2];
  }
  const bool five = type == Q5_K;
  const uint8_t* qh = b + 16;
  const uint8_t* qs = b + (five ? 48 : 16);
  for (int j = 0; j < 8; ++j) {
    const int shift = (j % 2) * 4;
    for (int i = 0; i < 32; ++i) {
      int v = (qs[32 * (j / 2) + i] >> shift) & 0xF;
      if (five) v |= ((qh[i] >> j) & 1) << 4;
      q[32 * j + i] = uint8_t(v);
    }
  }
}

// out[m * ldo + n] for weight rows [n0, n1) and MB activation rows, the portable way.
template <int MB>
void rows_k256_scalar(int64_t type, const uint8_t* w, int64_t pitch, const A256& a, int64_t n0, int64_t n1,
                      float* out, int64_t ldo, const int64_t* idx) {
  const Layout L = layout_of(type);
  const int64_t nsb = a.K / 256;
  uint8_t q[256];
  int16_t S[16], Z[16];
  float D, Mz;
  for (int64_t n = n0; n < n1; ++n) {
    float acc[MB] = {};
    for (int64_t sb = 0; sb < nsb; ++sb) {
      decode_k256_scalar(type, w + (idx ? idx[n] : n) * pitch + sb * L.bytes, q, S, Z, D, Mz);
      for (int m = 0; m < MB; ++m) {
        const int8_t* x = a.q + m * a.K + sb * 256;
        const int16_t* bs = a.bs + m * (a.K / 16) + sb * 16;
        int32_t isum = 0, zsum = 0;
        for (int h = 0; h < 16; ++h) {
          int32_t s16 = 0;
          for (int i = 16 * h; i < 16 * h + 16; ++i) s16 += int32_t(q[i]) * x[i];
          isum += S[h] * s16;
          zsum += Z[h] * bs[h];
        }
        const float ad = a.d[m * (a.K / 256) + sb];
        if (type == Q6_K) {  // Mz = D: one integer total
          acc[m] += float(isum + zsum) * (D * ad);
        } else {
          acc[m] += float(isum) * (D * ad) + float(zsum) * (Mz * ad);
        }
      }
    }
    for (int m = 0; m < MB; ++m) out[m * ldo + n] = acc[m];
  }
}

#if GG_AVX2
// One super-block decoded for the vector loop: unsigned codes per 32-wide sub-block, the int16
// scale vector of each sub-block (lanes 0-7: inputs 0..15, lanes 8-15: inputs 16..31, as
// maddubs pairs them), the 16 zero multipliers Z, and D, Mz.
//
// With VNNI the products take dpbusd (u8 x s8, 4 per int32 lane, exact: |lane| <= 4 * 63 * 127) per
// sub-block, two sub-blocks' lanes packed to int16 and scaled by one dpwssd: 1.5 multiplies per 32
// inputs instead of maddubs + dpwssd's 2. sp[p] holds the scales of sub-blocks 2p and 2p + 1 in the
// lanes packs_epi32 gives them (per 128 bits: 4 lanes of 2p, then 4 of 2p + 1; the low 128 bits
// are each sub-block's inputs 0..15, the high ones 16..31).
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
#define GG_K256_VNNI 1
inline __m256i dp_u8s8(__m256i u, __m256i s) { return _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s); }
#elif defined(__AVXVNNI__)
#define GG_K256_VNNI 1
inline __m256i dp_u8s8(__m256i u, __m256i s) { return _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), u, s); }
#else
#define GG_K256_VNNI 0
#endif

struct alignas(32) KBlock {
  __m256i c[8];
#if GG_K256_VNNI
  __m256i sp[4];
#else
  __m256i s[8];
#endif
  __m256i z;
  float D, Mz;
};

// acc + the pairwise products of int16 a and b, summed per int32 lane (exact).
inline __m256i dot_i16(__m256i acc, __m256i a, __m256i b) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
  return _mm256_dpwssd_epi32(acc, a, b);
#elif defined(__AVXVNNI__)
  return _mm256_dpwssd_avx_epi32(acc, a, b);
#else
  return _mm256_add_epi32(acc, _mm256_madd_epi16(a, b));
#endif
}

template <int T>
inline void decode_k256(const uint8_t* b, KBlock& o) {
  const __m256i low = _mm256_set1_epi8(0x0F);
  if constexpr (T == Q4_K || T == Q5_K) {
    alignas(16) uint8_t sm[16];
    scales_mins_k4(b + 4, sm, sm + 8);
    const __m128i v = _mm_load_si128(reinterpret_cast<const __m128i*>(sm));  // sc0..7, mn0..7
    // int16 [sc0..sc7] in both 128-bit halves; sub-block j takes lane j everywhere
    const __m256i sc16 = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(v));
#if GG_K256_VNNI
    for (int p = 0; p < 4; ++p) {  // lanes 0-3: sc_2p, 4-7: sc_2p+1, in both halves
      const int16_t a = int16_t(0x0100 * (4 * p + 1) + 4 * p), b = int16_t(0x0100 * (4 * p + 3) + 4 * p + 2);
      o.sp[p] = _mm256_shuffle_epi8(sc16, _mm256_setr_epi16(a, a, a, a, b, b, b, b, a, a, a, a, b, b, b, b));
    }
#else
    for (int j = 0; j < 8; ++j) {
      const __m256i pick = _mm256_set1_epi16(int16_t(0x0100 * (2 * j + 1) + 2 * j));
      o.s[j] = _mm256_shuffle_epi8(sc16, pick);
    }
#endif
    // Z per 16: mn0 mn0 mn1 mn1 ... mn7 mn7
    o.z = _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(_mm_srli_si128(v, 8), _mm_srli_si128(v, 8)));
    o.D = f16(b);
    o.Mz = -f16(b + 2);
    const uint8_t* qs = b + (T == Q5_K ? 48 : 16);
    __m256i qh;
    if constexpr (T == Q5_K) qh = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + 16));
    const __m256i bit4 = _mm256_set1_epi8(0x10);
    for (int p = 0; p < 4; ++p) {
      const __m256i v4 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qs + 32 * p));
      __m256i c0 = _mm256_and_si256(v4, low), c1 = _mm256_and_si256(_mm256_srli_epi16(v4, 4), low);
      if constexpr (T == Q5_K) {  // bit j of qh[i] is bit 4 of sub-block j's code i
        const int j0 = 2 * p, j1 = 2 * p + 1;
        const __m256i h0 = j0 <= 4 ? _mm256_slli_epi16(qh, 4 - j0) : _mm256_srli_epi16(qh, j0 - 4);
        const __m256i h1 = j1 <= 4 ? _mm256_slli_epi16(qh, 4 - j1) : _mm256_srli_epi16(qh, j1 - 4);
        c0 = _mm256_or_si256(c0, _mm256_and_si256(h0, bit4));
        c1 = _mm256_or_si256(c1, _mm256_and_si256(h1, bit4));
      }
      o.c[2 * p] = c0;
      o.c[2 * p + 1] = c1;
    }
  } else {  // Q6_K
    const __m128i sc8 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b + 192));
    const __m256i sc16 = _mm256_cvtepi8_epi16(sc8);  // S_0..S_15
    o.z = _mm256_mullo_epi16(sc16, _mm256_set1_epi16(-32));
    o.D = f16(b + 208);
    o.Mz = o.D;
    // sub-block j: S_2j in lanes 0-7, S_2j+1 in lanes 8-15
#if GG_K256_VNNI
    // sub-blocks 2p, 2p + 1 take S_4p, S_4p+2 (inputs 0..15) and S_4p+1, S_4p+3 (16..31): dwords 2p and
    // 2p + 1 (S_4p | S_4p+1 << 16, S_4p+2 | S_4p+3 << 16) into both halves, then the halves' words
    const __m256i words = _mm256_setr_epi8(0, 1, 0, 1, 0, 1, 0, 1, 4, 5, 4, 5, 4, 5, 4, 5, 2, 3, 2, 3, 2, 3, 2, 3, 6, 7,
                                           6, 7, 6, 7, 6, 7);
    for (int p = 0; p < 4; ++p) {
      const __m256i two = _mm256_permutevar8x32_epi32(sc16, _mm256_setr_epi32(2 * p, 2 * p + 1, 0, 0, 2 * p, 2 * p + 1, 0, 0));
      o.sp[p] = _mm256_shuffle_epi8(two, words);
    }
#else
    const __m256i hi_pair = _mm256_set_epi8(3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 1, 0, 1, 0, 1, 0, 1, 0, 1,
                                            0, 1, 0, 1, 0, 1, 0);
    for (int j = 0; j < 8; ++j) {
      // dword j = S_2j | S_2j+1 << 16 in every lane, then the low 128 bits take S_2j, the high S_2j+1
      const __m256i both = _mm256_permutevar8x32_epi32(sc16, _mm256_set1_epi32(j));
      o.s[j] = _mm256_shuffle_epi8(both, hi_pair);
    }
#endif
    const __m256i two = _mm256_set1_epi8(0x30);
    for (int half = 0; half < 2; ++half) {
      const __m256i la = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + 64 * half));
      const __m256i lb = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + 64 * half + 32));
      const __m256i qh = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + 128 + 32 * half));
      o.c[4 * half] = _mm256_or_si256(_mm256_and_si256(la, low), _mm256_and_si256(_mm256_slli_epi16(qh, 4), two));
      o.c[4 * half + 1] = _mm256_or_si256(_mm256_and_si256(lb, low), _mm256_and_si256(_mm256_slli_epi16(qh, 2), two));
      o.c[4 * half + 2] =
          _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(la, 4), low), _mm256_and_si256(qh, two));
      o.c[4 * half + 3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(lb, 4), low),
                                          _mm256_and_si256(_mm256_srli_epi16(qh, 2), two));
    }
  }
}

// One super-block sb of MB activation rows: the int32 sums, then one multiply-add per row into
// acc (8 float lanes, summed at the end of the row). The same operations in the same order for
// every row, so a row's result never depends on the others.
template <int T, int MB>
inline void dot_k256(const KBlock& k, const A256& a, int64_t sb, __m256* acc) {
  const int64_t nsb = a.K / 256, n16 = a.K / 16;
  for (int m = 0; m < MB; ++m) {
    const int8_t* x = a.q + m * a.K + sb * 256;
    __m256i isum = _mm256_setzero_si256();
#if GG_K256_VNNI
    for (int p = 0; p < 4; ++p) {
      const __m256i x0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + 64 * p));
      const __m256i x1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + 64 * p + 32));
      const __m256i v = _mm256_packs_epi32(dp_u8s8(k.c[2 * p], x0), dp_u8s8(k.c[2 * p + 1], x1));
      isum = dot_i16(isum, v, k.sp[p]);
    }
#else
    for (int j = 0; j < 8; ++j) {
      const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + 32 * j));
      isum = dot_i16(isum, _mm256_maddubs_epi16(k.c[j], xv), k.s[j]);
    }
#endif
    const __m256i bs = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a.bs + m * n16 + sb * 16));
    const __m256i zsum = _mm256_madd_epi16(k.z, bs);
    const float ad = a.d[m * nsb + sb];
    if constexpr (T == Q6_K) {  // Mz = D: one integer total
      acc[m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_add_epi32(isum, zsum)), _mm256_set1_ps(k.D * ad), acc[m]);
    } else {
      acc[m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), _mm256_set1_ps(k.D * ad), acc[m]);
      acc[m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(zsum), _mm256_set1_ps(k.Mz * ad), acc[m]);
    }
  }
}

constexpr int64_t kPrefetchRows = 4;

// With P false each super-block is decoded here; with P rows [n0, n1) come decoded (ps starts
// at row n0). Same arithmetic either way, so the same bits.
template <int T, int MB, bool P = false>
void rows_k256_avx2(const uint8_t* w, int64_t pitch, const A256& a, int64_t n0, int64_t n1, float* out, int64_t ldo,
                    const int64_t* idx, const KBlock* ps = nullptr) {
  constexpr Layout L = layout_of(T);
  const int64_t nsb = a.K / 256;
  KBlock blk;
  for (int64_t n = n0; n < n1; ++n) {
    __m256 acc[MB];
    for (int m = 0; m < MB; ++m) acc[m] = _mm256_setzero_ps();
    const uint8_t* row = w + (idx ? idx[n] : n) * pitch;
    if constexpr (!P && MB >= 3) {  // the weight stream, kPrefetchRows rows ahead: the hardware prefetcher alone
                         // leaves the cores waiting on memory once there are several rows to compute
                         // (measured: 15% faster for 4 rows; slower for 1)
      if (!idx && n + kPrefetchRows < n1) {
        const uint8_t* ahead = row + kPrefetchRows * pitch;
        for (int64_t off = 0; off < nsb * L.bytes; off += 64) _mm_prefetch(reinterpret_cast<const char*>(ahead + off), _MM_HINT_T0);
      }
    }
    for (int64_t sb = 0; sb < nsb; ++sb) {
      if constexpr (P) {
        dot_k256<T, MB>(ps[(n - n0) * nsb + sb], a, sb, acc);
      } else {
        decode_k256<T>(row + sb * L.bytes, blk);
        dot_k256<T, MB>(blk, a, sb, acc);
      }
    }
    for (int m = 0; m < MB; ++m) out[m * ldo + n] = native::hsum(acc[m]);
  }
}

template <int MB>
void rows_k256_vec(int64_t type, const uint8_t* w, int64_t pitch, const A256& a, int64_t n0, int64_t n1, float* out,
                   int64_t ldo, const int64_t* idx) {
  switch (type) {
    case Q4_K: return rows_k256_avx2<Q4_K, MB>(w, pitch, a, n0, n1, out, ldo, idx);
    case Q5_K: return rows_k256_avx2<Q5_K, MB>(w, pitch, a, n0, n1, out, ldo, idx);
    default: return rows_k256_avx2<Q6_K, MB>(w, pitch, a, n0, n1, out, ldo, idx);
  }
}

// Many activation rows: a tile of weight rows (<= ~512 KB decoded, per thread) is decoded once
// for all of them; each group of 4 activation rows then reads it.
template <int T>
void rows_k256_tiled(const uint8_t* w, int64_t pitch, const A256& a, int64_t M, int64_t n0, int64_t n1, float* out,
                     int64_t ldo) {
  constexpr Layout L = layout_of(T);
  const int64_t nsb = a.K / 256, n16 = a.K / 16;
  const int64_t tile = std::max<int64_t>(4, (512 << 10) / (nsb * int64_t(sizeof(KBlock))));
  thread_local std::vector<KBlock> ps;  // kept between calls: a fresh one would be page-faulted each time
  const int64_t rows = std::min(tile, n1 - n0);
  if (int64_t(ps.size()) < rows * nsb) ps.resize(rows * nsb);
  for (int64_t t0 = n0; t0 < n1; t0 += tile) {
    const int64_t t1 = std::min(n1, t0 + tile);
    for (int64_t n = t0; n < t1; ++n)
      for (int64_t sb = 0; sb < nsb; ++sb) decode_k256<T>(w + n * pitch + sb * L.bytes, ps[(n - t0) * nsb + sb]);
    for (int64_t m0 = 0; m0 < M; m0 += 4) {
      const int64_t mb = std::min<int64_t>(4, M - m0);
      const A256 am{a.q + m0 * a.K, a.d + m0 * nsb, a.bs + m0 * n16, a.K};
      float* om = out + m0 * ldo;
      switch (mb) {
        case 1: rows_k256_avx2<T, 1, true>(w, pitch, am, t0, t1, om, ldo, nullptr, ps.data()); break;
        case 2: rows_k256_avx2<T, 2, true>(w, pitch, am, t0, t1, om, ldo, nullptr, ps.data()); break;
        case 3: rows_k256_avx2<T, 3, true>(w, pitch, am, t0, t1, om, ldo, nullptr, ps.data()); break;
        default: rows_k256_avx2<T, 4, true>(w, pitch, am, t0, t1, om, ldo, nullptr, ps.data()); break;
      }
    }
  }
}

inline void rows_k256_tiled_any(int64_t type, const uint8_t* w, int64_t pitch, const A256& a, int64_t M, int64_t n0,
                                int64_t n1, float* out, int64_t ldo) {
  switch (type) {
    case Q4_K: return rows_k256_tiled<Q4_K>(w, pitch, a, M, n0, n1, out, ldo);
    case Q5_K: return rows_k256_tiled<Q5_K>(w, pitch, a, M, n0, n1, out, ldo);
    default: return rows_k256_tiled<Q6_K>(w, pitch, a, M, n0, n1, out, ldo);
  }
}
#endif

template <int MB>
void rows_k256_any(bool vec, int64_t type, const uint8_t* w, int64_t pitch, const A256& a, int64_t n0, int64_t n1,
                   float* out, int64_t ldo, const int64_t* idx = nullptr) {
#if GG_AVX2
  if (vec) return rows_k256_vec<MB>(type, w, pitch, a, n0, n1, out, ldo, idx);
#endif
  rows_k256_scalar<MB>(type, w, pitch, a, n0, n1, out, ldo, idx);
}

}  // namespace gguf_blocks
