"""``textrec demo``: the whole pipeline end to end, offline, on CPU, in about a minute.

Measured on this project's 2-core CPU machine with one torch thread and nothing else running: the full demo
69 s, ``--quick`` 33 s (``textrec demo`` and ``textrec demo --quick``, each in a fresh output folder).

Without ``--data`` it shows transfer on the synthetic multi-domain world (``textrec.data.synthetic``):

1. build three shopping domains and write each as a dataset directory; the target domain (garden) has few
   users, the two source domains (tools, kitchen) many;
2. encode every item text with the embedded MiniLM and build VQ-Rec item codes (one quantiser fitted
   jointly on the sources, one fitted on the target: the paper's "new index set");
3. train on the target from scratch: SASRec (item IDs), UniSRec (inductive: text embeddings only), MISSRec
   (inductive, text only: the same text embeddings, with interest tokens from a k-means of the adapted texts
   before every epoch) and VQ-Rec (codes);
4. pre-train VQ-Rec on the sources and fine-tune it on the target (learned code permutation, then the
   code embeddings with the Transformer frozen);
5. print full-ranking test metrics next to the chance level, and recommendations with their item texts;
6. add brand-new items (a new brand, a new kind of product) to the trained UniSRec, MISSRec and VQ-Rec by
   their text alone, without retraining, show them in a user's recommendations and measure, over every target
   user, where the new item that fits the user's rule ranks.

MISSRec runs text only: the synthetic items have no images, and an "image" table made up from the item text
would carry nothing the text does not, so a gain from it would show nothing true about images. MISSRec with
images is measured on the real multimodal Scientific subset (``benchmarks/missrec_scientific.py``).

``--quick`` is a smoke run, not a smaller comparison: a smaller world and 15 epochs check that every stage runs,
but that is too short for the text models to learn the planted rule (SASRec is ahead of UniSRec and MISSRec there,
and new items rank near chance), so its results open with a line that says so. The full demo is the comparison.

With ``--data DIR`` it trains SASRec on a prepared real dataset with the references' settings, evaluates it
and shows recommendations.

Progress (stage headers, every training epoch) goes to stderr; the results (metric tables with the chance
level, recommendations, the new-item ranks) go to the ``results`` stream, stdout by default, so that
``textrec demo > out.txt`` keeps them. ``textrec demo --json`` sends them to stderr instead and prints only
the JSON summary on stdout.
"""

from __future__ import annotations

import functools
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

import numpy as np

from textrec.config import load_config
from textrec.data.dataset import Dataset
from textrec.data.synthetic import WorldSpec, make_domain
from textrec.report import metrics_table, shorten
from textrec.runs import load_run
from textrec.serve.recommend import recommend
from textrec.train.run import train_run

log = logging.getLogger(__name__)

QUICK_NOTE = ("--quick is a smoke run: a smaller world and 15 epochs check that every stage runs, too few for the text "
              "models to learn the planted rule, so these numbers compare nothing; run `textrec demo` (about 70 s on a "
              "2-core CPU) for the comparison")
SOURCE_DOMAINS = ("tools", "kitchen")
TARGET_DOMAIN = "garden"
SMALL = ["model.hidden_size=64", "model.inner_size=64", "train.batch_size=512", "train.patience=5"]
# MISSRec on the synthetic world: text only (it has no images), from the same text embeddings as UniSRec. It is
# not causal, so an epoch is one row per (prefix, next item), ~10x the rows of the whole-sequence models here: a
# larger step and, with --quick, 10 epochs keep its cost to ~2.5 CPU seconds. On MiniLM embeddings its validation
# score stalls for ~10 epochs before it learns the rule (R@10 0.18 when stopped there, 0.87 at epoch 39 of 40),
# so it keeps the reference's patience of 10
MISSREC_TEXT = ["model.mode=inductive", "model.text_feature=embeddings", "model.image_feature=", "train.lr=0.003",
                "train.patience=10"]


Show = Callable[..., None]  # prints one result line (print's arguments) to the results stream


def _say(*args) -> None:
    """Progress: to the ``textrec`` logger (the CLI shows it on stderr), never to the results stream."""
    log.info(" ".join(map(str, args)))


def _where(path: Path) -> str:
    """``./textrec-demo`` rather than ``textrec-demo``, so it reads as a place in the current directory."""
    text = str(path)
    return text if path.is_absolute() or text.startswith(".") else f"./{text}"


def _show_recommendations(show: Show, model, ds: Dataset, max_seq_len: int, user: int = 0, k: int = 5, history=None,
                          truth=None) -> list[dict]:
    """Show the last items of a history and the model's top-k after it."""
    if history is None:
        seq = ds.sequence(user)
        history, truth = seq[:-2], seq[-2]  # what the model saw in training, and the validation target
    recs = recommend(model, ds, history, k=k, max_seq_len=max_seq_len)
    show("  last items:")
    for i in history[-3:]:
        show(f"      {shorten(ds.item_texts[i - 1], 80)}")
    if truth is not None:
        show(f"  next item actually bought: {shorten(ds.item_texts[truth - 1], 80)}")
    show(f"  top {k} recommendations:")
    for r in recs:
        mark = "  <- the actual next item" if r.item_id == truth else ("  <- NEW item, never trained on" if r.item_key.startswith("NEW") else "")
        show(f"    {r.rank}. {shorten(r.text, 80)}{mark}")
    return [r.to_dict() for r in recs]


def _demo_real(show: Show, data: str, out_dir: Path, quick: bool, device: str) -> dict:
    data_dir = Path(data)
    ds = Dataset.load(data_dir)
    _say(f"demo on {ds.name}: {ds.n_users:,} users, {ds.n_items:,} items")
    cfg = load_config(model="sasrec", overrides=[f"train.device={device}"] + (["train.epochs=5"] if quick else []))
    _say("training SASRec with the reference settings ...")
    fit = train_run(data_dir, cfg, out_dir / "runs" / f"sasrec-{ds.name}", overwrite=True).fit
    show(f"test metrics on {ds.name} (full ranking over all {ds.n_items:,} items):\n")
    show(metrics_table([(f"SASRec ({ds.name}) test", fit.test), ("chance level", {"recall@10": 10 / ds.n_items, "recall@50": 50 / ds.n_items})]))
    run = load_run(out_dir / "runs" / f"sasrec-{ds.name}", data_dir, device)
    show(f"\nuser {ds.user_keys[0]}:")
    examples = _show_recommendations(show, run.model, run.dataset, cfg.data.max_seq_len)
    return {"dataset": ds.name, "runs": {"sasrec": fit.to_dict()}, "example_recommendations": examples}


NEW_BRAND, NEW_KIND = "Zorblat", "gazebo"  # neither occurs in any domain of the world


def _rule_target(ds: Dataset, history) -> tuple[str, str]:
    """(colour, style) of the item the planted rule predicts after ``history``: the user's usual style, next colour."""
    from textrec.data.synthetic import COLORS

    titles = [ds.item_attributes[i - 1]["title"] for i in history]
    styles = [t.rsplit(", ", 1)[1].removesuffix(" style") for t in titles]
    style = max(set(styles), key=styles.count)
    colour = next(c for c in COLORS if f" {c} " in f" {titles[-1]} ")
    return COLORS[(COLORS.index(colour) + 1) % len(COLORS)], style


def _new_items(show: Show, ds: Dataset, runs: dict) -> dict:
    """Add one brand-new item per (colour, style) by text alone; show and measure where the rule's one ranks."""
    from textrec.data.synthetic import COLORS, STYLES
    from textrec.serve.catalogue import add_items

    pairs = [(c, s) for c in COLORS for s in STYLES]
    keys = [f"NEW-{c}-{s}" for c, s in pairs]
    texts = [f"{NEW_BRAND} {c} bamboo {NEW_KIND}, {s} style. Garden Outdoor Living. {NEW_BRAND}. " for c, s in pairs]
    show(f"\nadded {len(keys)} brand-new items by their text alone, no retraining: a new brand and a new kind of "
         f"product, one per colour and style, e.g. {shorten(texts[0], 70)}")
    summary = {"texts": texts, "models": {}}
    extended = {name: add_items(run, keys, texts) for name, run in runs.items()}
    first = next(iter(runs))
    history = ds.sequence(0)[:-2]
    show(f"{first} for user {ds.user_keys[0]}, with the new items in the catalogue "
         f"(the rule says {' '.join(_rule_target(ds, history))} next):")
    summary["recommendations"] = _show_recommendations(show, extended[first].model, extended[first].dataset,
                                                       runs[first].cfg.data.max_seq_len, history=history, k=10)
    for name, ext in extended.items():
        ranks = []
        for u in range(ds.n_users):
            history = ds.sequence(u)[:-2]
            want = "NEW-{}-{}".format(*_rule_target(ds, history))
            ranking = recommend(ext.model, ext.dataset, history, k=ext.dataset.n_items, max_seq_len=runs[name].cfg.data.max_seq_len)
            # rank of the rule's new item among the catalogue's own items (the other new items left out)
            before = next(i for i, r in enumerate(ranking) if r.item_key == want)
            ranks.append(1 + sum(1 for r in ranking[:before] if r.item_id <= ds.n_items))
        ranks = np.array(ranks)
        summary["models"][name] = {"median_rank": float(np.median(ranks)), "top10": float(np.mean(ranks <= 10)), "ranks": ranks.tolist()}
    show(f"\nwhere the new item that fits the user's rule (usual style, next colour) ranks among the {ds.n_items} catalogue "
         f"items, over all {ds.n_users} {TARGET_DOMAIN} users (chance: median about {ds.n_items // 2}, top 10 for {10 / ds.n_items:.0%}):")
    for name, m in summary["models"].items():
        show(f"  {name:<22} median rank {m['median_rank']:5.1f}, in the top 10 for {m['top10']:.0%} of users")
    show("  (UniSRec and MISSRec score a new item from its text embedding; VQ-Rec from the codes that the target's "
         f"quantiser, fitted on {ds.n_items} items, gives its text)")
    return summary


def _build_world(out_dir: Path, quick: bool, encoder: str = "minilm") -> dict[str, Path]:
    from textrec.quant.codes import quantize_dataset, quantize_datasets
    from textrec.text.encode import encode_dataset

    source_spec = WorldSpec(n_items=160, n_users=500) if quick else WorldSpec()
    target_spec = WorldSpec(n_items=160 if quick else 240, n_users=150)
    dirs = {}
    for name in (*SOURCE_DOMAINS, TARGET_DOMAIN):
        ds = make_domain(name, target_spec if name == TARGET_DOMAIN else source_spec, seed=0)
        dirs[name] = ds.save(out_dir / "data" / name, overwrite=True)
    _say(f"built the synthetic world in {out_dir / 'data'}: sources {', '.join(SOURCE_DOMAINS)} ({source_spec.n_users} users, "
         f"{source_spec.n_items} items each), target {TARGET_DOMAIN} ({target_spec.n_users} users, {target_spec.n_items} items)")
    _say("example item texts: " + " | ".join(shorten(t, 60) for t in Dataset.load(dirs[TARGET_DOMAIN]).item_texts[:2]))
    t0 = time.perf_counter()
    for d in dirs.values():
        encode_dataset(d, encoder, progress=False)
    _say(f"encoded every item text with {'the embedded MiniLM' if encoder == 'minilm' else encoder} ({time.perf_counter() - t0:.0f}s; cached for next time)")
    quantize_datasets([dirs[s] for s in SOURCE_DOMAINS], n_codebooks=32, codebook_size=64, name="codes")
    quantize_dataset(dirs[TARGET_DOMAIN], n_codebooks=32, codebook_size=64, name="codes")
    _say("built item codes: 32 sub-spaces x 64 codewords (one quantiser on the sources, a new one on the target)")
    return dirs


def run_demo(data: str | None = None, out: str = "textrec-demo", quick: bool = False, device: str = "auto",
             encoder: str = "minilm", results: TextIO | None = None) -> dict:
    """Run the demo, writing under ``out``; result tables go to ``results`` (default stdout), progress to stderr."""
    from textrec.train.transfer import finetune_config, finetune_run, pretrain_run

    start = time.perf_counter()
    show = functools.partial(print, file=results if results is not None else sys.stdout, flush=True)
    out_dir = Path(out)
    if data is not None:
        summary = _demo_real(show, data, out_dir, quick, device)
        summary["seconds"] = time.perf_counter() - start
        _say(f"\ndemo finished in {summary['seconds']:.0f}s; wrote {_where(out_dir)} (runs)")
        return summary
    if quick:
        show(f"note: {QUICK_NOTE}")
    dirs = _build_world(out_dir, quick, encoder)
    target, runs_dir = dirs[TARGET_DOMAIN], out_dir / "runs"
    epochs = "train.epochs=15" if quick else "train.epochs=40"
    common = SMALL + [epochs, f"train.device={device}"]
    results = {}

    _say(f"\n[1/6] SASRec (item IDs) on {TARGET_DOMAIN}, from scratch ...")
    results["SASRec, scratch"] = train_run(target, load_config(model="sasrec", overrides=common), runs_dir / "sasrec", overwrite=True).fit
    _say(f"[2/6] UniSRec (text embeddings, inductive) on {TARGET_DOMAIN}, from scratch ...")
    uni_cfg = load_config(model="unisrec", overrides=common + ["model.mode=inductive"])
    results["UniSRec inductive, scratch"] = train_run(target, uni_cfg, runs_dir / "unisrec", overwrite=True).fit
    _say(f"[3/6] MISSRec (text embeddings, interest tokens, inductive) on {TARGET_DOMAIN}, from scratch ...")
    miss_cfg = load_config(model="missrec", overrides=common + MISSREC_TEXT + (["train.epochs=10"] if quick else []))
    results["MISSRec inductive, scratch"] = train_run(target, miss_cfg, runs_dir / "missrec", overwrite=True).fit
    _say(f"[4/6] VQ-Rec (text -> codes) on {TARGET_DOMAIN}, from scratch ...")
    results["VQ-Rec, scratch"] = train_run(target, load_config(model="vqrec", overrides=common), runs_dir / "vqrec-scratch", overwrite=True).fit
    _say(f"[5/6] VQ-Rec pre-trained on {' + '.join(SOURCE_DOMAINS)} ...")
    pt = pretrain_run([dirs[s] for s in SOURCE_DOMAINS], load_config(model="vqrec", overrides=common), runs_dir / "vqrec-pretrain", overwrite=True)
    _say(f"[6/6] ... fine-tuned on {TARGET_DOMAIN} (learned code permutation, then code embeddings) ...")
    ft_cfg = finetune_config(pt.out_dir, [epochs, "train.batch_size=512", "train.patience=5", "train.lr=0.003", f"train.device={device}"])
    results["VQ-Rec, pre-trained + fine-tuned"] = finetune_run(target, pt.out_dir, ft_cfg, runs_dir / "vqrec-finetune", overwrite=True).fit

    ds = Dataset.load(target)
    chance = {"recall@10": 10 / ds.n_items, "recall@50": 50 / ds.n_items}
    show(f"\ntest metrics on {TARGET_DOMAIN} (full ranking over all {ds.n_items} items):\n")
    show(metrics_table([*((k, v.test) for k, v in results.items()), ("chance level", chance)]))

    run = load_run(runs_dir / "vqrec-finetune", target, device)
    show(f"\nrecommendations of the fine-tuned VQ-Rec for user {ds.user_keys[0]}:")
    examples = _show_recommendations(show, run.model, run.dataset, run.cfg.data.max_seq_len)
    text_runs = {"UniSRec inductive": load_run(runs_dir / "unisrec", target, device),
                 "MISSRec inductive": load_run(runs_dir / "missrec", target, device), "VQ-Rec fine-tuned": run}
    new_item = _new_items(show, ds, text_runs)
    seconds = time.perf_counter() - start
    _say(f"\ndemo finished in {seconds:.0f}s; wrote {_where(out_dir)} (datasets and runs)")
    return {
        "out": str(out_dir),
        "target": TARGET_DOMAIN,
        "runs": {k: v.to_dict() for k, v in results.items()},
        "pretrain": pt.fit.to_dict(),
        "chance": chance,
        "example_recommendations": examples,
        "new_items": new_item,
        "seconds": seconds,
        "note": QUICK_NOTE if quick else "",
    }
