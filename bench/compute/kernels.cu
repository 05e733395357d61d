// The benchmark's kernels, run by vgpu's compute engine from their PTX; reference.c holds the
// same algorithms in C.
#define BLOCK 256
#define TILE 16

extern "C" __global__ void saxpy(int n, float a, const float *x, float *y) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) y[i] = a * x[i] + y[i];
}

// one partial sum per CTA: a shared-memory tree, a barrier per step
extern "C" __global__ void tree_reduce(int n, const float *x, float *partial) {
  __shared__ float buffer[BLOCK];
  int i = blockIdx.x * BLOCK + threadIdx.x;
  buffer[threadIdx.x] = i < n ? x[i] : 0.0f;
  __syncthreads();
#pragma unroll 1
  for (int s = BLOCK / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) buffer[threadIdx.x] += buffer[threadIdx.x + s];
    __syncthreads();
  }
  if (threadIdx.x == 0) partial[blockIdx.x] = buffer[0];
}

// one partial sum per warp: shfl.down, no shared memory
extern "C" __global__ void warp_reduce(int n, const float *x, float *partial) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  float v = i < n ? x[i] : 0.0f;
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
  if ((threadIdx.x & 31) == 0) partial[i / 32] = v;
}

// C = A B for n x n row-major matrices (n a multiple of TILE), 16 x 16 shared-memory tiles
extern "C" __global__ void sgemm(int n, const float *a, const float *b, float *c) {
  __shared__ float as[TILE][TILE];
  __shared__ float bs[TILE][TILE];
  int row = blockIdx.y * TILE + threadIdx.y, col = blockIdx.x * TILE + threadIdx.x;
  float acc = 0.0f;
#pragma unroll 1
  for (int t = 0; t < n; t += TILE) {
    as[threadIdx.y][threadIdx.x] = a[row * n + t + threadIdx.x];
    bs[threadIdx.y][threadIdx.x] = b[(t + threadIdx.y) * n + col];
    __syncthreads();
    for (int k = 0; k < TILE; ++k) acc += as[threadIdx.y][k] * bs[k][threadIdx.x];
    __syncthreads();
  }
  c[row * n + col] = acc;
}
