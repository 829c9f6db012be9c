// Host/device helpers and a vectorisable exp.
#pragma once

#include <cstdint>
#include <cstring>
#include <limits>

#if defined(__CUDACC__)
#define JAXKEOPS_HD __host__ __device__
#else
#define JAXKEOPS_HD
#endif

namespace jaxkeops {

namespace detail {
template <class To, class From>
JAXKEOPS_HD inline To bit_cast(From from) {
  static_assert(sizeof(To) == sizeof(From), "bit_cast size mismatch");
  To to;
  std::memcpy(&to, &from, sizeof(To));
  return to;
}
}  // namespace detail

// exp(x), branch-free (selects only) so that loops over it vectorise.
// Range reduction x = n*ln2 + r, |r| <= ln2/2 (Cody-Waite two-part ln2), Taylor polynomial of
// r (degree 7 for float, 13 for double: truncation error well below half an ulp), then scaling
// by 2^n done as two exact power-of-two factors so that results in the subnormal range are
// rounded once. +inf -> +inf, -inf -> 0, NaN -> NaN, overflow -> +inf, underflow -> 0.
JAXKEOPS_HD inline float fast_exp(float x) {
  const float kHi = 88.75f;        // above ln(FLT_MAX) = 88.7228: result is +inf
  const float kLo = -103.98f;      // below ln(2^-150): result rounds to 0
  const float kLog2e = 1.44269504088896341f;
  const float kLn2Hi = 0.693145751953125f;        // exact in 16 bits
  const float kLn2Lo = 1.42860682030941723212e-6f;
  const float kRound = 12582912.0f;               // 1.5 * 2^23: add/sub rounds to integer
  float xc = x > kLo ? x : kLo;                   // NaN -> kLo (fixed below)
  xc = xc < kHi ? xc : kHi;
  float n = (xc * kLog2e + kRound) - kRound;
  float r = xc - n * kLn2Hi;
  r = r - n * kLn2Lo;
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  int32_t ni = static_cast<int32_t>(n);  // in [-150, 128]
  int32_t n1 = ni >> 1;
  int32_t n2 = ni - n1;
  float s1 = detail::bit_cast<float>(static_cast<int32_t>((n1 + 127) << 23));
  float s2 = detail::bit_cast<float>(static_cast<int32_t>((n2 + 127) << 23));
  float res = (p * s1) * s2;
  res = x > kHi ? std::numeric_limits<float>::infinity() : res;
  res = x < kLo ? 0.0f : res;
  res = x != x ? x : res;
  return res;
}

JAXKEOPS_HD inline double fast_exp(double x) {
  const double kHi = 709.8;        // above ln(DBL_MAX) = 709.7827: +inf
  const double kLo = -745.2;       // below ln(2^-1075): rounds to 0
  const double kLog2e = 1.4426950408889634074;
  const double kLn2Hi = 0.693147180369123816490;   // 32 significant bits
  const double kLn2Lo = 1.90821492927058770002e-10;
  const double kRound = 6755399441055744.0;        // 1.5 * 2^52
  double xc = x > kLo ? x : kLo;
  xc = xc < kHi ? xc : kHi;
  double n = (xc * kLog2e + kRound) - kRound;
  double r = xc - n * kLn2Hi;
  r = r - n * kLn2Lo;
  double p = 1.0 / 6227020800.0;  // 1/13!
  p = p * r + 1.0 / 479001600.0;
  p = p * r + 1.0 / 39916800.0;
  p = p * r + 1.0 / 3628800.0;
  p = p * r + 1.0 / 362880.0;
  p = p * r + 1.0 / 40320.0;
  p = p * r + 1.0 / 5040.0;
  p = p * r + 1.0 / 720.0;
  p = p * r + 1.0 / 120.0;
  p = p * r + 1.0 / 24.0;
  p = p * r + 1.0 / 6.0;
  p = p * r + 0.5;
  p = p * r + 1.0;
  p = p * r + 1.0;
  int32_t ni = static_cast<int32_t>(n);  // in [-1075, 1024]
  int32_t n1 = ni >> 1;
  int32_t n2 = ni - n1;
  double s1 = detail::bit_cast<double>(static_cast<int64_t>(n1 + 1023) << 52);
  double s2 = detail::bit_cast<double>(static_cast<int64_t>(n2 + 1023) << 52);
  double res = (p * s1) * s2;
  res = x > kHi ? std::numeric_limits<double>::infinity() : res;
  res = x < kLo ? 0.0 : res;
  res = x != x ? x : res;
  return res;
}

}  // namespace jaxkeops
