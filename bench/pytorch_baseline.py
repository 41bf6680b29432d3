"""The PyTorch side of `ember bench --pytorch`: one case measured the way `ember bench` measures
Ember, printed as one JSON line.

`--model char` (the default): same model (embedding 64, stacked `nn.LSTM`/`nn.GRU`/`nn.RNN` with
`--dropout` between layers, linear head over 65 characters), same loop (Adam at 2e-3 over one
fixed random chunk, the state carried and detached between chunks), same sampling (one stream,
softmax sampling, one character per step; none with `--no-sample`).

`--model classifier` and `--model seq2seq`: the library cases' `SequenceClassifier` (embedding,
one stack, linear head on the last real step's hidden vector) and `Seq2Seq` (a bidirectional
encoder whose joined final hidden vectors make the decoder's initial state through a linear map
and tanh, a teacher-forced decoder, the cross-entropy averaged over real target steps), on one
right-padded batch whose lengths run from `--min-len` to `--seq` in turn down the batch, as
`ember bench` builds it. The encoders read packed sequences, the way PyTorch skips padding.

`--model recurrence`: the stacked layers alone (`nn.LSTM`/`nn.GRU`/`nn.RNN`, the input as wide as
the hidden state, batch first), timed forward and forward+backward (the sum of the outputs) in
milliseconds per call, on CUDA (cuDNN) when torch has it, with `--tf32 1` allowing TF32 in
cuDNN and matmuls; each after warm-up windows until two agree within 5%, as `ember bench`
times the recurrence op.

All on the threads `--threads` gives (the speed issue's reference uses 2).

Usage: python bench/pytorch_baseline.py --cell lstm --layers 2 --hidden 128 --batch 32 --seq 64
"""

import argparse
import json
import resource
import time

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

VOCAB = 65
D_EMBED = 64
RECURRENT = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}


class CharModel(nn.Module):
    def __init__(self, cell, layers, hidden, dropout=0.0):
        super().__init__()
        self.embedding = nn.Embedding(VOCAB, D_EMBED)
        self.rnn = RECURRENT[cell](
            D_EMBED, hidden, num_layers=layers, batch_first=True, dropout=dropout
        )
        self.head = nn.Linear(hidden, VOCAB)

    def forward(self, ids, state=None):
        output, state = self.rnn(self.embedding(ids), state)
        return self.head(output), state


class Encoder(nn.Module):
    """Embeds a right-padded batch and reads it packed; `summary` is the top layer's final
    hidden vector after each row's last real step (both directions joined)."""

    def __init__(self, args, bidirectional):
        super().__init__()
        self.embedding = nn.Embedding(args.vocab, args.embed)
        self.rnn = RECURRENT[args.cell](
            args.embed,
            args.hidden,
            num_layers=args.layers,
            batch_first=True,
            dropout=args.dropout,
            bidirectional=bidirectional,
        )

    def summary(self, ids, lengths):
        packed = pack_padded_sequence(
            self.embedding(ids), lengths, batch_first=True, enforce_sorted=False
        )
        _, state = self.rnn(packed)
        hidden = state[0] if isinstance(state, tuple) else state
        if self.rnn.bidirectional:
            return torch.cat([hidden[-2], hidden[-1]], dim=1)
        return hidden[-1]


class Classifier(nn.Module):
    def __init__(self, args):
        super().__init__()
        self.encoder = Encoder(args, bidirectional=False)
        self.head = nn.Linear(args.hidden, args.classes)

    def forward(self, ids, lengths):
        return self.head(self.encoder.summary(ids, lengths))


class Seq2Seq(nn.Module):
    def __init__(self, args):
        super().__init__()
        self.encoder = Encoder(args, bidirectional=True)
        self.per_layer = 2 if args.cell == "lstm" else 1
        self.layers = args.layers
        self.bridge = nn.Linear(2 * args.hidden, args.layers * self.per_layer * args.hidden)
        self.embedding = nn.Embedding(args.vocab, args.embed)
        self.decoder = RECURRENT[args.cell](
            args.embed, args.hidden, num_layers=args.layers, batch_first=True, dropout=args.dropout
        )
        self.head = nn.Linear(args.hidden, args.vocab)

    def forward(self, source, lengths, inputs):
        summary = self.encoder.summary(source, lengths)
        # Layer by layer, the hidden vector then (LSTM) the cell vector, as Ember's bridge.
        parts = torch.tanh(self.bridge(summary)).chunk(self.layers * self.per_layer, dim=1)
        if self.per_layer == 2:
            state = (torch.stack(parts[0::2]), torch.stack(parts[1::2]))
        else:
            state = torch.stack(parts)
        output, _ = self.decoder(self.embedding(inputs), state)
        return self.head(output)


def detach(state):
    if isinstance(state, tuple):
        return tuple(s.detach() for s in state)
    return state.detach()


def per_second(budget, step):
    """Runs `step` for about `budget` seconds after two warm-up calls; calls per second."""
    step()
    step()
    start = time.perf_counter()
    steps = 0
    while steps < 3 or time.perf_counter() - start < budget:
        step()
        steps += 1
    return steps / (time.perf_counter() - start)


def train_classifier(args, lengths):
    model = Classifier(args)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    ids = torch.randint(0, args.vocab, (args.batch, args.seq))
    labels = torch.arange(args.batch) % args.classes

    def train_step():
        loss = nn.functional.cross_entropy(model(ids, lengths), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return per_second(args.seconds, train_step)


def train_seq2seq(args, lengths):
    model = Seq2Seq(args)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    source = torch.randint(0, args.vocab, (args.batch, args.seq))
    # The start mark then the target, and the target then its end mark: one step more than
    # the source, real up to and including the end mark.
    inputs = torch.randint(0, args.vocab, (args.batch, args.seq + 1))
    targets = torch.randint(0, args.vocab, (args.batch, args.seq + 1))
    mask = (torch.arange(args.seq + 1)[None, :] < (lengths + 1)[:, None]).float()

    def train_step():
        logits = model(source, lengths, inputs)
        losses = nn.functional.cross_entropy(
            logits.reshape(-1, args.vocab), targets.reshape(-1), reduction="none"
        )
        loss = (losses * mask.reshape(-1)).sum() / mask.sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return per_second(args.seconds, train_step)


def settled_ms(budget, call, sync):
    """The mean time of `call` in ms once its times settle (see the module's docstring)."""
    window, previous, mean = budget / 10, None, 0.0
    for _ in range(8):
        start, calls = time.perf_counter(), 0
        while calls < 3 or time.perf_counter() - start < window:
            call()
            calls += 1
        sync()
        mean = (time.perf_counter() - start) * 1e3 / calls
        if previous is not None and abs(previous - mean) <= 0.05 * mean:
            break
        previous = mean
    return mean


def time_recurrence(args):
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = bool(args.tf32)
        torch.backends.cudnn.allow_tf32 = bool(args.tf32)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    model = RECURRENT[args.cell](
        args.hidden, args.hidden, num_layers=args.layers, batch_first=True
    ).to(device)
    inputs = torch.randn(args.batch, args.seq, args.hidden, device=device, requires_grad=True)

    def train():
        model(inputs)[0].sum().backward()

    @torch.no_grad()
    def forward():
        model(inputs)

    train()
    sync()
    budget = args.seconds / 2
    return {
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "tf32": bool(args.tf32),
        "forward_ms": round(settled_ms(budget / 2, forward, sync), 4),
        "forward_backward_ms": round(settled_ms(budget / 2, train, sync), 4),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", choices=["char", "classifier", "seq2seq", "recurrence"], default="char"
    )
    parser.add_argument("--cell", choices=["lstm", "gru", "rnn"], default="lstm")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dropout", type=float, default=0.0)
    parser.add_argument("--no-sample", action="store_true", help="time training only")
    parser.add_argument("--min-len", type=int, default=1, help="task models: shortest sequence")
    parser.add_argument("--vocab", type=int, default=32, help="task models: token ids")
    parser.add_argument("--embed", type=int, default=16, help="task models: embedding size")
    parser.add_argument("--classes", type=int, default=4, help="classifier: classes")
    parser.add_argument("--tf32", type=int, default=0, help="recurrence: allow TF32 on CUDA")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(1)
    if args.model == "recurrence":
        print(json.dumps(time_recurrence(args)))
        return
    report = {"torch": torch.__version__, "threads": args.threads}
    if args.model != "char":
        spread = args.seq - args.min_len + 1
        lengths = torch.tensor([args.min_len + row % spread for row in range(args.batch)])
        train = train_classifier if args.model == "classifier" else train_seq2seq
        report["train_steps_per_sec"] = round(train(args, lengths), 3)
        print(json.dumps(report | {"peak_rss_mb": peak_rss_mb()}))
        return

    model = CharModel(args.cell, args.layers, args.hidden, args.dropout)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    ids = torch.randint(0, VOCAB, (args.batch, args.seq))
    targets = torch.randint(0, VOCAB, (args.batch, args.seq))
    carried = [None]

    def train_step():
        logits, state = model(ids, carried[0])
        loss = nn.functional.cross_entropy(logits.reshape(-1, VOCAB), targets.reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        carried[0] = detach(state)

    steps = per_second(args.seconds, train_step)
    report["train_steps_per_sec"] = round(steps, 3)
    report["train_chars_per_sec"] = round(args.batch * args.seq * steps)
    if args.no_sample:
        print(json.dumps(report | {"peak_rss_mb": peak_rss_mb()}))
        return

    generator = torch.Generator().manual_seed(1)
    stream = {"id": torch.zeros((1, 1), dtype=torch.long), "state": None}

    @torch.no_grad()
    def sample_step():
        logits, stream["state"] = model(stream["id"], stream["state"])
        probabilities = torch.softmax(logits[0, -1], dim=-1)
        stream["id"] = torch.multinomial(probabilities, 1, generator=generator).view(1, 1)

    report["sample_chars_per_sec"] = round(per_second(args.seconds / 2, sample_step))
    print(json.dumps(report | {"peak_rss_mb": peak_rss_mb()}))


def peak_rss_mb():
    """This process's peak resident memory so far, in MB."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 3)


if __name__ == "__main__":
    main()
