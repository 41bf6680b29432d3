//! The matrix products of the host kernels.
//!
//! Their operands are small and oddly shaped (a shard of 16 rows times a `[128, 512]` recurrent
//! weight, once per step), and they run on threads of their own, one batch shard each. A general
//! library product packs both operands on every call and may start threads of its own; here, on
//! CPUs with AVX-512, a register tile of `ROWS x 64` reads `a` in place through its strides and
//! `b` row by row, with masked loads at the right edge, so nothing is copied and no thread is
//! started. Elsewhere the product goes to `matrixmultiply`.

/// `c = a b`, or `c += a b` if `accumulate`, for `a: [m, k]` read through `a_strides` (row
/// stride, column stride), `b: [k, n]` read through its row stride `b_row_stride` (its columns
/// are contiguous) and row-major `c: [m, n]`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul(
    (m, k, n): (usize, usize, usize),
    a: &[f32],
    a_strides: (usize, usize),
    b: &[f32],
    b_row_stride: usize,
    accumulate: bool,
    c: &mut [f32],
) {
    let last = |(rows, cols): (usize, usize), (rs, cs): (usize, usize)| {
        (rows.max(1) - 1) * rs + (cols.max(1) - 1) * cs
    };
    assert!(m * k == 0 || last((m, k), a_strides) < a.len());
    assert!(k * n == 0 || last((k, n), (b_row_stride, 1)) < b.len());
    assert!(c.len() >= m * n);
    if m * n == 0 {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if k > 0 && std::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512F, and the asserts above keep every element the strides
        // reach inside its slice.
        unsafe {
            avx512::matmul(
                (m, k, n),
                a.as_ptr(),
                a_strides,
                b.as_ptr(),
                b_row_stride,
                accumulate,
                c.as_mut_ptr(),
            );
        }
        return;
    }
    portable((m, k, n), a, a_strides, b, b_row_stride, accumulate, c);
}

/// [`matmul`] through `matrixmultiply`, for CPUs without AVX-512 (and the tests' reference).
#[allow(clippy::too_many_arguments)]
pub(crate) fn portable(
    (m, k, n): (usize, usize, usize),
    a: &[f32],
    a_strides: (usize, usize),
    b: &[f32],
    b_row_stride: usize,
    accumulate: bool,
    c: &mut [f32],
) {
    // SAFETY: `matmul`'s asserts keep every element the strides reach inside its slice.
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            1.0,
            a.as_ptr(),
            a_strides.0 as isize,
            a_strides.1 as isize,
            b.as_ptr(),
            b_row_stride as isize,
            1,
            if accumulate { 1.0 } else { 0.0 },
            c.as_mut_ptr(),
            n as isize,
            1,
        );
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    /// Rows of `c` a tile holds.
    const ROWS: usize = 6;
    /// Vectors of 16 columns a tile holds: 6 x 4 accumulators, 4 loads of `b` and a broadcast of
    /// `a` fill 29 of the 32 vector registers.
    const VECTORS: usize = 4;
    const COLUMNS: usize = 16 * VECTORS;
    /// Steps of `k` per pass over `c`, so that the `[DEPTH, 64]` block of `b` the row tiles share
    /// stays in the L1 cache.
    const DEPTH: usize = 128;

    /// # Safety
    /// The CPU has AVX-512F, `k > 0`, and `a`, `b`, `c` hold every element the shapes and
    /// strides reach.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn matmul(
        (m, k, n): (usize, usize, usize),
        a: *const f32,
        (a_row, a_col): (usize, usize),
        b: *const f32,
        b_row: usize,
        accumulate: bool,
        c: *mut f32,
    ) {
        for j0 in (0..n).step_by(COLUMNS) {
            let width = (n - j0).min(COLUMNS);
            let masks: [__mmask16; VECTORS] = std::array::from_fn(|v| {
                let left = width.saturating_sub(16 * v).min(16);
                ((1u32 << left) - 1) as __mmask16
            });
            for p0 in (0..k).step_by(DEPTH) {
                let depth = (k - p0).min(DEPTH);
                let add = accumulate || p0 > 0;
                let mut i0 = 0;
                while i0 < m {
                    let rows = (m - i0).min(ROWS);
                    // SAFETY: the offsets stay within the operands (the caller's contract).
                    let tile = unsafe {
                        Tile {
                            depth,
                            a: a.add(i0 * a_row + p0 * a_col),
                            a_row,
                            a_col,
                            b: b.add(p0 * b_row + j0),
                            b_row,
                            add,
                            c: c.add(i0 * n + j0),
                            c_row: n,
                            masks,
                        }
                    };
                    // SAFETY: as above.
                    unsafe {
                        match width.div_ceil(16) {
                            1 => tile.run_rows::<1>(rows),
                            2 => tile.run_rows::<2>(rows),
                            3 => tile.run_rows::<3>(rows),
                            _ => tile.run_rows::<4>(rows),
                        }
                    }
                    i0 += rows;
                }
            }
        }
    }

    /// One `[rows, 16 V]` block of `c` over `depth` steps of `k`.
    struct Tile {
        depth: usize,
        a: *const f32,
        a_row: usize,
        a_col: usize,
        b: *const f32,
        b_row: usize,
        add: bool,
        c: *mut f32,
        c_row: usize,
        masks: [__mmask16; VECTORS],
    }

    impl Tile {
        #[target_feature(enable = "avx512f")]
        #[inline]
        unsafe fn run_rows<const V: usize>(&self, rows: usize) {
            // SAFETY: the caller's contract.
            unsafe {
                match rows {
                    1 => self.run::<1, V>(),
                    2 => self.run::<2, V>(),
                    3 => self.run::<3, V>(),
                    4 => self.run::<4, V>(),
                    5 => self.run::<5, V>(),
                    _ => self.run::<6, V>(),
                }
            }
        }

        #[target_feature(enable = "avx512f")]
        #[inline]
        unsafe fn run<const R: usize, const V: usize>(&self) {
            let mut sums = [[_mm512_setzero_ps(); V]; R];
            for p in 0..self.depth {
                // SAFETY: masked loads touch only the columns inside `c`'s width; the rest is
                // the caller's contract.
                unsafe {
                    let b_row = self.b.add(p * self.b_row);
                    let b: [__m512; V] = std::array::from_fn(|v| {
                        _mm512_maskz_loadu_ps(self.masks[v], b_row.add(16 * v))
                    });
                    let a_col = self.a.add(p * self.a_col);
                    for (r, row_sums) in sums.iter_mut().enumerate() {
                        let a = _mm512_set1_ps(*a_col.add(r * self.a_row));
                        for (sum, b) in row_sums.iter_mut().zip(&b) {
                            *sum = _mm512_fmadd_ps(a, *b, *sum);
                        }
                    }
                }
            }
            for (r, row_sums) in sums.iter().enumerate() {
                for (v, sum) in row_sums.iter().enumerate() {
                    // SAFETY: as above.
                    unsafe {
                        let target = self.c.add(r * self.c_row + 16 * v);
                        let value = if self.add {
                            _mm512_add_ps(*sum, _mm512_maskz_loadu_ps(self.masks[v], target))
                        } else {
                            *sum
                        };
                        _mm512_mask_storeu_ps(target, self.masks[v], value);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect()
    }

    /// Every shape at the tile edges, every layout of `a`, with and without accumulation,
    /// against a sum in `f64`.
    #[test]
    fn products_match_a_double_precision_sum() {
        let sizes = [1, 2, 5, 6, 7, 13, 16, 17, 63, 64, 65, 130];
        let mut case = 0u64;
        for &m in &sizes {
            for &n in &sizes {
                for &k in &[1, 3, 64, 129, 300] {
                    case += 1;
                    let transposed = case % 2 == 0;
                    let accumulate = case % 3 == 0;
                    // `b` with a wider row than `n` where `case` says so.
                    let b_row = n + (case % 4 == 0) as usize * 3;
                    let a = values(m * k, case);
                    let b = values(k * b_row, case + 1000);
                    let start = values(m * n, case + 2000);
                    let a_strides = if transposed { (1, m) } else { (k, 1) };
                    let mut c = start.clone();
                    matmul((m, k, n), &a, a_strides, &b, b_row, accumulate, &mut c);
                    let mut reference = start.clone();
                    portable(
                        (m, k, n),
                        &a,
                        a_strides,
                        &b,
                        b_row,
                        accumulate,
                        &mut reference,
                    );
                    for i in 0..m {
                        for j in 0..n {
                            let exact: f64 = (0..k)
                                .map(|p| {
                                    a[i * a_strides.0 + p * a_strides.1] as f64
                                        * b[p * b_row + j] as f64
                                })
                                .sum::<f64>()
                                + if accumulate {
                                    start[i * n + j] as f64
                                } else {
                                    0.0
                                };
                            let tolerance = 1e-5 * (k as f64).sqrt() * (1.0 + exact.abs());
                            for (what, got) in
                                [("matmul", c[i * n + j]), ("portable", reference[i * n + j])]
                            {
                                assert!(
                                    (got as f64 - exact).abs() < tolerance,
                                    "{what} m {m} n {n} k {k} transposed {transposed} \
                                     accumulate {accumulate}: [{i}, {j}] {got} vs {exact}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}
