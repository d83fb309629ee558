"""Write a synthetic corpus of any size (``textrec.data.synthetic.make_corpus``) as a dataset directory.

    python benchmarks/make_corpus.py --users 1000000 --items 500000 --out DIR [--seed 0] [--json]

Log-normal sequence lengths, Zipf item popularity and a topic signal (see ``CorpusSpec``); reports the time,
the peak memory of this process and ``textrec info``'s statistics. Train on it like on any dataset
(``textrec encode DIR --encoder hashing-64`` first for the text-based models).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from textrec.data.synthetic import CorpusSpec, make_corpus  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--users", type=int, default=100_000)
    p.add_argument("--items", type=int, default=50_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args()
    t0 = time.perf_counter()
    ds = make_corpus(CorpusSpec(n_users=args.users, n_items=args.items), seed=args.seed)
    built = time.perf_counter() - t0
    ds.save(args.out, overwrite=args.overwrite)
    stats = {k: v for k, v in ds.statistics().items() if not isinstance(v, dict)}
    report = {"out": str(args.out), "build_seconds": built, "total_seconds": time.perf_counter() - t0,
              "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, **stats}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
