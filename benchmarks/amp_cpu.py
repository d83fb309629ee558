"""bf16 autocast on CPU (``train.amp_cpu=true``): a Recformer training step and its forward alone, fp32 vs bf16.

Measures the model textrec's Recformer builds from the embedded MiniLM (6 layers, 384-d) on one batch of the
reference's fine-tuning size (Scientific's 16 longest histories cut to 128 tokens, the reduced CPU setting of recformer_scientific.py),
in the same process, at the threads asked for: the ratio fp32 / bf16 is the figure to read; it depends on the
CPU having bf16 instructions (AVX512-BF16 or AMX; without them bf16 is emulated and slower).

    python benchmarks/amp_cpu.py --threads 1
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from _common import SHARED_DATA, machine, machine_line, prepare, update_results


def step_seconds(model, batch, bf16: bool, train: bool, repeats: int) -> float:
    def once():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model.encode(batch)
        if train:
            out.float().pow(2).mean().backward()
            model.zero_grad(set_to_none=True)

    ctx = torch.enable_grad() if train else torch.no_grad()
    with ctx:
        once()  # warm-up (oneDNN picks its kernels)
        start = time.perf_counter()
        for _ in range(repeats):
            once()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    from textrec.config import load_config
    from textrec.data.batching import SeqBatch
    from textrec.data.dataset import Dataset
    from textrec.data.sentences import item_attributes
    from textrec.train.inputs import ItemInputs, build_model

    ds = Dataset.load(prepare("scientific", SHARED_DATA / "amazon-scientific-unisrec", "unisrec", encode=False))
    cfg = load_config(model="recformer", overrides=[f"model.max_token_num={args.tokens}", "model.max_attr_length=16"])
    model = build_model(cfg, ItemInputs(n_items=ds.n_items, attributes=item_attributes(ds)))
    users = np.argsort([-len(ds.sequence(u)) for u in range(ds.n_users)], kind="stable")[:16]  # 16 longest histories
    L = max(len(ds.sequence(u)) for u in users)
    seqs = torch.zeros(16, L, dtype=torch.long)
    for r, u in enumerate(users):
        seq = torch.as_tensor(ds.sequence(u))
        seqs[r, : len(seq)] = seq
    batch = SeqBatch(item_seq=seqs, seq_len=torch.as_tensor([len(ds.sequence(u)) for u in users]))
    rows = []
    for train in (True, False):
        fp32 = step_seconds(model.train(train), batch, False, train, args.repeats)
        bf16 = step_seconds(model, batch, True, train, args.repeats)
        rows.append(("training step (forward + backward)" if train else "forward alone", fp32, bf16))
    table = ["| 16 histories | fp32 s | bf16 autocast s | fp32 / bf16 |", "|---|---|---|---|"]
    table += [f"| {name} | {a:.3f} | {b:.3f} | {a / b:.2f}x |" for name, a, b in rows]
    md = "\n".join([
        "## bf16 autocast on CPU (`train.amp_cpu`)",
        "",
        f"Machine: {machine_line(machine())}. Script: `python benchmarks/amp_cpu.py "
        f"--threads {args.threads}` (mean of {args.repeats} repeats after one warm-up).",
        "",
        *table,
        "",
        f"Recformer from the embedded MiniLM (6 layers, 384-d), a batch of Scientific's 16 longest histories cut to "
        f"{args.tokens} tokens (attributes of 16 tokens at most, as the reduced setting of recformer_scientific.py). textrec autocasts only the training forward "
        "(`train.amp_cpu=true`); validation and test stay fp32.",
    ])
    print(md)
    if not args.no_write:
        update_results("amp_cpu", md)


if __name__ == "__main__":
    main()
