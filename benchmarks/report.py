"""The results report: docs/RESULTS.md's headline tables and the figures, from benchmarks/results/*.json.

    python benchmarks/report.py            # rewrite the headline section of docs/RESULTS.md and docs/figures/*.png
    python benchmarks/report.py --check    # exit 1 when the committed headline section differs from the JSON

Nothing here trains or measures: every number is read from the results JSON that the benchmark scripts
write (``benchmarks/results/<section>.json``), so the headline can never disagree with the sections below it.
Each headline row names the section (and so the script and command) that produced it. Figures are PNGs
rendered with matplotlib (Agg backend, no display needed):

* ``accuracy.png``: test R@10 per model on Amazon Scientific, each seed a dot, the mean a bar, from scratch and
  pre-trained then fine-tuned (the README's figure);
* ``multimodal.png``: the same on the multimodal Scientific subset (CLIP text and image features);
* ``pretrain_gain.png``: the change in test R@10 from pre-training on the SeqRecBench sample, per model and
  target, with the seed range of both arms;
* ``curves.png``: validation curves: Recformer fine-tuning by epoch, and the pre-training runs of the
  SeqRecBench recipe (merged-validation NDCG@10 by epoch).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
RESULTS_MD = ROOT / "docs" / "RESULTS.md"
FIGURES = ROOT / "docs" / "figures"
SECTION = "headline"

# (label, section JSON, run key) per model on full Scientific; "scratch" and "pre-trained" arms.
# The pre-trained arms are the recipe defaults (new index set, learned permutation, encoder frozen).
SCIENTIFIC = [
    ("SASRec (item IDs)", ("sasrec_scientific", "textrec"), None, "1080", "sasrec_scientific"),
    ("UniSRec (MiniLM text, inductive)", ("missrec_scientific", "unisrec-inductive"),
     ("transfer_seqrecbench", "scientific/unisrec-pt-inductive"), "1188", "transfer_seqrecbench"),
    ("VQ-Rec (OPQ codes of MiniLM text)", ("transfer_seqrecbench", "scientific/vqrec"),
     ("transfer_seqrecbench", "scientific/vqrec-pt"), "1211", "transfer_seqrecbench"),
    ("MISSRec (MiniLM text, transductive)", ("missrec_scientific", "missrec-transductive"), None, "1282",
     "missrec_scientific"),
    ("Recformer (from MiniLM, reduced CPU setting)", ("recformer_scientific", "recformer-minilm-reduced-all-users-3seeds"),
     ("recformer_scientific", "recformer-from-recformer-pt-reduced-all-users"), "-", "recformer_scientific"),
]
# published R@10 on Scientific the last column compares with (the papers' own features and corpora)
PUBLISHED_NOTE = ("published: SASRec, UniSRec (pre-trained) and VQ-Rec (pre-trained) from the VQ-Rec paper's Table 2; "
                  "MISSRec from its release's README (CLIP text + image, no pre-training); Recformer reports no Scientific row")
MULTIMODAL = [
    ("SASRec (item IDs)", "sasrec"),
    ("UniSRec transductive (CLIP text + IDs)", "unisrec-transductive"),
    ("VQ-Rec (codes of CLIP text)", "vqrec"),
    ("MISSRec inductive (CLIP text + image)", "missrec-both-inductive"),
    ("MISSRec transductive (CLIP text + image + IDs)", "missrec-both-transductive"),
]
GAINS = [  # (label, target, scratch key, pre-trained key)
    ("UniSRec inductive", "scientific", "unisrec-inductive", "unisrec-pt-inductive"),
    ("UniSRec transductive", "scientific", "unisrec-transductive", "unisrec-pt-transductive"),
    ("VQ-Rec", "scientific", "vqrec", "vqrec-pt"),
    ("VQ-Rec, reused index set", "scientific", "vqrec", "vqrec-pt-reuse"),
    ("VQ-Rec, 7 Amazon domains only", "scientific", "vqrec", "vqrec-pt-no-food-movielens-steam"),
    ("VQ-Rec", "office", "vqrec", "vqrec-pt"),
]


def load(section: str) -> dict:
    path = RESULTS / f"{section}.json"
    if not path.exists():
        raise SystemExit(f"report.py: {path.relative_to(ROOT)} is missing (run the benchmark that writes it)")
    return json.loads(path.read_text())


def runs_of(section: str, key: str) -> list[dict]:
    data = load(section)
    runs = data[key] if key == "textrec" else data["runs"].get(key)
    if not runs:
        raise SystemExit(f"report.py: no runs {key!r} in benchmarks/results/{section}.json")
    return runs


def r10(runs: list[dict], metric: str = "recall@10") -> list[float]:
    return [r["test"][metric] for r in runs]


def cell(values: list[float]) -> str:
    """mean (min-max, n seeds) or the single value (1 seed)."""
    if len(values) == 1:
        return f"{values[0]:.4f} (1 seed)"
    return f"{statistics.mean(values):.4f} ({min(values):.4f}-{max(values):.4f}, {len(values)} seeds)"


def headline_markdown() -> str:
    lines = ["## Headline", "",
             "Written by `python benchmarks/report.py` from `benchmarks/results/*.json`; each row names the section below "
             "that holds its runs, commands and machine. Test split, full ranking over the whole catalogue, the best "
             "epoch chosen on validation NDCG@10; a cell is the mean over seeds with the seeds' range.", "",
             "**Amazon Scientific** (8,442 users, 4,385 items; test R@10, mean (range, seeds); CPU, no GPU):", "",
             "| model | from scratch | pre-trained, then fine-tuned | N@10 from scratch | published R@10 | section |",
             "|---|---|---|---|---|---|"]
    for label, scratch, pt, published, section in SCIENTIFIC:
        s_runs = runs_of(*scratch)
        pt_cell = cell(r10(runs_of(*pt))) if pt else "-"
        pub = f"0.{published}" if published != "-" else "-"
        lines.append(f"| {label} | {cell(r10(s_runs))} | {pt_cell} | {statistics.mean(r10(s_runs, 'ndcg@10')):.4f} | "
                     f"{pub} | `{section}` |")
    lines += ["", f"Pre-trained arms: UniSRec and VQ-Rec on a 2,000-users-per-domain sample of the ten-domain SeqRecBench "
              f"corpus (`transfer_seqrecbench`), Recformer on a 200-users-per-domain sample (`recformer_scientific`). "
              f"Recformer ran in a reduced CPU setting (128 tokens, 5 epochs). {PUBLISHED_NOTE}.", ""]

    lines += ["**Multimodal Scientific subset** (2,928 users, 1,585 items with CLIP text and image features; "
              "section `missrec_multimodal`):", "", "| model | test R@10 | test N@10 |", "|---|---|---|"]
    for label, key in MULTIMODAL:
        runs = runs_of("missrec_multimodal", key)
        lines.append(f"| {label} | {cell(r10(runs))} | {statistics.mean(r10(runs, 'ndcg@10')):.4f} |")

    lines += ["", "**Transfer**: test R@10 after pre-training on the SeqRecBench sample against the same model from "
              "scratch (section `transfer_seqrecbench`):", "", "| model | target | scratch | pre-trained | change |",
              "|---|---|---|---|---|"]
    for label, target, scratch, pt in GAINS:
        a, b = r10(runs_of("transfer_seqrecbench", f"{target}/{scratch}")), r10(runs_of("transfer_seqrecbench", f"{target}/{pt}"))
        change = statistics.mean(b) / statistics.mean(a) - 1
        beyond = "beyond both seed ranges" if min(b) > max(a) else "within the seed ranges"
        lines.append(f"| {label} | {target} | {statistics.mean(a):.4f} | {statistics.mean(b):.4f} | {change:+.1%} ({beyond}) |")

    sas = load("sasrec_scientific")
    ours = statistics.mean(r["seconds_per_epoch"] for r in sas["textrec"])
    theirs = sas["recbole_speed"]["seconds_per_epoch"]
    lines += ["", f"**Speed**: a SASRec epoch on Scientific takes {ours:.1f} s in textrec against {theirs:.0f} s in RecBole "
              f"1.2.1 on the same 2-core CPU ({theirs / ours:.0f}x; same optimiser steps; section `sasrec_scientific`)."]
    lines += scale_lines()
    lines += ["", "![test R@10 per model on Scientific, each seed a dot](figures/accuracy.png)", ""]
    return "\n".join(lines)


def scale_lines() -> list[str]:
    """The pre-training scale line: throughput before/after on the ten-domain corpus, its first whole-corpus epochs,
    and the largest synthetic corpus (sections ``pretrain_throughput``, ``seqrecbench``, ``scaling``); nothing for a
    section not measured yet."""
    have = {name: (RESULTS / f"{name}.json").exists() for name in ("pretrain_throughput", "seqrecbench", "scaling")}
    if not all(have.values()):
        return []
    thr = load("pretrain_throughput")["rows"]
    speed = ", ".join(f"{m} {r['after']['targets_per_cpu_s'] / r['before']['targets_per_cpu_s']:.1f}x" for m, r in thr.items())
    steps = load("seqrecbench")["steps"]
    epochs = []
    for model in ("vqrec", "unisrec"):
        step = next((x for k, x in steps.items() if k.startswith(f"pretrain-{model}-pt")), None)
        if step and step.get("curve"):
            train = step.get("train_seconds_per_epoch") or step["seconds_per_epoch"]
            threads = re.search(r"train\.num_threads=(\d+)", step["command"])
            epochs.append(f"{model} {train / 60:.0f} min of training and {(step['seconds_per_epoch'] - train) / 60:.0f} of "
                          f"validation an epoch{f' on {threads.group(1)} thread(s)' if threads else ''}, "
                          f"peak {step['peak_rss_mb'] / 1024:.1f} GiB")
    idle = ""
    if (RESULTS / "pretrain_epoch.json").exists():
        best = {}
        for r in load("pretrain_epoch")["rows"]:
            if r["model"] not in best or r["projected_epoch_seconds"] < best[r["model"]]["projected_epoch_seconds"]:
                best[r["model"]] = r
        idle = ("; with the machine otherwise idle, an epoch's training projects to " + ", ".join(
            f"{m} {r['projected_epoch_seconds'] / 60:.1f} min on {r['processes']} process(es)" for m, r in best.items())
            + " (section `pretrain_epoch`)")
    big = max(load("scaling")["rows"], key=lambda r: r["users"])
    peak = max(r["peak_memory_mb"] for r in load("scaling")["rows"] if r["users"] == big["users"])
    return ["", f"**Scale**: pre-training on the ten-domain corpus (4,088,624 interactions, 195,979 items) computes "
                f"{speed} more training targets per CPU second than before (padding removed; section `pretrain_throughput`); "
                f"its first whole-corpus epochs on the shared 2-core CPU: {'; '.join(epochs)} (section `seqrecbench`){idle}; "
                f"a {big['users']:,}-user, {big['items']:,}-item synthetic corpus pre-trains in at most "
                f"{peak / 1024:.1f} GiB (section `scaling`)."]


def replace_section(text: str, markdown: str) -> str:
    block = f"<!-- {SECTION}:start -->\n{markdown.rstrip()}\n<!-- {SECTION}:end -->"
    pattern = re.compile(rf"<!-- {SECTION}:start -->.*?<!-- {SECTION}:end -->", re.S)
    if not pattern.search(text):
        raise SystemExit(f"report.py: docs/RESULTS.md has no <!-- {SECTION}:start --> ... <!-- {SECTION}:end --> block")
    return pattern.sub(lambda _: block, text)


# ---- figures ------------------------------------------------------------------------------------


def _seed_bars(ax, groups: list[tuple[str, list[float]]], colour: str, offset: float, width: float, label: str):
    """A bar at each group's mean and a dot per seed."""
    for i, (_, values) in enumerate(groups):
        if not values:
            continue
        x = i + offset
        ax.bar(x, statistics.mean(values), width, color=colour, alpha=0.55, label=label)
        ax.plot([x] * len(values), values, "o", color="black", markersize=3.5)
        label = None  # one legend entry per arm


def figure_accuracy(plt) -> Path:
    fig, ax = plt.subplots(figsize=(8.5, 3.8))
    names = [label.split(" (")[0] for label, *_ in SCIENTIFIC]
    scratch = [(n, r10(runs_of(*s))) for n, (_, s, *_rest) in zip(names, SCIENTIFIC)]
    pt = [(n, r10(runs_of(*p)) if p else []) for n, (_, _s, p, *_rest) in zip(names, SCIENTIFIC)]
    _seed_bars(ax, scratch, "tab:blue", -0.2, 0.38, "from scratch")
    _seed_bars(ax, pt, "tab:orange", 0.2, 0.38, "pre-trained, fine-tuned")
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel("test Recall@10")
    ax.set_ylim(0.08, None)
    ax.set_title("Amazon Scientific, full ranking over 4,385 items (dots: seeds)")
    ax.legend(loc="lower right", fontsize=8)
    return _save(plt, fig, "accuracy.png")


def figure_multimodal(plt) -> Path:
    fig, ax = plt.subplots(figsize=(8.5, 3.8))
    groups = [(label, r10(runs_of("missrec_multimodal", key))) for label, key in MULTIMODAL]
    _seed_bars(ax, groups, "tab:green", 0.0, 0.6, None)
    ax.set_xticks(range(len(groups)), [g[0].replace(" (", "\n(") for g in groups], fontsize=7)
    ax.set_ylabel("test Recall@10")
    ax.set_ylim(0.10, None)
    ax.set_title("Multimodal Scientific subset, 1,585 items (dots: seeds)")
    return _save(plt, fig, "multimodal.png")


def figure_gain(plt) -> Path:
    fig, ax = plt.subplots(figsize=(8.5, 3.6))
    labels, means, lows, highs = [], [], [], []
    for label, target, scratch, pt in GAINS:
        a, b = r10(runs_of("transfer_seqrecbench", f"{target}/{scratch}")), r10(runs_of("transfer_seqrecbench", f"{target}/{pt}"))
        base = statistics.mean(a)
        labels.append(label.replace(", ", ",\n") + f"\n-> {target}")
        means.append(100 * (statistics.mean(b) / base - 1))
        lows.append(100 * (min(b) / max(a) - 1))  # the worst pre-trained seed against the best scratch seed
        highs.append(100 * (max(b) / min(a) - 1))
    x = range(len(labels))
    ax.bar(x, means, 0.6, color=["tab:orange" if lo > 0 else "tab:gray" for lo in lows])
    ax.errorbar(x, means, yerr=[[m - lo for m, lo in zip(means, lows)], [h - m for m, h in zip(means, highs)]],
                fmt="none", ecolor="black", capsize=3)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(list(x), labels, fontsize=7)
    ax.set_ylabel("change in test R@10 (%)")
    ax.set_title("Pre-training on the SeqRecBench sample (bars: mean; whiskers: worst to best seed pairing)")
    return _save(plt, fig, "pretrain_gain.png")


def figure_curves(plt) -> Path:
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    rec = load("recformer_scientific")["runs"]
    for key, label in [("recformer-minilm-reduced-all-users-3seeds", "from MiniLM, lr 1e-4"),
                       ("recformer-minilm-reduced-all-users-12ep", "from MiniLM, lr 5e-5"),
                       ("recformer-from-recformer-pt-reduced-all-users", "pre-trained, lr 1e-4")]:
        for i, run in enumerate(rec[key]):
            epochs, recall = [c[0] for c in run["curve"]], [c[1] for c in run["curve"]]
            left.plot(epochs, recall, "o-", markersize=3, label=label if i == 0 else None,
                      color={"from MiniLM, lr 1e-4": "tab:blue", "from MiniLM, lr 5e-5": "tab:purple"}.get(label, "tab:orange"))
    sas = statistics.mean(r["valid"]["recall@10"] for r in load("sasrec_scientific")["textrec"])
    left.axhline(sas, color="gray", linestyle="--", label="SASRec (best epoch)")
    left.set(xlabel="epoch", ylabel="validation R@10", title="Recformer fine-tuning on Scientific")
    left.legend(fontsize=7)
    steps = load("seqrecbench_u2000")["steps"]
    for name, step in steps.items():
        if "curve" in step:
            points = [(c["epoch"], c["valid_ndcg@10"]) for c in step["curve"] if c.get("valid_ndcg@10") is not None]
            right.plot([e for e, _ in points], [v for _, v in points], "o-", markersize=3,
                       label=name.removeprefix("pretrain-"))
    right.set(xlabel="epoch", ylabel="merged-validation N@10", title="Pre-training on the SeqRecBench sample")
    right.legend(fontsize=7)
    return _save(plt, fig, "curves.png")


def _save(plt, fig, name: str) -> Path:
    FIGURES.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    path = FIGURES / name
    # no timestamp or software version in the file, so an unchanged figure is byte-for-byte unchanged
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="only check that docs/RESULTS.md's headline matches the JSON")
    p.add_argument("--no-figures", action="store_true", help="rewrite the headline only")
    args = p.parse_args(argv)
    text = RESULTS_MD.read_text()
    new = replace_section(text, headline_markdown())
    if args.check:
        if new != text:
            print("docs/RESULTS.md's headline differs from benchmarks/results/*.json: run python benchmarks/report.py",
                  file=sys.stderr)
            return 1
        return 0
    RESULTS_MD.write_text(new)
    print(f"wrote {RESULTS_MD.relative_to(ROOT)} (section {SECTION})")
    if not args.no_figures:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        for make in (figure_accuracy, figure_multimodal, figure_gain, figure_curves):
            print(f"wrote {make(plt).relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
