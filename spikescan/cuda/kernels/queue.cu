// spikescan: per-neuron input queues with synaptic delays (DESIGN.md section 5), built on the GPU.
//
// Input: the shared queue of every sample without delays, as spikescan/_queue.py::shared_queue builds it:
// times[b, k] ascending (+inf padded), flat source index[b, k] = j * max_in + m, n_real[b] real entries.
// Output neuron i of sample b receives entry k at arrival[k] = times[b, k] + D[j_k, i]. One thread block per
// (b, i) row orders the pairs (arrival[k], k) of the n_real[b] real entries in shared memory and writes
//   q_times[b, i, r] = arrival[k_r],  q_index[b, i, r] = index[b, k_r]  for r < n_real[b],
//   q_times = +inf, q_index = -1                                        for n_real[b] <= r < L1,
// where k_0, k_1, ... orders the entries by arrival and then by k. With permuted != 0 (spikescan/cuda/_queue.py
// PERMUTATION, L1 <= 65536) a kernel writes instead q_perm[b, i, r] = k_r (uint16) for r < n_real[b] and
// n_real[b] (a padding position of the shared queue: time +inf, index -1) for r >= n_real[b], 2 bytes per entry
// instead of 12; the LIF kernels recompute the arrivals with the same addition (common.cuh spikescan_queue_t).
// Pairs are distinct, so the order is a total one and equals the stable argsort of
// spikescan/_queue.py::delayed_queues (simultaneous arrivals keep their order in the shared queue), bit for bit:
// the arrival is one IEEE double addition on both sides. Two kernels compute it (spikescan/cuda/_queue.py chooses):
//
// spikescan_delay_queue, bitonic sort: the network in the variant whose comparators all put the smaller element at
// the lower position (the first step of every merge compares mirrored positions, k -> k ^ (2^s - 1)). Positions
// >= n act as +inf padding up to the next power of two: a comparator whose upper position is >= n never moves
// anything, so it is skipped and the padding needs no memory. Shared memory: n (double, int) pairs, 12 bytes per
// entry, as dynamic shared memory (the launcher opts in beyond 48 KiB). O(n log^2 n) comparisons, one
// __syncthreads per network step.
//
// spikescan_delay_queue_counting, counting sort: the row's arrivals are binned into n bins over [min, max] by a
// bin function that is monotone in the arrival (a larger arrival never lands in a smaller bin), counted with
// shared-memory integer atomics, the counts scanned into bin offsets, the positions k scattered into their bins and
// each bin insertion-sorted by (arrival, k). Monotonicity makes the result exact whatever the rounding of the bin
// function: entries in different bins are already in order, equal arrivals share a bin, and within a bin the
// insertion sort applies the queue order itself. Shared memory: an int count per bin and a uint16 position per
// entry, 6 bytes per entry (n <= 65536), plus 640 bytes of static scratch; arrivals are recomputed from global
// memory (L1-resident: the row reads D[:, i] contiguously) instead of stored. O(n) work for spread-out arrivals;
// one thread sorts a bin of m entries in up to O(m^2) steps (arrivals bunched by a far outlier), O(m * blockDim)
// when they are ties (the scatter keeps chunks of blockDim positions in order); a row of equal arrivals is not
// sorted at all.
#include "common.cuh"

#ifndef SPIKESCAN_DYNAMIC_SHARED
#define SPIKESCAN_DYNAMIC_SHARED(type, name) extern __shared__ type name[]
#endif

// Arrival of entry k of a row: the IEEE addition of delayed_queues. The flat index fits in int (launcher check).
// src_row: the sample's row of the source table (spikescan/cuda/_lif.py ENTRY_TABLE; j = index / max_in, read
// instead of divided) or nullptr.
template <class T>
__device__ __forceinline__ T spikescan_queue_arrival(const T* __restrict__ t_row, const long long* __restrict__ idx_row,
                                                     const int* __restrict__ src_row, const T* __restrict__ d_row,
                                                     int max_in, int k) {
    return t_row[k] + d_row[src_row != nullptr ? src_row[k] : (int)idx_row[k] / max_in];
}

// (t1, k1) < (t2, k2) in the order of the queue: by arrival time, then by position in the shared queue.
template <class T>
__device__ __forceinline__ bool spikescan_queue_before(T t1, int k1, T t2, int k2) {
    return t1 < t2 || (t1 == t2 && k1 < k2);
}

// Grid: batch * n_out blocks (block b * n_out + i), any power-of-two block size. Shared: n_max * (sizeof(T) + 4)
// bytes, n_max >= max(n_real). delays_t: [n_out, n_in] (the transpose of D, so that a row reads one contiguous
// range). q_times, q_index: [batch, n_out, L1] (q_index int32: the launcher checks n_in * max_in < 2^31).
// has_source != 0: source [batch, L1] int32 is the shared queue's source table (j of each entry, -1 for padding;
// spikescan/cuda/_lif.py ENTRY_TABLE), read instead of dividing index by max_in; the same arrivals bit for bit.
template <class T>
__global__ void spikescan_delay_queue(const T* __restrict__ times, const long long* __restrict__ index,
                                      const long long* __restrict__ n_real, const T* __restrict__ delays_t,
                                      long long n_in, long long n_out, long long L1, long long max_in,
                                      long long n_max, T* __restrict__ q_times, int* __restrict__ q_index,
                                      int permuted, unsigned short* __restrict__ q_perm,
                                      const int* __restrict__ source, int has_source) {
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
    const int* src_row = has_source ? source + b * L1 : nullptr;
    const T* d_row = delays_t + i * n_in;

    for (int k = tid; k < n; k += stride) {
        key[k] = spikescan_queue_arrival(t_row, idx_row, src_row, d_row, (int)max_in, k);
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
    if (permuted) {  // positions in the shared queue; padding points at its position n (a padding entry, n < L1)
        for (long long r = tid; r < L1; r += stride) q_perm[out + r] = (unsigned short)(r < n ? pos[r] : n);
        return;
    }
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

// Rounded double subtraction and product that the compiler may not fuse into an FMA: the bin of an arrival is
// computed twice (count, scatter) and must come out the same both times. The host emulation compiles with
// -ffp-contract=off.
#ifdef __CUDACC__
#define SPIKESCAN_DSUB_RN(a, b) __dsub_rn(a, b)
#define SPIKESCAN_DMUL_RN(a, b) __dmul_rn(a, b)
#else
#define SPIKESCAN_DSUB_RN(a, b) ((a) - (b))
#define SPIKESCAN_DMUL_RN(a, b) ((a) * (b))
#endif

// Static scratch of spikescan_delay_queue_counting: one slot per warp (blocks of at most 1024 threads).
#define SPIKESCAN_QUEUE_WARPS 32


// The bins of a row: bin(a) = min(floor((clamp(a) / 2 - lo / 2) * scale), n_bins - 1), with clamp(a) = a limited
// to [lo, hi], lo and hi the row's extreme arrivals limited to finite values and scale = n_bins / (hi / 2 - lo / 2)
// (at most DBL_MAX). Every step is monotone non-decreasing in a (clamping, halving, subtracting a constant, scaling
// by a constant >= 0 with IEEE rounding, the minimum and the conversion of a value >= 0 to int), so a larger arrival
// never gets a smaller bin; halves keep hi / 2 - lo / 2 finite, clamping keeps infinite arrivals (overflow of t + D)
// finite, and the bounded scale keeps the product finite and free of 0 * inf, so no NaN appears.
struct spikescan_queue_bins {
    double lo, hi, lo_half, scale, last;
    __device__ __forceinline__ spikescan_queue_bins(double row_lo, double row_hi, int n_bins) {
        const double big = 1.7976931348623157e308;  // DBL_MAX
        lo = fmax(row_lo, -big);
        hi = fmax(fmin(row_hi, big), lo);
        lo_half = lo * 0.5;
        const double width = SPIKESCAN_DSUB_RN(hi * 0.5, lo_half);  // >= 0, finite
        const double s = (double)n_bins / width;                     // +inf when width is 0 or tiny
        scale = s < big ? s : big;
        last = (double)(n_bins - 1);
    }
    __device__ __forceinline__ int operator()(double a) const {
        const double c = fmin(fmax(a, lo), hi);
        const double x = SPIKESCAN_DMUL_RN(SPIKESCAN_DSUB_RN(c * 0.5, lo_half), scale);  // >= 0, finite
        return (int)fmin(x, last);
    }
};

// Grid: batch * n_out blocks (block b * n_out + i), a block size that is a multiple of 32 (at most 1024). Dynamic
// shared: 6 * n_max bytes (n_max int bin counts, then n_max uint16 positions), n_max >= max(n_real), n_max <= 65536.
// Other arguments as spikescan_delay_queue.
template <class T>
__global__ void spikescan_delay_queue_counting(const T* __restrict__ times, const long long* __restrict__ index,
                                               const long long* __restrict__ n_real, const T* __restrict__ delays_t,
                                               long long n_in, long long n_out, long long L1, long long max_in,
                                               long long n_max, T* __restrict__ q_times, int* __restrict__ q_index,
                                               int permuted, unsigned short* __restrict__ q_perm,
                                               const int* __restrict__ source, int has_source) {
    SPIKESCAN_DYNAMIC_SHARED(double, spikescan_queue_shared);
    int* bins = reinterpret_cast<int*>(spikescan_queue_shared);
    unsigned short* perm = reinterpret_cast<unsigned short*>(bins + n_max);
    __shared__ double warp_lo[SPIKESCAN_QUEUE_WARPS];
    __shared__ double warp_hi[SPIKESCAN_QUEUE_WARPS];
    __shared__ int warp_sum[SPIKESCAN_QUEUE_WARPS];

    const long long row = blockIdx.x;
    const long long b = row / n_out;
    const long long i = row - b * n_out;
    const int n = (int)n_real[b];
    const int tid = threadIdx.x;
    const int lane = tid & 31;
    const int warp = tid >> 5;
    const int stride = blockDim.x;
    const int n_warps = (stride + 31) >> 5;
    const int max_in_i = (int)max_in;
    const T* t_row = times + b * L1;
    const long long* idx_row = index + b * L1;
    const int* src_row = has_source ? source + b * L1 : nullptr;
    const T* d_row = delays_t + i * n_in;

    // 1. The row's extreme arrivals (block-uniform), bin counts zeroed. n bins: about one entry per bin.
    double lo = spikescan_inf(), hi = -spikescan_inf();
    for (int k = tid; k < n; k += stride) {
        const double a = spikescan_queue_arrival(t_row, idx_row, src_row, d_row, max_in_i, k);
        lo = fmin(lo, a);
        hi = fmax(hi, a);
        bins[k] = 0;
    }
    for (int offset = 16; offset > 0; offset >>= 1) {
        lo = fmin(lo, __shfl_sync(SPIKESCAN_FULL_MASK, lo, lane ^ offset));
        hi = fmax(hi, __shfl_sync(SPIKESCAN_FULL_MASK, hi, lane ^ offset));
    }
    if (lane == 0) {
        warp_lo[warp] = lo;
        warp_hi[warp] = hi;
    }
    __syncthreads();
    lo = warp_lo[0];
    hi = warp_hi[0];
    for (int w = 1; w < n_warps; ++w) {
        lo = fmin(lo, warp_lo[w]);
        hi = fmax(hi, warp_hi[w]);
    }

    if (!(lo < hi)) {
        // Equal arrivals (or n <= 1): the order is the shared queue's.
        for (int k = tid; k < n; k += stride) perm[k] = (unsigned short)k;
    } else {
        const spikescan_queue_bins bin_of(lo, hi, n);

        // 2. Counts per bin.
        for (int k = tid; k < n; k += stride) {
            atomicAdd(&bins[bin_of(spikescan_queue_arrival(t_row, idx_row, src_row, d_row, max_in_i, k))], 1);
        }
        __syncthreads();

        // 3. Exclusive scan of the counts: thread tid owns bins [tid * seg, (tid + 1) * seg); its segment's sum is
        // scanned across the warp (shuffles) and then across warps (warp_sum).
        const int seg = (n + stride - 1) / stride;
        const int first = tid * seg < n ? tid * seg : n;
        const int end = first + seg < n ? first + seg : n;
        int own = 0;
        for (int c = first; c < end; ++c) own += bins[c];
        int incl = own;
        for (int offset = 1; offset < 32; offset <<= 1) {
            const int other = __shfl_up_sync(SPIKESCAN_FULL_MASK, incl, offset);
            if (lane >= offset) incl += other;
        }
        if (lane == 31) warp_sum[warp] = incl;
        __syncthreads();
        int running = incl - own;
        for (int w = 0; w < warp; ++w) running += warp_sum[w];
        for (int c = first; c < end; ++c) {
            const int count = bins[c];
            bins[c] = running;
            running += count;
        }
        __syncthreads();

        // 4. Scatter: bins[c] is the next free slot of bin c, and its end afterwards. Chunks of `stride` positions
        // go in turn, so a bin holds earlier chunks before later ones: tied entries are out of order only within a
        // chunk.
        // The host emulation runs the threads of a chunk in turn, so it hands them the chunk's positions in
        // descending order: the worst order the device's atomics could produce, which gives step 5 ties to sort.
        for (int base = 0; base < n; base += stride) {
#ifdef __CUDACC__
            const int k = base + tid;
#else
            const int k = base + (stride - 1 - tid);
#endif
            if (k < n) {
                const int c = bin_of(spikescan_queue_arrival(t_row, idx_row, src_row, d_row, max_in_i, k));
                perm[atomicAdd(&bins[c], 1)] = (unsigned short)k;
            }
            __syncthreads();
        }

        // 5. Insertion sort of every bin by (arrival, position in the shared queue).
        for (int c = tid; c < n; c += stride) {
            const int lo_slot = c == 0 ? 0 : bins[c - 1];
            const int hi_slot = bins[c];
            for (int p = lo_slot + 1; p < hi_slot; ++p) {
                const int kp = perm[p];
                const T ap = spikescan_queue_arrival(t_row, idx_row, src_row, d_row, max_in_i, kp);
                int q = p - 1;
                for (; q >= lo_slot; --q) {
                    const int kq = perm[q];
                    if (!spikescan_queue_before(ap, kp, spikescan_queue_arrival(t_row, idx_row, src_row, d_row, max_in_i, kq),
                                                kq)) {
                        break;
                    }
                    perm[q + 1] = (unsigned short)kq;
                }
                perm[q + 1] = (unsigned short)kp;
            }
        }
    }
    __syncthreads();

    const long long out = row * L1;
    if (permuted) {  // as in spikescan_delay_queue
        for (long long r = tid; r < L1; r += stride) q_perm[out + r] = r < n ? perm[r] : (unsigned short)n;
        return;
    }
    for (long long r = tid; r < L1; r += stride) {
        if (r < n) {
            const int k = perm[r];
            q_times[out + r] = spikescan_queue_arrival(t_row, idx_row, src_row, d_row, max_in_i, k);
            q_index[out + r] = (int)idx_row[k];
        } else {
            q_times[out + r] = spikescan_inf();
            q_index[out + r] = -1;
        }
    }
}
