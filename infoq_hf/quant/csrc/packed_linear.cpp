// CPU kernels on a packed weight: float32 ones read straight from the project's bit stream, and a
// bfloat16 one rebuilds the weight from torch's int4 kernel layout (at the end of this file).
//
// The stream holds code i of the [N, K] weight in bits [i*b, (i+1)*b) (little-endian), so eight codes
// fill b bytes and, with K a multiple of 8, every row starts on a byte. A row is dequantized into a
// float buffer, w = (c - zero) * scale per group, exactly as the pure-PyTorch path computes it, then
// either written out (`dequantize_f32`) or dotted with every row of x (`packed_linear_f32`: each
// weight row is read once per call, in b bits per weight instead of float32's 32).
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <cstdint>
#include <cstring>
#include <vector>

namespace {

// Codes per unit: widths 2, 4 and 8 pack 8 / b codes in each byte; the others 8 codes in b bytes.
constexpr int per_unit(int b) { return (b == 2 || b == 4 || b == 8) ? 8 / b : 8; }
constexpr int unit_bytes(int b) { return (b == 2 || b == 4 || b == 8) ? 1 : b; }

template <int B>
void unpack_row(const uint8_t* p, int64_t k, float* out) {
  constexpr int m = per_unit(B), ub = unit_bytes(B);
  constexpr unsigned mask = (1u << B) - 1;
  for (int64_t i = 0; i < k / m; ++i) {
#pragma GCC unroll 8
    for (int j = 0; j < m; ++j) {
      const int bit = j * B, lo = bit >> 3, shift = bit & 7;
      unsigned v = p[i * ub + lo];
      if (shift + B > 8) v |= static_cast<unsigned>(p[i * ub + lo + 1]) << 8;  // constant per j
      out[i * m + j] = static_cast<float>((v >> shift) & mask);
    }
  }
}

struct Packed {
  const uint8_t* stream;
  const float* scale;   // [N, K / group]
  const uint8_t* zero;  // [N, K / group], or null: symmetric, zero 2^(b-1)
  int64_t bits, n, k, group;
};

// Row o of the weight, dequantized into out[0..k).
void dequantize_row(const Packed& w, int64_t o, float* out) {
  const uint8_t* row = w.stream + o * (w.k / 8 * w.bits);
  switch (w.bits) {
    case 2: unpack_row<2>(row, w.k, out); break;
    case 3: unpack_row<3>(row, w.k, out); break;
    case 4: unpack_row<4>(row, w.k, out); break;
    case 5: unpack_row<5>(row, w.k, out); break;
    case 6: unpack_row<6>(row, w.k, out); break;
    case 7: unpack_row<7>(row, w.k, out); break;
    default: unpack_row<8>(row, w.k, out); break;
  }
  const int64_t groups = w.k / w.group;
  const float symmetric_zero = static_cast<float>(1 << (w.bits - 1));
  for (int64_t g = 0; g < groups; ++g) {
    const float s = w.scale[o * groups + g];
    const float z = w.zero ? static_cast<float>(w.zero[o * groups + g]) : symmetric_zero;
    float* c = out + g * w.group;
#pragma omp simd
    for (int64_t i = 0; i < w.group; ++i) c[i] = (c[i] - z) * s;
  }
}

Packed check(const torch::Tensor& packed, const torch::Tensor& scale, const c10::optional<torch::Tensor>& zero_point,
             int64_t bits, int64_t group, int64_t k) {
  TORCH_CHECK(packed.scalar_type() == torch::kUInt8 && packed.is_contiguous(), "packed: contiguous uint8");
  TORCH_CHECK(scale.scalar_type() == torch::kFloat32 && scale.is_contiguous() && scale.dim() == 2,
              "scale: contiguous float32 [N, groups]");
  TORCH_CHECK(bits >= 2 && bits <= 8, "bits must lie in 2..8");
  const int64_t n = scale.size(0);
  TORCH_CHECK(k % 8 == 0 && group % 8 == 0 && k % group == 0 && scale.size(1) == k / group,
              "K and the group size must be multiples of 8, the group dividing K");
  TORCH_CHECK(packed.numel() == n * k / 8 * bits, "the stream's length does not match [N, K] at this width");
  const uint8_t* zero = nullptr;
  if (zero_point.has_value()) {
    TORCH_CHECK(zero_point->scalar_type() == torch::kUInt8 && zero_point->is_contiguous() &&
                    zero_point->sizes() == scale.sizes(),
                "zero_point: contiguous uint8 shaped like scale");
    zero = zero_point->data_ptr<uint8_t>();
  }
  return Packed{packed.data_ptr<uint8_t>(), scale.data_ptr<float>(), zero, bits, n, k, group};
}

}  // namespace

// y = x @ W^T for x [rows, K] float32.
torch::Tensor packed_linear_f32(torch::Tensor x, torch::Tensor packed, torch::Tensor scale,
                                c10::optional<torch::Tensor> zero_point, int64_t bits, int64_t group) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == torch::kFloat32 && x.is_contiguous(), "x: contiguous float32 [rows, K]");
  const Packed w = check(packed, scale, zero_point, bits, group, x.size(1));
  const int64_t rows = x.size(0), k = w.k, n = w.n;
  auto y = torch::empty({rows, n}, x.options());
  const float* xp = x.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  at::parallel_for(0, n, 16, [&](int64_t begin, int64_t end) {
    std::vector<float> row(k);
    for (int64_t o = begin; o < end; ++o) {
      dequantize_row(w, o, row.data());
      const float* wr = row.data();
      for (int64_t r = 0; r < rows; ++r) {
        const float* xr = xp + r * k;
        float dot = 0.f;
#pragma omp simd reduction(+ : dot)
        for (int64_t i = 0; i < k; ++i) dot += xr[i] * wr[i];
        yp[r * n + o] = dot;
      }
    }
  });
  return y;
}

// The dequantized weight [N, K] in float32.
torch::Tensor dequantize_f32(torch::Tensor packed, torch::Tensor scale, c10::optional<torch::Tensor> zero_point,
                             int64_t bits, int64_t group, int64_t k) {
  const Packed w = check(packed, scale, zero_point, bits, group, k);
  auto out = torch::empty({w.n, k}, scale.options());
  float* op = out.data_ptr<float>();
  at::parallel_for(0, w.n, 16, [&](int64_t begin, int64_t end) {
    for (int64_t o = begin; o < end; ++o) dequantize_row(w, o, op + o * k);
  });
  return out;
}

// bfloat16: the weight torch's int4 kernel multiplies by, rebuilt from its blocked layout (`kernels.py`)
// for prefill's dense matmul, in one pass instead of the pure-PyTorch unpack, convert, multiply, add.
namespace {

inline float bf16_to_float(uint16_t h) {
  uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Round to nearest even, as torch rounds every bfloat16 result (the inputs here are finite).
inline uint16_t float_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return static_cast<uint16_t>((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

// (nibble - 8) * scale, then + zero, each rounded to bfloat16 as torch's two elementwise ops round.
inline uint16_t dequantize_nibble(unsigned nibble, float scale, float zero) {
  const float product = bf16_to_float(float_to_bf16((static_cast<float>(nibble) - 8.f) * scale));
  return float_to_bf16(product + zero);
}

}  // namespace

// The [N, width] bfloat16 weight of a layout: `packed` (uint8) holds blocks of 64 rows in which byte j
// of column c carries rows j (low nibble) and j + 32 (high); a last block of r < 64 rows carries rows
// 2j and 2j + 1. `scale_zero` [width / group, N, 2] bfloat16.
torch::Tensor dequantize_int4_layout_bf16(torch::Tensor packed, torch::Tensor scale_zero, int64_t group, int64_t n) {
  TORCH_CHECK(packed.scalar_type() == torch::kUInt8 && packed.is_contiguous(), "packed: contiguous uint8");
  TORCH_CHECK(scale_zero.scalar_type() == torch::kBFloat16 && scale_zero.is_contiguous() && scale_zero.dim() == 3 &&
                  scale_zero.size(1) == n && scale_zero.size(2) == 2,
              "scale_zero: contiguous bfloat16 [groups, N, 2]");
  TORCH_CHECK(n % 16 == 0 && packed.numel() * 2 % n == 0, "N must be a multiple of 16 dividing the nibbles");
  const int64_t width = packed.numel() * 2 / n;
  TORCH_CHECK(group > 0 && width % group == 0 && scale_zero.size(0) == width / group, "the groups must tile the row");
  auto out = torch::empty({n, width}, scale_zero.options());
  const uint8_t* bytes = packed.data_ptr<uint8_t>();
  const uint16_t* sz = reinterpret_cast<const uint16_t*>(scale_zero.data_ptr<at::BFloat16>());
  uint16_t* op = reinterpret_cast<uint16_t*>(out.data_ptr<at::BFloat16>());
  const int64_t full = n / 64, rest = n % 64, groups = width / group;
  // One task per pair of rows that share their bytes: (block, j) of a full block, or j of the last one.
  const int64_t pairs = full * 32 + rest / 2;
  at::parallel_for(0, pairs, 8, [&](int64_t begin, int64_t end) {
    std::vector<uint8_t> row_bytes(width);
    for (int64_t p = begin; p < end; ++p) {
      int64_t lo_row, hi_row, first, stride;  // bytes of column c at first + c * stride
      if (p < full * 32) {
        const int64_t block = p / 32, j = p % 32;
        lo_row = block * 64 + j, hi_row = lo_row + 32;
        first = block * width * 32 + j, stride = 32;
      } else {
        const int64_t j = p - full * 32;
        lo_row = full * 64 + 2 * j, hi_row = lo_row + 1;
        first = full * width * 32 + j, stride = rest / 2;
      }
      for (int64_t c = 0; c < width; ++c) row_bytes[c] = bytes[first + c * stride];  // gathered once, then
      uint16_t* lo_out = op + lo_row * width;  // every loop below reads and writes contiguously
      uint16_t* hi_out = op + hi_row * width;
      for (int64_t g = 0; g < groups; ++g) {
        const float sl = bf16_to_float(sz[(g * n + lo_row) * 2]), zl = bf16_to_float(sz[(g * n + lo_row) * 2 + 1]);
        const float sh = bf16_to_float(sz[(g * n + hi_row) * 2]), zh = bf16_to_float(sz[(g * n + hi_row) * 2 + 1]);
        const uint8_t* in = row_bytes.data() + g * group;
        uint16_t* lo = lo_out + g * group;
        uint16_t* hi = hi_out + g * group;
#pragma omp simd
        for (int64_t c = 0; c < group; ++c) {
          lo[c] = dequantize_nibble(in[c] & 15u, sl, zl);
          hi[c] = dequantize_nibble(in[c] >> 4, sh, zh);
        }
      }
    }
  });
  return out;
}
