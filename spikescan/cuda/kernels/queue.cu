// spikescan: per-neuron input queues with synaptic delays (DESIGN.md section 5), built on the GPU.
//
// Input: the shared queue of every sample without delays, as spikescan/_queue.py::shared_queue builds it:
// times[b, k] ascending (+inf padded), flat source index[b, k] = j * max_in + m, n_real[b] real entries.
// Output neuron i of sample b receives entry k at arrival[k] = times[b, k] + D[j_k, i]. One thread block per
// (b, i) row sorts the pairs (arrival[k], k) of the n_real[b] real entries in shared memory and writes
//   q_times[b, i, r] = arrival[k_r],  q_index[b, i, r] = index[b, k_r]  for r < n_real[b],
//   q_times = +inf, q_index = -1                                        for n_real[b] <= r < L1,
// where k_0, k_1, ... orders the entries by arrival and then by k. Pairs are distinct, so the order is a total one
// and equals the stable argsort of spikescan/_queue.py::delayed_queues (simultaneous arrivals keep their order in
// the shared queue), bit for bit: the arrival is one IEEE double addition on both sides.
//
// Sort: bitonic network in the variant whose comparators all put the smaller element at the lower position (the
// first step of every merge compares mirrored positions, k -> k ^ (2^s - 1)). Positions >= n act as +inf padding
// up to the next power of two: a comparator whose upper position is >= n never moves anything, so it is skipped
// and the padding needs no memory. Shared memory: n (double, int) pairs, 12 bytes per entry, as dynamic shared
// memory (the launcher opts in beyond 48 KiB). O(n log^2 n) comparisons, one __syncthreads per network step.
#include "common.cuh"

#ifndef SPIKESCAN_DYNAMIC_SHARED
#define SPIKESCAN_DYNAMIC_SHARED(type, name) extern __shared__ type name[]
#endif

// (t1, k1) < (t2, k2) in the order of the queue: by arrival time, then by position in the shared queue.
template <class T>
__device__ __forceinline__ bool spikescan_queue_before(T t1, int k1, T t2, int k2) {
    return t1 < t2 || (t1 == t2 && k1 < k2);
}

// Grid: batch * n_out blocks (block b * n_out + i), any power-of-two block size. Shared: n_max * (sizeof(T) + 4)
// bytes, n_max >= max(n_real). delays_t: [n_out, n_in] (the transpose of D, so that a row reads one contiguous
// range). q_times, q_index: [batch, n_out, L1] (q_index int32: the launcher checks n_in * max_in < 2^31).
template <class T>
__global__ void spikescan_delay_queue(const T* __restrict__ times, const long long* __restrict__ index,
                                      const long long* __restrict__ n_real, const T* __restrict__ delays_t,
                                      long long n_in, long long n_out, long long L1, long long max_in,
                                      long long n_max, T* __restrict__ q_times, int* __restrict__ q_index) {
    SPIKESCAN_DYNAMIC_SHARED(double, spikescan_queue_shared);
    T* key = reinterpret_cast<T*>(spikescan_queue_shared);
    int* pos = reinterpret_cast<int*>(key + n_max);

    const long long row = blockIdx.x;
    const long long b = row / n_out;
    const long long i = row - b * n_out;
    const int n = (int)n_real[b];
    const int tid = threadIdx.x;
    const int stride = blockDim.x;
    const T* t_row = times + b * L1;
    const long long* idx_row = index + b * L1;
    const T* d_row = delays_t + i * n_in;

    for (int k = tid; k < n; k += stride) {
        key[k] = t_row[k] + d_row[idx_row[k] / max_in];
        pos[k] = k;
    }
    __syncthreads();

    // Network over the next power of two P = 2 * half >= n; merges of blocks of `width` = 2, 4, ..., P.
    int half = 1;
    while (2 * half < n) half <<= 1;
    for (int width = 2; (width >> 1) < n; width <<= 1) {
        for (int j = width >> 1; j > 0; j >>= 1) {
            // Comparator c in [0, P/2) pairs lo (bit j clear) with hi > lo.
            for (int c = tid; c < half; c += stride) {
                const int lo = ((c & ~(j - 1)) << 1) | (c & (j - 1));
                const int hi = (j == (width >> 1)) ? (lo ^ (width - 1)) : (lo | j);
                if (hi < n) {
                    const T t_lo = key[lo], t_hi = key[hi];
                    const int k_lo = pos[lo], k_hi = pos[hi];
                    if (spikescan_queue_before(t_hi, k_hi, t_lo, k_lo)) {
                        key[lo] = t_hi;
                        key[hi] = t_lo;
                        pos[lo] = k_hi;
                        pos[hi] = k_lo;
                    }
                }
            }
            __syncthreads();
        }
    }

    const long long out = row * L1;
    for (long long r = tid; r < L1; r += stride) {
        if (r < n) {
            q_times[out + r] = key[r];
            q_index[out + r] = (int)idx_row[pos[r]];
        } else {
            q_times[out + r] = spikescan_inf();
            q_index[out + r] = -1;
        }
    }
}
