"""Transfer from the ten-domain SeqRecBench corpus to Amazon Scientific and Office (issue 13, item 3).

Pre-training is ``benchmarks/seqrecbench.py`` (its work folder holds ``runs/<model>-pt[-<variant>]``, the joint
quantiser ``quant/<codes>.index`` and the MiniLM embeddings every model here shares). This script fine-tunes those
checkpoints on each target and sets them against the same models trained from scratch on the target, mean of the
seeds, every row a `textrec` command listed under its table:

* scratch: UniSRec inductive / transductive, VQ-Rec (the target's own OPQ codes), MISSRec inductive /
  transductive (MiniLM text only);
* pre-trained, fine-tuned: the same, with the pre-trained Transformer frozen (the references' default) and, for
  the inductive rows, not frozen (``--no-freeze-encoder``); VQ-Rec with the learned permutation (textrec's
  default) and the reference's (``model.permutation=reference``), on the target's new index set and on the
  pre-training's (``reuse``: the target's items encoded by the joint quantiser);
* zero-shot: each pre-trained checkpoint ranks the target's whole catalogue with no fine-tuning (``textrec
  evaluate PT --data TARGET``; VQ-Rec reads the target's codes made by the joint quantiser), beside chance;
* leave-domains-out (``--variants no-amazon2018 no-food-movielens-steam``): checkpoints the recipe pre-trained
  without those domains, fine-tuned inductively (frozen), to show which sources carry over.

The gain of each pre-trained row over its scratch row is given in percent with both rows' seed spans, beside the
papers' gains on Scientific (VQ-Rec 0.1104 -> 0.1211 R@10, +9.7%; MISSRec 0.1282 -> 0.1360, +6.1%).

    python benchmarks/seqrecbench.py --max-users 5000 --steps prepare,encode,quantize,pretrain-vqrec  # first
    python benchmarks/transfer_seqrecbench.py --max-users 5000 --models vqrec --seeds 2020 2021 2022
    python benchmarks/transfer_seqrecbench.py --smoke --no-write --pt-work DIR     # 1 seed, 1 small epoch

``--rows KEY ...`` runs only those rows (two processes may split the rows or seeds between them with ``--resume``:
their results are merged); ``--scratch-from missrec_scientific`` takes the Scientific UniSRec and MISSRec scratch
rows that benchmark trained with the very same command and seeds instead of training them again.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from _common import (
    ROOT,
    SHARED_DATA,
    WORK,
    add_result_args,
    command_line,
    fmt,
    machine,
    machine_line,
    mean_metrics,
    metric_row,
    prepare,
    previous_runs,
    render_saved,
    save_result,
    textrec,
    update_results,
)

SECTION = "transfer_seqrecbench"
TARGETS = {"scientific": (SHARED_DATA / "amazon-scientific-unisrec", "unisrec"),
           "office": (SHARED_DATA / "amazon2014-office-rechorus", "rechorus")}
EMB = "minilm-mean"  # the recipe's embedding name (seqrecbench.py: <encoder>-mean)
MISSREC = ["model.text_feature=embeddings", "model.image_feature=", "train.batch_size=512"]
VQREC_FT = ["train.lr=0.003"]  # reference README: Scientific, fix_enc, learning_rate 0.003
SMOKE = ["train.epochs=1"]
PAPER_GAINS = {"vqrec": ("VQ-Rec paper, Scientific", 0.1104, 0.1211), "missrec": ("MISSRec README, Scientific", 0.1282, 0.1360)}


def rows(model: str) -> dict:
    """key -> (kind, overrides, label); kind: scratch | pt (fine-tune the checkpoint) | reuse (pt on the joint codes)."""
    if model == "unisrec":
        return {
            "unisrec-inductive": ("scratch", ["model.mode=inductive"], "UniSRec inductive, scratch"),
            "unisrec-transductive": ("scratch", ["model.mode=transductive"], "UniSRec transductive, scratch"),
            "unisrec-pt-inductive": ("pt", ["--mode", "inductive", "--freeze-encoder"], "UniSRec inductive, pre-trained, encoder frozen"),
            "unisrec-pt-transductive": ("pt", ["--mode", "transductive", "--freeze-encoder"],
                                        "UniSRec transductive, pre-trained, encoder frozen"),
            "unisrec-pt-inductive-unfrozen": ("pt", ["--mode", "inductive", "--no-freeze-encoder"],
                                              "UniSRec inductive, pre-trained, encoder trained"),
        }
    if model == "vqrec":
        return {
            "vqrec": ("scratch", ["data.codes=OWN"], "VQ-Rec, scratch (target's own codes)"),
            "vqrec-pt": ("pt", ["data.codes=OWN", *VQREC_FT], "VQ-Rec, pre-trained, new index set, learned permutation, encoder frozen"),
            "vqrec-pt-reference": ("pt", ["data.codes=OWN", "model.permutation=reference", *VQREC_FT],
                                   "VQ-Rec, pre-trained, new index set, the reference's permutation"),
            "vqrec-pt-reuse": ("reuse", VQREC_FT, "VQ-Rec, pre-trained, reused index set (joint quantiser)"),
            "vqrec-pt-unfrozen": ("pt", ["data.codes=OWN", "--no-freeze-encoder", *VQREC_FT],
                                  "VQ-Rec, pre-trained, new index set, encoder trained"),
        }
    return {
        "missrec-inductive": ("scratch", [*MISSREC, "model.mode=inductive"], "MISSRec inductive (text), scratch"),
        "missrec-transductive": ("scratch", [*MISSREC, "model.mode=transductive"], "MISSRec transductive (text + ID), scratch"),
        "missrec-pt-inductive": ("pt", [*MISSREC, "--mode", "inductive", "--freeze-encoder"],
                                 "MISSRec inductive, pre-trained, encoder frozen"),
        "missrec-pt-transductive": ("pt", [*MISSREC, "--mode", "transductive", "--freeze-encoder"],
                                    "MISSRec transductive, pre-trained, encoder frozen"),
        "missrec-pt-inductive-unfrozen": ("pt", [*MISSREC, "--mode", "inductive", "--no-freeze-encoder"],
                                          "MISSRec inductive, pre-trained, encoder trained"),
    }


def scratch_of(key: str) -> str:
    """The scratch row a pre-trained row is compared with."""
    model = key.split("-")[0]
    if model == "vqrec":
        return "vqrec"
    mode = "transductive" if "transductive" in key else "inductive"
    return f"{model}-{mode}"


def default_pt_work(max_users: int | None) -> Path:
    sys.path.insert(0, str(Path(__file__).parent))
    from seqrecbench import default_work

    return Path(str(default_work()) + (f"-u{max_users}" if max_users else ""))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pt-work", help="seqrecbench.py's work folder (default: its default, with --max-users N its -uN folder)")
    p.add_argument("--max-users", type=int, help="the corpus was prepared with seqrecbench.py --max-users N")
    p.add_argument("--targets", nargs="+", choices=list(TARGETS), default=list(TARGETS))
    p.add_argument("--models", nargs="+", choices=("unisrec", "vqrec", "missrec"), default=["unisrec", "vqrec", "missrec"])
    p.add_argument("--seeds", type=int, nargs="+", default=[2020, 2021, 2022])
    p.add_argument("--skip", nargs="*", default=[], help="row groups to skip: scratch pretrained ablations zeroshot")
    p.add_argument("--rows", nargs="*", help="only these rows (keys such as vqrec-pt or unisrec-pt-inductive; zero-shot rows "
                                             "follow --skip)")
    p.add_argument("--scratch-from", metavar="SECTION", help="take the Scientific scratch rows from another benchmark's "
                   "results/SECTION.json when its command is this script's, but for the run folder (e.g. missrec_scientific: "
                   "UniSRec and MISSRec trained from scratch with the same settings and seeds)")
    p.add_argument("--variants", nargs="*", default=[], help="leave-domains-out pre-trainings to fine-tune (run names' "
                                                             "suffix, e.g. no-amazon2018)")
    p.add_argument("--codebooks", type=int, default=32, help="as the recipe's --codebooks (the target's own codes match it)")
    p.add_argument("--codebook-size", type=int, default=256, help="as the recipe's --codebook-size")
    p.add_argument("--codes", help="the recipe's joint codes name (default minilm-mean-opqDxM-joint[-VARIANT])")
    add_result_args(p, SECTION, SMOKE)
    args = p.parse_args()
    path = ROOT / "benchmarks" / "results" / f"{args.section}.json"
    if args.render_only:
        return render_saved(path, args.section, render, args.no_write)
    run(args, path, Path(args.pt_work).expanduser() if args.pt_work else default_pt_work(args.max_users))


def run(args, path: Path, pt_work: Path) -> None:
    seeds = args.seeds[:1] if args.smoke else args.seeds
    runs, cmds, _ = previous_runs(path, args.resume)
    argv = [a for a in sys.argv if a != "--resume"]
    facts: dict = {"pt_work": pt_work.name, "pretrained": {}, "targets": {}}
    smoke = SMOKE if args.smoke else []
    facts["scratch_from"] = {}

    def checkpoint(model: str, variant: str = "") -> Path | None:
        run_dir = pt_work / "runs" / (f"{model}-pt" + (f"-{variant}" if variant else ""))
        if not (run_dir / "model.safetensors").exists():
            print(f"{run_dir}: no pre-trained checkpoint (run benchmarks/seqrecbench.py --steps ...,pretrain-{model}); "
                  "its rows are left out", file=sys.stderr)
            return None
        metrics = json.loads((run_dir / "metrics.json").read_text()) if (run_dir / "metrics.json").exists() else {}
        facts["pretrained"][run_dir.name] = {k: metrics.get(k) for k in ("epochs_run", "best_epoch", "seconds_per_epoch", "valid")}
        return run_dir

    def save():
        result = {"section": args.section, "smoke": args.smoke, "machine": machine(), "runs": runs, "commands": cmds,
                  "argv": argv, "facts": facts}
        md = render(save_result(path, result))
        if not args.no_write:
            update_results(args.section, md)
        return md

    def step(*cmd) -> dict:
        line = command_line(*cmd)
        if line not in cmds:
            cmds.append(line)
        return textrec(*cmd)

    for target in args.targets:
        src, fmt_name = TARGETS[target]
        data = prepare(target, src, fmt_name)
        n_items = json.loads((data / "meta.json").read_text())["n_items"]
        facts["targets"][target] = {"items": n_items}
        own = f"opq{args.codebooks}x{args.codebook_size}"  # the target's own codes (new index set), as deep as the recipe's
        if "vqrec" in args.models and not (data / "codes" / f"{own}.npy").exists():
            step("quantize", data, "--embeddings", EMB, "--codebooks", args.codebooks, "--codebook-size", args.codebook_size,
                 "--name", own)

        def joint_codes(variant: str = "") -> str | None:
            """The target's items encoded by the pre-training's joint quantiser, under the pre-training's codes name."""
            name = args.codes or f"{EMB}-opq{args.codebooks}x{args.codebook_size}-joint" + (f"-{variant}" if variant else "")
            index = pt_work / "quant" / f"{name}.index"
            if not index.exists():
                print(f"{index}: no joint quantiser; the reused-index and zero-shot VQ-Rec rows are left out", file=sys.stderr)
                return None
            if not (data / "codes" / f"{name}.npy").exists():
                step("quantize", data, "--embeddings", EMB, "--quantizer", index, "--name", name)
            return name

        def fit(key: str, seed: int, cmd: list) -> None:
            if finished(runs, f"{target}/{key}", seed) or imported(key, seed, cmd):
                return
            res = textrec(*cmd)
            if f"{target}/{key}" not in runs:
                cmds.append(command_line(*cmd))
            runs.setdefault(f"{target}/{key}", []).append(res)
            print(f"{target}/{key} seed {seed}: R@10 {res['test']['recall@10']:.4f} N@10 {res['test']['ndcg@10']:.4f}", file=sys.stderr)
            save()

        def imported(key: str, seed: int, cmd: list) -> bool:
            """Copy the run of another benchmark that made this scratch row with the same command (--scratch-from)."""
            if not args.scratch_from or target != "scientific" or cmd[0] != "train" or args.smoke:
                return False
            other = ROOT / "benchmarks" / "results" / f"{args.scratch_from}.json"
            theirs = json.loads(other.read_text()) if other.exists() else {"runs": {}, "commands": []}
            want = same_command(command_line(*cmd))
            line = next((c for c in theirs["commands"] if f"/{key}-" in c and same_command(c) == want), None)
            for res in theirs["runs"].get(key, []) if line is not None else []:
                if Path(res["run"]).name == f"{key}-{seed}":  # that script runs seed S as KEY-S with train.seed=S
                    runs.setdefault(f"{target}/{key}", []).append(res)
                    facts["scratch_from"][f"{target}/{key}"] = args.scratch_from
                    if line not in cmds:
                        cmds.append(line)
                    print(f"{target}/{key} seed {seed}: taken from results/{args.scratch_from}.json", file=sys.stderr)
                    save()
                    return True
            return False

        for model in args.models:
            pt = None if "pretrained" in args.skip else checkpoint(model)
            reuse = joint_codes() if model == "vqrec" and pt is not None else None
            if "zeroshot" not in args.skip and pt is not None and f"{target}/{model}-zeroshot" not in runs and (
                    model != "vqrec" or reuse is not None):  # cheap, so first: VQ-Rec reads the joint quantiser's codes
                ev = step("evaluate", pt, "--data", data)  # VQ-Rec: the joint codes are named as in pre-training
                runs[f"{target}/{model}-zeroshot"] = [{"run": f"{pt.name}-zeroshot-{target}", "test": {
                    k: ev[k] for k in ("recall@10", "ndcg@10", "recall@50", "ndcg@50")}}]
                save()
            for seed in seeds:
                for key, (kind, extra, _) in rows(model).items():
                    if (kind == "scratch" and "scratch" in args.skip) or (kind != "scratch" and pt is None):
                        continue
                    if args.rows is not None and key not in args.rows:
                        continue
                    if "ablations" in args.skip and (key.endswith("-unfrozen") or key in ("vqrec-pt-reference", "vqrec-pt-reuse")):
                        continue
                    if kind == "reuse" and reuse is None:
                        continue
                    out = WORK / "runs" / args.section / target / f"{key}-{seed}"
                    base = ["--out", out, "--overwrite", "--quiet", f"train.seed={seed}", f"data.embeddings={EMB}", *smoke]
                    extra = [f"data.codes={own}" if x == "data.codes=OWN" else x for x in extra]
                    if kind == "scratch":
                        cmd = ["train", data, "--model", model, *base, *extra]
                    else:
                        cmd = ["finetune", data, "--init", pt, *base, *extra, *([f"data.codes={reuse}"] if kind == "reuse" else [])]
                    fit(key, seed, cmd)
                for variant in args.variants:  # leave-domains-out pre-trainings, inductive (frozen) fine-tuning
                    vpt = None if "pretrained" in args.skip else checkpoint(model, variant)
                    key = f"{model}-pt-{variant}"
                    if vpt is None or (args.rows is not None and key not in args.rows):
                        continue
                    extra = {"unisrec": ["--mode", "inductive", "--freeze-encoder"], "vqrec": [f"data.codes={own}", *VQREC_FT],
                             "missrec": [*MISSREC, "--mode", "inductive", "--freeze-encoder"]}[model]
                    out = WORK / "runs" / args.section / target / f"{key}-{seed}"
                    fit(key, seed, ["finetune", data, "--init", vpt, "--out", out, "--overwrite", "--quiet", f"train.seed={seed}",
                                    f"data.embeddings={EMB}", *smoke, *extra])
    print(save())


def finished(runs: dict, key: str, seed: int) -> bool:
    """Whether ``runs["TARGET/ROW"]`` holds this seed's run (its folder is ``.../TARGET/ROW-SEED``)."""
    return any(Path(x["run"]).name == f"{key.split('/', 1)[1]}-{seed}" for x in runs.get(key, []))


def same_command(line: str) -> list[str]:
    """A command's words without its run folder (``--out DIR``) and seed, sorted, to compare two benchmarks' runs
    (``key=value`` overrides of distinct keys apply in any order)."""
    words = line.split()
    return sorted(w for i, w in enumerate(words)
                  if w != "--out" and (i == 0 or words[i - 1] != "--out") and not w.startswith("train.seed="))


# ---- rendering ---------------------------------------------------------------------------------------------------------


def labels() -> dict:
    out = {}
    for model in ("unisrec", "vqrec", "missrec"):
        for key, (_, _, label) in rows(model).items():
            out[key] = label
        out[f"{model}-zeroshot"] = {"unisrec": "UniSRec (inductive)", "vqrec": "VQ-Rec (joint codes)",
                                    "missrec": "MISSRec (inductive)"}[model] + ", pre-trained, zero-shot: no fine-tuning"
    return out


def r10(rs: list[dict]) -> list[float]:
    return [x["test"]["recall@10"] for x in rs]


def gain(runs: dict, key: str, base: str) -> str:
    if key == base or key not in runs or base not in runs or key.endswith("zeroshot"):
        return "-"
    m, b = mean_metrics(runs[key]), mean_metrics(runs[base])
    spans = max(max(r10(runs[key])) - min(r10(runs[key])), max(r10(runs[base])) - min(r10(runs[base])))
    d = m["recall@10"] - b["recall@10"]
    verdict = "" if min(len(runs[key]), len(runs[base])) < 2 else (" (> span)" if abs(d) > spans else " (within span)")
    return f"R@10 {100 * d / b['recall@10']:+.1f}%, N@10 {100 * (m['ndcg@10'] - b['ndcg@10']) / b['ndcg@10']:+.1f}%{verdict}"


def render(r: dict) -> str:
    runs, f = r["runs"], r["facts"]
    smoke = (" — **smoke run** (" + " ".join(SMOKE) + "; checks the script, the numbers mean nothing)") if r.get("smoke") else ""
    lines = [f"## Transfer from the SeqRecBench corpus (`{f['pt_work']}`) to Scientific and Office{smoke}", "",
             f"Machine: {machine_line(r['machine'])}. Script: `python {' '.join(r['argv'])}` (means over seeds).", ""]
    for name, pt in f.get("pretrained", {}).items():
        valid = (pt.get("valid") or {}).get("ndcg@10")
        lines.append(f"- pre-training `{name}`: {pt.get('epochs_run')} epochs (best {pt.get('best_epoch')}), "
                     f"{fmt(pt.get('seconds_per_epoch'), 1)} s/epoch, merged-validation N@10 {fmt(valid)}")
    for target, t in f.get("targets", {}).items():
        keyed = {k.split("/", 1)[1]: v for k, v in runs.items() if k.startswith(f"{target}/")}
        if not keyed:
            continue
        lines += ["", f"### {target} ({t['items']:,} items; chance R@10 {10 / t['items']:.4f})", "",
                  "| model | R@10 | N@10 | R@50 | N@50 | seeds (R@10 span) | gain over scratch (same model and mode) |",
                  "|---|---|---|---|---|---|---|"]
        names = {"vqrec": "VQ-Rec, new index set", "unisrec": "UniSRec inductive", "missrec": "MISSRec inductive"}
        for key, label in {**labels(), **{k: f"{names[k.split('-')[0]]}, pre-trained without {k.split('-pt-')[1][3:]} "
                                              "(leave-domains-out), encoder frozen" for k in keyed if "-pt-no-" in k}}.items():
            if key not in keyed:
                continue
            rs = keyed[key]
            span = f" ({min(r10(rs)):.4f}-{max(r10(rs)):.4f})" if len(rs) > 1 else ""
            lines.append(metric_row(label, mean_metrics(rs), f" {len(rs)}{span} | {gain(keyed, key, scratch_of(key))} |"))
        taken = {k.split("/", 1)[1]: v for k, v in (f.get("scratch_from") or {}).items() if k.startswith(f"{target}/")}
        for section in sorted(set(taken.values())):
            lines += ["", f"Rows {', '.join(sorted(k for k, v in taken.items() if v == section))} were trained by "
                          f"`benchmarks/{section}.py` with this script's command and seeds (`--scratch-from {section}`): "
                          f"their runs are those of results/{section}.json."]
    if any("-pt-no-" in k for k in runs):
        lines += ["", "A leave-domains-out pre-training has fewer batches per epoch than the all-domain one; it is given more epochs "
                      "so that both take about the same number of optimiser steps (its command, epochs and curve are in the "
                      f"`{f['pt_work'].replace('-', '_')}` section)."]
    lines += ["", "The papers' gains from pre-training (their own corpora, CLIP or BERT features): "
              + "; ".join(f"{m}: {src} {a:.4f} -> {b:.4f} R@10 ({100 * (b - a) / a:+.1f}%)" for m, (src, a, b) in PAPER_GAINS.items())
              + ". Their corpora are five whole Amazon domains (millions of interactions); this one is "
              f"`{f['pt_work']}` (section `{f['pt_work'].replace('-', '_')}` gives its size, costs and pre-training curves).",
              "", "Commands (first seed; `$WORK` = benchmarks/.work):", "", "```", *r["commands"], "```"]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
