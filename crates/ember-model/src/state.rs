//! The recurrent state carried between time steps and between chunks.

use burn::tensor::{Device, Tensor, TensorData};

use crate::CellKind;

/// The state of one layer: the hidden vector and, for the LSTM, the cell vector.
///
/// # Shapes
/// - hidden: `[batch_size, d_hidden]`
/// - cell: `[batch_size, d_hidden]`
#[derive(Debug, Clone)]
pub struct LayerState {
    /// The hidden (output) vector `h_t`.
    pub hidden: Tensor<2>,
    /// The LSTM cell vector `c_t`; `None` for the RNN and the GRU.
    pub cell: Option<Tensor<2>>,
}

impl LayerState {
    /// A zero state for `batch_size` streams.
    pub fn zeros(cell: CellKind, batch_size: usize, d_hidden: usize, device: &Device) -> Self {
        let zeros = || Tensor::zeros([batch_size, d_hidden], device);
        LayerState {
            hidden: zeros(),
            cell: cell.has_cell_state().then(zeros),
        }
    }

    /// Applies `f` to every tensor of the state.
    pub fn map(self, f: impl Fn(Tensor<2>) -> Tensor<2>) -> Self {
        LayerState {
            hidden: f(self.hidden),
            cell: self.cell.map(&f),
        }
    }
}

/// The state of a stack of recurrent layers, bottom layer first.
///
/// A value type: carrying it from one chunk to the next and calling [`detach`](Self::detach) at
/// the boundary is truncated backpropagation through time.
#[derive(Debug, Clone)]
pub struct RecurrentState {
    /// One entry per layer, bottom first.
    pub layers: Vec<LayerState>,
}

impl RecurrentState {
    /// A zero state for every layer.
    pub fn zeros(
        cell: CellKind,
        num_layers: usize,
        batch_size: usize,
        d_hidden: usize,
        device: &Device,
    ) -> Self {
        RecurrentState {
            layers: (0..num_layers)
                .map(|_| LayerState::zeros(cell, batch_size, d_hidden, device))
                .collect(),
        }
    }

    /// Applies `f` to every tensor of every layer.
    pub fn map(self, f: impl Fn(Tensor<2>) -> Tensor<2>) -> Self {
        RecurrentState {
            layers: self.layers.into_iter().map(|layer| layer.map(&f)).collect(),
        }
    }

    /// Cuts the autodiff graph: gradients of later chunks stop here (the truncated-BPTT cut).
    pub fn detach(self) -> Self {
        self.map(|tensor| tensor.detach())
    }

    /// Zeroes the state of the streams whose entry in `reset` is `true` (a document boundary)
    /// and keeps the others.
    ///
    /// # Panics
    /// If `reset.len()` is not the batch size.
    pub fn reset_streams(self, reset: &[bool]) -> Self {
        let batch_size = self.batch_size();
        assert_eq!(reset.len(), batch_size, "one reset flag per stream");
        let device = self.device();
        let keep: Vec<f32> = reset.iter().map(|&r| if r { 0.0 } else { 1.0 }).collect();
        let keep = Tensor::<2>::from_data(TensorData::new(keep, [batch_size, 1]), &device);
        self.map(|tensor| tensor * keep.clone())
    }

    /// The number of parallel streams.
    pub fn batch_size(&self) -> usize {
        self.layers[0].hidden.dims()[0]
    }

    /// The number of layers.
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// The device the state lives on.
    pub fn device(&self) -> Device {
        self.layers[0].hidden.device()
    }

    /// The hidden vectors of every layer, as PyTorch's `h_n`: `[num_layers, batch_size, d_hidden]`.
    pub fn hidden(&self) -> Tensor<3> {
        Tensor::stack(self.layers.iter().map(|l| l.hidden.clone()).collect(), 0)
    }

    /// The LSTM cell vectors of every layer, as PyTorch's `c_n`: `[num_layers, batch_size, d_hidden]`.
    pub fn cell(&self) -> Option<Tensor<3>> {
        let cells: Option<Vec<_>> = self.layers.iter().map(|l| l.cell.clone()).collect();
        cells.map(|cells| Tensor::stack(cells, 0))
    }

    /// Moves the state to `device`.
    pub fn to_device(self, device: &Device) -> Self {
        self.map(|tensor| tensor.to_device(device))
    }
}
