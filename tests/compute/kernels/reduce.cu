// Reductions with shared memory: barriers inside loops (kept as loops by #pragma unroll 1),
// a block-level tree reduction, a grid-stride loop.  The order of float additions is fixed,
// so the test repeats it in numpy and compares bit for bit.
#define BLOCK 256

// tree: for s = BLOCK/2 .. 1, lanes below s add the partner s away; a barrier per step
extern "C" __global__ void tree_sum_f32(int n, const float *x, float *out) {
  __shared__ float partial[BLOCK];
  int i = blockIdx.x * BLOCK + threadIdx.x;
  partial[threadIdx.x] = i < n ? x[i] : 0.0f;
  __syncthreads();
#pragma unroll 1
  for (int s = BLOCK / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) partial[threadIdx.x] += partial[threadIdx.x + s];
    __syncthreads();
  }
  if (threadIdx.x == 0) out[blockIdx.x] = partial[0];
}

// the same with the loop unrolled by nvcc (barriers in straight-line code) and blockDim-driven
extern "C" __global__ void tree_sum_i32(int n, const int *x, int *out) {
  extern __shared__ int shared_ints[];
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  shared_ints[threadIdx.x] = i < n ? x[i] : 0;
  __syncthreads();
  for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) shared_ints[threadIdx.x] += shared_ints[threadIdx.x + s];
    __syncthreads();
  }
  if (threadIdx.x == 0) out[blockIdx.x] = shared_ints[0];
}

// grid-stride accumulation per thread (f64), then the block tree; loops kept rolled
extern "C" __global__ void grid_stride_sum_f64(int n, const double *x, double *out) {
  __shared__ double partial[BLOCK];
  double sum = 0.0;
#pragma unroll 1
  for (int i = blockIdx.x * BLOCK + threadIdx.x; i < n; i += gridDim.x * BLOCK) sum += x[i];
  partial[threadIdx.x] = sum;
  __syncthreads();
#pragma unroll 1
  for (int s = BLOCK / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) partial[threadIdx.x] += partial[threadIdx.x + s];
    __syncthreads();
  }
  if (threadIdx.x == 0) out[blockIdx.x] = partial[0];
}

// barriers in a loop whose trip count comes from memory: rounds[b] rounds of a neighbour
// rotation through shared memory (each round reads what the other threads wrote in the last)
extern "C" __global__ void rotate_rounds(const int *rounds, const int *x, int *out) {
  __shared__ int ring[BLOCK];
  int t = threadIdx.x;
  int value = x[blockIdx.x * BLOCK + t];
#pragma unroll 1
  for (int r = 0; r < rounds[blockIdx.x]; ++r) {
    ring[t] = value;
    __syncthreads();
    value = ring[(t + 1) % BLOCK] * 3 + r;
    __syncthreads();
  }
  out[blockIdx.x * BLOCK + t] = value;
}

// inclusive block scan (Hillis-Steele), a barrier pair per step
extern "C" __global__ void block_scan_i32(const int *x, int *out) {
  __shared__ int buffer[BLOCK];
  int t = threadIdx.x;
  buffer[t] = x[blockIdx.x * BLOCK + t];
  __syncthreads();
#pragma unroll 1
  for (int offset = 1; offset < BLOCK; offset <<= 1) {
    int add = t >= offset ? buffer[t - offset] : 0;
    __syncthreads();
    buffer[t] += add;
    __syncthreads();
  }
  out[blockIdx.x * BLOCK + t] = buffer[t];
}

// __syncthreads_count/_and/_or (bar.red), in a loop whose rounds each thread's answer decides
extern "C" __global__ void barrier_votes(const int *x, int *out) {
  int t = threadIdx.x;
  int value = x[blockIdx.x * BLOCK + t];
  int count = 0, all = 0, any = 0, rounds = 0;
#pragma unroll 1
  do {
    count += __syncthreads_count(value > rounds);
    all += __syncthreads_and(value > rounds);
    any = __syncthreads_or(value > rounds);
    ++rounds;
  } while (any);
  out[3 * (blockIdx.x * BLOCK + t)] = count;
  out[3 * (blockIdx.x * BLOCK + t) + 1] = all;
  out[3 * (blockIdx.x * BLOCK + t) + 2] = rounds;
}
