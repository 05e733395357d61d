// saxpy: y = a x + y over n floats read from a file; the result written to another.
//   saxpy N A IN OUT   (IN holds x then y)
#include "program.h"

__global__ void saxpy(int n, float a, const float *x, float *y) {
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) y[i] = a * x[i] + y[i];
}

int main(int argc, char **argv) {
  int n = std::atoi(argv[1]);
  float a = (float)std::atof(argv[2]);
  size_t bytes = sizeof(float) * n;
  float *host = (float *)read_file(argv[3], 2 * bytes);
  float *x, *y;
  REPORT("malloc", cudaMalloc(&x, bytes) | cudaMalloc(&y, bytes));
  REPORT("h2d", cudaMemcpy(x, host, bytes, cudaMemcpyHostToDevice) |
                    cudaMemcpy(y, host + n, bytes, cudaMemcpyHostToDevice));
  saxpy<<<(n + 255) / 256 < 1024 ? (n + 255) / 256 : 1024, 256>>>(n, a, x, y);
  REPORT("launch", cudaGetLastError());
  REPORT("d2h", cudaMemcpy(host, y, bytes, cudaMemcpyDeviceToHost));
  write_file(argv[4], host, bytes);
  REPORT("free", cudaFree(x) | cudaFree(y));
  return 0;
}
