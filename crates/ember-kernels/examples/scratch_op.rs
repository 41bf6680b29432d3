use ember_kernels::*;
use std::time::Instant;
fn main() {
    let h: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse().unwrap())
        .unwrap_or(128);
    let only = std::env::args().nth(2).unwrap_or_default();
    for cell in [CellKind::Lstm, CellKind::Gru, CellKind::Rnn] {
        if !only.is_empty() && format!("{cell:?}") != only {
            continue;
        }
        let shape = RecurrenceShape {
            cell,
            seq_len: 64,
            batch_size: 32,
            d_hidden: h,
        };
        let g = shape.d_gates();
        let v = |n: usize| {
            (0..n)
                .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
                .collect::<Vec<f32>>()
        };
        let projected = v(64 * 32 * g);
        let w: Vec<f32> = v(h * g).iter().map(|x| x * 0.1).collect();
        let b = v(g);
        let h0 = v(32 * h);
        let c0 = if cell == CellKind::Lstm {
            v(32 * h)
        } else {
            vec![]
        };
        let inputs = RecurrenceInputs {
            projected: &projected,
            weight_hh: &w,
            bias_hh: &b,
            hidden: &h0,
            cell: &c0,
            mask: None,
        };
        let d_out = v(64 * 32 * h);
        let (mut tf, mut tb) = (0.0, 0.0);
        for i in 0..210 {
            if i == 10 {
                tf = 0.0;
                tb = 0.0;
            }
            let s = Instant::now();
            let out = forward(shape, &inputs, true);
            tf += s.elapsed().as_secs_f64();
            let s = Instant::now();
            let gr = backward(shape, &w, None, &out.tape, &d_out, &[], &[]);
            tb += s.elapsed().as_secs_f64();
            pool::recycle(out.tape);
            pool::recycle(out.outputs);
            pool::recycle(gr.projected);
        }
        let fl = 2.0 * (64 * 32 * h * g) as f64;
        println!(
            "{cell:?} h{h}: kernel fwd {:.3} ms ({:.0} GF/s) bwd {:.3} ms ({:.0} GF/s)",
            tf / 200.0 * 1e3,
            fl / (tf / 200.0) / 1e9,
            tb / 200.0 * 1e3,
            2.0 * fl / (tb / 200.0) / 1e9
        );
    }
}
