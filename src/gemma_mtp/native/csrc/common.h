// What the native module's source files share: the int8 activation rounding both matmul kernels
// use, a horizontal sum, and the declarations of the functions one file calls in another.
#pragma once

#include <torch/extension.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__AVX2__) || defined(__F16C__)
#include <immintrin.h>
#endif

namespace native {

// One group of n inputs (a multiple of 16) rounded to int8 codes with scale max|x| / 127: the
// codes into q, their sums per 16 into sums; returns the scale. The AVX2 path does the same float
// operations per element (the max is exact, x * (1 / d) rounded to nearest even as nearbyint does
// in the default mode), so both give the same bits for finite inputs.
inline float round_group(const float* x, int n, int8_t* q, int* sums) {
#if defined(__AVX2__)
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  __m256 vmax = _mm256_setzero_ps();
  for (int i = 0; i < n; i += 8) vmax = _mm256_max_ps(_mm256_and_ps(_mm256_loadu_ps(x + i), abs_mask), vmax);
  __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(vmax), _mm256_extractf128_ps(vmax, 1));
  m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
  m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
  const float amax = _mm_cvtss_f32(m4);
  const float dd = amax / 127.f;
  const __m256 id = _mm256_set1_ps(dd > 0.f ? 1.f / dd : 0.f);
  for (int h = 0; h < n / 16; ++h) {
    const __m256i a = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(_mm256_loadu_ps(x + 16 * h), id),
                                                         _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    const __m256i b = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(_mm256_loadu_ps(x + 16 * h + 8), id),
                                                         _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    const __m256i p16 = _mm256_permute4x64_epi64(_mm256_packs_epi32(a, b), 0xD8);  // 16 int16 in order
    _mm_storeu_si128(reinterpret_cast<__m128i*>(q + 16 * h),
                     _mm_packs_epi16(_mm256_castsi256_si128(p16), _mm256_extracti128_si256(p16, 1)));
    const __m256i ab = _mm256_add_epi32(a, b);
    __m128i t = _mm_add_epi32(_mm256_castsi256_si128(ab), _mm256_extracti128_si256(ab, 1));
    t = _mm_add_epi32(t, _mm_shuffle_epi32(t, 0x4E));
    t = _mm_add_epi32(t, _mm_shuffle_epi32(t, 0xB1));
    sums[h] = _mm_cvtsi128_si32(t);
  }
  return dd;
#else
  float amax = 0.f;
  for (int i = 0; i < n; ++i) amax = std::max(amax, std::fabs(x[i]));
  const float dd = amax / 127.f;
  const float id = dd > 0.f ? 1.f / dd : 0.f;
  for (int h = 0; h < n / 16; ++h) {
    int sum = 0;
    for (int i = 16 * h; i < 16 * h + 16; ++i) {
      const int v = static_cast<int>(std::nearbyint(x[i] * id));
      q[i] = static_cast<int8_t>(v);
      sum += v;
    }
    sums[h] = sum;
  }
  return dd;
#endif
}

// f(m0, m1) over activation rows [0, M) of width K: a prefill's rows split across the threads, a
// decode step's few stay on the calling one. Rows are rounded independently: the same bits either way.
template <typename F>
inline void for_rows(int64_t M, int64_t K, const F& f) {
  at::parallel_for(0, M, std::max<int64_t>(8, (int64_t(1) << 16) / std::max<int64_t>(K, 1)), f);
}

// Activations rounded per block of 32 inputs: int8 codes with scale max|x| / 127 (round to
// nearest even), and scale * sum(codes) for the zero terms, as llama.cpp does for its dot products;
// also the integer sums per 16 codes, for weights with a zero per 16 (Q2_K).
struct QuantizedActs {
  int64_t M = 0, K = 0, nb = 0;
  std::vector<int8_t> q;    // [M, K]
  std::vector<float> d;     // [M, K/32]
  std::vector<float> s;     // [M, K/32]
  std::vector<int16_t> bs;  // [M, K/16]

  QuantizedActs(const float* x, int64_t rows, int64_t width)
      : M(rows),
        K(width),
        nb(width / 32),
        q(rows * width),
        d(rows * (width / 32)),
        s(rows * (width / 32)),
        bs(rows * (width / 16)) {
    for_rows(M, K, [&](int64_t m0, int64_t m1) { round_rows(x, m0, m1); });
  }

 private:
  void round_rows(const float* x, int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; ++m) {
      for (int64_t b = 0; b < nb; ++b) {
        int sum[2];
        const float dd = round_group(x + m * K + b * 32, 32, q.data() + m * K + b * 32, sum);
        d[m * nb + b] = dd;
        s[m * nb + b] = dd * static_cast<float>(sum[0] + sum[1]);
        bs[(m * nb + b) * 2] = static_cast<int16_t>(sum[0]);
        bs[(m * nb + b) * 2 + 1] = static_cast<int16_t>(sum[1]);
      }
    }
  }
};

// x [M, K] in any float dtype, rounded as above
inline QuantizedActs quantize_acts(const torch::Tensor& x) {
  const auto xf = x.to(torch::kFloat32).contiguous();
  return QuantizedActs(xf.data_ptr<float>(), xf.size(0), xf.size(1));
}

#if defined(__AVX2__)
inline float hsum(__m256 v) {
  __m128 lo = _mm256_castps256_ps128(v);
  __m128 hi = _mm256_extractf128_ps(v, 1);
  lo = _mm_add_ps(lo, hi);
  lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
  lo = _mm_add_ss(lo, _mm_movehdup_ps(lo));
  return _mm_cvtss_f32(lo);
}
#endif

}  // namespace native

// q8_mm.cpp
torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& w, double eps);
torch::Tensor head_norm_rope(const torch::Tensor& x, const torch::Tensor& w, double eps, const torch::Tensor& cos,
                             const torch::Tensor& sin);
torch::Tensor attend_rows(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                          const torch::Tensor& mask, double scale, double cap);

// gguf_mm.cpp
torch::Tensor gguf_mm(const torch::Tensor& x, const std::vector<torch::Tensor>& ws, const std::vector<int64_t>& types,
                      bool vectorized);
torch::Tensor gguf_rows(const torch::Tensor& w, int64_t type, const torch::Tensor& ids, int64_t K);
torch::Tensor gguf_repack(const torch::Tensor& w, int64_t type);
torch::Tensor gguf_mm_rows(const torch::Tensor& x, const torch::Tensor& w, int64_t type, const torch::Tensor& ids,
                           bool vectorized);

// half_mm.cpp
torch::Tensor half_mm(const torch::Tensor& x, const torch::Tensor& w, bool vectorized);

// layer.cpp
torch::Tensor mlp_block(const torch::Tensor& x, const torch::Tensor& pre_w, const torch::Tensor& post_w, double eps,
                        const std::vector<torch::Tensor>& gate_up, const std::vector<int64_t>& gate_up_types,
                        const torch::Tensor& down, int64_t down_type, int64_t act);
std::vector<torch::Tensor> attn_in(const torch::Tensor& x, const torch::Tensor& in_w, double eps,
                                   const std::vector<torch::Tensor>& qkv, const std::vector<int64_t>& types,
                                   const std::vector<int64_t>& sizes, int64_t head_dim, const torch::Tensor& q_w,
                                   const torch::Tensor& k_w, bool v_norm, const torch::Tensor& cos,
                                   const torch::Tensor& sin, const torch::Tensor& k_cache,
                                   const torch::Tensor& v_cache, const torch::Tensor& rows,
                                   const torch::Tensor& slots);
torch::Tensor attn_out(const torch::Tensor& residual, const torch::Tensor& q, const torch::Tensor& keys,
                       const torch::Tensor& values, const torch::Tensor& mask, double scale, double cap,
                       const torch::Tensor& o, int64_t o_type, const torch::Tensor& post_w, double eps);
