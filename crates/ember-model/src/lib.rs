#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

mod cell;
mod char_lm;
mod layer;
mod sample;
mod stacked;
mod state;
#[cfg(feature = "import")]
pub mod torch;

pub use cell::{CellKind, UnknownCell};
pub use char_lm::{CharLm, CharLmConfig};
pub use layer::{RecurrentLayer, RecurrentLayerConfig};
pub use sample::{SampleConfig, SampleError, Sampler};
pub use stacked::{StackedRecurrent, StackedRecurrentConfig};
pub use state::{LayerState, RecurrentState};
