"""Recformer's catalogue encoding at a million items: peak memory bounded by the chunk, not the catalogue.

Recformer's item table is every item's ``<s>`` state, encoded alone (REFERENCE_NOTES section 4); the reference
encodes the whole catalogue in one pass and runs out of memory at 1.5M items (section 6). textrec tokenises
the catalogue in blocks into a per-item token table and encodes it grouped by length, ``model.encode_tokens``
tokens per forward pass. This script builds a Recformer over N synthetic items (three attributes each, a small
random backbone so the measurement is about memory, not about the model) and, in a fresh process per budget,
measures with Linux's /proc/self/status:

* build: the peak resident set while the model and its token table are built (tokenisation included);
* encode: the peak beyond what was resident just before ``item_embeddings()`` (the (N + 1, D) table itself
  is allocated and touched first, so what remains is the working memory of the encoding), and its seconds.

    python benchmarks/recformer_item_table.py                       # 1,000,000 items, budgets 8192 and 65536 tokens
    python benchmarks/recformer_item_table.py --items 200000 --budgets 4096
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

from _common import machine, machine_line, update_results

SMALL = ["model.backbone=random", "model.hidden_size=64", "model.n_heads=4", "model.inner_size=128", "model.n_layers=2"]


def _mb(key: str) -> float:
    return int(re.search(rf"{key}:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) / 1024


def measure(n_items: int, budget: int) -> dict:
    """One budget, in this process: build peak, encode working-memory peak and seconds."""
    import torch

    from textrec.config import load_config
    from textrec.train.inputs import ItemInputs, build_model

    torch.set_num_threads(1)
    start_rss = _mb("VmRSS")
    attrs = [{"title": f"brand{i % 97} cordless drill model {i} with {i % 7 + 2} batteries", "brand": f"brand{i % 97}",
              "category": f"Tools Power Tools {i % 13}"} for i in range(n_items)]
    cfg = load_config(model="recformer", overrides=[*SMALL, f"model.encode_tokens={budget}"])
    torch.manual_seed(0)
    t0 = time.perf_counter()
    model = build_model(cfg, ItemInputs(n_items=n_items, attributes=attrs)).eval()
    build_seconds = time.perf_counter() - t0
    build_peak = _mb("VmHWM")
    del attrs
    model.item_table.fill_(0.0)  # the (N + 1, D) result, resident before the measurement
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current resident set
    before = _mb("VmRSS")
    t0 = time.perf_counter()
    with torch.no_grad():
        table = model.item_embeddings()
    seconds = time.perf_counter() - t0
    return {"items": n_items, "budget": budget, "table_mb": table.numel() * table.element_size() / 2**20,
            "token_table_mb": sum(b.numel() * b.element_size() for n, b in model.named_buffers()
                                  if n.startswith("tok_") or n in ("item_offsets", "item_lengths")) / 2**20,
            "process_start_mb": start_rss, "build_peak_mb": build_peak, "build_seconds": build_seconds,
            "resident_before_encode_mb": before, "encode_extra_peak_mb": _mb("VmHWM") - before, "encode_seconds": seconds}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--items", type=int, default=1_000_000)
    p.add_argument("--budgets", type=int, nargs="+", default=[8192, 65536], help="model.encode_tokens values")
    p.add_argument("--no-write", action="store_true")
    p.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: measure one budget in this process
    args = p.parse_args()
    if not Path("/proc/self/clear_refs").exists():
        sys.exit("recformer_item_table: needs Linux (/proc/self/status and /proc/self/clear_refs) to read peak memory")
    if args.one is not None:
        print(json.dumps(measure(args.items, args.one)))
        return
    rows = []
    for budget in args.budgets:  # a fresh process each: peaks are per process
        out = subprocess.run([sys.executable, __file__, "--items", str(args.items), "--one", str(budget)], capture_output=True,
                             text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), file=sys.stderr)
    table = ["| items | `encode_tokens` | item table MB | token table MB | build peak RSS MB | encode: extra peak MB | encode s |",
             "|---|---|---|---|---|---|---|"]
    table += [f"| {r['items']:,} | {r['budget']:,} | {r['table_mb']:.0f} | {r['token_table_mb']:.0f} | {r['build_peak_mb']:,.0f} | "
              f"{r['encode_extra_peak_mb']:.0f} | {r['encode_seconds']:.0f} |" for r in rows]
    md = "\n".join([
        "## Recformer: encoding a million-item catalogue in chunks",
        "",
        f"Machine: {machine_line(machine())}. Script: `python benchmarks/recformer_item_table.py "
        f"--items {args.items} --budgets {' '.join(map(str, args.budgets))}` (one fresh process per budget).",
        "",
        *table,
        "",
        f"A Recformer with a small random backbone ({' '.join(f'`{o}`' for o in SMALL[1:])}) over {args.items:,} synthetic items "
        "of three attributes (title, brand, category). *Encode: extra peak* is the peak resident memory beyond what was "
        "resident just before `item_embeddings()` (the item table itself already allocated): the working memory of the "
        "encoding, which grows with `model.encode_tokens` and not with the catalogue. *Build peak* is the whole process's "
        "peak while the model and its per-item token table were built (tokenisation in blocks). The reference encodes the "
        "catalogue in one pass and runs out of memory at 1.5M items (REFERENCE_NOTES section 6).",
    ])
    print(md)
    if not args.no_write:
        update_results("recformer_item_table", md)


if __name__ == "__main__":
    main()
