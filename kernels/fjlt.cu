// Fast Johnson-Lindenstrauss transform of rows, fused: sign flip, Walsh-Hadamard
// transform over the padded dimension, subsampling and scaling, one pass over memory.
//
// numpy twin: gpuknn.model.reduction.FJLT.transform (and walsh_hadamard). The butterfly runs
// the same additions in the same order as the twin (half = 1, 2, 4, ...), so the two
// agree to the last bit.
//
// One block per row. The padded row (padded_dim floats, a power of two) lives in shared
// memory, which bounds padded_dim (the launcher checks it).

extern "C" __global__ void gpuknn_fjlt(const float* __restrict__ x,           // (n, input_dim)
                                       const float* __restrict__ flips,       // (padded_dim,)
                                       const long long* __restrict__ keep,    // (target_dim,)
                                       int n_rows, int input_dim, int padded_dim,
                                       int target_dim, float scale,
                                       float* __restrict__ out)               // (n, target_dim)
{
    extern __shared__ float row[];
    const long long r = blockIdx.x;
    if (r >= n_rows) {
        return;
    }
    const float* source = x + r * input_dim;
    for (int i = threadIdx.x; i < padded_dim; i += blockDim.x) {
        row[i] = i < input_dim ? source[i] * flips[i] : 0.0f;
    }
    __syncthreads();
    for (int half = 1; half < padded_dim; half *= 2) {
        for (int pair = threadIdx.x; pair < padded_dim / 2; pair += blockDim.x) {
            const int first = (pair / half) * 2 * half + pair % half;
            const int second = first + half;
            const float a = row[first];
            const float b = row[second];
            row[first] = a + b;
            row[second] = a - b;
        }
        __syncthreads();
    }
    float* target = out + r * target_dim;
    for (int t = threadIdx.x; t < target_dim; t += blockDim.x) {
        target[t] = row[keep[t]] * scale;
    }
}
