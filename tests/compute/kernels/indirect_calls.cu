// Calls through a table of device function pointers (nvcc keeps them indirect: call with a
// .callprototype), the table a module variable initialised with the functions' addresses.

typedef int (*Operation)(int, int);
__device__ __noinline__ int op_add(int a, int b) { return a + b; }
__device__ __noinline__ int op_mul(int a, int b) { return a * b; }
__device__ __noinline__ int op_sub(int a, int b) { return a - b; }
__device__ __noinline__ int op_max(int a, int b) { return a > b ? a : b; }
__device__ Operation operations[4] = {op_add, op_mul, op_sub, op_max};

extern "C" __global__ void function_pointers(int n, const int *which, const int *a, const int *b, int *out) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) out[i] = operations[which[i] & 3](a[i], b[i]);
}
