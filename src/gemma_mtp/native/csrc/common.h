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
    for (int64_t m = 0; m < M; ++m) {
      for (int64_t b = 0; b < nb; ++b) {
        const float* xb = x + m * K + b * 32;
        float amax = 0.f;
        for (int i = 0; i < 32; ++i) amax = std::max(amax, std::fabs(xb[i]));
        const float dd = amax / 127.f;
        const float id = dd > 0.f ? 1.f / dd : 0.f;
        int sum[2] = {0, 0};
        int8_t* qb = q.data() + m * K + b * 32;
        for (int i = 0; i < 32; ++i) {
          const int v = static_cast<int>(std::nearbyint(xb[i] * id));
          qb[i] = static_cast<int8_t>(v);
          sum[i / 16] += v;
        }
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
