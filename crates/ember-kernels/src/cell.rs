//! The three recurrent cell kinds and their gate layouts.

use core::fmt;
use core::str::FromStr;

use serde::{Deserialize, Serialize};

/// Which recurrence a layer computes.
///
/// Every kind keeps its gates fused in one weight matrix per input, in PyTorch's row order, so a
/// state dict maps one to one onto the layer's parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CellKind {
    /// The vanilla tanh RNN of the seed: `h_t = tanh(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)`.
    Rnn,
    /// Long short-term memory, gates `i, f, g, o` (Hochreiter & Schmidhuber, 1997).
    Lstm,
    /// Gated recurrent unit, gates `r, z, n`, reset applied after the hidden matmul
    /// (Cho et al., 2014, as `torch.nn.GRU` computes it).
    Gru,
}

impl CellKind {
    /// Every kind, in a fixed order.
    pub const ALL: [CellKind; 3] = [CellKind::Rnn, CellKind::Lstm, CellKind::Gru];

    /// How many gate blocks of `d_hidden` rows the fused weights hold.
    pub fn num_gates(self) -> usize {
        match self {
            CellKind::Rnn => 1,
            CellKind::Lstm => 4,
            CellKind::Gru => 3,
        }
    }

    /// Whether the state has a cell vector besides the hidden vector.
    pub fn has_cell_state(self) -> bool {
        matches!(self, CellKind::Lstm)
    }

    /// The vectors a row's state holds: the hidden vector, and the LSTM's cell vector.
    pub fn num_states(self) -> usize {
        1 + usize::from(self.has_cell_state())
    }

    /// The lower-case name used in configs and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            CellKind::Rnn => "rnn",
            CellKind::Lstm => "lstm",
            CellKind::Gru => "gru",
        }
    }
}

impl fmt::Display for CellKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The error of parsing a [`CellKind`] from a name that is none of them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown cell `{0}`: expected one of rnn, lstm, gru")]
pub struct UnknownCell(pub String);

impl FromStr for CellKind {
    type Err = UnknownCell;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        CellKind::ALL
            .into_iter()
            .find(|kind| kind.name().eq_ignore_ascii_case(name))
            .ok_or_else(|| UnknownCell(name.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for kind in CellKind::ALL {
            assert_eq!(kind.name().parse::<CellKind>(), Ok(kind));
        }
        assert_eq!("LSTM".parse::<CellKind>(), Ok(CellKind::Lstm));
        assert!("transformer".parse::<CellKind>().is_err());
    }
}
