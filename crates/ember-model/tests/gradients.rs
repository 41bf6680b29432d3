//! Gradients through time checked without trusting Burn's autodiff: central finite differences of
//! every parameter, and the seed's hand-written BPTT equations for the vanilla RNN.
//!
//! This file is its own test process because it switches both CPU devices to float64 before any
//! tensor exists (a device's default dtype is fixed once per process).

mod common;

use std::sync::OnceLock;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::{Device, FloatDType, Int, Tensor, TensorData};
use common::*;
use ember_model::{CellKind, CharLm, CharLmConfig};

fn f64_devices() -> &'static Vec<(&'static str, Device)> {
    static DEVICES: OnceLock<Vec<(&'static str, Device)>> = OnceLock::new();
    DEVICES.get_or_init(|| {
        devices()
            .into_iter()
            // wgpu accepts float64 on lavapipe but computes it wrong (the seed's loss came out
            // 197.4 instead of 23.6); its float32 results are checked by the other tests.
            .filter(|(name, _)| *name != "wgpu")
            .map(|(name, mut device)| {
                device
                    .configure(FloatDType::F64)
                    .unwrap_or_else(|e| panic!("{name} cannot run float64: {e:?}"));
                (name, device)
            })
            .collect()
    })
}

fn ids(values: &[i64], batch_size: usize, device: &Device) -> Tensor<2, Int> {
    let seq_len = values.len() / batch_size;
    Tensor::from_data(
        TensorData::new(values.to_vec(), [batch_size, seq_len]),
        device,
    )
}

fn loss_of(model: &CharLm, input: &Tensor<2, Int>, target: &Tensor<2, Int>) -> Tensor<1> {
    model.forward_loss(input.clone(), target.clone(), None).0
}

/// Every float parameter's gradient, flattened, in visiting order.
fn autodiff_gradients(
    model: &CharLm,
    input: &Tensor<2, Int>,
    target: &Tensor<2, Int>,
) -> Vec<Vec<f64>> {
    struct Collect<'a>(&'a burn::tensor::Gradients, Vec<Vec<f64>>);
    impl ModuleVisitor for Collect<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let grad = param
                .val()
                .grad(self.0)
                .expect("every parameter gets a gradient");
            self.1.push(values(grad));
        }
    }
    let grads = loss_of(model, input, target).backward();
    let mut collect = Collect(&grads, Vec::new());
    model.visit(&mut collect);
    collect.1
}

/// `model` with `delta` added to element `index` of its `param`-th float parameter.
fn perturbed(model: &CharLm, param: usize, index: usize, delta: f64) -> CharLm {
    struct Perturb {
        target: usize,
        seen: usize,
        index: usize,
        delta: f64,
    }
    impl ModuleMapper for Perturb {
        fn map_float<const D: usize>(&mut self, p: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let this = self.seen;
            self.seen += 1;
            if this != self.target {
                return p;
            }
            let value = p.val();
            let shape = value.shape();
            let mut bump = vec![0.0f64; shape.num_elements()];
            bump[self.index] = self.delta;
            let bump = Tensor::<D>::from_data(TensorData::new(bump, shape), &value.device());
            Param::from_tensor(value + bump)
        }
    }
    model.clone().map(&mut Perturb {
        target: param,
        seen: 0,
        index,
        delta,
    })
}

/// Central differences in float64 on flex, `h = 1e-6`: the truncation error is O(h^2) ~ 1e-12 and
/// the rounding ~ 1e-16 / 1e-6 = 1e-10, so 1e-7 absolute plus 1e-6 relative has room to spare,
/// while a wrong gradient term (off by 1e-2 or more) cannot meet it.
///
/// NdArray is checked against flex's autodiff instead (next test): its float64 LSTM forward was
/// measured here to move the loss by up to ~5e-9 under perturbations where float64 rounding alone
/// moves it by 1e-16 (some kernel rounds through a narrower type), which makes central differences
/// on it too noisy to be a sharp test.
#[test]
fn finite_differences_agree_with_autodiff() {
    const H: f64 = 1e-6;
    let (backend, device) = &f64_devices()[0];
    {
        for cell in CellKind::ALL {
            for d_embed in [0, 3] {
                let ad_device = device.clone().autodiff();
                let ad_model = CharLmConfig::new(5, cell, 4)
                    .with_num_layers(2)
                    .with_d_embed(d_embed)
                    .init(&ad_device);
                let input = [0, 3, 1, 4, 2, 2, 1, 0, 4, 3];
                let target = [3, 1, 4, 2, 0, 1, 0, 4, 3, 3];
                let analytic = autodiff_gradients(
                    &ad_model,
                    &ids(&input, 2, &ad_device),
                    &ids(&target, 2, &ad_device),
                );
                let model = ad_model.valid();
                let (input, target) = (ids(&input, 2, device), ids(&target, 2, device));
                for (param, grads) in analytic.iter().enumerate() {
                    for (index, &grad) in grads.iter().enumerate() {
                        let loss = |delta| {
                            values(loss_of(
                                &perturbed(&model, param, index, delta),
                                &input,
                                &target,
                            ))[0]
                        };
                        let numeric = (loss(H) - loss(-H)) / (2.0 * H);
                        assert!(
                            (numeric - grad).abs() <= 1e-7 + 1e-6 * grad.abs(),
                            "{cell} (d_embed {d_embed}) on {backend}: parameter {param}[{index}]: \
                             finite difference {numeric:e} vs autodiff {grad:e}"
                        );
                    }
                }
            }
        }
    }
}

/// The same weights and batch give NdArray the gradients flex gives (flex's are checked against
/// finite differences above): 1e-8 absolute plus 1e-6 relative, an order above NdArray's measured
/// float64 noise and far below any wrong term.
#[test]
fn ndarray_gradients_agree_with_flex() {
    let (_, flex) = &f64_devices()[0];
    let (_, ndarray) = &f64_devices()[1];
    for cell in CellKind::ALL {
        for d_embed in [0, 3] {
            let reference = CharLmConfig::new(5, cell, 4)
                .with_num_layers(2)
                .with_d_embed(d_embed)
                .init(flex)
                .to_state_dict();
            let gradients = |device: &Device| {
                let device = device.clone().autodiff();
                let model = CharLm::from_state_dict(&reference, cell, &device).unwrap();
                autodiff_gradients(
                    &model,
                    &ids(&[0, 3, 1, 4, 2, 2, 1, 0, 4, 3], 2, &device),
                    &ids(&[3, 1, 4, 2, 0, 1, 0, 4, 3, 3], 2, &device),
                )
            };
            for (param, (a, b)) in gradients(flex).iter().zip(gradients(ndarray)).enumerate() {
                for (index, (x, y)) in a.iter().zip(&b).enumerate() {
                    assert!(
                        (x - y).abs() <= 1e-8 + 1e-6 * x.abs(),
                        "{cell} (d_embed {d_embed}): parameter {param}[{index}]: flex {x:e} vs ndarray {y:e}"
                    );
                }
            }
        }
    }
}

/// The seed's minimal character RNN (`min-char-rnn.py`) forward and backward written out by hand
/// in plain Rust: `h_t = tanh(Wxh x_t + Whh h_{t-1} + bh)`, `y_t = Why h_t + by`, summed
/// cross-entropy; then `dy = p - 1[target]`, `dWhy += dy h^T`, `dh = Why^T dy + dh_next`,
/// `dh_raw = (1 - h^2) dh`, `dWxh += dh_raw x^T`, `dWhh += dh_raw h_{t-1}^T`,
/// `dh_next = Whh^T dh_raw`. Matrices are `[out, in]`, as the state dict gives them.
struct HandRnn {
    wxh: Vec<Vec<f64>>,
    whh: Vec<Vec<f64>>,
    why: Vec<Vec<f64>>,
    bh: Vec<f64>,
    by: Vec<f64>,
}

struct HandGrads {
    wxh: Vec<Vec<f64>>,
    whh: Vec<Vec<f64>>,
    why: Vec<Vec<f64>>,
    bh: Vec<f64>,
    by: Vec<f64>,
    loss: f64,
}

fn matvec(m: &[Vec<f64>], v: &[f64]) -> Vec<f64> {
    m.iter()
        .map(|row| row.iter().zip(v).map(|(a, b)| a * b).sum())
        .collect()
}

fn matvec_t(m: &[Vec<f64>], v: &[f64]) -> Vec<f64> {
    (0..m[0].len())
        .map(|j| m.iter().zip(v).map(|(row, x)| row[j] * x).sum())
        .collect()
}

fn add_outer(acc: &mut [Vec<f64>], a: &[f64], b: &[f64]) {
    for (row, x) in acc.iter_mut().zip(a) {
        for (cell, y) in row.iter_mut().zip(b) {
            *cell += x * y;
        }
    }
}

impl HandRnn {
    fn loss_and_grads(&self, inputs: &[usize], targets: &[usize]) -> HandGrads {
        let (hidden, vocab) = (self.whh.len(), self.why.len());
        let mut hs = vec![vec![0.0; hidden]];
        let mut ps = Vec::new();
        let mut loss = 0.0;
        for (&x, &y) in inputs.iter().zip(targets) {
            let mut pre: Vec<f64> = matvec(&self.whh, hs.last().unwrap());
            for (i, p) in pre.iter_mut().enumerate() {
                *p += self.wxh[i][x] + self.bh[i];
            }
            let h: Vec<f64> = pre.iter().map(|v| v.tanh()).collect();
            let logits: Vec<f64> = matvec(&self.why, &h)
                .iter()
                .zip(&self.by)
                .map(|(a, b)| a + b)
                .collect();
            let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let exps: Vec<f64> = logits.iter().map(|l| (l - max).exp()).collect();
            let total: f64 = exps.iter().sum();
            let p: Vec<f64> = exps.iter().map(|e| e / total).collect();
            loss -= p[y].ln();
            hs.push(h);
            ps.push(p);
        }
        let zeros = |r: usize, c: usize| vec![vec![0.0; c]; r];
        let mut g = HandGrads {
            wxh: zeros(hidden, vocab),
            whh: zeros(hidden, hidden),
            why: zeros(vocab, hidden),
            bh: vec![0.0; hidden],
            by: vec![0.0; vocab],
            loss,
        };
        let mut dh_next = vec![0.0; hidden];
        for t in (0..inputs.len()).rev() {
            let mut dy = ps[t].clone();
            dy[targets[t]] -= 1.0;
            add_outer(&mut g.why, &dy, &hs[t + 1]);
            g.by.iter_mut().zip(&dy).for_each(|(b, d)| *b += d);
            let dh: Vec<f64> = matvec_t(&self.why, &dy)
                .iter()
                .zip(&dh_next)
                .map(|(a, b)| a + b)
                .collect();
            let dh_raw: Vec<f64> = dh
                .iter()
                .zip(&hs[t + 1])
                .map(|(d, h)| (1.0 - h * h) * d)
                .collect();
            g.bh.iter_mut().zip(&dh_raw).for_each(|(b, d)| *b += d);
            let mut x = vec![0.0; vocab];
            x[inputs[t]] = 1.0;
            add_outer(&mut g.wxh, &dh_raw, &x);
            add_outer(&mut g.whh, &dh_raw, &hs[t]);
            dh_next = matvec_t(&self.whh, &dh_raw);
        }
        g
    }
}

fn rows(values: &[f32], shape: &[usize]) -> Vec<Vec<f64>> {
    values
        .chunks(shape[1])
        .map(|r| r.iter().map(|&v| v as f64).collect())
        .collect()
}

fn flat(m: &[Vec<f64>]) -> Vec<f64> {
    m.concat()
}

#[test]
fn hand_written_bptt_agrees_with_autodiff() {
    let inputs = [0usize, 2, 5, 1, 1, 3, 6, 4, 0, 2, 2, 5];
    let targets = [2usize, 5, 1, 1, 3, 6, 4, 0, 2, 2, 5, 6];
    for (backend, device) in f64_devices() {
        let device = device.clone().autodiff();
        let model = CharLmConfig::new(7, CellKind::Rnn, 6).init(&device);
        let sd = model.to_state_dict();
        let t = |key: &str| &sd.tensors[key];
        let rnn = HandRnn {
            wxh: rows(&t("rnn.weight_ih_l0").values, &t("rnn.weight_ih_l0").shape),
            whh: rows(&t("rnn.weight_hh_l0").values, &t("rnn.weight_hh_l0").shape),
            why: rows(&t("head.weight").values, &t("head.weight").shape),
            // The seed has one hidden bias; PyTorch's layout splits it in two that are only added.
            bh: t("rnn.bias_ih_l0")
                .values
                .iter()
                .zip(&t("rnn.bias_hh_l0").values)
                .map(|(a, b)| *a as f64 + *b as f64)
                .collect(),
            by: t("head.bias").values.iter().map(|&v| v as f64).collect(),
        };
        // The state dict rounds the weights to f32; load them back so both sides use the same.
        let model = CharLm::from_state_dict(&sd, CellKind::Rnn, &device).unwrap();
        let to_ids =
            |v: &[usize]| ids(&v.iter().map(|&i| i as i64).collect::<Vec<_>>(), 1, &device);
        let (mean_loss, _) = model.forward_loss(to_ids(&inputs), to_ids(&targets), None);
        // The seed sums the per-step losses; the model averages them.
        let summed = mean_loss.mul_scalar(inputs.len() as f64);
        let grads = summed.backward();
        let burn = gradients_as_state_dict(&model, &grads);
        let hand = rnn.loss_and_grads(&inputs, &targets);

        let what = |k: &str| format!("{k} on {backend}");
        // Only the gradients pass through f32 (the state dict's host tensors).
        let tol = 1e-6;
        assert_close(&what("loss"), &values(summed), &[hand.loss], 1e-9);
        let g = |key: &str| host_values(&burn.tensors[key]);
        assert_close(&what("dWxh"), &g("rnn.weight_ih_l0"), &flat(&hand.wxh), tol);
        assert_close(&what("dWhh"), &g("rnn.weight_hh_l0"), &flat(&hand.whh), tol);
        assert_close(&what("dbh (ih)"), &g("rnn.bias_ih_l0"), &hand.bh, tol);
        assert_close(&what("dbh (hh)"), &g("rnn.bias_hh_l0"), &hand.bh, tol);
        assert_close(&what("dWhy"), &g("head.weight"), &flat(&hand.why), tol);
        assert_close(&what("dby"), &g("head.bias"), &hand.by, tol);
    }
}
