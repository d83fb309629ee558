"""UniSRec on Amazon Scientific: from scratch (inductive, transductive) and after pre-training, with SASRec.

Every row is a `textrec` command (listed under the table). Text: the embedded MiniLM (384-d, mean
pooling); the papers use BERT-base CLS (768-d), not available offline. Pre-training uses the other real
domains available here — Amazon 2014 Office (ReChorus) and MovieLens-100K — not the papers' five large
Amazon 2018 domains (Food, Home, CDs, Kindle, Movies; 14M interactions), which are not available.

    python benchmarks/unisrec_scientific.py --seeds 2020 2021 2022
"""

from __future__ import annotations

import argparse
import json
import sys

from _common import (ROOT, SHARED_DATA, WORK, finished, fmt, machine, machine_line, mean_metrics, metric_row, prepare, pretrained, previous_runs,
                     report_rerun, save_result, textrec, update_results)

PRETRAIN = ["train.epochs=20", "train.patience=5", "data.long_sequences=chunked"]

PT_TITLE = (": pre-trained rows, re-run with domain-stratified, user-diverse pre-training batches (same-user targets are "
            "never negatives; textrec 0.1 after the model-surface review)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[2020, 2021, 2022])
    p.add_argument("--pt-seeds", type=int, nargs="+", default=[2020], help="fine-tuning seeds after pre-training")
    p.add_argument("--skip", nargs="*", default=[], help="row groups to skip: sasrec inductive transductive pretrain")
    p.add_argument("--pt-modes", nargs="+", choices=("inductive", "transductive"), default=["inductive", "transductive"],
                   help="fine-tuning modes after pre-training (e.g. one mode per process, merged with --resume)")
    p.add_argument("--no-write", action="store_true")
    p.add_argument("--section", default="unisrec_scientific",
                   help="docs/RESULTS.md section and benchmarks/results/SECTION.json to write (a subset of rows in its own section)")
    p.add_argument("--resume", action="store_true", help="keep the finished runs of an interrupted invocation")
    p.add_argument("--render-only", action="store_true", help="rewrite the RESULTS.md section from the saved JSON")
    args = p.parse_args()
    if args.render_only:
        result = json.loads((ROOT / "benchmarks" / "results" / f"{args.section}.json").read_text())
        md = render(result, args)
        print(md)
        if not args.no_write:
            update_results(args.section, md)
        return

    sci = prepare("scientific", SHARED_DATA / "amazon-scientific-unisrec", "unisrec")
    runs, cmds, _ = previous_runs(ROOT / "benchmarks" / "results" / f"{args.section}.json", args.resume)
    # the table then holds this invocation's seeds; with --resume, runs an earlier one finished are kept
    argv = [a for a in sys.argv if a != "--resume"]

    def save():  # after every run, so an interrupted benchmark still leaves its finished rows
        result = {"section": args.section, "machine": machine(), "runs": runs, "commands": cmds, "argv": argv}
        result = save_result(ROOT / "benchmarks" / "results" / f"{args.section}.json", result)
        md = render(result, args)
        if not args.no_write:
            update_results(args.section, md)
        return md

    def train(key, model, seed, *extra):
        if finished(runs, key, seed):
            return
        out = WORK / "runs" / "unisrec_scientific" / f"{key}-{seed}"
        res = textrec("train", sci, "--model", model, "--out", out, "--overwrite", "--quiet", f"train.seed={seed}", *extra,
                      log=cmds if seed == args.seeds[0] else None)
        runs.setdefault(key, []).append(res)
        print(f"{key} seed {seed}: {json.dumps(res['test'])}", file=sys.stderr)
        save()

    for seed in args.seeds:
        if "sasrec" not in args.skip:
            train("sasrec", "sasrec", seed)
        if "inductive" not in args.skip:
            train("unisrec-inductive", "unisrec", seed, "model.mode=inductive")
        if "transductive" not in args.skip:
            train("unisrec-transductive", "unisrec", seed, "model.mode=transductive")

    if "pretrain" not in args.skip:
        office = prepare("office", SHARED_DATA / "amazon2014-office-rechorus", "rechorus", word_drop=True)
        ml = prepare("ml100k", SHARED_DATA / "movielens-100k-recbole", "movielens", word_drop=True)
        pt = WORK / "runs" / "unisrec-pretrain-office-ml"
        if not pretrained(runs, "pretrain", pt):
            log = cmds if "pretrain" not in runs else None
            report_rerun(runs, "pretrain", textrec("pretrain", office, ml, "--model", "unisrec", "--out", pt, "--resume", "--quiet",
                                                   *PRETRAIN, log=log))
            save()
        for mode in args.pt_modes:
            for seed in args.pt_seeds:
                if finished(runs, f"unisrec-pt-{mode}", seed):
                    continue
                out = WORK / "runs" / "unisrec_scientific" / f"unisrec-pt-{mode}-{seed}"
                res = textrec("finetune", sci, "--init", pt, "--out", out, "--overwrite", "--quiet", "--mode", mode, "--freeze-encoder",
                              f"train.seed={seed}", log=cmds if seed == args.pt_seeds[0] else None)
                runs.setdefault(f"unisrec-pt-{mode}", []).append(res)
                print(f"pt {mode} seed {seed}: {json.dumps(res['test'])}", file=sys.stderr)
                save()

    print(save())


LABELS = {
    "sasrec": "SASRec (item IDs), scratch",
    "unisrec-inductive": "UniSRec inductive (text only), scratch",
    "unisrec-transductive": "UniSRec transductive (text + ID), scratch",
    "unisrec-pt-inductive": "UniSRec inductive, pre-trained on Office + MovieLens, encoder frozen",
    "unisrec-pt-transductive": "UniSRec transductive, pre-trained on Office + MovieLens, encoder frozen",
}


def pct(x: float, ref: float) -> str:
    return f"{100 * (x - ref) / ref:+.1f}%"


def render(r: dict, args) -> str:
    runs = r["runs"]
    rows = ["| model (MiniLM text) | R@10 | N@10 | R@50 | N@50 | seeds | s / epoch | epochs (best) |", "|---|---|---|---|---|---|---|---|"]
    for key, label in LABELS.items():
        if key not in runs:
            continue
        rs = runs[key]
        m = mean_metrics(rs)
        spread = f" (R@10 {min(x['test']['recall@10'] for x in rs):.4f}-{max(x['test']['recall@10'] for x in rs):.4f})" if len(rs) > 1 else ""
        sec = sum(x["seconds_per_epoch"] for x in rs) / len(rs)
        epochs = ", ".join(f"{x['epochs_run']} ({x['best_epoch']})" for x in rs)
        rows.append(metric_row(label + spread, m, f" {len(rs)} | {sec:.1f} | {epochs} |"))
    pt = runs.get("pretrain", [None])[0]
    lines = [
        "## UniSRec on Amazon Scientific (MiniLM text)" + ("" if r.get("section", "unisrec_scientific") == "unisrec_scientific" else PT_TITLE),
        "",
        f"Machine: {machine_line(r['machine'])}. Script: `python {' '.join(r['argv'])}` (means over seeds).",
        "",
        *rows,
        "",
        "Reference numbers on the same split: UniSRec released code with the same MiniLM features, inductive 0.1201 / 0.0646 / "
        "0.2278 / 0.0880 (1 seed), transductive 0.1072 / 0.0534 / 0.2109 / 0.0758 (3 seeds) (shared/data/README.md); the UniSRec "
        "paper row (BERT text, pre-trained on five Amazon domains, VQ-Rec paper Table 2): 0.1188 / 0.0641 / 0.2394 / 0.0903.",
    ]
    refs = {"unisrec-inductive": (0.1201, 0.0646, "the released code, inductive"),
            "unisrec-transductive": (0.1072, 0.0534, "the released code, transductive")}
    for key, (r10, n10, name) in refs.items():
        if key in runs:
            m = mean_metrics(runs[key])
            lines.append(f"{LABELS[key].split(',')[0]}, mean of {len(runs[key])}: R@10 {pct(m['recall@10'], r10)}, "
                         f"N@10 {pct(m['ndcg@10'], n10)} against {name}.")
    pt_note = False
    for key, base in (("unisrec-pt-inductive", "unisrec-inductive"), ("unisrec-pt-transductive", "unisrec-transductive")):
        if key in runs and base in runs:
            m, b = mean_metrics(runs[key]), mean_metrics(runs[base])
            seeds = f"{len(runs[key])} seed" + ("s" if len(runs[key]) > 1 else "")
            span = max(x["test"]["recall@10"] for x in runs[base]) - min(x["test"]["recall@10"] for x in runs[base])
            lines.append(f"{LABELS[key]} ({seeds}): R@10 {pct(m['recall@10'], b['recall@10'])}, N@10 {pct(m['ndcg@10'], b['ndcg@10'])} "
                         f"against the same mode trained from scratch, whose seeds span {span:.4f} in R@10.")
            pt_note = True
    if pt_note:
        lines.append("The pre-training source here is small and partly off-domain (below), so the pre-trained rows do not "
                     "test the papers' transfer claim; they show that the pre-train -> fine-tune path runs end to end.")
    if pt:
        lines.append(f"Pre-training: {pt['epochs_run']} epochs (best {pt['best_epoch']}; capped at 20 so that it fits a CPU session, "
                     "the reference pre-trains for 300 on far more data) on the union of Office 2014 and MovieLens-100K, "
                     f"{pt['seconds_per_epoch']:.1f} s per epoch; merged-validation N@10 {fmt(pt['valid']['ndcg@10'])}. "
                     "The papers pre-train on five Amazon 2018 domains with 14M interactions, which are not available here; "
                     "these two small domains (150k interactions, one of them movies) are a much weaker source.")
    lines += ["", "Commands (first seed; `$WORK` = benchmarks/.work):", "", "```", *r["commands"], "```"]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
