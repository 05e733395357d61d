// A cooperative kernel (grid-wide sync) and tensor-core matrix multiply through mma.h.
#include <cooperative_groups.h>
#include <mma.h>
namespace cg = cooperative_groups;
using namespace nvcuda;

__global__ void grid_sum(int *data, int *total) {
    cg::grid_group grid = cg::this_grid();
    atomicAdd(total, data[grid.thread_rank()]);
    grid.sync();
    data[grid.thread_rank()] = *total;
}

__global__ void wmma_tile(const __half *a, const __half *b, float *c) {
    wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> fa;
    wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::col_major> fb;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> fc;
    wmma::fill_fragment(fc, 0.0f);
    wmma::load_matrix_sync(fa, a, 16);
    wmma::load_matrix_sync(fb, b, 16);
    wmma::mma_sync(fc, fa, fb, fc);
    wmma::store_matrix_sync(c, fc, 16, wmma::mem_row_major);
}
