// Majority vote of the k neighbours of every query.
//
// numpy twin: gpuknn.model.predict.vote_counts (counts) and gpuknn.model.predict.majority (the
// class with the most votes, ties to the smallest class index).
//
// One block per query. The block counts its query's neighbour classes in shared memory
// (one int per class, so n_classes is bounded by the shared memory the launcher asks
// for), writes the counts, and reduces them to the majority class.

extern "C" __global__ void gpuknn_vote(const long long* __restrict__ classes,  // (n, k), -1 = none
                                       int n_queries, int k, int n_classes,
                                       long long* __restrict__ counts,         // (n, n_classes)
                                       long long* __restrict__ majority)       // (n,)
{
    extern __shared__ int shared[];
    int* tally = shared;                        // n_classes counters
    int* best_count = shared + n_classes;       // blockDim.x partial maxima
    int* best_class = best_count + blockDim.x;  // and their classes

    const int query = blockIdx.x;
    if (query >= n_queries) {
        return;
    }
    for (int c = threadIdx.x; c < n_classes; c += blockDim.x) {
        tally[c] = 0;
    }
    __syncthreads();
    const long long* row = classes + (long long)query * k;
    for (int j = threadIdx.x; j < k; j += blockDim.x) {
        const long long c = row[j];
        if (c >= 0 && c < n_classes) {
            atomicAdd(&tally[c], 1);
        }
    }
    __syncthreads();

    // Each thread scans its classes in increasing order, so a strict '>' keeps the
    // smallest class among equal counts.
    int count = -1;
    int which = 0;
    long long* out = counts + (long long)query * n_classes;
    for (int c = threadIdx.x; c < n_classes; c += blockDim.x) {
        const int votes = tally[c];
        out[c] = votes;
        if (votes > count) {
            count = votes;
            which = c;
        }
    }
    best_count[threadIdx.x] = count;
    best_class[threadIdx.x] = which;
    __syncthreads();
    for (int stride = blockDim.x / 2; stride > 0; stride /= 2) {
        if (threadIdx.x < stride) {
            const int other = threadIdx.x + stride;
            const bool more = best_count[other] > best_count[threadIdx.x];
            const bool tie_smaller = best_count[other] == best_count[threadIdx.x]
                                     && best_class[other] < best_class[threadIdx.x];
            if (more || tie_smaller) {
                best_count[threadIdx.x] = best_count[other];
                best_class[threadIdx.x] = best_class[other];
            }
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        majority[query] = best_class[0];
    }
}
