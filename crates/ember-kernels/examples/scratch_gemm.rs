use ember_kernels::tile::{self, Right};
use rayon::prelude::*;
use std::time::Instant;

fn gemm_call(
    m: usize,
    k: usize,
    n: usize,
    a: &[f32],
    ars: usize,
    acs: usize,
    b: &[f32],
    brs: usize,
    bcs: usize,
    c: &mut [f32],
    par: gemm::Parallelism,
) {
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.as_ptr(),
            acs as isize,
            ars as isize,
            b.as_ptr(),
            bcs as isize,
            brs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            par,
        );
    }
}

fn time(name: &str, flops: f64, mut f: impl FnMut()) {
    for _ in 0..5 {
        f();
    }
    let iters = 200;
    let t = Instant::now();
    for _ in 0..iters {
        f();
    }
    let s = t.elapsed().as_secs_f64() / iters as f64;
    println!(
        "{name:40} {:8.1} us {:7.1} GFLOP/s",
        s * 1e6,
        flops / s / 1e9
    );
}

fn main() {
    // (name, m, k, n, a transposed?)
    let shapes = [
        ("fwd L1 2048x64x512", 2048, 64, 512, false),
        ("fwd L2 2048x128x512", 2048, 128, 512, false),
        ("dX 2048x512x128 (B^T)", 2048, 512, 128, false),
        ("dW 128x2048x512 (A^T)", 128, 2048, 512, true),
        ("dW 64x2048x512 (A^T)", 64, 2048, 512, true),
        ("head 2048x128x65", 2048, 128, 65, false),
    ];
    for (name, m, k, n, at) in shapes {
        let a: Vec<f32> = (0..m * k).map(|i| (i % 13) as f32 * 0.1).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i % 7) as f32 * 0.1).collect();
        let mut c = vec![0.0f32; m * n];
        let (ars, acs) = if at { (1, m) } else { (k, 1) };
        let flops = 2.0 * (m * k * n) as f64;
        time(&format!("{name} gemm rayon2"), flops, || {
            gemm_call(
                m,
                k,
                n,
                &a,
                ars,
                acs,
                &b,
                n,
                1,
                &mut c,
                gemm::Parallelism::Rayon(2),
            )
        });
        time(&format!("{name} gemm none x2"), flops, || {
            let half = m / 2;
            let (c0, c1) = c.split_at_mut(half * n);
            rayon::join(
                || {
                    gemm_call(
                        half,
                        k,
                        n,
                        &a,
                        ars,
                        acs,
                        &b,
                        n,
                        1,
                        c0,
                        gemm::Parallelism::None,
                    )
                },
                || {
                    gemm_call(
                        m - half,
                        k,
                        n,
                        &a[half * ars..],
                        ars,
                        acs,
                        &b,
                        n,
                        1,
                        c1,
                        gemm::Parallelism::None,
                    )
                },
            );
        });
        time(&format!("{name} tile x2"), flops, || {
            let half = m / 2;
            let (c0, c1) = c.split_at_mut(half * n);
            rayon::join(
                || tile::matmul((half, k, n), &a, (ars, acs), Right::Rows(&b, n), false, c0),
                || {
                    tile::matmul(
                        (m - half, k, n),
                        &a[half * ars..],
                        (ars, acs),
                        Right::Rows(&b, n),
                        false,
                        c1,
                    )
                },
            );
        });
        time(&format!("{name} tile x1"), flops, || {
            tile::matmul((m, k, n), &a, (ars, acs), Right::Rows(&b, n), false, &mut c)
        });
    }
}
