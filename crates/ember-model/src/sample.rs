//! Drawing text from a [`CharLm`], one character at a time.

use burn::config::Config;
use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use ember_kernels::{HeadWeights, HostState, HostStepper};

use crate::ops::host_values as host;
use crate::ops::{Kernel, has_host_kernels};
use crate::{CharLm, RecurrentState};

/// How the next character is chosen from the model's distribution.
#[derive(Config, Debug)]
pub struct SampleConfig {
    /// Divides the logits before the softmax: below 1 is more conservative, above 1 more varied.
    #[config(default = 1.0)]
    pub temperature: f64,
    /// Draw only among the `k` most likely characters; `None` draws among all.
    pub top_k: Option<usize>,
    /// Always take the most likely character (greedy decoding); ignores temperature and top-k.
    #[config(default = false)]
    pub argmax: bool,
    /// Seed of the random generator: the same seed, model and prefix give the same text.
    #[config(default = 0)]
    pub seed: u64,
}

/// Why a sampler could not be started.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SampleError {
    /// The prefix was empty: the model needs at least one character to read.
    #[error("the prime text is empty: give at least one character to start from")]
    EmptyPrime,
    /// An id of the prefix is outside the vocabulary.
    #[error("prime id {id} at position {position} is outside the vocabulary of {vocab_size}")]
    IdOutOfVocab {
        /// The offending id.
        id: usize,
        /// Its position in the prefix.
        position: usize,
        /// The vocabulary size.
        vocab_size: usize,
    },
    /// The temperature was not a positive finite number.
    #[error("temperature must be a positive number, got {0}")]
    BadTemperature(f64),
    /// Top-k was 0 or above the vocabulary size.
    #[error("top-k must be between 1 and the vocabulary size {vocab_size}, got {top_k}")]
    BadTopK {
        /// The requested k.
        top_k: usize,
        /// The vocabulary size.
        vocab_size: usize,
    },
}

/// An endless iterator of sampled character ids; take as many as you need.
///
/// Created by [`CharLm::sampler`]. The model should be on a device without autodiff (see
/// [`burn::module::Module::valid`]): sampling records no graph. On a CPU backend with host
/// kernels, characters are stepped on the host by a [`HostStepper`], which on a machine with two
/// cores keeps a second thread for as long as the sampler lives (asleep between characters);
/// elsewhere (GPUs, or a model set to the reference kernel) by the model's own
/// [`CharLm::step`] on its device.
pub struct Sampler {
    logits: Vec<f32>,
    rng: ChaCha8Rng,
    config: SampleConfig,
    stepping: Stepping,
}

/// Where a sampler's steps run.
enum Stepping {
    /// The model's weights and state on the host, where a batch of one runs faster than
    /// through Burn's operations.
    Host(HostStepper),
    /// The model itself, on its device.
    Device {
        model: CharLm,
        state: RecurrentState,
        device: Device,
    },
}

impl CharLm {
    /// Reads `prime` from a zero state and returns an iterator over the characters that follow.
    pub fn sampler(
        &self,
        prime: &[usize],
        config: SampleConfig,
        device: &Device,
    ) -> Result<Sampler, SampleError> {
        let vocab_size = self.vocab_size();
        if prime.is_empty() {
            return Err(SampleError::EmptyPrime);
        }
        if let Some((position, &id)) = prime.iter().enumerate().find(|(_, id)| **id >= vocab_size) {
            return Err(SampleError::IdOutOfVocab {
                id,
                position,
                vocab_size,
            });
        }
        if !(config.temperature.is_finite() && config.temperature > 0.0) {
            return Err(SampleError::BadTemperature(config.temperature));
        }
        if let Some(top_k) = config.top_k
            && !(1..=vocab_size).contains(&top_k)
        {
            return Err(SampleError::BadTopK { top_k, vocab_size });
        }

        let ids: Vec<i64> = prime.iter().map(|&id| id as i64).collect();
        let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [1, prime.len()]), device);
        let (logits, state) = self.forward(ids, None);
        let last = logits.slice([0..1, prime.len() - 1..prime.len()]);
        let host = has_host_kernels(device)
            && self
                .rnn
                .layers
                .iter()
                .all(|layer| layer.kernel == Kernel::Auto);
        let stepping = match host {
            true => Stepping::Host(self.host_stepper(&state, None)),
            false => Stepping::Device {
                model: self.clone(),
                state,
                device: device.clone(),
            },
        };
        Ok(Sampler {
            stepping,
            logits: to_vec(last.reshape([vocab_size])),
            rng: ChaCha8Rng::seed_from_u64(config.seed),
            config,
        })
    }
}

impl CharLm {
    /// The host stepper of this model from a one-stream `state`, on `threads` threads (`None`:
    /// as many as pay for its size).
    fn host_stepper(&self, state: &RecurrentState, threads: Option<usize>) -> HostStepper {
        let states = state
            .layers
            .iter()
            .map(|layer| HostState {
                hidden: host(layer.hidden.clone()),
                cell: layer.cell.clone().map_or_else(Vec::new, host),
            })
            .collect();
        let embedding = self.embedding.as_ref().map(|e| host(e.weight.val()));
        let layers = self.rnn.layers.iter().map(|l| l.host_weights()).collect();
        let head = self.host_head();
        match threads {
            Some(threads) => HostStepper::with_threads(embedding, layers, head, states, threads),
            None => HostStepper::new(embedding, layers, head, states),
        }
    }

    /// The head's weights in host memory, as the host kernels take them: a zero bias where the
    /// head has none.
    pub fn host_head(&self) -> HeadWeights {
        HeadWeights {
            weight: host(self.head.weight.val()),
            bias: self
                .head
                .bias
                .as_ref()
                .map_or_else(|| vec![0.0; self.vocab_size()], |b| host(b.val())),
        }
    }
}

impl Sampler {
    /// The threads that step this sampler: two for a model large enough to pay for the second,
    /// on a machine with two cores or more; else one.
    pub fn threads(&self) -> usize {
        match &self.stepping {
            Stepping::Host(host) if host.is_split() => 2,
            _ => 1,
        }
    }

    /// The next-character distribution the sampler will draw from, after temperature and top-k.
    pub fn probabilities(&self) -> Vec<f64> {
        let temperature = self.config.temperature;
        let mut scaled: Vec<f64> = self
            .logits
            .iter()
            .map(|&l| l as f64 / temperature)
            .collect();
        if let Some(k) = self.config.top_k {
            let mut sorted = scaled.clone();
            sorted.sort_by(|a, b| b.total_cmp(a));
            let threshold = sorted[k - 1];
            // Ties at the threshold are kept, so at least k candidates remain.
            for value in scaled.iter_mut().filter(|v| **v < threshold) {
                *value = f64::NEG_INFINITY;
            }
        }
        let max = scaled.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let exps: Vec<f64> = scaled.iter().map(|v| (v - max).exp()).collect();
        let total: f64 = exps.iter().sum();
        exps.into_iter().map(|e| e / total).collect()
    }

    fn choose(&mut self) -> usize {
        if self.config.argmax {
            return argmax(&self.logits);
        }
        let probabilities = self.probabilities();
        let mut draw: f64 = self.rng.random();
        for (id, p) in probabilities.iter().enumerate() {
            draw -= p;
            if draw < 0.0 {
                return id;
            }
        }
        // Rounding left a sliver of mass: take the last candidate with any.
        probabilities.iter().rposition(|&p| p > 0.0).unwrap_or(0)
    }
}

impl Iterator for Sampler {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        let id = self.choose();
        self.logits = match &mut self.stepping {
            Stepping::Host(host) => host.step(id),
            Stepping::Device {
                model,
                state,
                device,
            } => {
                let ids =
                    Tensor::<1, Int>::from_data(TensorData::new(vec![id as i64], [1]), &*device);
                let (logits, next) = model.step(ids, state.clone());
                *state = next;
                to_vec(logits.reshape([model.vocab_size()]))
            }
        };
        Some(id)
    }
}

fn to_vec(logits: Tensor<1>) -> Vec<f32> {
    host(logits)
}

fn argmax(values: &[f32]) -> usize {
    values
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1).then(b.0.cmp(&a.0)))
        .map_or(0, |(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CellKind, CharLmConfig};

    /// The host stepper gives Burn's logits, step after step, for every cell, with and without
    /// an embedding, on one thread and on two (also where the halves are uneven, or one of
    /// them empty).
    #[test]
    fn the_host_stepper_follows_the_model() {
        let device = Device::flex();
        let cases = CellKind::ALL
            .into_iter()
            .flat_map(|cell| [(cell, 0, 15), (cell, 8, 15), (cell, 8, 1)]);
        for (cell, d_embed, d_hidden) in cases {
            let model = CharLmConfig::new(13, cell, d_hidden)
                .with_num_layers(2)
                .with_d_embed(d_embed)
                .init(&device);
            let prime = [3, 1, 4];
            let sampler = model.sampler(&prime, SampleConfig::new(), &device).unwrap();
            let prime_ids =
                Tensor::<2, Int>::from_data(TensorData::new(vec![3i64, 1, 4], [1, 3]), &device);
            let primed = model.forward(prime_ids, None).1;
            // One thread and two: the split stepper must give the same logits.
            let mut hosts = [1, 2].map(|threads| model.host_stepper(&primed, Some(threads)));
            assert_eq!(
                sampler.threads(),
                1,
                "a model this small steps on one thread"
            );
            let mut state = primed;
            for t in 0..40 {
                let id = (t * 5 + 2) % 13;
                let input =
                    Tensor::<1, Int>::from_data(TensorData::new(vec![id as i64], [1]), &device);
                let (logits, next) = model.step(input, state);
                state = next;
                let expected = to_vec(logits.reshape([13]));
                if t == 20 {
                    // Long enough for the second thread to fall asleep between characters.
                    std::thread::sleep(std::time::Duration::from_millis(30));
                }
                let [one, two] = hosts.each_mut().map(|host| host.step(id));
                assert_eq!(one, two, "{cell}, d_embed {d_embed}, step {t}");
                for (a, e) in one.iter().zip(&expected) {
                    assert!(
                        (a - e).abs() < 1e-5,
                        "{cell}, d_embed {d_embed}, step {t}: {a} vs {e}"
                    );
                }
            }
        }
    }
}
