// Matrix products cuBLAS does not cover.

// Integer matrix product (cuBLAS has none): contiguous [B, m, k] x [B, k, n], one thread each.
extern "C" __global__ void matmul_i64(i64 batch, i64 m, i64 n, i64 k, const i64* a, const i64* b,
                                      i64* out) {
    FOR_EACH(i, batch * m * n) {
        i64 col = i % n, row = (i / n) % m, bt = i / (m * n);
        const i64* ar = a + (bt * m + row) * k;
        const i64* bc = b + bt * k * n + col;
        u64 acc = 0;  // wrapping, as Rust's release-mode integer arithmetic
        for (i64 t = 0; t < k; ++t) acc += (u64)ar[t] * (u64)bc[t * n];
        out[i] = (i64)acc;
    }
}
