// Computes over and over with its own pattern and checks every result: two of these at once
// must neither see nor disturb each other's memory.  With a peer's device address, also reads
// there: it must not find the peer's pattern (it gets its own memory or error 700).
//   concurrent SEED ROUNDS [PEER_ADDRESS]
#include <unistd.h>
#include "program.h"
#define N (1 << 18)

__global__ void fill(unsigned *data, unsigned value) {
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < N; i += gridDim.x * blockDim.x) data[i] = value ^ i;
}

__global__ void bump(unsigned *data) {
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < N; i += gridDim.x * blockDim.x) data[i] += 1;
}

__global__ void peek(const unsigned *address, unsigned *out) { out[threadIdx.x] = address[threadIdx.x]; }

int main(int argc, char **argv) {
  unsigned seed = (unsigned)std::strtoul(argv[1], nullptr, 0);
  int rounds = std::atoi(argv[2]);
  unsigned *data;
  unsigned *host = (unsigned *)std::malloc(sizeof(unsigned) * N);
  REPORT("malloc", cudaMalloc(&data, sizeof(unsigned) * N));
  std::printf("address %llu\n", (unsigned long long)(size_t)data);
  std::fflush(stdout);
  long long wrong = 0;
  for (int round = 0; round < rounds; ++round) {
    unsigned value = seed * 1000003u + round;
    fill<<<64, 256>>>(data, value);
    bump<<<64, 256>>>(data);
    if (cudaMemcpy(host, data, sizeof(unsigned) * N, cudaMemcpyDeviceToHost) != cudaSuccess) ++wrong;
    for (int i = 0; i < N; ++i) wrong += host[i] != ((value ^ i) + 1);
  }
  std::printf("wrong %lld\n", wrong);
  if (argc > 3) {
    unsigned *peer = (unsigned *)(size_t)std::strtoull(argv[3], nullptr, 0);
    peek<<<1, 32>>>(peer, data);
    int rc = cudaDeviceSynchronize();
    std::printf("peek %d\n", rc);
    if (rc == cudaSuccess && cudaMemcpy(host, data, 32 * sizeof(unsigned), cudaMemcpyDeviceToHost) == cudaSuccess)
      std::printf("peeked %u\n", host[0]);
  }
  return 0;
}
