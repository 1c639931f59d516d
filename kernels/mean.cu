// Mean label of the found neighbours of every query (the regressor's prediction).
//
// numpy twin: gpuknn.model.predict.mean_labels. Sums in double precision; a query without
// any found neighbour gets NaN.
//
// One warp per query: the lanes stride over the k neighbours (coalesced reads of the
// row), then a shuffle reduction combines their sums and counts.

extern "C" __global__ void gpuknn_mean(const float* __restrict__ labels,        // (n, k)
                                       const unsigned char* __restrict__ found, // (n, k) bool
                                       int n_queries, int k,
                                       float* __restrict__ out)                 // (n,)
{
    const int lane = threadIdx.x % 32;
    const long long query = ((long long)blockIdx.x * blockDim.x + threadIdx.x) / 32;
    if (query >= n_queries) {
        return;
    }
    const float* row = labels + query * k;
    const unsigned char* row_found = found + query * k;
    double total = 0.0;
    int count = 0;
    for (int j = lane; j < k; j += 32) {
        if (row_found[j]) {
            total += (double)row[j];
            count += 1;
        }
    }
    for (int offset = 16; offset > 0; offset /= 2) {
        total += __shfl_down_sync(0xffffffffu, total, offset);
        count += __shfl_down_sync(0xffffffffu, count, offset);
    }
    if (lane == 0) {
        out[query] = count > 0 ? (float)(total / count) : __int_as_float(0x7fc00000);
    }
}
