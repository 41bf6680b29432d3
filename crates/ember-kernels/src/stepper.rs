//! One stream of a character model stepped on the host: the fast path of sampling, where a batch
//! of one makes every tensor operation tiny and Burn's per-operation cost dominates.
//!
//! A step reads every weight once, so it is bound by how fast a core reads them, and a model
//! whose weights outgrow a core's cache by how fast memory does. On two cores every layer's
//! hidden units are split in two, and each thread owns the columns of every gate block that feed
//! its units: each reads half of the weights, from its own cache. The threads meet once per layer,
//! when the layer's new hidden vector is whole, on a barrier that spins.

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::activation::{add_into, tanh};
use crate::cells::{gru_step, lstm_step};
use crate::tile::{Packed, Right, matmul};
use crate::{CellKind, dispatch_simd, pool};

/// The weights of one recurrent layer, as `ember-model`'s `RecurrentLayer` stores them.
#[derive(Debug, Clone)]
pub struct LayerWeights {
    /// The recurrence the layer computes.
    pub cell: CellKind,
    /// `[d_input, G * d_hidden]`.
    pub weight_ih: Vec<f32>,
    /// `[d_hidden, G * d_hidden]`.
    pub weight_hh: Vec<f32>,
    /// `[G * d_hidden]`.
    pub bias_ih: Vec<f32>,
    /// `[G * d_hidden]`.
    pub bias_hh: Vec<f32>,
    /// The input width.
    pub d_input: usize,
    /// The hidden width.
    pub d_hidden: usize,
}

impl LayerWeights {
    fn gates(&self) -> usize {
        self.cell.num_gates() * self.d_hidden
    }

    /// The bias added to the input projection: both biases where they are simply summed (RNN,
    /// LSTM); GRU's reset gate scales its hidden projection with `b_hh`, which stays apart.
    fn input_bias(&self) -> Vec<f32> {
        match self.cell {
            CellKind::Gru => self.bias_ih.clone(),
            _ => self
                .bias_ih
                .iter()
                .zip(&self.bias_hh)
                .map(|(a, b)| a + b)
                .collect(),
        }
    }
}

/// A layer's state, `[batch_size, d_hidden]` per vector.
#[derive(Debug, Clone, PartialEq)]
pub struct HostState {
    /// The hidden vector.
    pub hidden: Vec<f32>,
    /// The cell vector of an LSTM; empty for the other cells.
    pub cell: Vec<f32>,
}

/// The output layer of a character model, `logits = hidden W + b`, on host memory.
#[derive(Debug, Clone)]
pub struct HeadWeights {
    /// `W`, `[d_hidden, vocab_size]`.
    pub weight: Vec<f32>,
    /// `b`, `[vocab_size]`.
    pub bias: Vec<f32>,
}

/// Every character's input projection through `weights`, bias included,
/// `[vocab_size, G * d_hidden]`: the rows of `table` (`[vocab_size, d_input]`) times `W_ih`, or
/// for one-hot inputs (`None`) the rows of `W_ih` themselves.
fn project_vocabulary(weights: &LayerWeights, table: Option<&[f32]>) -> Vec<f32> {
    let (d_in, g) = (weights.d_input, weights.gates());
    let vocab = table.map_or(d_in, |table| table.len() / d_in);
    let bias = weights.input_bias();
    let mut projected = pool::scratch(vocab * g);
    for row in projected.chunks_exact_mut(g) {
        row.copy_from_slice(&bias);
    }
    match table {
        Some(table) => matmul(
            (vocab, d_in, g),
            table,
            (d_in, 1),
            Right::Rows(&weights.weight_ih, g),
            true,
            &mut projected,
        ),
        None => add_into(&mut projected, &weights.weight_ih),
    }
    projected
}

/// The recurrent part of one step of a layer over `batch` rows, for the units whose gate
/// columns `recurrent` (`W_hh`, packed) holds: every unit, or one thread's share. Adds
/// `previous.0` (`[batch, d_hidden]`, the whole layer's hidden vectors) times `recurrent` to the
/// step's input projection `step_gates` (`[batch, G u]`), runs the gate arithmetic, and writes
/// the units' new hidden values (`[batch, u]`) into `next`. `previous.1` holds the units' own
/// previous values (GRU), `bias_hh` their `b_hh` (GRU), `projected` room for their hidden
/// projection (GRU), `cells` their previous and new cells (LSTM), `per_step` what the backward
/// pass keeps of the step (LSTM, GRU).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn recurrent_step(
    cell: CellKind,
    (batch, d_hidden): (usize, usize),
    previous: (&[f32], &[f32]),
    recurrent: &Packed,
    bias_hh: &[f32],
    step_gates: &mut [f32],
    projected: &mut [f32],
    cells: (&[f32], &mut [f32]),
    per_step: &mut [f32],
    next: &mut [f32],
) {
    let g = step_gates.len() / batch.max(1);
    let u = next.len() / batch.max(1);
    // A thread's share of no units (a layer of one unit, halved) has nothing to step.
    if u == 0 {
        return;
    }
    let product = |out: &mut [f32]| {
        matmul(
            (batch, d_hidden, g),
            previous.0,
            (d_hidden, 1),
            Right::Packed(recurrent),
            true,
            out,
        )
    };
    match cell {
        CellKind::Rnn => {
            product(step_gates);
            for (out, &pre) in next.iter_mut().zip(step_gates.iter()) {
                *out = tanh(pre);
            }
        }
        CellKind::Lstm => {
            product(step_gates);
            lstm_step(step_gates, cells.0, cells.1, per_step, next, u);
        }
        CellKind::Gru => {
            for row in projected.chunks_exact_mut(g.max(1)) {
                row.copy_from_slice(bias_hh);
            }
            product(projected);
            gru_step(step_gates, projected, previous.1, per_step, next, u);
        }
    }
}

/// Bytes of recurrent weights from which a stepper runs on two threads. Measured on 2 cores,
/// two threads stepped faster on every bench case, from 64 KB (a 1x64 LSTM, 1.1x) through 2x128
/// (1.5x) to 2x256 (3.7x, where half of the weights fit a core's L2 cache and the whole do not).
/// Smaller models were not measured: their steps are so short that the meetings, one per layer,
/// would be a large part of them.
const SPLIT_FROM_BYTES: usize = 64 << 10;

/// Spins of a waiting worker before it sleeps between characters.
const SPINS_BEFORE_SLEEP: u32 = 1 << 14;

/// Spins of a waiting thread before it yields its core at every further spin: on a machine
/// busier than its cores, the thread it waits for may be the one waiting for the core. Without
/// it, sampling on two threads next to another busy process fell from about 300,000 to under 100
/// characters per second.
const SPINS_BEFORE_YIELD: u32 = 1 << 10;

/// One layer's weights for a range of its hidden units: the columns of every gate block that
/// feed those units.
#[derive(Debug)]
struct UnitSlice {
    cell: CellKind,
    units: Range<usize>,
    input: SliceInput,
    /// GRU: `b_hh`, which the reset gate scales, `[G * u]`; empty for the other cells.
    bias_hh: Vec<f32>,
    /// `W_hh`, `[d_hidden, G * u]`.
    weight_hh: Packed,
}

/// Where a slice's input projection comes from.
#[derive(Debug)]
enum SliceInput {
    /// The bottom layer: each character's projection, bias included, `[vocab, G * u]`.
    ById(Vec<f32>),
    /// The layers above: the layer below's output times `W_ih` (`[d_input, G * u]`), plus the
    /// bias of the input projection (see `LayerWeights::input_bias`, `[G * u]`).
    Below { bias: Vec<f32>, weight_ih: Packed },
}

/// The columns of `matrix` (`[rows, gates * h]`) that feed `units`: in every gate block,
/// `[rows, gates * units.len()]`.
pub(crate) fn unit_columns(
    matrix: &[f32],
    gates: usize,
    h: usize,
    units: &Range<usize>,
) -> Vec<f32> {
    let mut columns = Vec::with_capacity(matrix.len() / (gates * h).max(1) * gates * units.len());
    for row in matrix.chunks_exact(gates * h) {
        for b in 0..gates {
            columns.extend_from_slice(&row[b * h + units.start..b * h + units.end]);
        }
    }
    columns
}

impl UnitSlice {
    /// The slice of `layer` for `units`; `projected` is the bottom layer's projection of every
    /// character (`[vocab, G * H]`, bias included), `None` for the layers above.
    fn new(layer: &LayerWeights, units: Range<usize>, projected: Option<&[f32]>) -> UnitSlice {
        let (h, gates) = (layer.d_hidden, layer.cell.num_gates());
        let width = gates * units.len();
        let columns = |matrix: &[f32]| unit_columns(matrix, gates, h, &units);
        UnitSlice {
            cell: layer.cell,
            input: match projected {
                Some(projected) => SliceInput::ById(columns(projected)),
                None => SliceInput::Below {
                    bias: columns(&layer.input_bias()),
                    weight_ih: Packed::new(
                        &columns(&layer.weight_ih),
                        (width, 1),
                        layer.d_input,
                        width,
                    ),
                },
            },
            bias_hh: match layer.cell {
                CellKind::Gru => columns(&layer.bias_hh),
                _ => Vec::new(),
            },
            weight_hh: Packed::new(&columns(&layer.weight_hh), (width, 1), h, width),
            units,
        }
    }
}

/// `out += x w` for a row vector `x` and a packed `w: [x.len(), out.len()]`.
#[inline(always)]
fn add_vector_matrix(out: &mut [f32], x: &[f32], w: &Packed) {
    matmul(
        (1, x.len(), out.len()),
        x,
        (x.len(), 1),
        Right::Packed(w),
        true,
        out,
    );
}

dispatch_simd!(
    slice_step,
    slice_step_avx512,
    slice_step_avx2,
    slice_step_portable,
    (
        slice: &UnitSlice,
        id: usize,
        below: &[f32],
        hidden: &[f32],
        cell: &mut [f32],
        out: &mut [f32]
    ) -> ()
);

/// Steps the units of `slice`: from the layer's input (`below`, or at the bottom the projection
/// `id` picks), the whole previous hidden vector `hidden` and the units' cell values `cell`
/// (LSTM, updated in place), writes the units' new hidden values into `out`.
#[inline(always)]
fn slice_step_portable(
    slice: &UnitSlice,
    id: usize,
    below: &[f32],
    hidden: &[f32],
    cell: &mut [f32],
    out: &mut [f32],
) {
    let u = slice.units.len();
    let width = slice.cell.num_gates() * u;
    let mut gates = match &slice.input {
        SliceInput::ById(projected) => projected[id * width..(id + 1) * width].to_vec(),
        SliceInput::Below { bias, weight_ih } => {
            let mut gates = bias.clone();
            add_vector_matrix(&mut gates, below, weight_ih);
            gates
        }
    };
    // The training kernels' step over a batch of one: what they keep for the backward pass
    // (`per_step`) is dropped, and the LSTM's previous cells are copied out of `cell`, which the
    // step overwrites.
    let mut per_step = vec![0.0; if slice.cell == CellKind::Rnn { 0 } else { u }];
    let mut projected = vec![
        0.0;
        if slice.cell == CellKind::Gru {
            width
        } else {
            0
        }
    ];
    let previous_cells = cell.to_vec();
    recurrent_step(
        slice.cell,
        (1, hidden.len()),
        (hidden, &hidden[slice.units.clone()]),
        &slice.weight_hh,
        &slice.bias_hh,
        &mut gates,
        &mut projected,
        (&previous_cells, cell),
        &mut per_step,
        out,
    );
}

/// Every layer's hidden vector, twice: the one a step reads and the one it writes, which swap
/// after every character. The two threads write disjoint units of the same vector, so the
/// vectors are reached through raw pointers, never through a reference to a whole vector.
#[derive(Debug)]
struct HiddenBuffers {
    /// Per layer, both vectors' first values.
    pointers: Vec<[*mut f32; 2]>,
    widths: Vec<usize>,
    /// The vectors themselves, only ever dropped: the pointers lead into them.
    _storage: Vec<[Vec<f32>; 2]>,
}

impl HiddenBuffers {
    fn new(states: &[HostState]) -> HiddenBuffers {
        let mut storage: Vec<[Vec<f32>; 2]> = states
            .iter()
            .map(|state| [state.hidden.clone(), state.hidden.clone()])
            .collect();
        HiddenBuffers {
            pointers: storage
                .iter_mut()
                .map(|[a, b]| [a.as_mut_ptr(), b.as_mut_ptr()])
                .collect(),
            widths: states.iter().map(|state| state.hidden.len()).collect(),
            _storage: storage,
        }
    }

    /// Layer `layer`'s vector `which`.
    ///
    /// # Safety
    /// No thread writes any of it while the slice lives.
    unsafe fn read(&self, layer: usize, which: usize) -> &[f32] {
        // SAFETY: the pointer leads to `widths[layer]` values owned by `_storage`; the caller
        // keeps writers away.
        unsafe { std::slice::from_raw_parts(self.pointers[layer][which], self.widths[layer]) }
    }

    /// `units` of layer `layer`'s vector `which`.
    ///
    /// # Safety
    /// No other thread reads or writes these units while the slice lives.
    #[allow(clippy::mut_from_ref)]
    unsafe fn write(&self, layer: usize, which: usize, units: &Range<usize>) -> &mut [f32] {
        assert!(units.end <= self.widths[layer]);
        // SAFETY: in bounds (above), and the caller keeps every other access to these units away.
        unsafe {
            std::slice::from_raw_parts_mut(
                self.pointers[layer][which].add(units.start),
                units.len(),
            )
        }
    }
}

/// A barrier for two threads that spins: the threads meet once per layer and character, far
/// too often to sleep in between.
#[derive(Debug, Default)]
pub(crate) struct SpinBarrier {
    arrived: AtomicUsize,
    generation: AtomicUsize,
    /// Set by a thread that panicked (see [`SpinBarrier::abandon_on_panic`]), so that the other
    /// stops waiting for it.
    abandoned: AtomicBool,
}

/// Abandons its barrier if dropped while its thread unwinds.
pub(crate) struct AbandonOnPanic<'a>(&'a SpinBarrier);

impl Drop for AbandonOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.abandoned.store(true, Ordering::Release);
        }
    }
}

impl SpinBarrier {
    /// Returns once both threads have called it; `may_sleep` lets the caller sleep after a while
    /// of waiting (the worker, between characters). Panics if the other thread panicked instead:
    /// it will not come.
    pub(crate) fn wait(&self, may_sleep: bool) {
        assert!(self.meet(may_sleep), "the other thread panicked");
    }

    /// A guard for the calling thread: should the thread panic while it holds the guard, the
    /// other stops waiting for it.
    pub(crate) fn abandon_on_panic(&self) -> AbandonOnPanic<'_> {
        AbandonOnPanic(self)
    }

    /// [`SpinBarrier::wait`], returning whether both threads met (false: the other panicked).
    fn meet(&self, may_sleep: bool) -> bool {
        // Once abandoned, no meeting counts: the other thread is gone.
        if self.abandoned.load(Ordering::Acquire) {
            return false;
        }
        let generation = self.generation.load(Ordering::Acquire);
        if self.arrived.fetch_add(1, Ordering::AcqRel) == 1 {
            // Reset before the release below, which the other thread waits to see.
            self.arrived.store(0, Ordering::Relaxed);
            self.generation.fetch_add(1, Ordering::Release);
            return true;
        }
        let mut spins = 0u32;
        while self.generation.load(Ordering::Acquire) == generation {
            if self.abandoned.load(Ordering::Acquire) {
                return false;
            }
            if may_sleep && spins >= SPINS_BEFORE_SLEEP {
                // The main thread unparks the worker once it has released the barrier; the
                // timeout only bounds a sleep that nothing else would end.
                std::thread::park_timeout(Duration::from_millis(10));
            } else {
                if spins >= SPINS_BEFORE_YIELD {
                    std::thread::yield_now();
                } else {
                    std::hint::spin_loop();
                }
                spins = spins.saturating_add(1);
            }
        }
        true
    }
}

/// What the two threads of a split stepper share.
#[derive(Debug)]
struct Shared {
    hidden: HiddenBuffers,
    /// The character of the step about to run.
    id: AtomicUsize,
    barrier: SpinBarrier,
    quit: AtomicBool,
}

// SAFETY: the raw pointers of `hidden` lead into vectors `Shared` owns; the threads reach them
// only as `HiddenBuffers`' contract says, ordered by `barrier`.
unsafe impl Send for Shared {}
// SAFETY: as above.
unsafe impl Sync for Shared {}

/// One thread's part of every layer, and its cell values.
#[derive(Debug)]
struct Part {
    slices: Vec<UnitSlice>,
    /// Per layer, the LSTM cell values of the part's units; empty for the other cells.
    cells: Vec<Vec<f32>>,
}

impl Part {
    /// Steps every layer's slice of this part for character `id`, reading the vectors `parity`
    /// and writing the others; `meet` runs after each layer.
    ///
    /// # Safety
    /// The other thread, if any, steps the other units of the same layers at the same time and
    /// meets this one after each layer.
    unsafe fn step(&mut self, shared: &Shared, id: usize, parity: usize, meet: impl Fn()) {
        for (layer, (slice, cell)) in self.slices.iter().zip(&mut self.cells).enumerate() {
            // SAFETY: during a layer both threads only read the previous vectors and the layer
            // below's new one (whole since the last meeting), and each writes its own units.
            unsafe {
                let below = match layer {
                    0 => &[][..],
                    _ => shared.hidden.read(layer - 1, 1 - parity),
                };
                let hidden = shared.hidden.read(layer, parity);
                let out = shared.hidden.write(layer, 1 - parity, &slice.units);
                slice_step(slice, id, below, hidden, cell, out);
            }
            meet();
        }
    }
}

/// One stream of a character model stepped on the host, on one thread or two (see the module
/// docs).
#[derive(Debug)]
pub struct HostStepper {
    /// This thread's part: every unit, or the first half of each layer's.
    part: Part,
    shared: Arc<Shared>,
    /// The thread that steps the other half, where there is one.
    worker: Option<JoinHandle<()>>,
    /// Which of each layer's vectors holds the current state.
    parity: usize,
    vocab_size: usize,
    head: HeadWeights,
    packed_head: Packed,
}

impl HostStepper {
    /// A stepper from the model's weights (`embedding` `[vocab_size, d_embed]` or `None`, the
    /// layers and the head) and each layer's state for one stream; on two threads where the
    /// machine has two cores and the weights are large enough to pay for it.
    pub fn new(
        embedding: Option<Vec<f32>>,
        layers: Vec<LayerWeights>,
        head: HeadWeights,
        states: Vec<HostState>,
    ) -> Self {
        let bytes: usize = layers
            .iter()
            .enumerate()
            .map(|(k, layer)| {
                let inputs = if k == 0 { 0 } else { layer.weight_ih.len() };
                4 * (inputs + layer.weight_hh.len())
            })
            .sum();
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let threads = if bytes >= SPLIT_FROM_BYTES && cores >= 2 {
            2
        } else {
            1
        };
        Self::with_threads(embedding, layers, head, states, threads)
    }

    /// [`HostStepper::new`] on `threads` threads (1 or 2).
    pub fn with_threads(
        embedding: Option<Vec<f32>>,
        layers: Vec<LayerWeights>,
        head: HeadWeights,
        states: Vec<HostState>,
        threads: usize,
    ) -> Self {
        assert!(!layers.is_empty(), "a stepper has a layer");
        assert_eq!(layers.len(), states.len(), "one state per layer");
        assert!((1..=2).contains(&threads), "1 or 2 threads");
        let vocab_size = head.bias.len();
        // The bottom layer's projection of every character, bias included: each step picks a row.
        let projected = project_vocabulary(&layers[0], embedding.as_deref());
        // One thread's part of every layer: half `half` of `halves`.
        let part = |half: usize, halves: usize| {
            let slices = layers
                .iter()
                .enumerate()
                .map(|(k, layer)| {
                    let h = layer.d_hidden;
                    let units = half * h / halves..(half + 1) * h / halves;
                    UnitSlice::new(layer, units, (k == 0).then_some(&projected[..]))
                })
                .collect::<Vec<_>>();
            let cells = slices
                .iter()
                .zip(&states)
                .map(|(slice, state)| match slice.cell {
                    CellKind::Lstm => state.cell[slice.units.clone()].to_vec(),
                    _ => Vec::new(),
                })
                .collect();
            Part { slices, cells }
        };
        let shared = Arc::new(Shared {
            hidden: HiddenBuffers::new(&states),
            id: AtomicUsize::new(0),
            barrier: SpinBarrier::default(),
            quit: AtomicBool::new(false),
        });
        let worker = match threads {
            2 => {
                let mut other = part(1, 2);
                let shared = Arc::clone(&shared);
                let spawned = std::thread::Builder::new()
                    .name("ember-stepper".into())
                    .spawn(move || {
                        let _abandon = shared.barrier.abandon_on_panic();
                        let mut parity = 0;
                        loop {
                            shared.barrier.wait(true);
                            if shared.quit.load(Ordering::Acquire) {
                                return;
                            }
                            let id = shared.id.load(Ordering::Acquire);
                            // SAFETY: the main thread steps the other half, meeting after each
                            // layer.
                            unsafe {
                                other.step(&shared, id, parity, || shared.barrier.wait(false))
                            };
                            parity = 1 - parity;
                        }
                    });
                // Without a second thread the stepper still works, on one.
                spawned
                    .inspect_err(|err| log::warn!("sampling on one thread: {err}"))
                    .ok()
            }
            _ => None,
        };
        let halves = if worker.is_some() { 2 } else { 1 };
        HostStepper {
            part: part(0, halves),
            shared,
            worker,
            parity: 0,
            vocab_size,
            packed_head: Packed::new(
                &head.weight,
                (vocab_size, 1),
                head.weight.len() / vocab_size,
                vocab_size,
            ),
            head,
        }
    }

    /// Reads character `id` and returns the logits of the next one.
    pub fn step(&mut self, id: usize) -> Vec<f32> {
        assert!(
            id < self.vocab_size,
            "id {id} outside a vocabulary of {}",
            self.vocab_size
        );
        let shared = &*self.shared;
        match &self.worker {
            Some(worker) => {
                let _abandon = shared.barrier.abandon_on_panic();
                shared.id.store(id, Ordering::Release);
                shared.barrier.wait(false);
                worker.thread().unpark();
                // SAFETY: the worker steps the other half, meeting after each layer.
                unsafe {
                    self.part
                        .step(shared, id, self.parity, || shared.barrier.wait(false))
                };
            }
            // SAFETY: no other thread.
            None => unsafe { self.part.step(shared, id, self.parity, || {}) },
        }
        self.parity = 1 - self.parity;
        let top = self.part.slices.len() - 1;
        let mut logits = self.head.bias.clone();
        // SAFETY: both threads are done with the step (they met after the top layer).
        let hidden = unsafe { shared.hidden.read(top, self.parity) };
        add_vector_matrix(&mut logits, hidden, &self.packed_head);
        logits
    }

    /// Whether a second thread steps half of every layer.
    pub fn is_split(&self) -> bool {
        self.worker.is_some()
    }
}

impl Drop for HostStepper {
    fn drop(&mut self) {
        if let Some(worker) = self.worker.take() {
            self.shared.quit.store(true, Ordering::Release);
            // A worker that panicked meets no one and has nothing left to clean up.
            let _ = self.shared.barrier.meet(false);
            worker.thread().unpark();
            let _ = worker.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sampler moves between threads with its stepper.
    #[test]
    fn a_stepper_is_send() {
        fn send<T: Send>() {}
        send::<HostStepper>();
    }

    /// A thread that panics while it holds its guard releases the other from the barrier, which
    /// then panics instead of waiting for ever.
    #[test]
    fn a_panicking_thread_abandons_the_barrier() {
        let barrier = Arc::new(SpinBarrier::default());
        let other = {
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                let _abandon = barrier.abandon_on_panic();
                panic!("the other thread fails before the meeting");
            })
        };
        assert!(other.join().is_err());
        assert!(!barrier.meet(true));
        assert!(std::panic::catch_unwind(|| barrier.wait(false)).is_err());
    }

    /// Both threads pass every meeting, many times over, and the stepper's drop ends the worker.
    #[test]
    fn the_barrier_holds_both_threads_together() {
        let barrier = Arc::new(SpinBarrier::default());
        let count = Arc::new(AtomicUsize::new(0));
        let other = {
            let (barrier, count) = (Arc::clone(&barrier), Arc::clone(&count));
            std::thread::spawn(move || {
                for round in 0..10_000 {
                    count.fetch_add(1, Ordering::Relaxed);
                    barrier.wait(round % 2 == 0);
                    barrier.wait(false);
                }
            })
        };
        for round in 0..10_000 {
            count.fetch_add(1, Ordering::Relaxed);
            barrier.wait(false);
            // Both threads counted this round before either passed the first meeting.
            assert_eq!(count.load(Ordering::Relaxed), 2 * (round + 1));
            barrier.wait(false);
        }
        other.join().unwrap();
    }
}
