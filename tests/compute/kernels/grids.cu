// 2D and 3D grids and blocks: a shared-memory tiled transpose, a 3D stencil and every
// special register.
#define TILE 32
#define ROWS 8

// out (cols x rows) = transpose of in (rows x cols); blocks of 32 x 8 threads, 32 x 33 tiles
extern "C" __global__ void transpose(int rows, int cols, const float *in, float *out) {
  __shared__ float tile[TILE][TILE + 1];
  int x = blockIdx.x * TILE + threadIdx.x;
  int y = blockIdx.y * TILE + threadIdx.y;
  for (int j = 0; j < TILE; j += ROWS)
    if (x < cols && y + j < rows) tile[threadIdx.y + j][threadIdx.x] = in[(y + j) * cols + x];
  __syncthreads();
  x = blockIdx.y * TILE + threadIdx.x;
  y = blockIdx.x * TILE + threadIdx.y;
  for (int j = 0; j < TILE; j += ROWS)
    if (x < rows && y + j < cols) out[(y + j) * rows + x] = tile[threadIdx.x][threadIdx.y + j];
}

// 7-point stencil on an nx x ny x nz grid (borders copied), integer weights: exact
extern "C" __global__ void stencil3d(int nx, int ny, int nz, const int *in, int *out) {
  int x = blockIdx.x * blockDim.x + threadIdx.x;
  int y = blockIdx.y * blockDim.y + threadIdx.y;
  int z = blockIdx.z * blockDim.z + threadIdx.z;
  if (x >= nx || y >= ny || z >= nz) return;
  int at = (z * ny + y) * nx + x;
  if (x == 0 || y == 0 || z == 0 || x == nx - 1 || y == ny - 1 || z == nz - 1) {
    out[at] = in[at];
    return;
  }
  out[at] = 6 * in[at] - in[at - 1] - in[at + 1] - in[at - nx] - in[at + nx] - in[at - nx * ny] - in[at + nx * ny];
}

// every thread writes its coordinates: tid, ntid, ctaid, nctaid, laneid, warp in the block
extern "C" __global__ void coordinates(unsigned *out) {
  unsigned block = (blockIdx.z * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x;
  unsigned thread = (threadIdx.z * blockDim.y + threadIdx.y) * blockDim.x + threadIdx.x;
  unsigned *o = out + 16 * (block * blockDim.x * blockDim.y * blockDim.z + thread);
  unsigned lane;
  asm("mov.u32 %0, %%laneid;" : "=r"(lane));
  o[0] = threadIdx.x; o[1] = threadIdx.y; o[2] = threadIdx.z;
  o[3] = blockDim.x; o[4] = blockDim.y; o[5] = blockDim.z;
  o[6] = blockIdx.x; o[7] = blockIdx.y; o[8] = blockIdx.z;
  o[9] = gridDim.x; o[10] = gridDim.y; o[11] = gridDim.z;
  o[12] = lane; o[13] = thread / 32; o[14] = 0x1234; o[15] = 0xabcd;
}

// warpSize reads the PTX constant WARP_SZ
extern "C" __global__ void warp_size(unsigned *out) { out[threadIdx.x] = warpSize; }
