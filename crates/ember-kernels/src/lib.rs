#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

pub mod activation;
mod cell;
#[doc(hidden)]
pub mod cells;
mod cross_entropy;
mod dropout;
pub mod matmul;
pub mod parallel;
pub mod pool;
mod recurrence;
mod stepper;
#[doc(hidden)]
pub mod tile;

pub use cell::{CellKind, UnknownCell};
pub use cross_entropy::{cross_entropy_backward, cross_entropy_forward};
pub use dropout::dropout_mask;
pub use recurrence::{
    RecurrenceGradients, RecurrenceInputs, RecurrenceOutputs, RecurrenceShape, backward,
    calls_on_this_thread, forward,
};
pub use stepper::{HeadWeights, HostState, HostStepper, LayerWeights};
