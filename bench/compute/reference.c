/* The benchmark's algorithms in C (gcc -O2, OpenMP over as many threads as the engine uses),
 * in the same order of operations as kernels.cu, so that results agree bit for bit (the
 * SGEMM excepted: nvcc fuses its multiply-adds). */
#include <omp.h>
#include <string.h>

#define BLOCK 256
#define TILE 16

void set_threads(int threads) { omp_set_num_threads(threads); }

void saxpy(int n, float a, const float *x, float *y) {
#pragma omp parallel for schedule(static)
  for (int i = 0; i < n; ++i) y[i] = a * x[i] + y[i];
}

void tree_reduce(int n, const float *x, float *partial) {
  int blocks = (n + BLOCK - 1) / BLOCK;
#pragma omp parallel for schedule(static)
  for (int b = 0; b < blocks; ++b) {
    float buffer[BLOCK];
    for (int t = 0; t < BLOCK; ++t) buffer[t] = b * BLOCK + t < n ? x[b * BLOCK + t] : 0.0f;
    for (int s = BLOCK / 2; s > 0; s >>= 1)
      for (int t = 0; t < s; ++t) buffer[t] += buffer[t + s];
    partial[b] = buffer[0];
  }
}

void warp_reduce(int n, const float *x, float *partial) {
  int warps = (n + 31) / 32;
#pragma omp parallel for schedule(static)
  for (int w = 0; w < warps; ++w) {
    float v[32];
    for (int l = 0; l < 32; ++l) v[l] = w * 32 + l < n ? x[w * 32 + l] : 0.0f;
    for (int offset = 16; offset > 0; offset >>= 1)
      for (int l = 0; l < 32 - offset; ++l) v[l] += v[l + offset];  /* lanes read before they write */
    partial[w] = v[0];
  }
}

void sgemm(int n, const float *a, const float *b, float *c) {
#pragma omp parallel for schedule(static) collapse(2)
  for (int tr = 0; tr < n; tr += TILE)
    for (int tc = 0; tc < n; tc += TILE) {
      float acc[TILE][TILE];
      memset(acc, 0, sizeof acc);
      for (int t = 0; t < n; t += TILE)
        for (int r = 0; r < TILE; ++r)
          for (int k = 0; k < TILE; ++k) {
            float left = a[(tr + r) * n + t + k];
            for (int col = 0; col < TILE; ++col) acc[r][col] += left * b[(t + k) * n + tc + col];
          }
      for (int r = 0; r < TILE; ++r)
        for (int col = 0; col < TILE; ++col) c[(tr + r) * n + tc + col] = acc[r][col];
    }
}
