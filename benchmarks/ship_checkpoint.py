"""Package a finished pre-training run as a checkpoint shipped with textrec (``textrec pretrained`` lists them).

    python benchmarks/ship_checkpoint.py RUN --name seqrecbench-vqrec [--out-root DIR] [--terms TEXT | --terms-file FILE]
        [--command "textrec pretrain ..."] [--check-data DIR ...] [--check-users 512] [--budget-mb 60] [--overwrite]

Writes ``src/textrec/pretrained/NAME/`` (or ``--out-root``/NAME; ``$TEXTREC_PRETRAINED_DIR`` also moves the
default): the weights without the pre-training catalogue's tensors, in float16 or bfloat16 only where their scores
match float32 within 1e-3 on the run's validation users, the bundled quantiser, the config less machine paths,
checksums and a card (card.json, CARD.md). Refuses, in one line, when all shipped checkpoints together would exceed
``--budget-mb``. ``textrec.pretrained.packaging.package`` does the work; the terms default to those of
``../shared/data/seqrecbench`` (its SOURCE.md), the corpus the shipped checkpoints are pre-trained on.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

SEQRECBENCH_TERMS = (
    "Pre-trained on SeqRecBench (github.com/Tiny-Snow/SeqRecBenchmark-Datasets, MIT licence). The underlying data "
    "keep their own terms: Amazon reviews 2014 and 2018 (McAuley lab, research use), Food.com recipes (Kaggle, "
    "Majumder et al. 2019), MovieLens-1M (GroupLens terms of use), Steam v2 (McAuley lab). For research use only; "
    "the checkpoint holds no item texts or interactions of the corpus."
)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="a finished `textrec pretrain` run directory")
    p.add_argument("--name", required=True, help="the shipped name, e.g. seqrecbench-vqrec")
    p.add_argument("--out-root", help="folder of shipped checkpoints (default: the package's, or $TEXTREC_PRETRAINED_DIR)")
    p.add_argument("--terms", default=None, help="the pre-training data's terms (default: SeqRecBench's)")
    p.add_argument("--terms-file", help="read the terms from this file instead")
    p.add_argument("--command", help="the command that made the run (default: rebuilt from its config)")
    p.add_argument("--check-data", nargs="+", metavar="DIR", help="datasets for the reduced-precision check (default: "
                   "the run's own sources)")
    p.add_argument("--check-users", type=int, default=512, help="validation users the check scores (default 512)")
    p.add_argument("--float32", action="store_true", help="store float32 weights without trying reduced precision")
    p.add_argument("--budget-mb", type=float, default=60.0, help="all shipped checkpoints together at most (default 60)")
    p.add_argument("--overwrite", action="store_true", help="replace a shipped checkpoint of the same name")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    args = p.parse_args(argv)

    import logging

    from textrec.errors import TextrecError
    from textrec.pretrained.packaging import HALF_DTYPES, package

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    terms = Path(args.terms_file).read_text(encoding="utf-8") if args.terms_file else (args.terms or SEQRECBENCH_TERMS)
    made_with = " ".join(["python benchmarks/ship_checkpoint.py", shlex.quote(Path(args.run).name), "--name", args.name]
                         + (["--float32"] if args.float32 else [])
                         + ([f"--check-users {args.check_users}"] if args.check_users != 512 else []))
    try:
        res = package(args.run, args.name, args.out_root, terms=terms, command=args.command, packaged_with=made_with,
                      check_data=args.check_data, check_users=args.check_users, dtypes=() if args.float32 else HALF_DTYPES,
                      budget_mb=args.budget_mb, overwrite=args.overwrite)
    except TextrecError as e:
        print(f"ship_checkpoint: error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(res.to_dict(), indent=2))
    print(f"wrote {res.path} ({res.model}, {res.dtype} weights, {res.size_bytes / 2**20:.1f} MB; all shipped "
          f"checkpoints {res.total_bytes / 2**20:.1f} MB)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
