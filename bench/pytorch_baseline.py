"""The PyTorch side of `ember bench --pytorch`: one case measured the way `ember bench` measures
Ember, printed as one JSON line.

Same model (embedding 64, stacked `nn.LSTM`/`nn.GRU`/`nn.RNN`, linear head over 65 characters),
same loop (Adam at 2e-3 over one fixed random chunk, the state carried and detached between
chunks), same sampling (one stream, softmax sampling, one character per step), on the threads
`--threads` gives (the speed issue's reference uses 2).

Usage: python bench/pytorch_baseline.py --cell lstm --layers 2 --hidden 128 --batch 32 --seq 64
"""

import argparse
import json
import resource
import time

import torch
from torch import nn

VOCAB = 65
D_EMBED = 64


class CharModel(nn.Module):
    def __init__(self, cell, layers, hidden):
        super().__init__()
        self.embedding = nn.Embedding(VOCAB, D_EMBED)
        recurrent = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}[cell]
        self.rnn = recurrent(D_EMBED, hidden, num_layers=layers, batch_first=True)
        self.head = nn.Linear(hidden, VOCAB)

    def forward(self, ids, state=None):
        output, state = self.rnn(self.embedding(ids), state)
        return self.head(output), state


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


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cell", choices=["lstm", "gru", "rnn"], default="lstm")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(1)
    model = CharModel(args.cell, args.layers, args.hidden)
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

    train = args.batch * args.seq * per_second(args.seconds, train_step)

    generator = torch.Generator().manual_seed(1)
    stream = {"id": torch.zeros((1, 1), dtype=torch.long), "state": None}

    @torch.no_grad()
    def sample_step():
        logits, stream["state"] = model(stream["id"], stream["state"])
        probabilities = torch.softmax(logits[0, -1], dim=-1)
        stream["id"] = torch.multinomial(probabilities, 1, generator=generator).view(1, 1)

    sample = per_second(args.seconds / 2, sample_step)
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "torch": torch.__version__,
                "threads": args.threads,
                "train_chars_per_sec": round(train),
                "sample_chars_per_sec": round(sample),
                "peak_rss_mb": round(peak_rss_mb, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
