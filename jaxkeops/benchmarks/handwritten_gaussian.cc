// A hand-written, fully fused Gaussian sum a_i = Σ_j exp(-|x_i - y_j|²) b_j (D = 3, float32,
// one thread): the speed a formula-specific fast path could reach, to compare the generic
// program interpreter with (benchmark "interpreter"). Same arithmetic as the interpreter: the
// vectorised fast_exp of src/fast_math.h, y stored dim-major, sums in double per tile of 256.
//
// Built at benchmark time: g++ -O3 -march=native -fno-math-errno -fopenmp-simd -I src
// Usage: handwritten_gaussian M N REPEATS   -> the median CPU seconds of one call (CPU time,
// not wall time: a loaded shared machine slows both sides of the comparison alike)
#include <time.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "fast_math.h"

namespace {

constexpr int kTile = 256;

void gaussian_sum(const float* x, const float* y_dim_major, const float* b, int M, int N,
                  double* out) {
  const float* y0 = y_dim_major;
  const float* y1 = y_dim_major + N;
  const float* y2 = y_dim_major + 2 * N;
  for (int i = 0; i < M; ++i) {
    const float x0 = x[3 * i], x1 = x[3 * i + 1], x2 = x[3 * i + 2];
    double total = 0.0;
    for (int j0 = 0; j0 < N; j0 += kTile) {
      const int n = std::min(kTile, N - j0);
      double acc[32] = {};
      int l = 0;
      for (; l + 32 <= n; l += 32) {
#pragma omp simd
        for (int k = 0; k < 32; ++k) {
          const int j = j0 + l + k;
          const float d0 = x0 - y0[j], d1 = x1 - y1[j], d2 = x2 - y2[j];
          const float r = d0 * d0 + d1 * d1 + d2 * d2;
          acc[k] += static_cast<double>(jaxkeops::fast_exp(-r) * b[j]);
        }
      }
      for (; l < n; ++l) {
        const int j = j0 + l;
        const float d0 = x0 - y0[j], d1 = x1 - y1[j], d2 = x2 - y2[j];
        acc[0] += static_cast<double>(jaxkeops::fast_exp(-(d0 * d0 + d1 * d1 + d2 * d2)) * b[j]);
      }
      for (int k = 0; k < 32; ++k) total += acc[k];
    }
    out[i] = total;
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: %s M N REPEATS\n", argv[0]);
    return 2;
  }
  const int M = std::atoi(argv[1]), N = std::atoi(argv[2]), R = std::atoi(argv[3]);
  std::mt19937 gen(0);
  std::normal_distribution<float> normal;
  std::vector<float> x(3 * M), y(3 * N), b(N);
  for (float& v : x) v = normal(gen);
  for (float& v : y) v = normal(gen);
  for (float& v : b) v = normal(gen);
  std::vector<double> out(M);
  std::vector<double> times;
  for (int r = 0; r < R + 1; ++r) {
    timespec t0, t1;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t0);
    gaussian_sum(x.data(), y.data(), b.data(), M, N, out.data());
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t1);
    if (r > 0) times.push_back((t1.tv_sec - t0.tv_sec) + 1e-9 * (t1.tv_nsec - t0.tv_nsec));
  }
  std::sort(times.begin(), times.end());
  std::printf("%.9f %.6g\n", times[times.size() / 2], out[0]);
  return 0;
}
