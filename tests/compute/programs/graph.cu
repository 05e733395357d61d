// A CUDA graph captured from a stream (two kernels and a memset) and replayed: every replay
// computes.   graph N REPLAYS IN OUT
#include "program.h"

__global__ void scale(int n, int *x, int factor) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) x[i] *= factor;
}

__global__ void add_index(int n, int *x, int *counter) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) x[i] += i;
  if (i == 0) atomicAdd(counter, 1);
}

int main(int argc, char **argv) {
  int n = std::atoi(argv[1]), replays = std::atoi(argv[2]);
  int *host = (int *)read_file(argv[3], sizeof(int) * n);
  int *x, *counter;
  cudaStream_t stream;
  REPORT("malloc", cudaMalloc(&x, sizeof(int) * n) | cudaMalloc(&counter, sizeof(int)));
  REPORT("h2d", cudaMemcpy(x, host, sizeof(int) * n, cudaMemcpyHostToDevice));
  REPORT("memset", cudaMemset(counter, 0, sizeof(int)));
  REPORT("stream", cudaStreamCreate(&stream));
  cudaGraph_t graph;
  cudaGraphExec_t exec;
  REPORT("begin", cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
  scale<<<(n + 127) / 128, 128, 0, stream>>>(n, x, 3);
  add_index<<<(n + 127) / 128, 128, 0, stream>>>(n, x, counter);
  REPORT("end", cudaStreamEndCapture(stream, &graph));
  REPORT("instantiate", cudaGraphInstantiate(&exec, graph, 0));
  int status = 0;
  for (int r = 0; r < replays; ++r) status |= cudaGraphLaunch(exec, stream);
  REPORT("replays", status);
  REPORT("sync", cudaStreamSynchronize(stream));
  int *out = (int *)std::malloc(sizeof(int) * (n + 1));
  REPORT("d2h", cudaMemcpy(out, x, sizeof(int) * n, cudaMemcpyDeviceToHost) |
                    cudaMemcpy(out + n, counter, sizeof(int), cudaMemcpyDeviceToHost));
  write_file(argv[4], out, sizeof(int) * (n + 1));
  return 0;
}
