// The scalar product of amsim_product.cuh as host functions, for tests/test_cuda_host.py.
#include "amsim_product.cuh"
extern "C" void host_multiply(const float* a, const float* b, float* out, long long n, int m, int truncate,
                              const float* lut) {
    for (long long i = 0; i < n; ++i) out[i] = amsim_product(a[i], b[i], m, truncate != 0, lut);
}
extern "C" void host_round(const unsigned int* u, unsigned int* out, long long n, int m, int truncate) {
    for (long long i = 0; i < n; ++i) out[i] = amsim_round_bits(u[i], m, truncate != 0);
}
