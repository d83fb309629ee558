"""Speed-ups of Recformer's exact savings on a small setting of Scientific (MiniLM, all 6 layers; CPU).

Each saving computes the same outputs (tests/test_recformer_savings.py); this measures what it saves, each against
the code path it replaced, on the same machine in one process, interleaved, medians of ``--repeats``:

* the last layer for ``<s>`` alone: forward + backward of a training batch (16 histories), against the whole last layer;
* evaluation rows grouped by token count: encoding one evaluation batch (256 validation histories of few items, where
  widths vary most), against chunks of ``encode_tokens`` tokens cut in item-count order and padded to the batch's widest
  row; and the token positions a whole validation pass computes either way (a count);
* training buckets sorted by token count: the token positions an epoch's batches compute (rows x the batch's widest
  row, padding included), against buckets sorted by item count (a count, not a timing: the work is proportional).

The result is stored among the facts of benchmarks/results/recformer_scientific.json and rendered in its section.

    python benchmarks/recformer_savings.py --data $WORK/data/scientific
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from _common import ROOT, WORK, machine, save_result, update_results


def _timed(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def measure(data: Path, max_token_num: int, max_attr_length: int, repeats: int) -> dict:
    from textrec.config import load_config
    from textrec.data.batching import EvalBatcher, TrainBatcher
    from textrec.data.dataset import Dataset
    from textrec.data.split import eval_examples
    from textrec.models.recformer import Tokens
    from textrec.train.inputs import build_model, load_item_inputs
    from textrec.train.run import make_batchers

    torch.set_num_threads(1)
    overrides = [f"model.max_token_num={max_token_num}", f"model.max_attr_length={max_attr_length}", "train.batch_size=16"]
    cfg = load_config("recformer-reference", overrides)
    inputs, _ = load_item_inputs(cfg, [data])
    torch.manual_seed(0)
    model = build_model(cfg, inputs)
    ds = Dataset.load(data)
    valid = EvalBatcher(eval_examples(ds, "valid", cfg.data.max_seq_len), 256, "cpu")
    batches = list(valid)
    # token positions a validation pass computes: chunks in item-count order padded to the batch's widest row,
    # against groups by token count (padding included in both)
    budget = cfg.model_config.encode_tokens
    padded = {"items": 0, "tokens": 0, "real": 0}
    for eb in batches:
        t = model.sequence_tokens(eb.batch.item_seq, eb.batch.seq_len)
        B, W = t.ids.shape
        padded["items"] += B * W
        padded["tokens"] += B * W if B * W <= budget else sum(len(r) * w for r, w in model.token_groups(t.real.sum(dim=1)))
        padded["real"] += int(t.real.sum())
    middle = batches[len(batches) // 8].batch  # 256 short histories (one item count): widths vary the most
    tok = model.sequence_tokens(middle.item_seq, middle.seq_len)

    # 1. last layer for <s> alone: forward + backward of 16 rows (training mode, the batch's rows of most tokens)
    rows = torch.argsort(tok.real.sum(dim=1), descending=True)[:16]
    train_tok = Tokens(*(t[rows] for t in tok))
    model.train()

    def step(bos_only: bool):
        model.zero_grad(set_to_none=True)
        model.hidden(train_tok, bos_only=bos_only)[:, 0].square().sum().backward()

    last = {True: [], False: []}
    for _ in range(repeats):  # interleaved: a load change on the machine hits both
        for flag in (False, True):
            last[flag] += _timed(lambda flag=flag: step(flag), 1)

    # 2. evaluation rows grouped by token count, against the chunks in item-count order padded to the batch's width
    model.eval()

    def old_pooled():
        n = max(1, cfg.model_config.encode_tokens // tok.ids.shape[1])
        return torch.cat([model.pool(Tokens(*(t[i : i + n] for t in tok))) for i in range(0, tok.ids.shape[0], n)])

    grouped = {"old": [], "new": []}
    with torch.no_grad():
        for _ in range(repeats):
            grouped["old"] += _timed(old_pooled, 1)
            grouped["new"] += _timed(lambda: model._pooled(tok), 1)
        same = float((torch.nn.functional.normalize(old_pooled(), dim=-1) - model._pooled(tok)).abs().max())

    # 3. training buckets by token count: token positions computed in an epoch, against buckets by item count
    train_b, _, _ = make_batchers(ds, cfg, "cpu", model=model)
    sizes = train_b.sizes.clone()
    by_items = TrainBatcher.__new__(TrainBatcher)
    by_items.__dict__.update(train_b.__dict__)
    by_items.sizes = by_items.lengths
    by_items.generator = torch.Generator().manual_seed(0)
    train_b.generator = torch.Generator().manual_seed(0)
    cost = lambda plan: sum(len(r) * int(sizes[r].max()) for r in plan)
    plan = train_b.plan()
    positions = {"items": cost(by_items.plan()), "tokens": cost(plan), "real": int(sum(int(sizes[r].sum()) for r in plan))}

    med = statistics.median
    return {
        "setting": {"max_token_num": max_token_num, "max_attr_length": max_attr_length, "threads": 1, "repeats": repeats,
                    "eval_batch_width": int(tok.ids.shape[1]), "eval_batch_items": int(middle.seq_len[0])},
        "last_layer_bos_only": {"whole_s": med(last[False]), "bos_only_s": med(last[True]),
                                "speedup": med(last[False]) / med(last[True])},
        "eval_rows_by_tokens": {"item_order_s": med(grouped["old"]), "token_groups_s": med(grouped["new"]),
                                "speedup": med(grouped["old"]) / med(grouped["new"]), "max_abs_difference": same,
                                "pass_positions_by_items": padded["items"], "pass_positions_by_tokens": padded["tokens"],
                                "pass_real_tokens": padded["real"], "pass_ratio": padded["items"] / padded["tokens"]},
        "train_buckets_by_tokens": {"positions_by_items": positions["items"], "positions_by_tokens": positions["tokens"],
                                    "real_tokens": positions["real"], "ratio": positions["items"] / positions["tokens"]},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=WORK / "data" / "scientific", help="a prepared Scientific dataset")
    p.add_argument("--max-token-num", type=int, default=192)
    p.add_argument("--max-attr-length", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()
    import os

    load_before = os.getloadavg()[0]
    res = measure(args.data, args.max_token_num, args.max_attr_length, args.repeats)
    res["load_average"] = [load_before, os.getloadavg()[0]]  # 1-minute load at start and end: other jobs beside it
    print(json.dumps(res, indent=2))
    if args.no_write:
        return
    import recformer_scientific as rs

    path = ROOT / "benchmarks" / "results" / "recformer_scientific.json"
    old = json.loads(path.read_text())
    result = save_result(path, {**old, "runs": {}, "commands": [], "facts": {"savings": {**res, "machine": machine()}}})
    update_results("recformer_scientific", rs.render(result))


if __name__ == "__main__":
    main()
