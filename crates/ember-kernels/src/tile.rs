//! The matrix products of the host kernels.
//!
//! Their operands are small and oddly shaped (a shard of 16 rows times a `[128, 512]` recurrent
//! weight, once per step), and they run on threads of their own, one batch shard each. A general
//! library product packs both operands on every call and may start threads of its own. Here, on
//! CPUs with AVX-512, a register tile of up to `6 x 64` reads the left operand in place through
//! its strides and the right one from panels of 64 columns, each contiguous, with masked loads
//! and stores at the right edge. A right operand used many times (a recurrent weight, once per
//! step) is packed once by the caller; any other is packed per call when enough rows share it.
//! No thread is started. Elsewhere the products go to the `gemm` crate.

use crate::matmul::Operand;
use crate::pool;

/// Columns per panel of a packed right operand: the width of a register tile.
const PANEL: usize = 64;

/// Whether this CPU runs the AVX-512 tiles.
fn has_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    return std::is_x86_feature_detected!("avx512f");
    #[cfg(not(target_arch = "x86_64"))]
    return false;
}

/// A right operand `[k, n]` laid out for the products: on CPUs with AVX-512, panels of 64
/// columns, each `[k, 64]` and contiguous, the last one padded with zeros; elsewhere row-major.
#[derive(Debug, Clone)]
pub struct Packed {
    data: Vec<f32>,
    k: usize,
    n: usize,
    panels: bool,
}

impl Packed {
    /// Packs `b` (`[k, n]`, read through its strides).
    pub fn new(b: &[f32], (row, col): (usize, usize), k: usize, n: usize) -> Packed {
        assert!(k * n == 0 || (k - 1) * row + (n - 1) * col < b.len());
        let mut packed = Packed::unfilled(k, n);
        // Row by row: a row-major source is read in order, which is what the prefetchers follow.
        if col == 1 {
            for p in 0..k {
                packed.set_rows(p, &b[p * row..p * row + n]);
            }
            return packed;
        }
        // Any other is gathered a block of rows at a time: read down a column, a block of a
        // transposed operand's rows is one cache line per column instead of one per value.
        const BLOCK: usize = 16;
        let mut gathered = vec![0.0; BLOCK * n];
        for p0 in (0..k).step_by(BLOCK) {
            let count = (k - p0).min(BLOCK);
            for j in 0..n {
                for q in 0..count {
                    gathered[q * n + j] = b[(p0 + q) * row + j * col];
                }
            }
            packed.set_rows(p0, &gathered[..count * n]);
        }
        packed
    }

    /// A `[k, n]` operand whose rows the caller sets with [`Packed::set_rows`] before any
    /// product reads them.
    pub fn unfilled(k: usize, n: usize) -> Packed {
        let panels = has_avx512();
        // The padding of the last panel is never read: the tiles mask it.
        let len = if panels {
            n.div_ceil(PANEL) * PANEL * k
        } else {
            k * n
        };
        Packed {
            data: pool::scratch(len),
            k,
            n,
            panels,
        }
    }

    /// Sets rows `first..` from row-major `rows` (`[count, n]`).
    pub fn set_rows(&mut self, first: usize, rows: &[f32]) {
        let (k, n) = (self.k, self.n);
        assert!(rows.len().is_multiple_of(n.max(1)) && first * n + rows.len() <= k * n);
        if n == 0 {
            return;
        }
        if !self.panels {
            self.data[first * n..first * n + rows.len()].copy_from_slice(rows);
            return;
        }
        for (p, row) in (first..).zip(rows.chunks_exact(n)) {
            for (panel, values) in row.chunks(PANEL).enumerate() {
                let start = panel * PANEL * k + p * PANEL;
                let out = &mut self.data[start..start + PANEL];
                match <&[f32; PANEL]>::try_from(values) {
                    // A copy of constant length compiles to vector moves, not a call.
                    Ok(values) => {
                        *<&mut [f32; PANEL]>::try_from(out).expect("a panel row") = *values
                    }
                    Err(_) => out[..values.len()].copy_from_slice(values),
                }
            }
        }
    }
}

impl Drop for Packed {
    fn drop(&mut self) {
        pool::recycle(std::mem::take(&mut self.data));
    }
}

/// The right operand of a product.
#[derive(Clone, Copy)]
pub enum Right<'a> {
    /// Row-major `[k, n]` with this row stride; its columns are contiguous.
    Rows(&'a [f32], usize),
    /// Packed ahead, for products that reuse it.
    Packed(&'a Packed),
}

/// Rows of the left operand from which packing a row-major right operand per call pays.
const PACK_FROM_ROWS: usize = 24;

/// `c = a b`, or `c += a b` if `accumulate`, for `a: [m, k]` read through `a_strides` (row
/// stride, column stride) and row-major `c: [m, n]`.
pub fn matmul(
    (m, k, n): (usize, usize, usize),
    a: &[f32],
    a_strides: (usize, usize),
    b: Right<'_>,
    accumulate: bool,
    c: &mut [f32],
) {
    assert!(m * k == 0 || (m - 1) * a_strides.0 + (k - 1) * a_strides.1 < a.len());
    assert!(c.len() >= m * n);
    if let Right::Packed(packed) = b {
        assert_eq!((packed.k, packed.n), (k, n), "the packed operand's shape");
    }
    if let Right::Rows(b, row) = b {
        assert!(k * n == 0 || (k - 1) * row + n - 1 < b.len());
    }
    if m * n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            c[..m * n].fill(0.0);
        }
        return;
    }
    if let (Right::Rows(values, row), true) = (b, m >= PACK_FROM_ROWS && has_avx512()) {
        let packed = Packed::new(values, (row, 1), k, n);
        return matmul(
            (m, k, n),
            a,
            a_strides,
            Right::Packed(&packed),
            accumulate,
            c,
        );
    }
    let (b_values, b_row, panels) = match b {
        Right::Rows(values, row) => (values, row, false),
        Right::Packed(packed) => (&packed.data[..], n, packed.panels),
    };
    #[cfg(target_arch = "x86_64")]
    if has_avx512() {
        let source = if panels {
            avx512::Source::Panels(PANEL * k)
        } else {
            avx512::Source::Rows(b_row)
        };
        // SAFETY: the CPU has AVX-512F, and the asserts above keep every element the strides
        // reach inside its slice (panels are padded to whole panels).
        unsafe {
            avx512::matmul(
                (m, k, n),
                a.as_ptr(),
                a_strides,
                b_values.as_ptr(),
                source,
                accumulate,
                c.as_mut_ptr(),
            );
        }
        return;
    }
    assert!(!panels, "panels are packed for AVX-512 only");
    portable((m, k, n), a, a_strides, b_values, b_row, accumulate, c);
}

/// [`matmul`] through the `gemm` crate, for CPUs without AVX-512 (and the tests' reference).
fn portable(
    (m, k, n): (usize, usize, usize),
    a: &[f32],
    a_strides: (usize, usize),
    b: &[f32],
    b_row_stride: usize,
    accumulate: bool,
    c: &mut [f32],
) {
    let a = Operand {
        values: a,
        row_stride: a_strides.0,
        col_stride: a_strides.1,
    };
    crate::matmul::matmul(
        (m, k, n),
        a,
        Operand::rows_strided(b, b_row_stride),
        accumulate,
        c,
    );
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::PANEL;

    /// Rows of `c` a tile holds.
    const ROWS: usize = 6;
    /// Vectors of 16 columns a tile holds: 6 x 4 accumulators, 4 loads of `b` and a broadcast of
    /// `a` fill 29 of the 32 vector registers.
    const VECTORS: usize = PANEL / 16;
    /// Steps of `k` per pass over `c`, so that the `[DEPTH, 64]` block of `b` the row tiles share
    /// stays in the L1 cache.
    const DEPTH: usize = 128;

    /// Bytes of the left operand a product reads in one block of rows (see `matmul`).
    pub(super) const A_BLOCK_BYTES: usize = 512 << 10;
    /// Bytes of the right operand up to which reading it once per block of rows pays. Measured
    /// on two threads at once, each its own product, alternating: the input projections of the
    /// 512-hidden layers (`[1024, 512] x [512, 2048]`) 264 against 330 GFLOP/s unblocked and
    /// blocked, `[2048, 512] x [512, 1024]` 254 against 269, `dX` (`[2048, 2048] x [2048, 256]`)
    /// 243 against 278; the weight gradients, whose `b` is 8 MB, 242 against 235, hence the
    /// limit.
    const B_REREAD_BYTES: usize = 4 << 20;

    /// Steps of `k` per chunk of a product whose operands both outgrow the L2 cache. Measured
    /// as above: the weight gradients of the 512-hidden layers (`[512, 1024] x [1024, 2048]`)
    /// 235 and 243 against 269 and 272 GFLOP/s, `[512, 2048] x [2048, 1024]` 214 and 221
    /// against 223 and 225.
    const DEPTH_CHUNK: usize = 512;

    /// Where the right operand's rows are.
    #[derive(Clone, Copy)]
    pub(super) enum Source {
        /// Row-major with this row stride.
        Rows(usize),
        /// Panels of 64 columns, each `[k, 64]` and this many values long.
        Panels(usize),
    }

    /// # Safety
    /// The CPU has AVX-512F, `k > 0`, and `a`, `b`, `c` hold every element the shapes, strides
    /// and panels reach.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn matmul(
        (m, k, n): (usize, usize, usize),
        a: *const f32,
        (a_row, a_col): (usize, usize),
        b: *const f32,
        source: Source,
        accumulate: bool,
        c: *mut f32,
    ) {
        // Every panel of `b` reads all of `a`: where `a` outgrows the L2 cache, a block of its
        // rows at a time, so that it is read from the L3 cache once, and `b` once per block.
        let block_rows = (A_BLOCK_BYTES / (4 * k)).max(ROWS) / ROWS * ROWS;
        // Where `b` is too large to read again, `a` a chunk of its columns at a time instead:
        // each chunk is read from the L3 cache once per panel of `b` but then stays in the L2
        // cache, and `c` is read once per chunk.
        if 4 * m * k > A_BLOCK_BYTES && 4 * k * n > B_REREAD_BYTES && k > DEPTH_CHUNK {
            for p0 in (0..k).step_by(DEPTH_CHUNK) {
                let depth = (k - p0).min(DEPTH_CHUNK);
                let b_start = match source {
                    Source::Rows(row) => p0 * row,
                    Source::Panels(_) => p0 * PANEL,
                };
                // SAFETY: the chunk's columns of `a` and rows of `b` are within theirs (the
                // caller's contract); panels keep their length.
                unsafe {
                    matmul(
                        (m, depth, n),
                        a.add(p0 * a_col),
                        (a_row, a_col),
                        b.add(b_start),
                        source,
                        accumulate || p0 > 0,
                        c,
                    );
                }
            }
            return;
        }
        if m > block_rows && 4 * k * n <= B_REREAD_BYTES {
            for i0 in (0..m).step_by(block_rows) {
                let rows = (m - i0).min(block_rows);
                // SAFETY: the block's rows of `a` and `c` are within theirs (the caller's
                // contract).
                unsafe {
                    matmul(
                        (rows, k, n),
                        a.add(i0 * a_row),
                        (a_row, a_col),
                        b,
                        source,
                        accumulate,
                        c.add(i0 * n),
                    );
                }
            }
            return;
        }
        for j0 in (0..n).step_by(PANEL) {
            let width = (n - j0).min(PANEL);
            let masks: [__mmask16; VECTORS] = std::array::from_fn(|v| {
                let left = width.saturating_sub(16 * v).min(16);
                ((1u32 << left) - 1) as __mmask16
            });
            for p0 in (0..k).step_by(DEPTH) {
                let depth = (k - p0).min(DEPTH);
                let add = accumulate || p0 > 0;
                let (b_block, b_row) = match source {
                    Source::Rows(row) => (p0 * row + j0, row),
                    Source::Panels(length) => (j0 / PANEL * length + p0 * PANEL, PANEL),
                };
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
                            b: b.add(b_block),
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
                    1 => self.run_one_row::<V>(),
                    2 => self.run::<2, V>(),
                    3 => self.run::<3, V>(),
                    4 => self.run::<4, V>(),
                    5 => self.run::<5, V>(),
                    _ => self.run::<6, V>(),
                }
            }
        }

        /// Starts fetching the tile's `rows x vectors` block of `c`, which is read or written
        /// after the loop over `k`: its lines then arrive while the loop runs, instead of
        /// stalling the stores after it. Measured on products whose `c` outgrows the L2 cache
        /// (`[1024, 2048]`), that is 3% to 11% of their time; it changes nothing where `c` stays
        /// in the cache.
        #[target_feature(enable = "avx512f")]
        #[inline]
        unsafe fn prefetch_c(&self, rows: usize, vectors: usize) {
            for r in 0..rows {
                for v in 0..vectors {
                    // SAFETY: the address lies inside `c` (the caller's contract), and a
                    // prefetch never faults anyway.
                    unsafe {
                        _mm_prefetch::<_MM_HINT_T0>(self.c.add(r * self.c_row + 16 * v).cast());
                    }
                }
            }
        }

        /// Writes (or adds, if `add`) `value` to vector `v` of row `r` of the tile, masked at the
        /// right edge.
        #[target_feature(enable = "avx512f")]
        #[inline]
        unsafe fn store(&self, r: usize, v: usize, value: __m512) {
            // SAFETY: the tile's rows and masked columns lie inside `c` (the caller's contract).
            unsafe {
                let target = self.c.add(r * self.c_row + 16 * v);
                let value = if self.add {
                    _mm512_add_ps(value, _mm512_maskz_loadu_ps(self.masks[v], target))
                } else {
                    value
                };
                _mm512_mask_storeu_ps(target, self.masks[v], value);
            }
        }

        /// A tile of one row (a vector times a matrix, as in sampling): four partial sums per
        /// vector over interleaved steps of `k`, since a single chain of fused multiply-adds per
        /// vector would wait on its own latency at every step.
        #[target_feature(enable = "avx512f")]
        #[inline]
        unsafe fn run_one_row<const V: usize>(&self) {
            const CHAINS: usize = 4;
            // SAFETY: the caller's contract.
            unsafe { self.prefetch_c(1, V) };
            let mut sums = [[_mm512_setzero_ps(); V]; CHAINS];
            // SAFETY (both closures and their calls): as in `run`.
            let step = |p: usize, chain: &mut [__m512; V]| unsafe {
                let b_row = self.b.add(p * self.b_row);
                let a = _mm512_set1_ps(*self.a.add(p * self.a_col));
                for (v, sum) in chain.iter_mut().enumerate() {
                    let b = _mm512_maskz_loadu_ps(self.masks[v], b_row.add(16 * v));
                    *sum = _mm512_fmadd_ps(a, b, *sum);
                }
            };
            let whole = self.depth / CHAINS * CHAINS;
            for p0 in (0..whole).step_by(CHAINS) {
                for (offset, chain) in sums.iter_mut().enumerate() {
                    step(p0 + offset, chain);
                }
            }
            for p in whole..self.depth {
                step(p, &mut sums[0]);
            }
            for v in 0..V {
                let total = _mm512_add_ps(
                    _mm512_add_ps(sums[0][v], sums[1][v]),
                    _mm512_add_ps(sums[2][v], sums[3][v]),
                );
                // SAFETY: as in `run`.
                unsafe { self.store(0, v, total) };
            }
        }

        #[target_feature(enable = "avx512f")]
        #[inline]
        unsafe fn run<const R: usize, const V: usize>(&self) {
            // SAFETY: the caller's contract.
            unsafe { self.prefetch_c(R, V) };
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
                    unsafe { self.store(r, v, *sum) };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The block size of the AVX-512 products, or 0 where they do not run.
    fn avx512_block_bytes() -> usize {
        #[cfg(target_arch = "x86_64")]
        return avx512::A_BLOCK_BYTES;
        #[cfg(not(target_arch = "x86_64"))]
        return 0;
    }

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

    /// Products whose left operand is read in blocks of rows or chunks of columns (it outgrows
    /// `A_BLOCK_BYTES`),
    /// in place and transposed, with and without accumulation, against the `gemm` crate: the
    /// last block shorter than the others.
    #[test]
    fn products_in_blocks_of_rows_match_the_reference() {
        // The last shape's `b` outgrows `B_REREAD_BYTES`: its `a` goes in chunks of columns.
        for (case, &(m, k, n)) in [
            (600, 300, 70),
            (1000, 200, 130),
            (700, 1024, 17),
            (200, 1100, 1000),
        ]
        .iter()
        .enumerate()
        {
            let case = case as u64;
            assert!(
                4 * m * k > avx512_block_bytes(),
                "the shape is read in blocks"
            );
            for (transposed, accumulate) in [(false, false), (true, true)] {
                let a = values(m * k, case);
                let b = values(k * n, case + 10);
                let start = values(m * n, case + 20);
                let a_strides = if transposed { (1, m) } else { (k, 1) };
                let mut reference = start.clone();
                portable((m, k, n), &a, a_strides, &b, n, accumulate, &mut reference);
                for right in [
                    Right::Rows(&b, n),
                    Right::Packed(&Packed::new(&b, (n, 1), k, n)),
                ] {
                    let mut c = start.clone();
                    matmul((m, k, n), &a, a_strides, right, accumulate, &mut c);
                    for (index, (got, want)) in c.iter().zip(&reference).enumerate() {
                        assert!(
                            (got - want).abs() < 1e-4 * (1.0 + want.abs()),
                            "m {m} k {k} n {n} transposed {transposed}: [{index}] {got} vs {want}"
                        );
                    }
                }
            }
        }
    }

    /// Every shape at the tile edges, every layout of `a` and `b`, with and without
    /// accumulation, against a sum in `f64`.
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
                    let product = |right: Right<'_>| {
                        let mut c = start.clone();
                        matmul((m, k, n), &a, a_strides, right, accumulate, &mut c);
                        c
                    };
                    let in_place = product(Right::Rows(&b, b_row));
                    let packed = product(Right::Packed(&Packed::new(&b, (b_row, 1), k, n)));
                    // The same operand packed from its transpose, as the backward passes do.
                    let mut b_t = vec![0.0; n * k];
                    for p in 0..k {
                        for j in 0..n {
                            b_t[j * k + p] = b[p * b_row + j];
                        }
                    }
                    let from_transpose = product(Right::Packed(&Packed::new(&b_t, (1, k), k, n)));
                    // The same operand set in two runs of rows, as a backward pass fills it
                    // step by step.
                    let rows: Vec<f32> = (0..k)
                        .flat_map(|p| &b[p * b_row..p * b_row + n])
                        .copied()
                        .collect();
                    let mut filled = Packed::unfilled(k, n);
                    filled.set_rows(k / 2, &rows[k / 2 * n..]);
                    filled.set_rows(0, &rows[..k / 2 * n]);
                    let set_by_rows = product(Right::Packed(&filled));
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
                            let index = i * n + j;
                            for (what, got) in [
                                ("in place", in_place[index]),
                                ("packed", packed[index]),
                                ("packed from the transpose", from_transpose[index]),
                                ("set by rows", set_by_rows[index]),
                                ("portable", reference[index]),
                            ] {
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
