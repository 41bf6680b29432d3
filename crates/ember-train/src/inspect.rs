//! `ember inspect`: a self-contained HTML page that shows what each hidden unit of a character
//! model tracks, after Karpathy, Johnson and Fei-Fei, "Visualizing and Understanding Recurrent
//! Networks" (2015).
//!
//! [`Inspection::new`] runs a run's model over a text from a zero state, keeping every layer's
//! hidden (and LSTM cell) state after each character and the next-character predictions;
//! it computes [features of the text](features::text_features) and ranks the units whose
//! activation correlates best with them; [`Inspection::to_html`] writes the page, with the
//! activations quantized to 64 levels (one byte per value).

pub mod features;
pub mod page;
pub mod trace;

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::tensor::Device;
use ember_data::DataError;
use serde_json::{Value, json};

use crate::error::io_error;
use crate::trainer::{METRICS_FILE, MetricsRecord};
use crate::{Run, TrainError};
use features::{Correlation, TextFeature, rank_correlations, text_features};
use trace::{ModelTrace, TOP_K};

/// The characters `ember inspect` reads when not told otherwise.
pub const DEFAULT_CHARS: usize = 10_000;

/// How many units the ranked list keeps per feature.
const UNITS_PER_FEATURE: usize = 3;

/// The most points drawn per loss curve; longer runs are thinned evenly.
const CURVE_POINTS: usize = 1_500;

/// A run's model read over a text: its states, predictions and the units that track the text.
pub struct Inspection {
    /// The run directory.
    pub run_dir: PathBuf,
    /// The text file.
    pub text_path: PathBuf,
    /// The characters read (at most the limit asked for).
    pub text: Vec<char>,
    /// How many characters the file holds.
    pub total_chars: usize,
    /// What the model computed at every character.
    pub trace: ModelTrace,
    /// The features of the text.
    pub features: Vec<TextFeature>,
    /// The best units per varying feature, strongest correlation first.
    pub ranked: Vec<Correlation>,
    /// `(label, value)` lines of the page's header.
    pub header: Vec<(String, String)>,
    config_toml: String,
    vocab: Vec<char>,
    num_layers: usize,
    d_hidden: usize,
    curves: Value,
}

impl Inspection {
    /// Reads the first `max_chars` characters of `text_path` and runs `run`'s model over them.
    ///
    /// Errors: the text cannot be read, is empty, is not UTF-8 or has a character outside the
    /// run's vocabulary ([`TrainError::Data`]); the metrics file cannot be read.
    pub fn new(
        run: &Run,
        text_path: &Path,
        max_chars: usize,
        device: &Device,
    ) -> Result<Self, TrainError> {
        let (text, total_chars) = read_text(text_path, max_chars, run.config.data.max_bytes)?;
        let ids = encode(&run.vocab, &text, text_path)?;
        let model = run.model.clone();
        log::info!("reading {} characters through the model", ids.len());
        let trace = trace::trace(&model, &ids, device);
        let features = text_features(&text);
        let values: Vec<Vec<f32>> = trace.states.iter().map(|s| s.values.clone()).collect();
        let ranked = rank_correlations(&features, &values, UNITS_PER_FEATURE);
        let records = read_metrics(&run.dir)?;
        let val_loss = records.iter().rev().find_map(|r| r.val_loss);
        let losses: Vec<f64> = trace.losses.iter().flatten().map(|&l| l as f64).collect();
        let text_loss =
            (!losses.is_empty()).then(|| losses.iter().sum::<f64>() / losses.len() as f64);
        let model_config = &run.config.model;
        let header = vec![
            ("run".into(), run.dir.display().to_string()),
            (
                "model".into(),
                format!(
                    "{} layers of {} {} units, embedding {}, vocabulary {}",
                    model_config.num_layers,
                    model_config.d_hidden,
                    model_config.cell.name().to_uppercase(),
                    match model_config.d_embed {
                        0 => "one-hot".to_string(),
                        d => d.to_string(),
                    },
                    run.vocab.len()
                ),
            ),
            ("parameters".into(), group_digits(model.num_params())),
            ("checkpoint".into(), format!("step {}", run.step)),
            (
                "validation loss".into(),
                val_loss.map_or("not evaluated".into(), |v| {
                    format!("{v:.4} nats per character")
                }),
            ),
            (
                "text".into(),
                format!(
                    "{} ({} of {} characters)",
                    text_path.display(),
                    group_digits(text.len()),
                    group_digits(total_chars)
                ),
            ),
            (
                "loss on this text".into(),
                text_loss.map_or("-".into(), |l| {
                    format!(
                        "{l:.4} nats ({:.4} bits) per character",
                        l / std::f64::consts::LN_2
                    )
                }),
            ),
        ];
        Ok(Inspection {
            run_dir: run.dir.clone(),
            text_path: text_path.to_path_buf(),
            text,
            total_chars,
            trace,
            features,
            ranked,
            header,
            config_toml: run.config.to_toml(),
            vocab: run.vocab.chars().to_vec(),
            num_layers: model_config.num_layers,
            d_hidden: model_config.d_hidden,
            curves: curves(&records),
        })
    }

    /// Whether the file was cut to the characters read.
    pub fn is_cut(&self) -> bool {
        self.text.len() < self.total_chars
    }

    /// A ranked correlation in words: `inside double quotes: layer 1 cell 42, r = +0.83`.
    pub fn describe(&self, correlation: &Correlation) -> String {
        let state = &self.trace.states[correlation.trace];
        format!(
            "{}: layer {} {} unit {}, r = {:+.3}",
            self.features[correlation.feature].name,
            state.layer,
            state.state,
            correlation.unit,
            correlation.r
        )
    }

    /// The page, as one self-contained HTML document.
    pub fn to_html(&self) -> String {
        let len = self.text.len();
        let traces: Vec<Value> = self
            .trace
            .states
            .iter()
            .map(|s| {
                let scales = state_scales(s, len, self.d_hidden);
                json!({
                    "layer": s.layer,
                    "state": s.state,
                    "scale": scales,
                    "data": page::encode_levels(&s.values, &scales, len),
                })
            })
            .collect();
        let ranked: Vec<Value> = self
            .ranked
            .iter()
            .map(|c| {
                let feature = &self.features[c.feature];
                let state = &self.trace.states[c.trace];
                json!({
                    "feature": feature.name,
                    "description": feature.description,
                    "layer": state.layer,
                    "state": state.state,
                    "unit": c.unit,
                    "r": round(c.r, 4),
                })
            })
            .collect();
        let top_ids: Vec<usize> = self.trace.top.iter().flatten().map(|p| p.0).collect();
        let top_probs: Vec<f64> = self
            .trace
            .top
            .iter()
            .flatten()
            .map(|p| round(p.1 as f64, 4))
            .collect();
        let losses: Vec<Option<f64>> = self
            .trace
            .losses
            .iter()
            .map(|l| l.map(|l| round(l as f64, 3)))
            .collect();
        let cut = self.is_cut().then(|| {
            format!(
                "{} holds {} characters: this page shows the first {} (--chars).",
                self.text_path.display(),
                group_digits(self.total_chars),
                group_digits(len)
            )
        });
        let mut state_names = vec!["hidden"];
        if self.trace.states.iter().any(|s| s.state == "cell") {
            state_names.push("cell");
        }
        let mut data = json!({
            "title": format!("ember inspect: {}", self.run_dir.display()),
            "header": self.header,
            "config": self.config_toml,
            "cut": cut,
            "text": self.text.iter().collect::<String>(),
            "vocab": self.vocab.iter().map(|c| c.to_string()).collect::<Vec<_>>(),
            "num_layers": self.num_layers,
            "d_hidden": self.d_hidden,
            "state_names": state_names,
            "traces": traces,
            "losses": losses,
            "top_k": TOP_K,
            "top_ids": top_ids,
            "top_probs": top_probs,
            "ranked": ranked,
            "absent": self.features.iter().filter(|f| !f.varies()).map(|f| f.name).collect::<Vec<_>>(),
            "curves": self.curves,
        });
        if let (Value::Object(data), Value::Object(palette)) = (&mut data, page::palette()) {
            data.extend(palette);
        }
        page::render(&format!("ember inspect: {}", self.run_dir.display()), &data)
    }
}

/// The scale of each unit of a state: 1 for hidden states (tanh keeps them in `[-1, 1]`); a
/// cell state is unbounded, so each unit is divided by its largest magnitude over the text.
pub fn state_scales(state: &trace::StateTrace, len: usize, d_hidden: usize) -> Vec<f32> {
    if state.state != "cell" {
        return vec![1.0; d_hidden];
    }
    state
        .values
        .chunks(len.max(1))
        .map(|unit| {
            let max = unit.iter().fold(0f32, |m, v| m.max(v.abs()));
            if max > 0.0 { max } else { 1.0 }
        })
        .collect()
}

fn round(value: f64, digits: i32) -> f64 {
    let factor = 10f64.powi(digits);
    (value * factor).round() / factor
}

/// `1234567` as `1,234,567`.
pub fn group_digits(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The first `max_chars` characters of `path` and the number of characters it holds.
fn read_text(
    path: &Path,
    max_chars: usize,
    max_bytes: u64,
) -> Result<(Vec<char>, usize), TrainError> {
    let bytes = std::fs::metadata(path)
        .and_then(|m| {
            if m.len() > max_bytes {
                Ok(Err(m.len()))
            } else {
                std::fs::read(path).map(Ok)
            }
        })
        .map_err(|source| DataError::Io {
            path: path.to_path_buf(),
            source,
        })?
        .map_err(|bytes| DataError::TooLarge {
            path: path.to_path_buf(),
            bytes,
            limit: max_bytes,
        })?;
    let text = std::str::from_utf8(&bytes).map_err(|e| DataError::InvalidUtf8 {
        path: path.to_path_buf(),
        offset: e.valid_up_to(),
    })?;
    if text.is_empty() {
        return Err(DataError::Empty {
            path: path.to_path_buf(),
        }
        .into());
    }
    Ok((text.chars().take(max_chars).collect(), text.chars().count()))
}

/// The run's ids of `text`; a character outside the vocabulary is an error naming its line
/// and column in `path`.
fn encode(vocab: &ember_data::Vocab, text: &[char], path: &Path) -> Result<Vec<usize>, TrainError> {
    let (mut line, mut column) = (1, 1);
    let mut ids = Vec::with_capacity(text.len());
    for &c in text {
        match vocab.id(c) {
            Some(id) => ids.push(id as usize),
            None => {
                return Err(DataError::BadLine {
                    path: path.to_path_buf(),
                    line,
                    message: format!(
                        "character {c:?} (U+{:04X}) at column {column} is not in the run's \
                         vocabulary of {} characters",
                        c as u32,
                        vocab.len()
                    ),
                }
                .into());
            }
        }
        if c == '\n' {
            line += 1;
            column = 1;
        } else {
            column += 1;
        }
    }
    Ok(ids)
}

/// The run's metrics records (none when it has no metrics file).
fn read_metrics(run_dir: &Path) -> Result<Vec<MetricsRecord>, TrainError> {
    let path = run_dir.join(METRICS_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_error(&path)(e)),
    };
    // A line cut short by a killed trainer is skipped, as the page only draws the curves.
    Ok(text
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect())
}

/// Training and validation `(step, loss)` points, each thinned to at most `CURVE_POINTS`.
fn curves(records: &[MetricsRecord]) -> Value {
    let thin = |points: Vec<[f64; 2]>| -> Vec<[f64; 2]> {
        let stride = points.len().div_ceil(CURVE_POINTS).max(1);
        points.into_iter().step_by(stride).collect()
    };
    let train = records
        .iter()
        .map(|r| [r.step as f64, round(r.loss, 4)])
        .collect();
    let val = records
        .iter()
        .filter_map(|r| Some([r.step as f64, round(r.val_loss?, 4)]))
        .collect();
    json!({ "train": thin(train), "val": thin(val) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digits_are_grouped_in_thousands() {
        assert_eq!(group_digits(0), "0");
        assert_eq!(group_digits(999), "999");
        assert_eq!(group_digits(1000), "1,000");
        assert_eq!(group_digits(1_115_394), "1,115,394");
    }

    /// A text is cut to `max_chars` characters (not bytes: é is two bytes), counted in full.
    #[test]
    fn text_is_cut_by_characters() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.txt");
        std::fs::write(&path, "héllo\nwörld").unwrap();
        let (text, total) = read_text(&path, 4, 1 << 20).unwrap();
        assert_eq!(
            (text.iter().collect::<String>(), total),
            ("héll".to_string(), 11)
        );
        std::fs::write(&path, [b'a', 0xff]).unwrap();
        assert!(matches!(
            read_text(&path, 4, 1 << 20),
            Err(TrainError::Data(DataError::InvalidUtf8 { offset: 1, .. }))
        ));
        std::fs::write(&path, "").unwrap();
        assert!(matches!(
            read_text(&path, 4, 1 << 20),
            Err(TrainError::Data(DataError::Empty { .. }))
        ));
        assert!(matches!(
            read_text(&path.join("x"), 4, 1 << 20),
            Err(TrainError::Data(DataError::Io { .. }))
        ));
    }

    /// An unknown character names its line and column (1-based): `é` is line 2, column 3.
    #[test]
    fn unknown_characters_name_line_and_column() {
        let vocab = ember_data::Vocab::from_text("ab\n").unwrap();
        let text: Vec<char> = "ab\nabé".chars().collect();
        let error = encode(&vocab, &text, Path::new("t.txt"))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("t.txt:2") && error.contains("column 3") && error.contains("'é'"),
            "{error}"
        );
        assert_eq!(
            encode(&vocab, &text[..5], Path::new("t")).unwrap(),
            vec![1, 2, 0, 1, 2]
        );
    }

    /// Hidden states keep scale 1; a cell unit is scaled by its largest magnitude, and an
    /// all-zero unit by 1.
    #[test]
    fn cell_states_are_scaled_per_unit() {
        let cell = trace::StateTrace {
            layer: 0,
            state: "cell",
            values: vec![0.5, -3.0, 2.0, 0.0, 0.0, 0.0],
        };
        assert_eq!(state_scales(&cell, 3, 2), vec![3.0, 1.0]);
        let hidden = trace::StateTrace {
            state: "hidden",
            ..cell
        };
        assert_eq!(state_scales(&hidden, 3, 2), vec![1.0, 1.0]);
    }
}
