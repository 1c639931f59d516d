// The k smallest scores of every row, smallest first, ties to the smaller column.
//
// numpy twin: gpuknn.search.topk.select_k (float32 scores, no NaN). Optional column offsets
// (exact search's |x|^2) are added to every row as it is read: the same float32 sums as
// adding them to the tile first, without that extra pass over the tile.
//
// One block per row, in three steps over the row:
// 1. radix select: four passes of 8 bits over an order-preserving integer key of every
//    score find the k-th smallest key K, and how many of the scores equal to K belong
//    to the top k (histograms in shared memory, warp-aggregated: needs sm_70);
// 2. collect: every score below K, then the wanted number of scores equal to K, taken in
//    column order (each thread owns a contiguous run of columns, and a prefix sum over
//    the threads tells each how many equal scores come before its run);
// 3. a bitonic sort of the k collected (key, column) pairs in shared memory.
// k is at most GPUKNN_MAX_K; blockDim.x must be GPUKNN_THREADS.

#define GPUKNN_MAX_K 2048
#define GPUKNN_THREADS 256

__device__ __forceinline__ unsigned int score_key(float score)
{
    if (score != score) {
        return 0xffffffffu;  // NaN after +inf, as numpy sorts it, whatever its sign bit
    }
    unsigned int bits = __float_as_uint(score);
    if (bits == 0x80000000u) {
        bits = 0u;  // -0.0 ties with +0.0, as numpy compares them
    }
    return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}

__device__ __forceinline__ int smaller(int a, int b)
{
    return a < b ? a : b;
}

__device__ __forceinline__ float key_score(unsigned int key)
{
    const unsigned int bits = (key & 0x80000000u) ? (key & 0x7fffffffu) : ~key;
    return __uint_as_float(bits);
}

extern "C" __global__ void gpuknn_select_k(const float* __restrict__ scores,  // (n_rows, n_cols)
                                           const float* __restrict__ column_offsets,  // (n_cols,)
                                           int has_offsets, int n_rows, int n_cols, int k,
                                           float* __restrict__ values,         // (n_rows, k)
                                           long long* __restrict__ columns)    // (n_rows, k)
{
    __shared__ unsigned int keys[GPUKNN_MAX_K];
    __shared__ int picked[GPUKNN_MAX_K];
    __shared__ int histogram[256];
    __shared__ int before[GPUKNN_THREADS];
    __shared__ unsigned int prefix, mask;
    __shared__ int wanted, filled;

    const long long row_index = blockIdx.x;
    if (row_index >= n_rows) {
        return;
    }
    const float* row = scores + row_index * n_cols;
    // The score of column c: the tile's, plus its column offset when there are offsets.
    auto key_at = [&](int c) {
        return score_key(has_offsets ? row[c] + column_offsets[c] : row[c]);
    };
    const int tid = threadIdx.x;
    const int lane = tid & 31;
    if (tid == 0) {
        prefix = 0u;
        mask = 0u;
        wanted = k;  // rank of the k-th smallest among the keys matching the prefix
        filled = 0;
    }
    __syncthreads();

    // 1. Radix select, most significant byte first.
    for (int shift = 24; shift >= 0; shift -= 8) {
        for (int b = tid; b < 256; b += blockDim.x) {
            histogram[b] = 0;
        }
        __syncthreads();
        const unsigned int p = prefix, m = mask;
        // Scores of similar size share their top byte, so one bin can take most of a row:
        // the lanes of a warp that hit the same bin add to it once, through their leader.
        // `start` is the same for the whole warp, so every lane runs every iteration.
        for (int start = tid - lane; start < n_cols; start += blockDim.x) {
            const int c = start + lane;
            const unsigned int key = c < n_cols ? key_at(c) : 0u;
            const bool counted = c < n_cols && (key & m) == p;
            const unsigned int bin = counted ? (key >> shift) & 0xffu : 256u;
            const unsigned int peers = __match_any_sync(0xffffffffu, bin);
            if (counted && lane == __ffs(peers) - 1) {
                atomicAdd(&histogram[bin], __popc(peers));
            }
        }
        __syncthreads();
        if (tid == 0) {
            int below = 0;
            for (int b = 0; b < 256; ++b) {
                if (below + histogram[b] >= wanted) {
                    prefix |= (unsigned int)b << shift;
                    mask |= 0xffu << shift;
                    wanted -= below;
                    break;
                }
                below += histogram[b];
            }
        }
        __syncthreads();
    }
    const unsigned int kth = prefix;  // the k-th smallest key; `wanted` of its equals are kept

    // 2a. Every score below the k-th, in any order (the sort orders them).
    for (int c = tid; c < n_cols; c += blockDim.x) {
        const unsigned int key = key_at(c);
        if (key < kth) {
            const int slot = atomicAdd(&filled, 1);
            keys[slot] = key;
            picked[slot] = c;
        }
    }
    // 2b. The first `wanted` scores equal to the k-th, in column order.
    const int run = (n_cols + blockDim.x - 1) / blockDim.x;
    const int begin = smaller(tid * run, n_cols);
    const int end = smaller(begin + run, n_cols);
    int equal = 0;
    for (int c = begin; c < end; ++c) {
        equal += key_at(c) == kth;
    }
    before[tid] = equal;
    __syncthreads();
    if (tid == 0) {
        int total = 0;
        for (int t = 0; t < blockDim.x; ++t) {
            const int own = before[t];
            before[t] = total;
            total += own;
        }
    }
    __syncthreads();
    const int first_slot = k - wanted;  // slots [0, k - wanted) hold the scores below
    int take = smaller(wanted > before[tid] ? wanted - before[tid] : 0, equal);
    int slot = first_slot + before[tid];
    for (int c = begin; c < end && take > 0; ++c) {
        if (key_at(c) == kth) {
            keys[slot] = kth;
            picked[slot] = c;
            ++slot;
            --take;
        }
    }

    // 3. Bitonic sort of the k pairs by (key, column), padded to a power of two.
    int size = 1;
    while (size < k) {
        size <<= 1;
    }
    for (int i = k + tid; i < size; i += blockDim.x) {
        keys[i] = 0xffffffffu;
        picked[i] = 0x7fffffff;
    }
    __syncthreads();
    for (int span = 2; span <= size; span <<= 1) {
        for (int stride = span >> 1; stride > 0; stride >>= 1) {
            for (int i = tid; i < size; i += blockDim.x) {
                const int j = i ^ stride;
                if (j > i) {
                    const bool ascending = (i & span) == 0;
                    const bool greater = keys[i] > keys[j]
                                         || (keys[i] == keys[j] && picked[i] > picked[j]);
                    if (greater == ascending) {
                        const unsigned int key = keys[i];
                        keys[i] = keys[j];
                        keys[j] = key;
                        const int column = picked[i];
                        picked[i] = picked[j];
                        picked[j] = column;
                    }
                }
            }
            __syncthreads();
        }
    }
    for (int t = tid; t < k; t += blockDim.x) {
        values[row_index * k + t] = key_score(keys[t]);
        columns[row_index * k + t] = picked[t];
    }
}
