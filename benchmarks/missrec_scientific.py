"""MISSRec on Amazon Scientific: the multimodal subset (CLIP text + image) and full Scientific (MiniLM text, no images).

Two parts, each its own docs/RESULTS.md section and benchmarks/results/SECTION.json; every row is a `textrec`
command (listed under its table), means over seeds.

* ``multimodal`` (section ``missrec_multimodal``): ``../shared/data/amazon-scientific-mm-decorec`` with its 512-d
  CLIP ViT-B/32 text (``feat1CLS``) and image (``feat3CLS``) features. SASRec; UniSRec on the CLIP text (attached
  as text embeddings ``clip-text``); VQ-Rec on OPQ codes of the CLIP text; MISSRec text-only, image-only and
  text + image, inductive and transductive; and ablations of the text + image transductive model (no interest
  tokens, mean instead of dynamic fusion, no orthogonality regulariser), so that the value of the image modality
  and of each part shows in one table.
* ``full`` (section ``missrec_scientific``): ``../shared/data/amazon-scientific-unisrec`` with the embedded MiniLM
  text (``minilm-mean``); no images exist for it here. UniSRec and MISSRec (text only), inductive and
  transductive, beside the published MISSRec rows (CLIP text + image); seconds per epoch, MISSRec's clustering
  apart (the ``cluster_seconds`` its epoch hook writes to each run's log).

MISSRec trains with batches of 512 prefix rows, as the reference's ``finetune.py`` (also for its runs from
scratch); the other models keep their defaults (2048, the references').

    python benchmarks/missrec_scientific.py --seeds 2020 2021 2022                 # both parts
    python benchmarks/missrec_scientific.py --part full --seeds 2020 2021 2022     # one part
    python benchmarks/missrec_scientific.py --smoke --no-write                     # 1 seed, 1 small epoch, multimodal
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from _common import (ROOT, SHARED_DATA, WORK, command_line, finished, machine, machine_line, mean_metrics, metric_row, prepare,
                     previous_runs, save_result, textrec, update_results)

SECTIONS = {"multimodal": "missrec_multimodal", "full": "missrec_scientific"}
MISSREC = ["train.batch_size=512"]  # reference finetune.py train_batch_size (textrec's default is 2048)
SMOKE = ["train.epochs=1", "model.hidden_size=32", "model.inner_size=32"]  # --smoke: checks the script, not the models
FLOOR = {"recall@10": 0.118, "ndcg@10": 0.062}  # issue 11: MISSRec transductive, full Scientific, MiniLM text, mean of 3 seeds
# published MISSRec rows on full Scientific (MISSRec README, REFERENCE_NOTES section 5): CLIP text + image
PUBLISHED = {
    "ID + text + image, no pre-training (transductive)": (0.1282, 0.0711, 0.2376, 0.0946),
    "text + image, no pre-training (inductive)": (0.1269, 0.0659, 0.2354, 0.0891),
    "ID + text + image, pre-trained": (0.1360, 0.0753, 0.2431, 0.0983),
    "text + image, pre-trained (inductive)": (0.1278, 0.0658, 0.2375, 0.0893),
}
TEXT, IMAGE = "feat1CLS", "feat3CLS"
MODALITIES = {  # multimodal part: MISSRec's modality tables
    "text": ["model.text_feature=" + TEXT, "model.image_feature=", f'data.features=["{TEXT}"]'],
    "image": ["model.text_feature=", "model.image_feature=" + IMAGE, f'data.features=["{IMAGE}"]'],
    "both": ["model.text_feature=" + TEXT, "model.image_feature=" + IMAGE, f'data.features=["{TEXT}","{IMAGE}"]'],
}
ABLATIONS = {  # of the text + image transductive model: key -> (overrides, the part removed, what that takes out)
    "missrec-no-interests": (["model.interest_tokens=false"], "interest tokens",
                             "no clustering, interest encoder, cross-attention or regulariser"),
    "missrec-mean-fusion": (["model.fusion=mean"], "dynamic fusion", "the two modality scores averaged (alpha fixed at 0)"),
    "missrec-gamma0": (["model.gamma=0"], "the regulariser", "gamma = 0: no interest-orthogonality term"),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", nargs="+", choices=list(SECTIONS), default=None,
                   help="which parts to run (default: both; with --smoke: multimodal)")
    p.add_argument("--seeds", type=int, nargs="+", default=[2020, 2021, 2022])
    p.add_argument("--skip", nargs="*", default=[], help="row groups to skip: sasrec unisrec vqrec missrec ablations")
    p.add_argument("--only", nargs="+", metavar="KEY", help="run only these rows (keys as in the JSON, e.g. missrec-transductive)")
    p.add_argument("--no-write", action="store_true", help="do not update docs/RESULTS.md (the JSON is still written)")
    p.add_argument("--section", help="docs/RESULTS.md section and benchmarks/results/SECTION.json (one --part only; "
                                     "default missrec_multimodal / missrec_scientific, with --smoke missrec_smoke_PART)")
    p.add_argument("--resume", action="store_true", help="keep the finished runs of an interrupted invocation")
    p.add_argument("--render-only", action="store_true", help="rewrite the RESULTS.md section(s) from the saved JSON")
    p.add_argument("--smoke", action="store_true",
                   help=f"check the script end to end: first seed only, {' '.join(SMOKE)} on every row")
    args = p.parse_args()
    parts = args.part or (["multimodal"] if args.smoke else list(SECTIONS))
    if args.section and len(parts) > 1:
        p.error("--section names one section: give one --part")
    for part in parts:
        section = args.section or (f"missrec_smoke_{SECTIONS[part].split('_')[1]}" if args.smoke else SECTIONS[part])
        if args.render_only:
            md = render(json.loads(results_path(section).read_text()))
            print(md)
            if not args.no_write:
                update_results(section, md)
        else:
            run_part(part, section, args)


def results_path(section: str) -> Path:
    return ROOT / "benchmarks" / "results" / f"{section}.json"


def run_part(part: str, section: str, args) -> None:
    seeds = args.seeds[:1] if args.smoke else args.seeds
    runs, cmds, _ = previous_runs(results_path(section), args.resume)
    # the table then holds this invocation's seeds; with --resume, runs an earlier one finished are kept
    argv = [a for a in sys.argv if a != "--resume"]
    if part == "multimodal":
        data = prepare("scientific-mm", SHARED_DATA / "amazon-scientific-mm-decorec", "unisrec", encode=False)
        setup(data / "embeddings" / "clip-text.npy", cmds, "encode", data, "--attach", TEXT, "--name", "clip-text")
        setup(data / "codes" / "clip.npy", cmds, "quantize", data, "--embeddings", "clip-text", "--name", "clip")
    else:
        data = prepare("scientific", SHARED_DATA / "amazon-scientific-unisrec", "unisrec")
    facts = dataset_facts(data, "clip-text", "clip") if part == "multimodal" else dataset_facts(data, "minilm-mean")

    def save():  # after every run, so an interrupted benchmark still leaves its finished rows
        result = {"section": section, "part": part, "smoke": args.smoke, "machine": machine(), "runs": runs, "commands": cmds,
                  "argv": argv, "facts": facts}
        # merged with the rows another process of this section wrote meanwhile (e.g. one process per seed, --resume)
        md = render(save_result(results_path(section), result))
        if not args.no_write:
            update_results(section, md)
        return md

    def train(key, model, seed, *extra):
        if finished(runs, key, seed) or (args.only and key not in args.only):
            return
        out = WORK / "runs" / section / f"{key}-{seed}"
        cmd = ["train", data, "--model", model, "--out", out, "--overwrite", "--quiet", f"train.seed={seed}", *extra,
               *(SMOKE if args.smoke else [])]
        res = textrec(*cmd)
        if model == "missrec":
            res["fusion_alpha"] = fusion_alpha(out)
        if key not in runs:  # the first seed's command
            cmds.append(shown(*cmd))
        runs.setdefault(key, []).append(res)
        print(f"{key} seed {seed}: {json.dumps(res['test'])} {res['seconds_per_epoch']:.1f}s/epoch", file=sys.stderr)
        save()

    for seed in seeds:
        if part == "multimodal":
            multimodal_rows(train, seed, args.skip)
        else:
            full_rows(train, seed, args.skip)
    print(save())


def multimodal_rows(train, seed: int, skip: list[str]) -> None:
    if "sasrec" not in skip:
        train("sasrec", "sasrec", seed)
    if "unisrec" not in skip:
        for mode in ("inductive", "transductive"):
            train(f"unisrec-{mode}", "unisrec", seed, "data.embeddings=clip-text", f"model.mode={mode}")
    if "vqrec" not in skip:
        train("vqrec", "vqrec", seed, "data.codes=clip")
    if "missrec" not in skip:
        for modality, extra in MODALITIES.items():
            for mode in ("inductive", "transductive"):
                train(f"missrec-{modality}-{mode}", "missrec", seed, *extra, f"model.mode={mode}", *MISSREC)
    if "ablations" not in skip:
        for key, (extra, _, _) in ABLATIONS.items():
            train(key, "missrec", seed, *MODALITIES["both"], "model.mode=transductive", *extra, *MISSREC)


def full_rows(train, seed: int, skip: list[str]) -> None:
    # MISSRec transductive first: the floor is set on it, and a session may end before the other rows
    for model, mode in (("missrec", "transductive"), ("unisrec", "inductive"), ("missrec", "inductive"), ("unisrec", "transductive")):
        if model in skip:
            continue
        if model == "unisrec":
            train(f"unisrec-{mode}", "unisrec", seed, "data.embeddings=minilm-mean", f"model.mode={mode}")
        else:
            train(f"missrec-{mode}", "missrec", seed, "data.embeddings=minilm-mean", "model.text_feature=embeddings",
                  "model.image_feature=", f"model.mode={mode}", *MISSREC)


def shown(*args) -> str:
    """The command as listed under a table: shell-quoted (data.features=["..."] must survive a copy-paste), paths shortened."""
    return command_line(*(shlex.quote(str(a)) for a in args))


def setup(output: Path, log: list, *args) -> None:
    """A dataset-side step (attach embeddings, quantize) made once; listed before the training commands either way."""
    line = shown(*args)
    if line not in log:
        log.insert(sum(1 for x in log if not x.startswith("textrec train")), line)
    if not output.exists():
        textrec(*args)


def fusion_alpha(run: Path) -> float:
    """MISSRec's learned fusion factor alpha in the kept weights (0: both modalities weigh the same)."""
    from safetensors import safe_open

    with safe_open(str(run / "model.safetensors"), framework="pt") as f:
        return float(f.get_tensor("fusion_alpha"))


def dataset_facts(data: Path, embeddings: str, codes: str | None = None) -> dict:
    """Counts the tables state, read from the prepared dataset (never typed in): the text embeddings and codes used."""
    import numpy as np

    from textrec.data.dataset import Dataset
    from textrec.data.split import prefix_rows, train_windows

    def present(table) -> int:  # items whose row is not all zeros (row 0 is padding)
        return int((np.abs(np.asarray(table)[1:]).sum(axis=1) > 0).sum())

    ds = Dataset.load(data)
    stats = ds.statistics()
    prefixes, windows = prefix_rows(ds, 50), train_windows(ds, 50)
    return {
        "users": stats["users"], "items": stats["items"], "interactions": stats["interactions"],
        "features": {name: present(t) for name, t in ds.features.items()},
        "embeddings": {embeddings: present(np.load(data / "embeddings" / f"{embeddings}.npy", mmap_mode="r"))},
        "prefix_rows": int(len(prefixes.lengths)), "prefix_tokens": int(prefixes.lengths.sum()),
        "windows": int(len(windows.lengths)), "window_tokens": int(windows.lengths.sum()), "targets": int(windows.n_targets.sum()),
        "codes": None if codes is None else {k: json.loads((data / "codes" / f"{codes}.json").read_text())[k] for k in
                                             ("n_codebooks", "codebook_size", "n_fit", "collisions", "collision_groups")},
    }


# ---- rendering ---------------------------------------------------------------------------------------------------------

MM_LABELS = {
    "sasrec": ("SASRec", "item IDs"),
    "unisrec-inductive": ("UniSRec inductive", "CLIP text (as text embeddings)"),
    "unisrec-transductive": ("UniSRec transductive", "CLIP text + item IDs"),
    "vqrec": ("VQ-Rec", "OPQ codes of the CLIP text"),
    **{f"missrec-{m}-{mode}": (f"MISSRec {mode}", {"text": "CLIP text", "image": "CLIP image", "both": "CLIP text + image"}[m]
                               + (" + item IDs" if mode == "transductive" else ""))
       for m in MODALITIES for mode in ("inductive", "transductive")},
    **{key: (f"MISSRec transductive, without {part}", f"CLIP text + image + item IDs; {what}")
       for key, (_, part, what) in ABLATIONS.items()},
}
FULL_LABELS = {
    "unisrec-inductive": ("UniSRec inductive", "MiniLM text"),
    "unisrec-transductive": ("UniSRec transductive", "MiniLM text + item IDs"),
    "missrec-inductive": ("MISSRec inductive", "MiniLM text"),
    "missrec-transductive": ("MISSRec transductive", "MiniLM text + item IDs"),
}


def r10(rs: list[dict]) -> list[float]:
    return [x["test"]["recall@10"] for x in rs]


def spread(rs: list[dict]) -> str:
    return f" (R@10 {min(r10(rs)):.4f}-{max(r10(rs)):.4f})" if len(rs) > 1 else ""


def span(rs: list[dict]) -> float:
    return max(r10(rs)) - min(r10(rs))


def clustering(rs: list[dict]) -> float | None:
    """Mean seconds of MISSRec's per-epoch clustering (None: the runs did not cluster)."""
    sec = [x.get("epoch_hook_means", {}).get("cluster_seconds") for x in rs]
    return None if any(s is None for s in sec) else sum(sec) / len(sec)


def seconds(rs: list[dict]) -> float:
    return sum(x["seconds_per_epoch"] for x in rs) / len(rs)


def table(runs: dict, labels: dict) -> list[str]:
    rows = ["| model | inputs | R@10 | N@10 | R@50 | N@50 | seeds | s / epoch (clustering) | epochs (best) |",
            "|---|---|---|---|---|---|---|---|---|"]
    for key, (name, inputs) in labels.items():
        if key not in runs:
            continue
        rs = runs[key]
        c = clustering(rs)
        sec = f"{seconds(rs):.1f}" + ("" if c is None else f" ({c:.2f})")
        epochs = ", ".join(f"{x['epochs_run']} ({x['best_epoch']})" for x in rs)
        rows.append(metric_row(f"{name}{spread(rs)} | {inputs}", mean_metrics(rs), f" {len(rs)} | {sec} | {epochs} |"))
    return rows


def compare(runs: dict, key: str, base: str, name: str) -> str | None:
    """``name``: the difference of row ``key`` from row ``base``, set against the seed spans of both."""
    if key not in runs or base not in runs:
        return None
    m, b = mean_metrics(runs[key]), mean_metrics(runs[base])
    d10, n10 = m["recall@10"] - b["recall@10"], m["ndcg@10"] - b["ndcg@10"]
    widest = max(span(runs[key]), span(runs[base]))
    if min(len(runs[key]), len(runs[base])) < 2:
        verdict = "single seeds, so no seed spread to judge it by"
    elif abs(d10) > widest:
        verdict = f"R@10 {'higher' if d10 > 0 else 'lower'} by more than the wider seed span ({widest:.4f})"
    else:
        verdict = f"R@10 within the wider seed span ({widest:.4f})"
    return f"{name}: R@10 {d10:+.4f}, N@10 {n10:+.4f} ({verdict})"


def facts_line(f: dict) -> str:
    names = {TEXT: "CLIP text", IMAGE: "CLIP image", "clip-text": "attached from feat1CLS", "minilm-mean": "MiniLM"}
    tables = [f"feature table `{k}` ({names.get(k, k)}) {v:,}" for k, v in f["features"].items()]
    tables += [f"text embeddings `{k}` ({names.get(k, k)}) {v:,}" for k, v in f.get("embeddings", {}).items()]
    feats = "items with a (non-zero) row in " + ", ".join(tables)
    return (f"Data: {f['users']:,} users, {f['items']:,} items, {f['interactions']:,} interactions; {feats}. One "
            f"training epoch: {f['prefix_rows']:,} prefix rows holding {f['prefix_tokens']:,} item tokens (MISSRec, not causal), "
            f"against {f['windows']:,} whole-sequence rows holding {f['window_tokens']:,} ({f['targets']:,} targets; SASRec, "
            f"UniSRec, VQ-Rec).")


def codes_line(c: dict | None) -> list[str]:
    if not c:
        return []
    return [f"VQ-Rec's codes: {c['n_codebooks']} sub-spaces x {c['codebook_size']} codewords, OPQ fitted on the CLIP text of the "
            f"{c['n_fit']:,} items in training sequences; {c['collisions']:,} items share their whole code with another "
            f"({c['collision_groups']:,} groups), and tied items count against the target."]


def header(r: dict, title: str) -> list[str]:
    smoke = (" — **smoke run** (" + " ".join(SMOKE) + "; checks the script, the numbers mean nothing)") if r.get("smoke") else ""
    return [f"## {title}{smoke}", "", f"Machine: {machine_line(r['machine'])}. Script: `python {' '.join(r['argv'])}` "
            "(means over seeds; the last invocation: rows of earlier or side-by-side ones, each run with `--resume` and "
            "disjoint `--seeds` / `--only`, are kept).", ""]


def footer(r: dict) -> list[str]:
    return ["", "Commands (first seed; `$WORK` = benchmarks/.work):", "", "```", *r["commands"], "```"]


def render(r: dict) -> str:
    return render_multimodal(r) if r["part"] == "multimodal" else render_full(r)


def render_multimodal(r: dict) -> str:
    runs, f = r["runs"], r["facts"]
    lines = [*header(r, "MISSRec on the multimodal Scientific subset (CLIP text + image)"), *table(runs, MM_LABELS), "",
             facts_line(f), *codes_line(f.get("codes")), "MISSRec rows train with batches of 512 (the reference's); the other models with 2048. No published "
             "numbers exist for this subset (shared/data/README.md, REFERENCE_NOTES).", ""]
    found = [compare(runs, f"missrec-both-{mode}", f"missrec-text-{mode}", f"text + image against text only, {mode}")
             for mode in ("inductive", "transductive")]
    found += [compare(runs, f"missrec-both-{mode}", f"missrec-image-{mode}", f"text + image against image only, {mode}")
              for mode in ("inductive", "transductive")]
    found += [compare(runs, key, "missrec-both-transductive", f"without {part}, against the whole model (transductive)")
              for key, (_, part, _) in ABLATIONS.items()]
    found += [compare(runs, f"missrec-both-{mode}", f"unisrec-{mode}", f"MISSRec text + image against UniSRec on the CLIP text, "
                      f"{mode}") for mode in ("inductive", "transductive")]
    found = [x for x in found if x]
    alphas = {mode: [x["fusion_alpha"] for x in runs[f"missrec-both-{mode}"] if "fusion_alpha" in x]
              for mode in ("inductive", "transductive") if f"missrec-both-{mode}" in runs}
    if any(alphas.values()):
        found.append("learned fusion factor alpha of the text + image models (0 weighs both modality scores the same, as the "
                     "mean-fusion ablation): " + "; ".join(f"{mode} {sum(a) / len(a):+.3f} ({min(a):+.3f} to {max(a):+.3f})"
                                                           for mode, a in alphas.items() if a))
    if found:
        lines += ["Differences of the means (the image modality, each MISSRec part, MISSRec against UniSRec):", "",
                  *[f"- {x}." for x in found]]
    return "\n".join(lines + footer(r))


def unisrec_base(runs: dict, key: str) -> str | None:
    """The UniSRec row a MISSRec row's epoch time is set against: the same mode, else the other one; None for others."""
    if not key.startswith("missrec"):
        return None
    mode = key.split("-")[1]
    for base in (f"unisrec-{mode}", f"unisrec-{'transductive' if mode == 'inductive' else 'inductive'}"):
        if base in runs:
            return base
    return None


def render_full(r: dict) -> str:
    runs, f = r["runs"], r["facts"]
    rows = table(runs, FULL_LABELS)
    rows += [f"| published MISSRec, {name} | CLIP text + image (README of the release) | "
             + " | ".join(f"{v:.4f}" for v in values) + " | - | - | - |" for name, values in PUBLISHED.items()]
    lines = [*header(r, "MISSRec on Amazon Scientific (MiniLM text, no images)"), *rows, "", facts_line(f),
             "What differs from the published rows: they use 512-d CLIP ViT-B/32 text and image features of every item (no "
             "images are available here, so these rows are text only, with the embedded 384-d MiniLM, mean pooling), "
             "K = ceil(0.5 x 2N) interests over both modalities (here ceil(0.5 x N) over the text rows) found by torchpq's "
             "GPU mini-batch k-means (here faiss' k-means), and the differences listed in the docstring of "
             "src/textrec/models/missrec.py. MISSRec rows train with batches of 512 as the reference; UniSRec with 2048.", ""]
    if "missrec-transductive" in runs:
        rs = runs["missrec-transductive"]
        m = mean_metrics(rs)
        verdict = [f"{k.replace('recall', 'R').replace('ndcg', 'N')} {m[k]:.4f} is {'at or above' if m[k] >= v else 'below'} "
                   f"its floor {v} by {m[k] - v:+.4f}" for k, v in FLOOR.items()]
        lines.append(f"The issue's floor for MISSRec transductive (mean of 3 seeds, R@10 >= {FLOOR['recall@10']}, N@10 >= "
                     f"{FLOOR['ndcg@10']}): over {len(rs)} seed{'s' if len(rs) > 1 else ''}, " + "; ".join(verdict) + ".")
        ref = PUBLISHED["ID + text + image, no pre-training (transductive)"]
        lines.append(f"Against the published transductive row without pre-training: R@10 {m['recall@10'] - ref[0]:+.4f}, "
                     f"N@10 {m['ndcg@10'] - ref[1]:+.4f}.")
    found = [compare(runs, f"missrec-{mode}", f"unisrec-{mode}", f"MISSRec against UniSRec, {mode}") for mode in ("inductive", "transductive")]
    lines += [f"{x}." for x in found if x]
    speed = [k for k in FULL_LABELS if k in runs]
    if speed:
        lines += ["", "Seconds per training epoch (clustering included in the epoch; training = the rest):", "",
                  "| model | s / epoch | training s | clustering s | against UniSRec's epoch, same mode |", "|---|---|---|---|---|"]
        for k in speed:
            rs, c = runs[k], clustering(runs[k])
            base = unisrec_base(runs, k)
            ratio = "-" if base is None else f"{seconds(rs) / seconds(runs[base]):.2f}x" + (
                "" if base.split("-")[1] == k.split("-")[1] else f" (UniSRec {base.split('-')[1]}: the same mode was not run)")
            lines.append(f"| {', '.join(FULL_LABELS[k])} | {seconds(rs):.1f} | {seconds(rs) - (c or 0.0):.1f} | "
                         f"{'-' if c is None else f'{c:.2f}'} | {ratio} |")
        pairs = [(k, unisrec_base(runs, k)) for k in speed if unisrec_base(runs, k)]
        if pairs:
            worst = max(seconds(runs[k]) / seconds(runs[b]) for k, b in pairs)
            lines += ["", f"The issue's bound (a MISSRec epoch, clustering included, at most 4x a UniSRec epoch in the same run): "
                          f"the largest ratio here is {worst:.2f}x, {'within' if worst <= 4 else 'over'} it."]
    return "\n".join(lines + footer(r))


if __name__ == "__main__":
    main()
