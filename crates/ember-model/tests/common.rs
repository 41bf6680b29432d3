//! Helpers shared by the model crate's integration tests.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::{Device, Gradients, Tensor, TensorData};
use ember_model::CharLm;
use ember_model::torch::{HostTensor, StateDict};

/// The backends the model tests run on: both CPU backends, and wgpu with the `test-wgpu`
/// feature; every one must give PyTorch's numbers.
// NdArray is deprecated upstream, but it is one of the two backends Ember supports.
#[allow(deprecated, unused_mut)]
pub fn devices() -> Vec<(&'static str, Device)> {
    let mut devices = vec![("flex", Device::flex()), ("ndarray", Device::ndarray())];
    #[cfg(feature = "test-wgpu")]
    devices.push(("wgpu", Device::wgpu(Default::default())));
    devices
}

/// The PyTorch reference fixtures, `tests/fixtures/torch` of the repository (override with
/// `EMBER_FIXTURES`).
pub fn fixtures_dir() -> PathBuf {
    match std::env::var_os("EMBER_FIXTURES") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/torch"),
    }
}

/// A tensor of an `.expected.safetensors` file, any dtype, as f64 values and a shape.
pub struct Expected {
    pub tensors: BTreeMap<String, (Vec<usize>, Vec<f64>)>,
}

impl Expected {
    pub fn read(name: &str) -> Expected {
        let path = fixtures_dir().join(format!("{name}.expected.safetensors"));
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let mut tensors = BTreeMap::new();
        for (key, view) in file.tensors() {
            let data = view.data();
            let values: Vec<f64> = match view.dtype() {
                safetensors::Dtype::F32 => data
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes(b.try_into().unwrap()) as f64)
                    .collect(),
                safetensors::Dtype::F64 => data
                    .chunks_exact(8)
                    .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
                    .collect(),
                safetensors::Dtype::I64 => data
                    .chunks_exact(8)
                    .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as f64)
                    .collect(),
                other => panic!("unexpected dtype {other:?} for {key}"),
            };
            tensors.insert(key, (view.shape().to_vec(), values));
        }
        Expected { tensors }
    }

    pub fn get(&self, key: &str) -> &(Vec<usize>, Vec<f64>) {
        self.tensors
            .get(key)
            .unwrap_or_else(|| panic!("fixture has no `{key}`"))
    }

    pub fn ids(&self, key: &str, device: &Device) -> Tensor<2, burn::tensor::Int> {
        let (shape, values) = self.get(key);
        let ids: Vec<i64> = values.iter().map(|&v| v as i64).collect();
        Tensor::from_data(TensorData::new(ids, [shape[0], shape[1]]), device)
    }
}

pub fn values<const D: usize>(tensor: Tensor<D>) -> Vec<f64> {
    tensor
        .into_data()
        .try_into_vec_as::<f64>()
        .expect("float tensor")
}

/// Asserts `|actual - expected| <= tol` elementwise, naming the worst index.
pub fn assert_close(what: &str, actual: &[f64], expected: &[f64], tol: f64) {
    assert_eq!(actual.len(), expected.len(), "{what}: length");
    let (worst, diff) = actual
        .iter()
        .zip(expected)
        .map(|(a, e)| (a - e).abs())
        .enumerate()
        .fold((0, 0.0f64), |acc, (i, d)| {
            if d > acc.1 || d.is_nan() { (i, d) } else { acc }
        });
    assert!(
        diff <= tol,
        "{what}: |diff| {diff:e} > {tol:e} at {worst}: {} vs {}",
        actual[worst],
        expected[worst]
    );
}

/// A copy of `model` whose every parameter holds its gradient instead of its value, so the
/// gradients can be read in the PyTorch layout with [`CharLm::to_state_dict`].
pub fn gradients_as_state_dict(model: &CharLm, grads: &Gradients) -> StateDict {
    struct ToGradient<'a>(&'a Gradients);
    impl ModuleMapper for ToGradient<'_> {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let value = param.val();
            let grad = value
                .grad(self.0)
                .unwrap_or_else(|| value.clone().inner().zeros_like());
            Param::from_tensor(grad)
        }
    }
    model.clone().map(&mut ToGradient(grads)).to_state_dict()
}

pub fn host_values(tensor: &HostTensor) -> Vec<f64> {
    tensor.values.iter().map(|&v| v as f64).collect()
}
