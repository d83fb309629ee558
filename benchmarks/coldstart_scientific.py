"""Cold-start items on Amazon Scientific: a slice of the catalogue held out of training entirely (issue 13, item 5).

``textrec holdout`` removes a seeded 10% of Scientific's items from every training sequence and catalogue
(``$WORK/data/scientific-holdout/train``) and makes an evaluation dataset with the whole catalogue in which a user
whose last item was held out gets it back as the test target (``.../eval``). Each inductive model is trained on
the train dataset and ranks the whole eval catalogue with ``textrec evaluate RUN --data EVAL`` (the held-out items'
vectors come from their text only); the table gives the held-out targets and the seen (warm) targets apart, beside
chance. No item-ID model can rank an item it never saw: SASRec and the transductive modes are refused there, and
the table says so rather than showing a number.

Rows: UniSRec inductive, VQ-Rec (OPQ codes fitted on the train catalogue's MiniLM embeddings; the held-out items
encoded with the same quantiser), MISSRec inductive (MiniLM text only), from scratch; with ``--init MODEL=RUN``
also fine-tuned from a pre-trained checkpoint (``textrec finetune``; VQ-Rec then reads the train catalogue's own
codes, the paper's new index set) and that checkpoint zero-shot (VQ-Rec then reads the eval items coded by the
pre-training's own quantiser, ``RUN/quantizer.index``); with the ``seen`` group a reference where the held-out items
were *not* held out: UniSRec inductive trained on all of Scientific, evaluated on the same eval dataset (so the
cost of never having seen an item shows).

    python benchmarks/coldstart_scientific.py --seeds 2020 2021 2022
    python benchmarks/coldstart_scientific.py --init unisrec=RUN vqrec=RUN --skip scratch seen --resume
    python benchmarks/coldstart_scientific.py --smoke --no-write      # 1 seed, 1 small epoch
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from _common import (ROOT, _shorten_path, SHARED_DATA, WORK, add_result_args, command_line, finished, fmt, machine, machine_line, prepare, previous_runs,
                     render_saved, save_result, textrec, update_results)

SECTION = "coldstart_scientific"
FRACTION, HOLDOUT_SEED = 0.1, 0
SMOKE = ["train.epochs=1", "model.hidden_size=32", "model.inner_size=32"]
MODELS = {  # key -> (model, overrides, label)
    "unisrec": ("unisrec", ["data.embeddings=minilm-mean", "model.mode=inductive"], "UniSRec inductive (MiniLM text)"),
    "vqrec": ("vqrec", ["data.codes=opq"], "VQ-Rec (OPQ codes of the MiniLM text, 32 x 256)"),
    "missrec": ("missrec", ["data.embeddings=minilm-mean", "model.text_feature=embeddings", "model.image_feature=",
                            "model.mode=inductive", "train.batch_size=512"], "MISSRec inductive (MiniLM text)"),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[2020, 2021, 2022])
    p.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    p.add_argument("--skip", nargs="*", default=[], help="row groups to skip: scratch seen pretrained")
    p.add_argument("--init", nargs="*", default=[], metavar="MODEL=RUN",
                   help="pre-trained checkpoints (textrec pretrain output) to fine-tune from and to run zero-shot")
    add_result_args(p, SECTION, SMOKE)
    args = p.parse_args()
    path = ROOT / "benchmarks" / "results" / f"{args.section}.json"
    if args.render_only:
        return render_saved(path, args.section, render, args.no_write)
    inits = dict(x.split("=", 1) for x in args.init)
    unknown = set(inits) - set(MODELS)
    if unknown:
        p.error(f"--init: unknown model(s) {sorted(unknown)}")
    run(args, path, inits)


def run(args, path: Path, inits: dict) -> None:
    seeds = args.seeds[:1] if args.smoke else args.seeds
    runs, cmds, _ = previous_runs(path, args.resume)
    argv = [a.replace(str(WORK), "$WORK") for a in sys.argv if a != "--resume"]  # no machine paths (--init MODEL=RUN)
    sci = prepare("scientific", SHARED_DATA / "amazon-scientific-unisrec", "unisrec")
    cold = WORK / "data" / "scientific-holdout"
    train_dir, eval_dir = cold / "train", cold / "eval"
    setup = [("holdout", sci, "--fraction", FRACTION, "--seed", HOLDOUT_SEED, "--out", cold, "--overwrite"),
             ("encode", train_dir), ("encode", eval_dir), ("quantize", train_dir, "--name", "opq"),
             ("quantize", eval_dir, "--quantizer", train_dir / "codes" / "opq.index", "--name", "opq")]
    done = [(eval_dir / "meta.json"), train_dir / "embeddings" / "minilm-mean.npy", eval_dir / "embeddings" / "minilm-mean.npy",
            train_dir / "codes" / "opq.npy", eval_dir / "codes" / "opq.npy"]
    for step, marker in zip(setup, done):
        line = command_line(*step)
        if line not in cmds:
            cmds.append(line)
        if not marker.exists():
            textrec(*step)
    facts = json.loads((train_dir / "meta.json").read_text())["holdout"]
    facts.update(eval_items=json.loads((eval_dir / "meta.json").read_text())["n_items"])
    if isinstance(facts.get("source"), dict) and "path" in facts["source"]:  # no machine paths in the committed results
        facts["source"]["path"] = _shorten_path(str(facts["source"]["path"]))

    def save():
        result = {"section": args.section, "smoke": args.smoke, "machine": machine(), "runs": runs, "commands": cmds,
                  "argv": argv, "facts": facts}
        md = render(save_result(path, result))
        if not args.no_write:
            update_results(args.section, md)
        return md

    def record(key, seed, cmd, out):
        res = textrec(*cmd)
        ev = textrec("evaluate", out, "--data", eval_dir)
        row = {"run": res["run"], "epochs_run": res.get("epochs_run"), "best_epoch": res.get("best_epoch"),
               "seconds_per_epoch": res.get("seconds_per_epoch"), "test": {k: ev[k] for k in ("recall@10", "ndcg@10", "recall@50", "ndcg@50")},
               "held_out": ev["held_out"], "seen": ev["seen"], "users": ev["users"]}
        if key not in runs:
            cmds.extend(c for c in (command_line(*cmd), command_line("evaluate", out, "--data", eval_dir)) if c not in cmds)
        runs.setdefault(key, []).append(row)
        print(f"{key} seed {seed}: held-out R@10 {ev['held_out']['recall@10']:.4f}, seen R@10 {ev['seen']['recall@10']:.4f}",
              file=sys.stderr)
        save()

    smoke = SMOKE if args.smoke else []
    for seed in seeds:
        for key in args.models:
            model, extra, _ = MODELS[key]
            base = [f"train.seed={seed}", *extra, *smoke, "--overwrite", "--quiet"]
            if "scratch" not in args.skip and not finished(runs, key, seed):
                out = WORK / "runs" / args.section / f"{key}-{seed}"
                record(key, seed, ["train", train_dir, "--model", model, "--out", out, *base], out)
            if "seen" not in args.skip and key == "unisrec" and not finished(runs, "unisrec-seen", seed):
                out = WORK / "runs" / args.section / f"unisrec-seen-{seed}"
                record("unisrec-seen", seed, ["train", sci, "--model", model, "--out", out, *base], out)
            if "pretrained" not in args.skip and key in inits and not finished(runs, f"{key}-pt", seed):
                out = WORK / "runs" / args.section / f"{key}-pt-{seed}"
                record(f"{key}-pt", seed, ["finetune", train_dir, "--init", inits[key], "--out", out, *base], out)
    for key, init in inits.items():  # zero-shot: the pre-trained checkpoint as it is
        if "pretrained" in args.skip or f"{key}-zeroshot" in runs:
            continue
        if key == "vqrec":  # zero-shot VQ-Rec reads the eval items coded by the pre-training's own (joint) quantiser
            codes, quantizer = pretraining_codes(Path(init))
            if quantizer is None:
                print(f"vqrec zero-shot: not run ({init} names no quantiser file that still exists)", file=sys.stderr)
                continue
            quantize = ("quantize", eval_dir, "--embeddings", "minilm-mean", "--quantizer", quantizer, "--name", codes)
            if not (eval_dir / "codes" / f"{codes}.npy").exists():
                textrec(*quantize)
            cmds.append(command_line(*quantize))
        ev = textrec("evaluate", init, "--data", eval_dir)
        runs[f"{key}-zeroshot"] = [{"run": f"{Path(init).name}-zeroshot", "test": {k: ev[k] for k in ("recall@10", "ndcg@10", "recall@50", "ndcg@50")},
                                    "held_out": ev["held_out"], "seen": ev["seen"], "users": ev["users"]}]
        cmds.append(command_line("evaluate", init, "--data", eval_dir))
    print(save())


def pretraining_codes(run: Path) -> tuple[str, Path | None]:
    """(codes name, quantiser file) of a pre-trained VQ-Rec run: its bundled quantizer.index, else the joint
    quantiser file its config records (runs pre-trained before textrec bundled it)."""
    config = json.loads((run / "config.json").read_text())
    codes = config["item_inputs"]["codes"][0]
    if (run / "quantizer.index").is_file():
        return codes, run / "quantizer.index"
    kind, _, rest = config["item_inputs"].get("quantizer", "").partition(":")
    path = Path(rest.rpartition(":")[0]) if kind == "joint" else None
    return codes, path if path is not None and path.is_file() else None


# ---- rendering ---------------------------------------------------------------------------------------------------------


def labels() -> dict:
    out = {}
    for key, (_, _, label) in MODELS.items():
        out[key] = f"{label}, from scratch on the train dataset"
        out[f"{key}-pt"] = f"{label}, pre-trained, fine-tuned on the train dataset"
        out[f"{key}-zeroshot"] = f"{label}, pre-trained, zero-shot (no fine-tuning)"
    out["vqrec-zeroshot"] = "VQ-Rec, pre-trained, zero-shot (no fine-tuning; the items coded by the pre-training's joint quantiser)"
    out["unisrec-seen"] = "reference: UniSRec inductive trained on all of Scientific (held-out items seen in training)"
    return out


def mean(rows: list[dict], group: str, metric: str) -> float:
    return sum(r[group][metric] for r in rows) / len(rows)


def render(r: dict) -> str:
    runs, f = r["runs"], r["facts"]
    smoke = (" — **smoke run** (" + " ".join(SMOKE) + "; checks the script, the numbers mean nothing)") if r.get("smoke") else ""
    lines = [f"## Cold-start items on Amazon Scientific: {f['fraction']:.0%} of the catalogue held out of training{smoke}", "",
             f"Machine: {machine_line(r['machine'])}. Script: `python {' '.join(r['argv'])}` (means over seeds).", "",
             f"`textrec holdout` (seed {f['seed']}): {f['held_out_items']:,} of {f['eval_items']:,} items never occur in training "
             f"(not in any sequence, not in the training catalogue); {f['cold_test_users']:,} users have one of them as their "
             f"test target (held-out targets), the others a seen item; {f['dropped_users']:,} users dropped (fewer than 3 "
             f"interactions left). Chance for a held-out target: R@10 {10 / f['eval_items']:.4f}. SASRec and the transductive "
             "modes cannot rank an item they never saw (`textrec evaluate` refuses them on this catalogue), so they have "
             "no row.", "",
             "| model | held-out R@10 | held-out N@10 | held-out R@50 | held-out N@50 | seen R@10 | seen N@10 | all R@10 | seeds (held-out R@10 span) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for key, label in labels().items():
        rows = runs.get(key)
        if not rows:
            continue
        vals = [x["held_out"]["recall@10"] for x in rows]
        span = f" ({min(vals):.4f}-{max(vals):.4f})" if len(rows) > 1 else ""
        cells = [fmt(mean(rows, "held_out", m)) for m in ("recall@10", "ndcg@10", "recall@50", "ndcg@50")]
        cells += [fmt(mean(rows, "seen", m)) for m in ("recall@10", "ndcg@10")] + [fmt(mean(rows, "test", "recall@10"))]
        lines.append(f"| {label} | {' | '.join(cells)} | {len(rows)}{span} |")
    lines += ["", "Commands (first seed; `$WORK` = benchmarks/.work):", "", "```", *r["commands"], "```"]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
