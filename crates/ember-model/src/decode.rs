//! Turning a decoder's next-token distributions into sequences: greedy decoding and beam search.

use burn::config::Config;
use burn::tensor::activation::log_softmax;
use burn::tensor::{Int, Tensor, TensorData};

use crate::{RecurrentState, SequenceDecoder};

/// How a decoder writes a sequence.
#[derive(Config, Debug)]
pub struct DecodeConfig {
    /// The id fed before the first output.
    pub bos: usize,
    /// The id that ends a sequence (not part of the result).
    pub eos: usize,
    /// Stop after this many ids even without an end mark.
    pub max_len: usize,
    /// How many partial sequences beam search keeps; 1 is greedy decoding.
    #[config(default = 1)]
    pub beam_width: usize,
}

/// A decoded sequence.
#[derive(Debug, Clone, PartialEq)]
pub struct Hypothesis {
    /// The ids written, without the start and end marks.
    pub ids: Vec<usize>,
    /// The sum of the log-probabilities (nats) of every id chosen, the end mark included when
    /// one was written.
    pub log_prob: f64,
    /// Whether the end mark was written before `max_len`.
    pub finished: bool,
}

impl SequenceDecoder {
    /// Writes one sequence per row of `state`, taking the most likely id at every step.
    pub fn greedy(&self, state: RecurrentState, config: &DecodeConfig) -> Vec<Hypothesis> {
        let batch_size = state.batch_size();
        let device = state.device();
        let mut hypotheses = vec![
            Hypothesis {
                ids: Vec::new(),
                log_prob: 0.0,
                finished: false,
            };
            batch_size
        ];
        let mut last = vec![config.bos; batch_size];
        let mut state = state;
        for _ in 0..config.max_len {
            let (logits, next) = self.step(ids_tensor(&last, &device), state);
            state = next;
            let log_probs = host_rows(log_softmax(logits, 1));
            for (row, hypothesis) in hypotheses.iter_mut().enumerate() {
                if hypothesis.finished {
                    continue;
                }
                let id = first_max(&log_probs[row]);
                hypothesis.log_prob += f64::from(log_probs[row][id]);
                if id == config.eos {
                    hypothesis.finished = true;
                } else {
                    hypothesis.ids.push(id);
                }
                last[row] = id;
            }
            if hypotheses.iter().all(|h| h.finished) {
                break;
            }
        }
        hypotheses
    }

    /// Beam search from every row of `state`: the `beam_width` best sequences of each row by
    /// total log-probability, best first. No length normalisation, so a width of 1 gives exactly
    /// [`greedy`](Self::greedy)'s sequence.
    pub fn beam_search(
        &self,
        state: RecurrentState,
        config: &DecodeConfig,
    ) -> Vec<Vec<Hypothesis>> {
        let device = state.device();
        (0..state.batch_size())
            .map(|row| {
                let row_index = ids_tensor(&[row], &device);
                let row_state = state.clone().map(|t| t.select(0, row_index.clone()));
                self.beam_search_one(row_state, config)
            })
            .collect()
    }

    fn beam_search_one(&self, state: RecurrentState, config: &DecodeConfig) -> Vec<Hypothesis> {
        struct Beam {
            ids: Vec<usize>,
            log_prob: f64,
        }
        let width = config.beam_width.max(1);
        let device = state.device();
        let mut beams = vec![Beam {
            ids: Vec::new(),
            log_prob: 0.0,
        }];
        let mut last = vec![config.bos];
        let mut state = state;
        let mut done: Vec<Hypothesis> = Vec::new();
        for _ in 0..config.max_len {
            let (logits, next) = self.step(ids_tensor(&last, &device), state);
            let log_probs = host_rows(log_softmax(logits, 1));
            let mut candidates: Vec<(f64, usize, usize)> = log_probs
                .iter()
                .enumerate()
                .flat_map(|(beam, row)| {
                    let base = beams[beam].log_prob;
                    row.iter()
                        .enumerate()
                        .map(move |(id, &lp)| (base + f64::from(lp), beam, id))
                })
                .collect();
            // Best first; ties go to the earlier beam, then the lower id, as greedy's argmax.
            candidates.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));

            let mut kept = Vec::with_capacity(width);
            let mut parents = Vec::with_capacity(width);
            for &(log_prob, beam, id) in candidates.iter().take(width) {
                if id == config.eos {
                    done.push(Hypothesis {
                        ids: beams[beam].ids.clone(),
                        log_prob,
                        finished: true,
                    });
                } else {
                    let mut ids = beams[beam].ids.clone();
                    ids.push(id);
                    kept.push(Beam { ids, log_prob });
                    parents.push(beam);
                }
            }
            // Log-probabilities only fall as a sequence grows: once `width` finished sequences
            // beat every open beam, none of the open ones can enter the result.
            if kept.is_empty() || kept[0].log_prob <= kth_best(&done, width) {
                beams = Vec::new();
                break;
            }
            let parent_index = ids_tensor(&parents, &device);
            state = next.map(|t| t.select(0, parent_index.clone()));
            last = kept
                .iter()
                .map(|b| *b.ids.last().expect("a kept beam has an id"))
                .collect();
            beams = kept;
        }
        done.extend(beams.into_iter().map(|beam| Hypothesis {
            ids: beam.ids,
            log_prob: beam.log_prob,
            finished: false,
        }));
        done.sort_by(|a, b| b.log_prob.total_cmp(&a.log_prob));
        done.truncate(width);
        done
    }

    /// Greedy decoding when `beam_width` is 1, else the best sequence of a beam search.
    pub fn decode(&self, state: RecurrentState, config: &DecodeConfig) -> Vec<Hypothesis> {
        if config.beam_width <= 1 {
            return self.greedy(state, config);
        }
        self.beam_search(state, config)
            .into_iter()
            .map(|mut row| row.remove(0))
            .collect()
    }
}

/// The `k`-th best log-probability of `done`, or minus infinity when it holds fewer than `k`.
fn kth_best(done: &[Hypothesis], k: usize) -> f64 {
    if done.len() < k {
        return f64::NEG_INFINITY;
    }
    let mut scores: Vec<f64> = done.iter().map(|h| h.log_prob).collect();
    scores.sort_by(|a, b| b.total_cmp(a));
    scores[k - 1]
}

pub(crate) fn ids_tensor(ids: &[usize], device: &burn::tensor::Device) -> Tensor<1, Int> {
    let values: Vec<i64> = ids.iter().map(|&id| id as i64).collect();
    Tensor::from_data(TensorData::new(values, [ids.len()]), device)
}

/// The rows of a `[rows, columns]` tensor, on the host.
pub(crate) fn host_rows(tensor: Tensor<2>) -> Vec<Vec<f32>> {
    let [_, columns] = tensor.dims();
    let values = tensor
        .into_data()
        .try_into_vec_as::<f32>()
        .expect("float values convert to f32");
    values.chunks(columns.max(1)).map(<[f32]>::to_vec).collect()
}

/// The column of each row's largest value, the first one on ties.
pub(crate) fn argmax_rows(tensor: Tensor<2>) -> Vec<usize> {
    host_rows(tensor).iter().map(|row| first_max(row)).collect()
}

fn first_max(values: &[f32]) -> usize {
    let mut best = 0;
    for (i, v) in values.iter().enumerate() {
        if *v > values[best] {
            best = i;
        }
    }
    best
}
