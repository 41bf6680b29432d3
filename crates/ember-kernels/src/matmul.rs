//! The matrix products of the kernels, through the `gemm` crate.
//!
//! `gemm` reads the CPU's cache sizes and vector width at run time (AVX2, AVX-512, NEON), so the
//! products need nothing measured on one machine. The recurrence kernels call it single-threaded
//! ([`matmul`]): they run on threads of their own, one batch shard each. [`product`] is a whole
//! product on rayon's pool, into a buffer of its own.

/// A matrix operand: its values and (row stride, column stride) in elements.
#[derive(Debug, Clone, Copy)]
pub struct Operand<'a> {
    /// The values.
    pub values: &'a [f32],
    /// Elements between consecutive rows.
    pub row_stride: usize,
    /// Elements between consecutive columns.
    pub col_stride: usize,
}

impl<'a> Operand<'a> {
    /// A row-major `[_, width]` matrix.
    pub fn rows(values: &'a [f32], width: usize) -> Self {
        Operand {
            values,
            row_stride: width,
            col_stride: 1,
        }
    }

    /// A row-major matrix whose rows are `row_stride` apart.
    pub fn rows_strided(values: &'a [f32], row_stride: usize) -> Self {
        Operand {
            values,
            row_stride,
            col_stride: 1,
        }
    }

    /// The transpose of a row-major `[_, width]` matrix.
    pub fn transposed(values: &'a [f32], width: usize) -> Self {
        Operand {
            values,
            row_stride: 1,
            col_stride: width,
        }
    }

    /// Whether every element of a `[rows, cols]` matrix is inside the values; sizes whose
    /// extent overflows reach nowhere.
    fn reaches(&self, rows: usize, cols: usize) -> bool {
        if rows == 0 || cols == 0 {
            return true;
        }
        let last = (rows - 1)
            .checked_mul(self.row_stride)
            .zip((cols - 1).checked_mul(self.col_stride))
            .and_then(|(down, across)| down.checked_add(across));
        last.is_some_and(|last| last < self.values.len())
    }
}

/// `c = a b`, or `c += a b` if `accumulate`, for `a: [m, k]`, `b: [k, n]` and row-major
/// `c: [m, n]`.
///
/// # Panics
/// If an operand's strides reach outside its values.
pub fn matmul(
    (m, k, n): (usize, usize, usize),
    a: Operand<'_>,
    b: Operand<'_>,
    accumulate: bool,
    c: &mut [f32],
) {
    check_operands((m, k, n), a, b);
    assert!(
        m.checked_mul(n).is_some_and(|len| c.len() >= len),
        "the product is smaller than [{m}, {n}]"
    );
    if m * n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            c[..m * n].fill(0.0);
        }
        return;
    }
    // SAFETY: `check_operands` keeps every element the strides reach inside its slice, and `c`
    // is borrowed mutably, so it overlaps neither operand and holds `m * n` values.
    unsafe {
        gemm_into(
            (m, k, n),
            a,
            b,
            c.as_mut_ptr(),
            accumulate,
            gemm::Parallelism::None,
        )
    };
}

/// `a b` for `a: [m, k]` and `b: [k, n]`, as a new row-major `[m, n]` buffer, on rayon's
/// pool (`gemm` keeps products too small to pay for threads on one).
///
/// The buffer is written once, by the product: no pass zeroes it first.
///
/// # Panics
/// If an operand's strides reach outside its values.
pub fn product((m, k, n): (usize, usize, usize), a: Operand<'_>, b: Operand<'_>) -> Vec<f32> {
    check_operands((m, k, n), a, b);
    let len = m
        .checked_mul(n)
        .unwrap_or_else(|| panic!("the product [{m}, {n}] has more elements than memory"));
    // A single row or column goes to gemm's matrix-vector path, which views its output as a
    // slice: that one is zeroed first, so that no slice of uninitialised values is made.
    if len == 0 || k == 0 || m == 1 || n == 1 {
        let mut c = vec![0.0; len];
        if len > 0 && k > 0 {
            matmul((m, k, n), a, b, false, &mut c);
        }
        return c;
    }
    let mut c = Vec::<f32>::with_capacity(len);
    // SAFETY: `check_operands` keeps every element the strides reach inside its slice; `c` has
    // room for `m * n` values and overlaps neither operand. Not accumulating, gemm writes every
    // element of `c` without reading it, so all `m * n` are initialised when it returns.
    unsafe {
        gemm_into(
            (m, k, n),
            a,
            b,
            c.spare_capacity_mut().as_mut_ptr().cast::<f32>(),
            false,
            gemm::Parallelism::Rayon(0),
        );
        c.set_len(len);
    }
    c
}

fn check_operands((m, k, n): (usize, usize, usize), a: Operand<'_>, b: Operand<'_>) {
    assert!(
        a.reaches(m, k),
        "the left operand is smaller than [{m}, {k}]"
    );
    assert!(
        b.reaches(k, n),
        "the right operand is smaller than [{k}, {n}]"
    );
}

/// `c = a b`, or `c += a b` if `accumulate`, through `gemm`.
///
/// # Safety
/// Every element the operands' strides reach is inside their slices, `k > 0`, and `c` points to
/// room for `m * n` values (initialised if `accumulate`) that overlaps neither operand.
unsafe fn gemm_into(
    (m, k, n): (usize, usize, usize),
    a: Operand<'_>,
    b: Operand<'_>,
    c: *mut f32,
    accumulate: bool,
    parallelism: gemm::Parallelism,
) {
    // SAFETY: the caller's contract is gemm's: the strides stay inside the operands and `c`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c,
            1,
            n as isize,
            accumulate,
            a.values.as_ptr(),
            a.col_stride as isize,
            a.row_stride as isize,
            b.values.as_ptr(),
            b.col_stride as isize,
            b.row_stride as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(m: usize, k: usize, n: usize, a: Operand<'_>, b: Operand<'_>) -> Vec<f32> {
        let mut c = vec![0.0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k)
                    .map(|p| {
                        a.values[i * a.row_stride + p * a.col_stride]
                            * b.values[p * b.row_stride + j * b.col_stride]
                    })
                    .sum();
            }
        }
        c
    }

    /// Sizes whose product or extent overflows are refused, not wrapped round into a small
    /// buffer.
    #[test]
    fn overflowing_sizes_panic() {
        let one = [1.0f32];
        let broadcast = Operand {
            values: &one,
            row_stride: 0,
            col_stride: 0,
        };
        let huge = usize::MAX / 2 + 1;
        assert!(std::panic::catch_unwind(|| product((huge, 1, 2), broadcast, broadcast)).is_err());
        let far = Operand {
            values: &one,
            row_stride: huge,
            col_stride: 0,
        };
        assert!(!far.reaches(3, 1));
        assert!(std::panic::catch_unwind(|| product((3, 1, 1), far, broadcast)).is_err());
    }

    #[test]
    fn products_match_the_naive_sum_on_edge_shapes() {
        for (m, k, n) in [
            (0, 3, 2),
            (2, 0, 3),
            (1, 1, 1),
            (3, 5, 7),
            (17, 33, 65),
            (1, 128, 512),
            (300, 40, 1),
            // Large enough for gemm to split it over threads.
            (300, 257, 129),
        ] {
            let a: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 - 3.0).collect();
            let b: Vec<f32> = (0..k * n).map(|i| (i % 5) as f32 * 0.5 - 1.0).collect();
            for transposed in [false, true] {
                let a = if transposed {
                    Operand::transposed(&a, m)
                } else {
                    Operand::rows(&a, k)
                };
                let b = Operand::rows(&b, n);
                let expected = naive(m, k, n, a, b);
                let mut c = vec![1.0; m * n];
                matmul((m, k, n), a, b, false, &mut c);
                assert_eq!(c.len(), expected.len());
                for (got, want) in c.iter().zip(&expected) {
                    assert!(
                        (got - want).abs() <= 1e-4 * (1.0 + want.abs()),
                        "[{m},{k},{n}]"
                    );
                }
                matmul((m, k, n), a, b, true, &mut c);
                for (got, want) in c.iter().zip(&expected) {
                    assert!((got - 2.0 * want).abs() <= 1e-4 * (1.0 + want.abs()));
                }
                let fresh = product((m, k, n), a, b);
                assert_eq!(fresh.len(), expected.len());
                for (got, want) in fresh.iter().zip(&expected) {
                    assert!(
                        (got - want).abs() <= 1e-4 * (1.0 + want.abs()),
                        "product [{m},{k},{n}]"
                    );
                }
            }
        }
    }
}
