//! Data-parallel training: the collective operations a run on several processes needs, and how
//! its streams, examples, gradients and checks are shared among the processes (ranks).
//!
//! The library defines what it needs from a message-passing engine ([`Collective`]); the `ember`
//! binary implements it on MPI behind its `mpi` feature. Every rank runs the ordinary forward
//! and backward pass on its share of the global batch; [`Ranks::combine_gradients`] sums the
//! shares' gradients before clipping and the optimizer step, so every rank applies the same
//! update to the same weights.

use std::cell::Cell;
use std::ops::Range;
use std::rc::Rc;
use std::time::{Duration, Instant};

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor, TensorData};

use crate::TrainError;

/// The collective operations of a group of processes training one model. Every rank must call
/// each of them, in the same order, with buffers of the same length.
pub trait Collective {
    /// This process's rank, from 0.
    fn rank(&self) -> usize;
    /// The number of ranks.
    fn size(&self) -> usize;
    /// Replaces `values` on every rank by their element-wise sum over all ranks.
    fn all_reduce_sum(&self, values: &mut [f32]);
    /// [`all_reduce_sum`](Self::all_reduce_sum) in double precision.
    fn all_reduce_sum_f64(&self, values: &mut [f64]);
    /// Every rank's `local` bytes (of any length), in rank order.
    fn all_gather(&self, local: &[u8]) -> Vec<Vec<u8>>;
}

/// This process's place among the ranks of a run: one process alone ([`Ranks::single`]), or
/// one of several joined by a [`Collective`].
#[derive(Clone)]
pub struct Ranks {
    collective: Option<Rc<dyn Collective>>,
    /// Time spent in the gradient all-reduce since it was last taken.
    reduce_time: Rc<Cell<(Duration, u64)>>,
}

impl Default for Ranks {
    fn default() -> Self {
        Ranks::single()
    }
}

impl std::fmt::Debug for Ranks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Ranks({} of {})", self.rank(), self.size())
    }
}

impl Ranks {
    /// One process training alone: every collective operation is the identity.
    pub fn single() -> Self {
        Ranks {
            collective: None,
            reduce_time: Rc::default(),
        }
    }

    /// One of the processes of `collective`.
    pub fn new(collective: Rc<dyn Collective>) -> Self {
        Ranks {
            collective: (collective.size() > 1).then_some(collective),
            reduce_time: Rc::default(),
        }
    }

    /// This process's rank, from 0.
    pub fn rank(&self) -> usize {
        self.collective.as_ref().map_or(0, |c| c.rank())
    }

    /// The number of ranks.
    pub fn size(&self) -> usize {
        self.collective.as_ref().map_or(1, |c| c.size())
    }

    /// Whether this rank writes the run's files (metrics, checkpoints, plots): rank 0.
    pub fn is_primary(&self) -> bool {
        self.rank() == 0
    }

    /// Whether more than one process trains.
    pub fn is_distributed(&self) -> bool {
        self.collective.is_some()
    }

    /// The part of `0..total` that `rank` takes: contiguous, the first `total % size` ranks one
    /// more than the others.
    pub fn share_of(&self, rank: usize, total: usize) -> Range<usize> {
        let (size, rank) = (self.size(), rank);
        let (base, extra) = (total / size, total % size);
        let start = rank * base + rank.min(extra);
        start..start + base + usize::from(rank < extra)
    }

    /// The part of `0..total` this rank takes.
    pub fn share(&self, total: usize) -> Range<usize> {
        self.share_of(self.rank(), total)
    }

    /// An error unless every rank has at least one of `total` streams or examples to train on.
    pub fn ensure_shares(&self, total: usize, what: &str) -> Result<(), TrainError> {
        if total < self.size() {
            return Err(TrainError::Config {
                origin: "data.batch_size".into(),
                message: format!(
                    "{} ranks cannot share {total} {what}: give data.batch_size at least {}, or \
                     run fewer ranks",
                    self.size(),
                    self.size()
                ),
            });
        }
        Ok(())
    }

    /// Replaces `values` by their sum over all ranks.
    pub fn sum(&self, values: &mut [f64]) {
        if let Some(collective) = &self.collective {
            collective.all_reduce_sum_f64(values);
        }
    }

    /// Whether `flag` is raised on any rank.
    pub fn any(&self, flag: bool) -> bool {
        let mut value = [f64::from(u8::from(flag))];
        self.sum(&mut value);
        value[0] > 0.0
    }

    /// Every rank's `local` bytes, in rank order (this rank's alone when single).
    pub fn all_gather(&self, local: &[u8]) -> Vec<Vec<u8>> {
        match &self.collective {
            Some(collective) => collective.all_gather(local),
            None => vec![local.to_vec()],
        }
    }

    /// The mean time per step spent in the gradient all-reduce since this was last called, and
    /// over how many steps; `None` for a single process or when no step was taken.
    pub fn take_reduce_time(&self) -> Option<(Duration, u64)> {
        let (time, steps) = self.reduce_time.replace((Duration::ZERO, 0));
        (self.is_distributed() && steps > 0).then(|| (time / steps as u32, steps))
    }

    /// The gradients and loss of the global batch, from this rank's `grads` and `loss` over its
    /// share: every rank's gradients and loss scaled by `weight` (the share's part of the global
    /// loss: its examples or positions over the global batch's) and summed in one all-reduce
    /// over a flat buffer in `model`'s parameter order (parameter ids differ between
    /// processes). A single process gets `grads` and `loss` back unchanged.
    pub fn combine_gradients<M: Module>(
        &self,
        model: &M,
        grads: GradientsParams,
        loss: f64,
        weight: f64,
    ) -> (GradientsParams, f64) {
        let Some(collective) = &self.collective else {
            return (grads, loss);
        };
        let mut flat = Flatten {
            grads,
            weight,
            values: Vec::new(),
            present: Vec::new(),
            device: None,
        };
        model.visit(&mut flat);
        let mut buffer = flat.values;
        let gradient_len = buffer.len();
        buffer.extend_from_slice(&flat.present);
        buffer.push((loss * weight) as f32);
        let started = Instant::now();
        collective.all_reduce_sum(&mut buffer);
        let (time, steps) = self.reduce_time.get();
        self.reduce_time.set((time + started.elapsed(), steps + 1));

        let loss = f64::from(buffer[buffer.len() - 1]);
        let mut rebuild = Rebuild {
            grads: flat.grads,
            values: &buffer[..gradient_len],
            present: &buffer[gradient_len..buffer.len() - 1],
            device: flat.device,
            offset: 0,
            index: 0,
        };
        model.visit(&mut rebuild);
        (rebuild.grads, loss)
    }

    /// An error naming the step and the ranks unless every rank holds the same weights: a
    /// checksum of `model`'s parameters compared across ranks, so that ranks that drifted apart
    /// stop the run instead of silently training different models.
    pub fn check_same_weights<M: Module>(&self, model: &M, step: u64) -> Result<(), TrainError> {
        if !self.is_distributed() {
            return Ok(());
        }
        let checksum = weights_checksum(model);
        let all = self.all_gather(&checksum.to_le_bytes());
        let differing: Vec<usize> = all
            .iter()
            .enumerate()
            .filter(|(_, bytes)| bytes.as_slice() != all[0].as_slice())
            .map(|(rank, _)| rank)
            .collect();
        if differing.is_empty() {
            Ok(())
        } else {
            Err(TrainError::RanksDiverged { step, differing })
        }
    }
}

/// A CRC-32 of every parameter's bits, in the module's order.
fn weights_checksum<M: Module>(model: &M) -> u32 {
    struct Checksum(crc32fast::Hasher);
    impl ModuleVisitor for Checksum {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let data = param.val().into_data();
            self.0.update(data.as_bytes());
        }
    }
    let mut checksum = Checksum(crc32fast::Hasher::new());
    model.visit(&mut checksum);
    checksum.0.finalize()
}

/// Every parameter's gradient scaled by `weight`, in one flat buffer in the module's order (zeros
/// where this rank has none), and whether it had one.
struct Flatten {
    grads: GradientsParams,
    weight: f64,
    values: Vec<f32>,
    present: Vec<f32>,
    device: Option<Device>,
}

impl ModuleVisitor for Flatten {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let numel = param.val().shape().num_elements();
        match self.grads.remove::<D>(param.id) {
            Some(grad) => {
                self.device.get_or_insert_with(|| grad.device());
                let values = grad.into_data().convert::<f32>();
                let weight = self.weight as f32;
                self.values.extend(
                    values
                        .as_slice::<f32>()
                        .expect("converted to f32")
                        .iter()
                        .map(|g| g * weight),
                );
                self.present.push(1.0);
            }
            None => {
                self.values.extend(std::iter::repeat_n(0.0, numel));
                self.present.push(0.0);
            }
        }
    }
}

/// The summed buffer turned back into the gradients of the parameters some rank had one for.
struct Rebuild<'a> {
    grads: GradientsParams,
    values: &'a [f32],
    present: &'a [f32],
    device: Option<Device>,
    offset: usize,
    index: usize,
}

impl ModuleVisitor for Rebuild<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let shape = param.val().shape();
        let numel = shape.num_elements();
        let values = &self.values[self.offset..self.offset + numel];
        if self.present[self.index] > 0.0 {
            let device = self
                .device
                .get_or_insert_with(|| param.val().device().inner())
                .clone();
            let grad = Tensor::<D>::from_data(TensorData::new(values.to_vec(), shape), &device);
            self.grads.register(param.id, grad);
        }
        self.offset += numel;
        self.index += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A rank of a group whose collective operations are never called.
    struct Place(usize, usize);

    impl Collective for Place {
        fn rank(&self) -> usize {
            self.0
        }
        fn size(&self) -> usize {
            self.1
        }
        fn all_reduce_sum(&self, _: &mut [f32]) {
            unreachable!()
        }
        fn all_reduce_sum_f64(&self, _: &mut [f64]) {
            unreachable!()
        }
        fn all_gather(&self, _: &[u8]) -> Vec<Vec<u8>> {
            unreachable!()
        }
    }

    #[test]
    fn shares_tile_the_range_in_rank_order() {
        for size in 1..6 {
            for total in size..40 {
                let ranges: Vec<Range<usize>> = (0..size)
                    .map(|rank| Ranks::new(Rc::new(Place(rank, size))).share(total))
                    .collect();
                assert_eq!(ranges.len(), size);
                assert_eq!(ranges[0].start, 0);
                assert_eq!(ranges[size - 1].end, total);
                for pair in ranges.windows(2) {
                    assert_eq!(pair[0].end, pair[1].start);
                    assert!(pair[0].len() >= pair[1].len());
                    assert!(pair[0].len() - pair[1].len() <= 1);
                }
            }
        }
        assert_eq!(Ranks::single().share(7), 0..7);
    }

    #[test]
    fn more_ranks_than_streams_is_an_error() {
        let ranks = Ranks::new(Rc::new(Place(0, 3)));
        let error = ranks.ensure_shares(2, "streams").unwrap_err();
        assert!(
            error.to_string().contains("3 ranks cannot share 2 streams"),
            "{error}"
        );
        assert!(ranks.ensure_shares(3, "streams").is_ok());
    }
}
