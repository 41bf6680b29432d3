//! PyTorch state dicts in and out.
//!
//! The reference layout is `nn.Embedding(V, E)` named `embedding`, an `nn.RNN`/`nn.LSTM`/`nn.GRU`
//! (`batch_first=True`) named `rnn`, and `nn.Linear(H, V)` named `head`: keys `embedding.weight`,
//! `rnn.{weight_ih,weight_hh,bias_ih,bias_hh}_l{k}`, `head.weight`, `head.bias`. A model
//! without `embedding.weight` whose first layer reads `V` inputs is taken as one-hot.
//!
//! Other layouts reach it by renaming key prefixes ([`StateDict::rename_prefixes`]); the layout
//! of pytorch/examples' `word_language_model` (`encoder` / `rnn` / `decoder`, which char-rnn
//! ports for PyTorch share) is recognised on its own ([`TorchLayout`]). The cell and every size
//! are read from the tensors ([`StateDict::cell_kind`]).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use burn::module::Param;
use burn::store::pytorch_reader::{self, PytorchReader};
use burn::tensor::{Device, Tensor, TensorData};

use crate::{CellKind, CharLm, CharLmConfig};

/// Why a state dict could not be read, written or turned into a model.
#[derive(Debug, thiserror::Error)]
pub enum TorchError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// The file is not a state dict this loader understands.
    #[error("{path}: {message}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// A key the layout needs is absent.
    #[error("missing key `{0}` in the state dict")]
    MissingKey(String),
    /// A key is present with the wrong shape.
    #[error("key `{key}` has shape {found:?}, expected {expected:?}")]
    Shape {
        /// The key.
        key: String,
        /// The shape the layout needs.
        expected: Vec<usize>,
        /// The shape in the file.
        found: Vec<usize>,
    },
    /// A key the layout does not have.
    #[error("unexpected key `{0}` in the state dict (not part of the {1} layout)")]
    UnexpectedKey(String, CellKind),
    /// A key the layout needs is absent: the keys found, and the prefix renaming that would
    /// supply it where one fits.
    #[error(
        "missing key `{missing}` in the state dict; it holds {}{}",
        found.join(", "),
        rename_advice(rename)
    )]
    Layout {
        /// The key the reference layout needs.
        missing: String,
        /// Every key in the state dict.
        found: Vec<String>,
        /// `(old prefix, new prefix)` pairs that would supply the layout's modules.
        rename: Vec<(String, String)>,
    },
    /// The recurrence in the tensors is not the one asked for.
    #[error(
        "the state dict holds a {found} (`{key}` has {rows} rows, {gates} gate(s) of {d_hidden}) \
         but {expected} was asked for; leave the cell out to take it from the tensors"
    )]
    Cell {
        /// The cell asked for.
        expected: CellKind,
        /// The cell the tensors hold.
        found: CellKind,
        /// The key whose shape says so.
        key: String,
        /// Its rows.
        rows: usize,
        /// Gate blocks among them.
        gates: usize,
        /// The hidden size.
        d_hidden: usize,
    },
    /// A tensor of an element type that is not floating point.
    #[error("key `{key}` holds {dtype} values; only float tensors can be weights")]
    Dtype {
        /// The key.
        key: String,
        /// The element type found.
        dtype: String,
    },
}

fn rename_advice(rename: &[(String, String)]) -> String {
    if rename.is_empty() {
        return String::new();
    }
    let flags: Vec<String> = rename
        .iter()
        .map(|(from, to)| format!("--rename {from}={to}"))
        .collect();
    format!(
        "; renaming would fit it (ember import-torch {})",
        flags.join(" ")
    )
}

/// A tensor held on the host in `f32`, in PyTorch's shape.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    /// The shape, outermost first.
    pub shape: Vec<usize>,
    /// The values in row-major order.
    pub values: Vec<f32>,
}

/// A PyTorch state dict: tensors by key, in `f32`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StateDict {
    /// The tensors by their PyTorch key.
    pub tensors: BTreeMap<String, HostTensor>,
}

/// How a character model's modules are named in a PyTorch state dict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TorchLayout {
    /// `embedding` (`nn.Embedding`), `rnn`, `head` (`nn.Linear`): Ember's own names.
    Reference,
    /// `encoder` (`nn.Embedding`), `rnn`, `decoder` (`nn.Linear`): pytorch/examples'
    /// `word_language_model`, and the char-rnn ports for PyTorch.
    WordLanguageModel,
}

impl TorchLayout {
    /// Every layout, in a fixed order.
    pub const ALL: [TorchLayout; 2] = [TorchLayout::Reference, TorchLayout::WordLanguageModel];

    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            TorchLayout::Reference => "reference",
            TorchLayout::WordLanguageModel => "word-language-model",
        }
    }

    /// `(reference prefix, this layout's prefix)` for every module named differently.
    fn renames(self) -> &'static [(&'static str, &'static str)] {
        match self {
            TorchLayout::Reference => &[],
            TorchLayout::WordLanguageModel => &[("embedding", "encoder"), ("head", "decoder")],
        }
    }

    /// The layout whose head a state dict holds (the reference layout when neither fits).
    pub fn detect(state_dict: &StateDict) -> TorchLayout {
        let has = |key: &str| state_dict.tensors.contains_key(key);
        if !has("head.weight") && has("decoder.weight") {
            TorchLayout::WordLanguageModel
        } else {
            TorchLayout::Reference
        }
    }
}

impl fmt::Display for TorchLayout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The error of parsing a [`TorchLayout`] from a name that is none of them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown layout `{0}`: expected reference or word-language-model")]
pub struct UnknownLayout(pub String);

impl FromStr for TorchLayout {
    type Err = UnknownLayout;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        TorchLayout::ALL
            .into_iter()
            .find(|layout| layout.name().eq_ignore_ascii_case(name))
            .ok_or_else(|| UnknownLayout(name.to_string()))
    }
}

/// `key` with its leading dotted prefix `from` replaced by `to` (`encoder.weight` with
/// `encoder` -> `embedding` is `embedding.weight`; an empty `to` drops the prefix, an empty
/// `from` adds one); `None` when `key` does not start with the whole components of `from`.
fn renamed(key: &str, from: &str, to: &str) -> Option<String> {
    let rest = if from.is_empty() {
        key
    } else if key == from {
        ""
    } else {
        key.strip_prefix(from)?.strip_prefix('.')?
    };
    Some(match (to.is_empty(), rest.is_empty()) {
        (true, _) => rest.to_string(),
        (false, true) => to.to_string(),
        (false, false) => format!("{to}.{rest}"),
    })
}

impl StateDict {
    /// Renames key prefixes, `(old, new)`, whole dotted components only: `("fc", "head")`
    /// turns `fc.weight` into `head.weight` but leaves `fc2.weight`. The first pair that
    /// matches a key applies. Returns how many keys were renamed.
    pub fn rename_prefixes(&mut self, renames: &[(String, String)]) -> usize {
        let mut count = 0;
        self.tensors = std::mem::take(&mut self.tensors)
            .into_iter()
            .map(|(key, tensor)| {
                let new = renames
                    .iter()
                    .find_map(|(from, to)| renamed(&key, from, to));
                count += usize::from(new.as_ref().is_some_and(|new| *new != key));
                (new.unwrap_or(key), tensor)
            })
            .collect();
        count
    }

    /// This state dict, of `layout`, in the reference layout.
    pub fn into_reference(mut self, layout: TorchLayout) -> Self {
        let renames: Vec<(String, String)> = layout
            .renames()
            .iter()
            .map(|(reference, other)| (other.to_string(), reference.to_string()))
            .collect();
        self.rename_prefixes(&renames);
        self
    }

    /// This state dict (of the reference layout) in `layout`.
    pub fn into_layout(mut self, layout: TorchLayout) -> Self {
        let renames: Vec<(String, String)> = layout
            .renames()
            .iter()
            .map(|(reference, other)| (reference.to_string(), other.to_string()))
            .collect();
        self.rename_prefixes(&renames);
        self
    }

    /// The recurrence of the reference layout's `rnn`, from the shape of `rnn.weight_hh_l0`
    /// (`[gates * d_hidden, d_hidden]`: 1 gate a tanh RNN, 3 a GRU, 4 an LSTM). A state dict
    /// without the key is the layout error that lists what it holds.
    pub fn cell_kind(&self) -> Result<CellKind, TorchError> {
        let key = layer_key("weight_hh", 0);
        self.check_layout(&key)?;
        let [rows, d_hidden] = dims2(self.shape_of(&key, 2)?);
        let gates = if d_hidden == 0 { 0 } else { rows / d_hidden };
        CellKind::ALL
            .into_iter()
            .find(|cell| cell.num_gates() == gates && gates * d_hidden == rows)
            .ok_or_else(|| TorchError::Shape {
                key,
                expected: vec![d_hidden, d_hidden],
                found: vec![rows, d_hidden],
            })
    }

    /// Checks that `key` (a key the reference layout needs) is present; if not, the error lists
    /// the keys found and the prefix renamings that would supply the layout's modules.
    fn check_layout(&self, key: &str) -> Result<(), TorchError> {
        if self.tensors.contains_key(key) {
            return Ok(());
        }
        let unknown: Vec<&str> = self
            .tensors
            .keys()
            .filter_map(|k| k.rsplit_once('.').map(|(prefix, _)| prefix))
            .filter(|prefix| !["embedding", "rnn", "head"].contains(prefix))
            .collect();
        let has = |key: String| self.tensors.contains_key(&key);
        // Each module of the layout that is absent, from another prefix holding what it holds:
        // the recurrence its first layer's weights, the head a weight with a bias, the
        // embedding a weight alone.
        let mut rename = Vec::new();
        let modules: [(&str, &dyn Fn(&str) -> bool); 3] = [
            ("rnn", &|p| has(format!("{p}.weight_hh_l0"))),
            ("head", &|p| {
                has(format!("{p}.weight")) && has(format!("{p}.bias"))
            }),
            ("embedding", &|p| {
                has(format!("{p}.weight")) && !has(format!("{p}.bias"))
            }),
        ];
        for (module, holds) in modules {
            let present = self
                .tensors
                .keys()
                .any(|k| k.starts_with(&format!("{module}.")));
            if !present && let Some(other) = unknown.iter().find(|p| holds(p)) {
                rename.push((other.to_string(), module.to_string()));
            }
        }
        Err(TorchError::Layout {
            missing: key.to_string(),
            found: self.tensors.keys().cloned().collect(),
            rename,
        })
    }

    /// Reads a `.safetensors` file or a `torch.save` pickle (`.pt`, `.pth`, `.bin`).
    /// The format is told from the first bytes, whatever the file's name.
    pub fn read(path: &Path) -> Result<Self, TorchError> {
        if Self::looks_like_safetensors(path)? {
            Self::read_safetensors(path)
        } else {
            Self::read_pickle(path)
        }
    }

    /// Whether `path` starts as a safetensors file does: the length of its JSON header as eight
    /// little-endian bytes, then the header's `{`. `torch.save` writes a zip archive (`PK`) or
    /// a pickle (`0x80`) instead.
    fn looks_like_safetensors(path: &Path) -> Result<bool, TorchError> {
        use std::io::Read;
        let mut head = Vec::with_capacity(9);
        std::fs::File::open(path)
            .and_then(|file| file.take(9).read_to_end(&mut head))
            .map_err(|source| TorchError::Io {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(head.get(8) == Some(&b'{'))
    }

    fn read_safetensors(path: &Path) -> Result<Self, TorchError> {
        let bytes = std::fs::read(path).map_err(|source| TorchError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_safetensors_bytes(&bytes, path)
    }

    /// Decodes the bytes of a `.safetensors` file; `path` names them in errors.
    pub fn from_safetensors_bytes(bytes: &[u8], path: &Path) -> Result<Self, TorchError> {
        let file =
            safetensors::SafeTensors::deserialize(bytes).map_err(|e| TorchError::Format {
                path: path.to_path_buf(),
                message: format!("not a valid safetensors file: {e}"),
            })?;
        let mut tensors = BTreeMap::new();
        for (key, view) in file.tensors() {
            let values = match view.dtype() {
                safetensors::Dtype::F32 => le_values::<4>(view.data(), |b| f32::from_le_bytes(b)),
                safetensors::Dtype::F64 => {
                    le_values::<8>(view.data(), |b| f64::from_le_bytes(b) as f32)
                }
                other => {
                    return Err(TorchError::Dtype {
                        key,
                        dtype: format!("{other:?}"),
                    });
                }
            };
            let shape = view.shape().to_vec();
            tensors.insert(key, HostTensor { shape, values });
        }
        Ok(StateDict { tensors })
    }

    fn read_pickle(path: &Path) -> Result<Self, TorchError> {
        let format_error = |message: String| TorchError::Format {
            path: path.to_path_buf(),
            message,
        };
        if !path.exists() {
            return Err(TorchError::Io {
                path: path.to_path_buf(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
            });
        }
        let reader = PytorchReader::new(path)
            .map_err(|e| format_error(format!("not a readable PyTorch file: {e}")))?;
        let mut tensors = BTreeMap::new();
        for (key, tensor) in reader.into_tensors() {
            let bytes = tensor
                .read()
                .map_err(|e| format_error(format!("reading `{key}`: {e}")))?;
            let values = match tensor.dtype() {
                pytorch_reader::DType::F32 => le_values::<4>(&bytes, f32::from_le_bytes),
                pytorch_reader::DType::F64 => {
                    le_values::<8>(&bytes, |b| f64::from_le_bytes(b) as f32)
                }
                other => {
                    return Err(TorchError::Dtype {
                        key,
                        dtype: format!("{other:?}"),
                    });
                }
            };
            let shape = tensor.shape().to_vec();
            tensors.insert(key, HostTensor { shape, values });
        }
        Ok(StateDict { tensors })
    }

    /// Writes the tensors as a `.safetensors` file, `f32`, keys as they are.
    pub fn write_safetensors(&self, path: &Path) -> Result<(), TorchError> {
        let bytes = self.to_safetensors_bytes(path)?;
        std::fs::write(path, bytes).map_err(|source| TorchError::Io {
            path: path.to_path_buf(),
            source,
        })
    }

    /// The bytes of this state dict as a `.safetensors` file; `path` names it in errors.
    pub fn to_safetensors_bytes(&self, path: &Path) -> Result<Vec<u8>, TorchError> {
        let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = self
            .tensors
            .iter()
            .map(|(key, tensor)| {
                let view = safetensors::tensor::TensorView::new(
                    safetensors::Dtype::F32,
                    tensor.shape.clone(),
                    bytemuck_f32(&tensor.values),
                )
                .expect("a host tensor's byte length matches its shape");
                (key.clone(), view)
            })
            .collect();
        safetensors::serialize(views, None).map_err(|e| TorchError::Format {
            path: path.to_path_buf(),
            message: format!("serializing: {e}"),
        })
    }

    /// The tensor at `key`, checked to have `shape`.
    pub fn expect(&self, key: &str, shape: &[usize]) -> Result<&HostTensor, TorchError> {
        let tensor = self
            .tensors
            .get(key)
            .ok_or_else(|| TorchError::MissingKey(key.to_string()))?;
        if tensor.shape != shape {
            return Err(TorchError::Shape {
                key: key.to_string(),
                expected: shape.to_vec(),
                found: tensor.shape.clone(),
            });
        }
        Ok(tensor)
    }

    fn shape_of(&self, key: &str, rank: usize) -> Result<&[usize], TorchError> {
        let tensor = self
            .tensors
            .get(key)
            .ok_or_else(|| TorchError::MissingKey(key.to_string()))?;
        if tensor.shape.len() != rank {
            return Err(TorchError::Shape {
                key: key.to_string(),
                expected: vec![0; rank],
                found: tensor.shape.clone(),
            });
        }
        Ok(&tensor.shape)
    }
}

fn le_values<const N: usize>(bytes: &[u8], decode: impl Fn([u8; N]) -> f32) -> Vec<f32> {
    bytes
        .chunks_exact(N)
        .map(|chunk| decode(chunk.try_into().expect("chunks_exact yields N bytes")))
        .collect()
}

fn bytemuck_f32(values: &[f32]) -> &[u8] {
    // SAFETY: f32 has no padding and any byte pattern is a valid u8; the slice covers exactly the
    // values' memory, and safetensors stores little-endian, which is this target's order.
    #[cfg(target_endian = "little")]
    unsafe {
        std::slice::from_raw_parts(values.as_ptr().cast::<u8>(), std::mem::size_of_val(values))
    }
}

fn layer_key(name: &str, k: usize) -> String {
    format!("rnn.{name}_l{k}")
}

impl CharLm {
    /// Builds a model from a state dict of the reference layout, inferring the vocabulary,
    /// embedding, hidden size and number of layers from the tensors, and checking every shape.
    pub fn from_state_dict(
        state_dict: &StateDict,
        cell: CellKind,
        device: &Device,
    ) -> Result<CharLm, TorchError> {
        for key in [layer_key("weight_hh", 0), "head.weight".to_string()] {
            state_dict.check_layout(&key)?;
        }
        let found = state_dict.cell_kind()?;
        if found != cell {
            let key = layer_key("weight_hh", 0);
            let [rows, d_hidden] = dims2(&state_dict.tensors[&key].shape);
            return Err(TorchError::Cell {
                expected: cell,
                found,
                key,
                rows,
                gates: found.num_gates(),
                d_hidden,
            });
        }
        let [vocab_size, d_hidden] = dims2(state_dict.shape_of("head.weight", 2)?);
        let d_embed = match state_dict.tensors.get("embedding.weight") {
            Some(_) => dims2(state_dict.shape_of("embedding.weight", 2)?)[1],
            None => 0,
        };
        let num_layers = (0..)
            .take_while(|&k| state_dict.tensors.contains_key(&layer_key("weight_ih", k)))
            .count();
        if num_layers == 0 {
            return Err(TorchError::MissingKey(layer_key("weight_ih", 0)));
        }
        let config = CharLmConfig::new(vocab_size, cell, d_hidden)
            .with_num_layers(num_layers)
            .with_d_embed(d_embed);
        let mut model = config.init(device);

        let known = model.state_dict_shapes();
        if let Some(extra) = state_dict.tensors.keys().find(|k| !known.contains_key(*k)) {
            return Err(TorchError::UnexpectedKey(extra.clone(), cell));
        }
        let get = |key: &str| state_dict.expect(key, &known[key]);

        if let Some(embedding) = model.embedding.as_mut() {
            embedding.weight = param2(get("embedding.weight")?, false, device);
        }
        for (k, layer) in model.rnn.layers.iter_mut().enumerate() {
            layer.weight_ih = param2(get(&layer_key("weight_ih", k))?, true, device);
            layer.weight_hh = param2(get(&layer_key("weight_hh", k))?, true, device);
            layer.bias_ih = param1(get(&layer_key("bias_ih", k))?, device);
            layer.bias_hh = param1(get(&layer_key("bias_hh", k))?, device);
        }
        model.head.weight = param2(get("head.weight")?, true, device);
        model.head.bias = Some(param1(get("head.bias")?, device));
        Ok(model)
    }

    /// The PyTorch key and shape of every parameter, in the reference layout.
    pub fn state_dict_shapes(&self) -> BTreeMap<String, Vec<usize>> {
        let mut shapes = BTreeMap::new();
        if let Some(embedding) = &self.embedding {
            shapes.insert("embedding.weight".into(), embedding.weight.dims().to_vec());
        }
        for (k, layer) in self.rnn.layers.iter().enumerate() {
            let [d_input, d_gates] = layer.weight_ih.dims();
            let d_hidden = layer.d_hidden();
            shapes.insert(layer_key("weight_ih", k), vec![d_gates, d_input]);
            shapes.insert(layer_key("weight_hh", k), vec![d_gates, d_hidden]);
            shapes.insert(layer_key("bias_ih", k), vec![d_gates]);
            shapes.insert(layer_key("bias_hh", k), vec![d_gates]);
        }
        let [d_hidden, vocab_size] = self.head.weight.dims();
        shapes.insert("head.weight".into(), vec![vocab_size, d_hidden]);
        shapes.insert("head.bias".into(), vec![vocab_size]);
        shapes
    }

    /// The model's parameters as a PyTorch state dict of `layout`. A one-hot model written in
    /// the `word_language_model` layout, whose `encoder` is always an `nn.Embedding`, gets the
    /// identity matrix as its embedding: looking up row `x` of it is the one-hot vector of `x`.
    pub fn to_state_dict_in(&self, layout: TorchLayout) -> StateDict {
        let mut state_dict = self.to_state_dict();
        if layout == TorchLayout::WordLanguageModel && self.embedding.is_none() {
            let vocab_size = self.vocab_size();
            let mut values = vec![0.0; vocab_size * vocab_size];
            values
                .iter_mut()
                .step_by(vocab_size + 1)
                .for_each(|v| *v = 1.0);
            state_dict.tensors.insert(
                "embedding.weight".into(),
                HostTensor {
                    shape: vec![vocab_size, vocab_size],
                    values,
                },
            );
        }
        state_dict.into_layout(layout)
    }

    /// The model's parameters as a PyTorch state dict of the reference layout.
    pub fn to_state_dict(&self) -> StateDict {
        let mut tensors = BTreeMap::new();
        let mut put = |key: String, tensor: HostTensor| {
            tensors.insert(key, tensor);
        };
        if let Some(embedding) = &self.embedding {
            put(
                "embedding.weight".into(),
                host2(embedding.weight.val(), false),
            );
        }
        for (k, layer) in self.rnn.layers.iter().enumerate() {
            put(
                layer_key("weight_ih", k),
                host2(layer.weight_ih.val(), true),
            );
            put(
                layer_key("weight_hh", k),
                host2(layer.weight_hh.val(), true),
            );
            put(layer_key("bias_ih", k), host1(layer.bias_ih.val()));
            put(layer_key("bias_hh", k), host1(layer.bias_hh.val()));
        }
        put("head.weight".into(), host2(self.head.weight.val(), true));
        let bias = self.head.bias.as_ref().expect("the head has a bias").val();
        put("head.bias".into(), host1(bias));
        StateDict { tensors }
    }
}

fn dims2(shape: &[usize]) -> [usize; 2] {
    [shape[0], shape[1]]
}

/// A rank-2 parameter from PyTorch's `[out, in]` (transposed to Burn's `[in, out]` when asked).
fn param2(tensor: &HostTensor, transpose: bool, device: &Device) -> Param<Tensor<2>> {
    let data = TensorData::new(tensor.values.clone(), [tensor.shape[0], tensor.shape[1]]);
    let value = Tensor::<2>::from_data(data, device);
    Param::from_tensor(if transpose { value.transpose() } else { value })
}

fn param1(tensor: &HostTensor, device: &Device) -> Param<Tensor<1>> {
    let data = TensorData::new(tensor.values.clone(), [tensor.shape[0]]);
    Param::from_tensor(Tensor::from_data(data, device))
}

fn host2(value: Tensor<2>, transpose: bool) -> HostTensor {
    let value = if transpose { value.transpose() } else { value };
    HostTensor {
        shape: value.dims().to_vec(),
        values: host_values(value.into_data()),
    }
}

fn host1(value: Tensor<1>) -> HostTensor {
    HostTensor {
        shape: value.dims().to_vec(),
        values: host_values(value.into_data()),
    }
}

fn host_values(data: TensorData) -> Vec<f32> {
    data.try_into_vec_as::<f32>()
        .expect("float parameters convert to f32")
}
