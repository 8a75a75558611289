// Block-int8 weight x block-int8 activation matmul for the CPU ("q8" kernel format).
//
// Weights: int8 codes q[N, K] with one float32 scale per group of G inputs (G = 32 or 16) and,
// for asymmetric GGUF types, one float32 zero per 32 inputs: w[n, k] = d[n, k/G] * q[n, k] + z[n, k/32].
// Every GGUF type in quant/codes.py maps onto this exactly (Q8_0, Q4_0, Q5_0, Q6_K symmetric;
// Q4_1, Q5_1, Q4_K, Q5_K with zeros).
// Activations: each row of x is quantized per block of 32 to int8 with scale max|x| / 127
// (round to nearest), as llama.cpp does for its dot products. Sums of products are exact int32 per
// 32 inputs, then scaled and accumulated in float32.
// Each weight block is loaded once and used for every row of x (up to 4 at a time), so a forward
// over a few drafted positions reads the weights once.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include "common.h"

#include <cmath>
#include <cstdint>
#include <vector>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define Q8_AVX2 1
#else
#define Q8_AVX2 0
#endif

namespace {

constexpr int64_t QK = 32;

#if Q8_AVX2
using native::hsum;

template <int MB, int G>
void rows_avx2(const int8_t* xq, const float* xd, const float* xs, int64_t K, const int8_t* wq,
               const float* wd, const float* wz, int64_t n0, int64_t n1, float* out, int64_t ldo) {
  const int64_t nb = K / QK;
  const int64_t ng = K / G;
  const __m256i ones = _mm256_set1_epi16(1);
  for (int64_t n = n0; n < n1; ++n) {
    const int8_t* w = wq + n * K;
    const float* d = wd + n * ng;
    __m256 acc[MB];
    for (int m = 0; m < MB; ++m) acc[m] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
      const __m256i wv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + b * QK));
      const __m256i aw = _mm256_sign_epi8(wv, wv);
      __m256 ds;
      if constexpr (G == 32) {
        ds = _mm256_broadcast_ss(d + b);
      } else {
        ds = _mm256_set_m128(_mm_broadcast_ss(d + 2 * b + 1), _mm_broadcast_ss(d + 2 * b));
      }
      for (int m = 0; m < MB; ++m) {
        const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + m * K + b * QK));
        const __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(aw, _mm256_sign_epi8(xv, wv)), ones);
        acc[m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_mul_ps(ds, _mm256_set1_ps(xd[m * nb + b])),
                                 acc[m]);
      }
    }
    for (int m = 0; m < MB; ++m) {
      float r = hsum(acc[m]);
      if (wz != nullptr) {
        const float* z = wz + n * nb;
        const float* s = xs + m * nb;
        for (int64_t b = 0; b < nb; ++b) r += z[b] * s[b];
      }
      out[m * ldo + n] = r;
    }
  }
}
#endif

template <int MB>
void rows_scalar(const int8_t* xq, const float* xd, const float* xs, int64_t K, const int8_t* wq,
                 const float* wd, const float* wz, int64_t G, int64_t n0, int64_t n1, float* out,
                 int64_t ldo) {
  const int64_t nb = K / QK;
  const int64_t ng = K / G;
  for (int64_t n = n0; n < n1; ++n) {
    const int8_t* w = wq + n * K;
    for (int m = 0; m < MB; ++m) {
      float r = 0.f;
      for (int64_t g = 0; g < ng; ++g) {
        int32_t sum = 0;
        for (int64_t i = g * G; i < (g + 1) * G; ++i) sum += int32_t(w[i]) * int32_t(xq[m * K + i]);
        r += static_cast<float>(sum) * (wd[n * ng + g] * xd[m * nb + g * G / QK]);
      }
      if (wz != nullptr) {
        for (int64_t b = 0; b < nb; ++b) r += wz[n * nb + b] * xs[m * nb + b];
      }
      out[m * ldo + n] = r;
    }
  }
}

template <int MB>
void rows(const int8_t* xq, const float* xd, const float* xs, int64_t K, const int8_t* wq, const float* wd,
          const float* wz, int64_t G, int64_t n0, int64_t n1, float* out, int64_t ldo) {
#if Q8_AVX2
  if (G == 32) return rows_avx2<MB, 32>(xq, xd, xs, K, wq, wd, wz, n0, n1, out, ldo);
  return rows_avx2<MB, 16>(xq, xd, xs, K, wq, wd, wz, n0, n1, out, ldo);
#else
  return rows_scalar<MB>(xq, xd, xs, K, wq, wd, wz, G, n0, n1, out, ldo);
#endif
}

}  // namespace

// x [M, K] (any float dtype), q int8 [N, K], d float32 [N, K/G], z float32 [N, K/32] or empty.
torch::Tensor q8_mm(const torch::Tensor& x, const torch::Tensor& q, const torch::Tensor& d,
                    const torch::Tensor& z, int64_t group) {
  TORCH_CHECK(x.dim() == 2 && q.dim() == 2 && d.dim() == 2, "q8_mm: x, q, d must be 2-D");
  TORCH_CHECK(q.scalar_type() == torch::kInt8 && d.scalar_type() == torch::kFloat32, "q8_mm: dtypes");
  TORCH_CHECK(group == 32 || group == 16, "q8_mm: group must be 16 or 32");
  const int64_t M = x.size(0), K = x.size(1), N = q.size(0);
  TORCH_CHECK(q.size(1) == K && K % QK == 0, "q8_mm: K mismatch or not a multiple of 32");
  TORCH_CHECK(d.size(0) == N && d.size(1) == K / group, "q8_mm: scale shape");
  const bool has_zero = z.numel() > 0;
  if (has_zero) TORCH_CHECK(z.scalar_type() == torch::kFloat32 && z.size(0) == N && z.size(1) == K / QK);
  TORCH_CHECK(q.is_contiguous() && d.is_contiguous() && (!has_zero || z.is_contiguous()));
  auto out = torch::empty({M, N}, x.options().dtype(torch::kFloat32));
  if (M == 0 || N == 0) return out;
  const int64_t nb = K / QK;
  const auto acts = native::quantize_acts(x);
  const std::vector<int8_t>& xq = acts.q;
  const std::vector<float>&xd = acts.d, &xs = acts.s;
  const int8_t* wq = q.data_ptr<int8_t>();
  const float* wd = d.data_ptr<float>();
  const float* wz = has_zero ? z.data_ptr<float>() : nullptr;
  float* o = out.data_ptr<float>();
  // tiles of weight rows small enough to stay in L2 while every group of 4 x rows passes over them
  const int64_t tile = std::max<int64_t>(16, (256 << 10) / std::max<int64_t>(K, 1));
  // at least ~256K weights per chunk: smaller matrices run on the calling thread
  const int64_t grain = std::max<int64_t>(64, (int64_t(1) << 18) / std::max<int64_t>(K * std::min<int64_t>(M, 4), 1));
  at::parallel_for(0, N, grain, [&](int64_t n0, int64_t n1) {
    for (int64_t t0 = n0; t0 < n1; t0 += tile) {
      const int64_t t1 = std::min(n1, t0 + tile);
      for (int64_t m0 = 0; m0 < M; m0 += 4) {
        const int64_t mb = std::min<int64_t>(4, M - m0);
        const int8_t* xqm = xq.data() + m0 * K;
        const float* xdm = xd.data() + m0 * nb;
        const float* xsm = xs.data() + m0 * nb;
        float* om = o + m0 * N;
        switch (mb) {
          case 1: rows<1>(xqm, xdm, xsm, K, wq, wd, wz, group, t0, t1, om, N); break;
          case 2: rows<2>(xqm, xdm, xsm, K, wq, wd, wz, group, t0, t1, om, N); break;
          case 3: rows<3>(xqm, xdm, xsm, K, wq, wd, wz, group, t0, t1, om, N); break;
          default: rows<4>(xqm, xdm, xsm, K, wq, wd, wz, group, t0, t1, om, N); break;
        }
      }
    }
  });
  return out;
}

bool has_avx2() { return Q8_AVX2 != 0; }

// The per-token elementwise work of a decoder layer, fused: at one token per step torch's
// dispatcher costs more than the arithmetic (a 640-wide RMS norm: ~20 us through torch).

// y = x * rsqrt(mean(x^2) + eps) * w over the last dim (w may be empty: no scale); float32.
torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& w, double eps) {
  TORCH_CHECK(x.scalar_type() == torch::kFloat32 && x.is_contiguous(), "rms_norm: contiguous float32 x");
  const int64_t d = x.size(-1), rows = d ? x.numel() / d : 0;
  const bool scaled = w.numel() > 0;
  if (scaled) TORCH_CHECK(w.scalar_type() == torch::kFloat32 && w.numel() == d && w.is_contiguous());
  auto out = torch::empty_like(x);
  const float* xp = x.data_ptr<float>();
  const float* wp = scaled ? w.data_ptr<float>() : nullptr;
  float* op = out.data_ptr<float>();
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = xp + r * d;
    float* orow = op + r * d;
    float ss = 0.f;
    for (int64_t i = 0; i < d; ++i) ss += xr[i] * xr[i];
    const float inv = 1.f / std::sqrt(ss / static_cast<float>(d) + static_cast<float>(eps));
    if (scaled) {
      for (int64_t i = 0; i < d; ++i) orow[i] = xr[i] * inv * wp[i];
    } else {
      for (int64_t i = 0; i < d; ++i) orow[i] = xr[i] * inv;
    }
  }
  return out;
}

// Per-head RMS norm then rotary embedding (rotate-half form) of x [B, T, H, D], float32:
// cos/sin [B, T, D]; empty cos means no rotation (the value norm).
torch::Tensor head_norm_rope(const torch::Tensor& x, const torch::Tensor& w, double eps, const torch::Tensor& cos,
                             const torch::Tensor& sin) {
  TORCH_CHECK(x.dim() == 4 && x.scalar_type() == torch::kFloat32 && x.is_contiguous(), "head_norm_rope: x");
  auto normed = rms_norm(x, w, eps);
  if (cos.numel() == 0) return normed;
  const int64_t B = x.size(0), T = x.size(1), H = x.size(2), D = x.size(3), half = D / 2;
  TORCH_CHECK(cos.scalar_type() == torch::kFloat32 && cos.is_contiguous() && sin.is_contiguous() &&
                  cos.numel() == B * T * D && sin.numel() == B * T * D,
              "head_norm_rope: cos/sin must be contiguous float32 [B, T, D]");
  auto out = torch::empty_like(normed);
  const float* np = normed.data_ptr<float>();
  const float* cp = cos.data_ptr<float>();
  const float* sp = sin.data_ptr<float>();
  float* op = out.data_ptr<float>();
  for (int64_t bt = 0; bt < B * T; ++bt) {
    const float* c = cp + bt * D;
    const float* s = sp + bt * D;
    for (int64_t h = 0; h < H; ++h) {
      const float* v = np + (bt * H + h) * D;
      float* o = op + (bt * H + h) * D;
      for (int64_t i = 0; i < half; ++i) o[i] = v[i] * c[i] - v[i + half] * s[i];
      for (int64_t i = half; i < D; ++i) o[i] = v[i] * c[i] + v[i - half] * s[i];
    }
  }
  return out;
}

// Attention for a few query positions (decode and verification), one query row at a time:
// every row's result is computed by the same code in the same order whatever the number of rows,
// so a forward over several drafted positions gives each position exactly what a one-position
// forward gives (torch's SDPA picks different kernels for different query counts, and the tiny
// differences, amplified by int8 activation rounding, can change a greedy token).
// q [B, T, Hq, D], k/v [B, Hkv, S, D] (last dim contiguous; any other strides), mask [B, 1, T, S]
// bool (True = attend; any strides) -> [B, T, Hq * D]. cap > 0: scores = cap * tanh(scores / cap).
namespace {
inline float dot(const float* a, const float* b, int64_t n) {
#if Q8_AVX2
  __m256 acc = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc);
  float r = hsum(acc);
#else
  float r = 0.f;
  int64_t i = 0;
#endif
  for (; i < n; ++i) r += a[i] * b[i];
  return r;
}

inline void axpy(float w, const float* x, float* y, int64_t n) {
#if Q8_AVX2
  const __m256 wv = _mm256_set1_ps(w);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_fmadd_ps(wv, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
#else
  int64_t i = 0;
#endif
  for (; i < n; ++i) y[i] += w * x[i];
}
}  // namespace

torch::Tensor attend_rows(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                          const torch::Tensor& mask, double scale, double cap) {
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4 && mask.dim() == 4, "attend_rows: 4-D inputs");
  TORCH_CHECK(q.scalar_type() == torch::kFloat32 && k.scalar_type() == torch::kFloat32 &&
                  v.scalar_type() == torch::kFloat32 && mask.scalar_type() == torch::kBool,
              "attend_rows: float32 q/k/v and a bool mask");
  auto qc = q.contiguous();
  const int64_t B = q.size(0), T = q.size(1), Hq = q.size(2), D = q.size(3);
  const int64_t Hkv = k.size(1), S = k.size(2);
  TORCH_CHECK(k.size(0) == B && v.size(0) == B && v.size(1) == Hkv && v.size(2) == S && k.size(3) == D &&
                  v.size(3) == D && Hq % Hkv == 0,
              "attend_rows: shapes");
  TORCH_CHECK(k.stride(3) == 1 && v.stride(3) == 1, "attend_rows: k/v rows must be contiguous");
  TORCH_CHECK(mask.size(0) == B && mask.size(2) == T && mask.size(3) == S, "attend_rows: mask shape");
  auto out = torch::zeros({B, T, Hq * D}, q.options());
  const float* qp = qc.data_ptr<float>();
  const float* kp = k.data_ptr<float>();
  const float* vp = v.data_ptr<float>();
  const bool* mp = mask.data_ptr<bool>();
  float* op = out.data_ptr<float>();
  const int64_t ks0 = k.stride(0), ks1 = k.stride(1), ks2 = k.stride(2);
  const int64_t vs0 = v.stride(0), vs1 = v.stride(1), vs2 = v.stride(2);
  const int64_t ms0 = mask.stride(0), ms2 = mask.stride(2), ms3 = mask.stride(3);
  const int64_t group = Hq / Hkv;
  const float fscale = static_cast<float>(scale), fcap = static_cast<float>(cap);
  // a parallel region costs more than a few short rows (and stalls when a core is busy elsewhere)
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 18) / std::max<int64_t>(1, S * D));
  at::parallel_for(0, B * T * Hq, grain, [&](int64_t r0, int64_t r1) {
    std::vector<float> scores(S);
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t b = r / (T * Hq), t = (r / Hq) % T, h = r % Hq, kh = h / group;
      const float* qr = qp + ((b * T + t) * Hq + h) * D;
      const bool* mr = mp + b * ms0 + t * ms2;
      const float* kb = kp + b * ks0 + kh * ks1;
      const float* vb = vp + b * vs0 + kh * vs1;
      float best = -INFINITY;
      for (int64_t s = 0; s < S; ++s) {
        if (!mr[s * ms3]) continue;
        float x = dot(qr, kb + s * ks2, D) * fscale;
        if (fcap > 0.f) x = fcap * std::tanh(x / fcap);
        scores[s] = x;
        best = std::max(best, x);
      }
      float* orow = op + (b * T + t) * Hq * D + h * D;
      if (best == -INFINITY) continue;  // nothing to attend to: zeros
      float total = 0.f;
      for (int64_t s = 0; s < S; ++s) {
        if (!mr[s * ms3]) continue;
        const float p = std::exp(scores[s] - best);
        total += p;
        axpy(p, vb + s * vs2, orow, D);
      }
      const float inv = 1.f / total;
      for (int64_t i = 0; i < D; ++i) orow[i] *= inv;
    }
  });
  return out;
}

// The index of each row's largest value of x [R, V] float32, the first one on ties (torch.argmax's
// rule); a row holding a NaN gets the first NaN's index, as torch.argmax gives. One pass at memory
// speed: torch's argmax over a 262,144-wide row of logits took ~0.3 ms here.
torch::Tensor argmax_rows(const torch::Tensor& x) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == torch::kFloat32, "argmax_rows: float32 [R, V]");
  auto xc = x.contiguous();
  const int64_t R = xc.size(0), V = xc.size(1);
  TORCH_CHECK(V > 0, "argmax_rows: empty rows");
  auto out = torch::empty({R}, torch::dtype(torch::kLong));
  int64_t* op = out.data_ptr<int64_t>();
  for (int64_t r = 0; r < R; ++r) {
    const float* row = xc.data_ptr<float>() + r * V;
    float best = row[0];
    int64_t i = 0;
#if Q8_AVX2
    __m256 m = _mm256_set1_ps(row[0]);
    __m256 nan = _mm256_setzero_ps();
    for (; i + 8 <= V; i += 8) {
      const __m256 v = _mm256_loadu_ps(row + i);
      m = _mm256_max_ps(m, v);
      nan = _mm256_or_ps(nan, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    }
    alignas(32) float lanes[8];
    _mm256_store_ps(lanes, m);
    for (float l : lanes) best = std::max(best, l);
    bool has_nan = _mm256_movemask_ps(nan) != 0;
#else
    bool has_nan = false;
#endif
    for (; i < V; ++i) {
      has_nan |= std::isnan(row[i]);
      best = std::max(best, row[i]);
    }
    int64_t at = 0;
    if (has_nan || std::isnan(row[0])) {
      while (!std::isnan(row[at])) ++at;
    } else {
      while (row[at] != best) ++at;
    }
    op[r] = at;
  }
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("mlp_block", &mlp_block, "a decoder layer's feed-forward half over GGUF blocks, float32",
        py::call_guard<py::gil_scoped_release>());
  m.def("attn_in", &attn_in, "input norm, q/k/v over GGUF blocks, head norms and rotary, float32",
        py::call_guard<py::gil_scoped_release>());
  m.def("attn_out", &attn_out, "row attention, o_proj over GGUF blocks, post norm and residual, float32",
        py::call_guard<py::gil_scoped_release>());
  m.def("gguf_mm", &gguf_mm, "GGUF blocks read in place x int8-quantized activation matmul",
        py::arg("x"), py::arg("weights"), py::arg("types"), py::arg("vectorized") = true,
        py::call_guard<py::gil_scoped_release>());
  m.def("gguf_mm_rows", &gguf_mm_rows, "each row of x times its own list of weight rows (GGUF blocks)",
        py::arg("x"), py::arg("weight"), py::arg("type"), py::arg("ids"), py::arg("vectorized") = true,
        py::call_guard<py::gil_scoped_release>());
  m.def("gguf_repack", &gguf_repack, "a Q4_K or Q5_0 matrix repacked 8 rows at a time for gguf_mm (type 1000 + type)",
        py::call_guard<py::gil_scoped_release>());
  m.def("gguf_rows", &gguf_rows, "rows of a GGUF block matrix dequantized to float32",
        py::call_guard<py::gil_scoped_release>());
  m.def("half_mm", &half_mm, "float32 activations x a bfloat16/float16 matrix kept as stored (batch-invariant)",
        py::arg("x"), py::arg("weight"), py::arg("vectorized") = true, py::call_guard<py::gil_scoped_release>());
  m.def("q8_mm", &q8_mm, "block-int8 weight x int8-quantized activation matmul",
        py::call_guard<py::gil_scoped_release>());
  m.def("has_avx2", &has_avx2);
  m.def("argmax_rows", &argmax_rows, "first index of each row's maximum (torch.argmax's rule), float32",
        py::call_guard<py::gil_scoped_release>());
  m.def("rms_norm", &rms_norm, "RMS norm over the last dim, float32");
  m.def("head_norm_rope", &head_norm_rope, "per-head RMS norm then rotary embedding, float32");
  m.def("attend_rows", &attend_rows, "attention one query row at a time (batch-invariant), float32");
}
