//! The gate arithmetic of one step of each cell, forward and backward side by side, over the
//! rows of a batch. The recurrent product `h_{t-1} W_hh` is done by the caller.

/// An LSTM step: activates `gates` (`[rows, 4H]`, pre-activations `i, f, g, o` in) in place and
/// writes the new cells, their tanh and the new hidden vectors (`[rows, H]` each).
#[inline(always)]
pub fn lstm_step(
    gates: &mut [f32],
    previous_cells: &[f32],
    cells: &mut [f32],
    tanh_cells: &mut [f32],
    hidden: &mut [f32],
    h: usize,
) {
    use crate::activation::{sigmoid, tanh};
    for (row, gate_row) in gates.chunks_exact_mut(4 * h).enumerate() {
        let (sigmoid_if, rest) = gate_row.split_at_mut(2 * h);
        let (candidate, out) = rest.split_at_mut(h);
        // Separate loops: a chained iterator does not vectorize.
        for v in sigmoid_if.iter_mut() {
            *v = sigmoid(*v);
        }
        for v in out.iter_mut() {
            *v = sigmoid(*v);
        }
        for v in candidate.iter_mut() {
            *v = tanh(*v);
        }
        let (i, f) = sigmoid_if.split_at(h);
        let span = row * h..(row + 1) * h;
        // Every slice cut to `h`, so that the loop runs without bounds checks and vectorizes.
        let cells_row = &mut cells[span.clone()][..h];
        let tanh_row = &mut tanh_cells[span.clone()][..h];
        let hidden_row = &mut hidden[span.clone()][..h];
        let previous_row = &previous_cells[span][..h];
        let (i, f, candidate, out) = (&i[..h], &f[..h], &candidate[..h], &out[..h]);
        for j in 0..h {
            let cell = f[j] * previous_row[j] + i[j] * candidate[j];
            let tanh_cell = tanh(cell);
            cells_row[j] = cell;
            tanh_row[j] = tanh_cell;
            hidden_row[j] = out[j] * tanh_cell;
        }
    }
}

/// An LSTM step backward: from the gradient arriving at the new hidden vectors (`d_hidden`) and
/// at the new cells (`d_cell`, replaced by the previous cells' gradient through this step), the
/// gradients of the step's pre-activations `d_gates` (`[rows, 4H]`).
#[inline(always)]
pub fn lstm_step_backward(
    gates: &[f32],
    previous_cells: &[f32],
    tanh_cells: &[f32],
    d_hidden: &[f32],
    d_cell: &mut [f32],
    d_gates: &mut [f32],
    h: usize,
) {
    let rows = gates
        .chunks_exact(4 * h)
        .zip(d_gates.chunks_exact_mut(4 * h));
    for (row, (gate_row, d_row)) in rows.enumerate() {
        let span = row * h..(row + 1) * h;
        let previous_row = &previous_cells[span.clone()][..h];
        let tanh_row = &tanh_cells[span.clone()][..h];
        let d_hidden_row = &d_hidden[span.clone()][..h];
        let d_cell_row = &mut d_cell[span][..h];
        let (i, rest) = gate_row.split_at(h);
        let (f, rest) = rest.split_at(h);
        let (candidate, out) = rest.split_at(h);
        let (i, f, candidate, out) = (&i[..h], &f[..h], &candidate[..h], &out[..h]);
        let (d_i, rest) = d_row.split_at_mut(h);
        let (d_f, rest) = rest.split_at_mut(h);
        let (d_candidate, d_out) = rest.split_at_mut(h);
        let (d_i, d_f, d_candidate, d_out) = (
            &mut d_i[..h],
            &mut d_f[..h],
            &mut d_candidate[..h],
            &mut d_out[..h],
        );
        for j in 0..h {
            let tanh_cell = tanh_row[j];
            let dh = d_hidden_row[j];
            let dc = d_cell_row[j] + dh * out[j] * (1.0 - tanh_cell * tanh_cell);
            d_i[j] = dc * candidate[j] * i[j] * (1.0 - i[j]);
            d_f[j] = dc * previous_row[j] * f[j] * (1.0 - f[j]);
            d_candidate[j] = dc * i[j] * (1.0 - candidate[j] * candidate[j]);
            d_out[j] = dh * tanh_cell * out[j] * (1.0 - out[j]);
            d_cell_row[j] = dc * f[j];
        }
    }
}

/// A GRU step: from the input projections `gates` (`[rows, 3H]`, replaced by the activated
/// `r, z, n`) and the hidden projections `projected` (`h_{t-1} W_hh + b_hh`), writes
/// `W_hn h_{t-1} + b_hn` into `hidden_new` and the new hidden vectors into `hidden`.
#[inline(always)]
pub fn gru_step(
    gates: &mut [f32],
    projected: &[f32],
    previous: &[f32],
    hidden_new: &mut [f32],
    hidden: &mut [f32],
    h: usize,
) {
    use crate::activation::{sigmoid, tanh};
    let rows = gates
        .chunks_exact_mut(3 * h)
        .zip(projected.chunks_exact(3 * h));
    for (row, (gate_row, projected_row)) in rows.enumerate() {
        let (reset, rest) = gate_row.split_at_mut(h);
        let (update, candidate) = rest.split_at_mut(h);
        let (p_reset, rest) = projected_row.split_at(h);
        let (p_update, p_new) = rest.split_at(h);
        let span = row * h..(row + 1) * h;
        let previous_row = &previous[span.clone()][..h];
        let new_row = &mut hidden_new[span.clone()][..h];
        let hidden_row = &mut hidden[span][..h];
        let (reset, update, candidate) = (&mut reset[..h], &mut update[..h], &mut candidate[..h]);
        let (p_reset, p_update, p_new) = (&p_reset[..h], &p_update[..h], &p_new[..h]);
        // One activation per loop: with three in one body the loop stayed scalar.
        for j in 0..h {
            reset[j] = sigmoid(reset[j] + p_reset[j]);
        }
        for j in 0..h {
            update[j] = sigmoid(update[j] + p_update[j]);
        }
        for j in 0..h {
            candidate[j] = tanh(candidate[j] + reset[j] * p_new[j]);
        }
        new_row.copy_from_slice(p_new);
        for j in 0..h {
            let n = candidate[j];
            // h = (1 - z) n + z h_prev, written as n + z (h_prev - n): one product fewer.
            hidden_row[j] = n + update[j] * (previous_row[j] - n);
        }
    }
}

/// A GRU step backward: from the gradient arriving at the new hidden vectors (`d_hidden`), the
/// gradients of the step's input projections (`d_gates`) and hidden projections
/// (`d_projected`); `d_hidden` is left holding the direct part of the previous hidden vectors'
/// gradient, `dh z`, for the hidden projection's part to be added to.
#[inline(always)]
pub fn gru_step_backward(
    gates: &[f32],
    hidden_new: &[f32],
    previous: &[f32],
    d_hidden: &mut [f32],
    d_gates: &mut [f32],
    d_projected: &mut [f32],
    h: usize,
) {
    let rows = gates
        .chunks_exact(3 * h)
        .zip(d_gates.chunks_exact_mut(3 * h))
        .zip(d_projected.chunks_exact_mut(3 * h));
    for (row, ((gate_row, d_row), d_projected_row)) in rows.enumerate() {
        let span = row * h..(row + 1) * h;
        // Every slice cut to `h`, so that the loop runs without bounds checks and vectorizes.
        let new_row = &hidden_new[span.clone()][..h];
        let previous_row = &previous[span.clone()][..h];
        let d_hidden_row = &mut d_hidden[span][..h];
        let (r, rest) = gate_row.split_at(h);
        let (z, n) = rest.split_at(h);
        let (r, z, n) = (&r[..h], &z[..h], &n[..h]);
        let (d_r, rest) = d_row.split_at_mut(h);
        let (d_z, d_n) = rest.split_at_mut(h);
        let (d_r, d_z, d_n) = (&mut d_r[..h], &mut d_z[..h], &mut d_n[..h]);
        let (dp_r, rest) = d_projected_row.split_at_mut(h);
        let (dp_z, dp_n) = rest.split_at_mut(h);
        let (dp_r, dp_z, dp_n) = (&mut dp_r[..h], &mut dp_z[..h], &mut dp_n[..h]);
        for j in 0..h {
            let dh = d_hidden_row[j];
            let d_new = dh * (1.0 - z[j]) * (1.0 - n[j] * n[j]);
            let d_reset = d_new * new_row[j] * r[j] * (1.0 - r[j]);
            let d_update = dh * (previous_row[j] - n[j]) * z[j] * (1.0 - z[j]);
            d_r[j] = d_reset;
            d_z[j] = d_update;
            d_n[j] = d_new;
            dp_r[j] = d_reset;
            dp_z[j] = d_update;
            dp_n[j] = d_new * r[j];
            d_hidden_row[j] = dh * z[j];
        }
    }
}
