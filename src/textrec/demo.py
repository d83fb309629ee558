"""``textrec demo``: the whole pipeline end to end, offline, on CPU, in a few minutes.

Without ``--data`` it shows transfer on the synthetic multi-domain world (``textrec.data.synthetic``):

1. build three shopping domains and write each as a dataset directory; the target domain (garden) has few
   users, the two source domains (tools, kitchen) many;
2. encode every item text with the embedded MiniLM and build VQ-Rec item codes (one quantiser fitted
   jointly on the sources, one fitted on the target: the paper's "new index set");
3. train on the target from scratch: SASRec (item IDs) and VQ-Rec (codes);
4. pre-train VQ-Rec on the sources and fine-tune it on the target (learned code permutation, then the
   code embeddings with the Transformer frozen);
5. print full-ranking test metrics next to the chance level, and recommendations with their item texts,
   including a brand-new item added to the catalogue by its text alone, without retraining.

With ``--data DIR`` it trains SASRec on a prepared real dataset with the references' settings, evaluates it
and shows recommendations.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from textrec.config import load_config
from textrec.data.dataset import Dataset
from textrec.data.synthetic import WorldSpec, make_domain
from textrec.report import metrics_table, shorten
from textrec.serve.recommend import recommend
from textrec.train.run import load_run, train_run

SOURCE_DOMAINS = ("tools", "kitchen")
TARGET_DOMAIN = "garden"
SMALL = ["model.hidden_size=64", "model.inner_size=64", "train.batch_size=512", "train.patience=5"]


def _say(*args) -> None:
    print(*args, file=sys.stderr, flush=True)


def _show_recommendations(model, ds: Dataset, max_seq_len: int, user: int = 0, k: int = 5, history=None, truth=None) -> list[dict]:
    """Print the last items of a history and the model's top-k after it."""
    if history is None:
        seq = ds.sequence(user)
        history, truth = seq[:-2], seq[-2]  # what the model saw in training, and the validation target
    recs = recommend(model, ds, history, k=k, max_seq_len=max_seq_len)
    _say("  last items:")
    for i in history[-3:]:
        _say(f"      {shorten(ds.item_texts[i - 1], 80)}")
    if truth is not None:
        _say(f"  next item actually bought: {shorten(ds.item_texts[truth - 1], 80)}")
    _say(f"  top {k} recommendations:")
    for r in recs:
        mark = "  <- the actual next item" if r.item_id == truth else ("  <- NEW item, never trained on" if r.item_key.startswith("NEW") else "")
        _say(f"    {r.rank}. {shorten(r.text, 80)}{mark}")
    return [r.to_dict() for r in recs]


def _demo_real(data: str, out_dir: Path, quick: bool, device: str) -> dict:
    data_dir = Path(data)
    ds = Dataset.load(data_dir)
    _say(f"demo on {ds.name}: {ds.n_users:,} users, {ds.n_items:,} items")
    cfg = load_config(model="sasrec", overrides=[f"train.device={device}"] + (["train.epochs=5"] if quick else []))
    _say("training SASRec with the reference settings ...")
    fit = train_run(data_dir, cfg, out_dir / "runs" / f"sasrec-{ds.name}", overwrite=True, quiet=True).fit
    _say("\n" + metrics_table([(f"SASRec ({ds.name}) test", fit.test), ("chance level", {"recall@10": 10 / ds.n_items, "recall@50": 50 / ds.n_items})]))
    run = load_run(out_dir / "runs" / f"sasrec-{ds.name}", data_dir, device)
    _say(f"\nuser {ds.user_keys[0]}:")
    examples = _show_recommendations(run.model, run.dataset, cfg.data.max_seq_len)
    return {"dataset": ds.name, "runs": {"sasrec": fit.to_dict()}, "example_recommendations": examples}


def _build_world(out_dir: Path, quick: bool) -> dict[str, Path]:
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
        encode_dataset(d, progress=False)
    _say(f"encoded every item text with the embedded MiniLM ({time.perf_counter() - t0:.0f}s; cached for next time)")
    quantize_datasets([dirs[s] for s in SOURCE_DOMAINS], n_codebooks=32, codebook_size=64, name="codes")
    quantize_dataset(dirs[TARGET_DOMAIN], n_codebooks=32, codebook_size=64, name="codes")
    _say("built item codes: 32 sub-spaces x 64 codewords (one quantiser on the sources, a new one on the target)")
    return dirs


def run_demo(data: str | None = None, out: str = "textrec-demo", quick: bool = False, device: str = "auto") -> dict:
    from textrec.serve.catalogue import add_items
    from textrec.train.transfer import finetune_config, finetune_run, pretrain_run

    start = time.perf_counter()
    out_dir = Path(out)
    if data is not None:
        summary = _demo_real(data, out_dir, quick, device)
        summary["seconds"] = time.perf_counter() - start
        return summary
    dirs = _build_world(out_dir, quick)
    target, runs_dir = dirs[TARGET_DOMAIN], out_dir / "runs"
    epochs = "train.epochs=15" if quick else "train.epochs=40"
    common = SMALL + [epochs, f"train.device={device}"]
    results = {}

    _say(f"\n[1/4] SASRec (item IDs) on {TARGET_DOMAIN}, from scratch ...")
    results["SASRec, scratch"] = train_run(target, load_config(model="sasrec", overrides=common), runs_dir / "sasrec", overwrite=True, quiet=True).fit
    _say(f"[2/4] VQ-Rec (text -> codes) on {TARGET_DOMAIN}, from scratch ...")
    results["VQ-Rec, scratch"] = train_run(target, load_config(model="vqrec", overrides=common), runs_dir / "vqrec-scratch", overwrite=True, quiet=True).fit
    _say(f"[3/4] VQ-Rec pre-trained on {' + '.join(SOURCE_DOMAINS)} ...")
    pt = pretrain_run([dirs[s] for s in SOURCE_DOMAINS], load_config(model="vqrec", overrides=common), runs_dir / "vqrec-pretrain", overwrite=True, quiet=True)
    _say(f"[4/4] ... fine-tuned on {TARGET_DOMAIN} (learned code permutation, then code embeddings) ...")
    ft_cfg = finetune_config(pt.out_dir, [epochs, "train.batch_size=512", "train.patience=5", "train.lr=0.003", f"train.device={device}"])
    results["VQ-Rec, pre-trained + fine-tuned"] = finetune_run(target, pt.out_dir, ft_cfg, runs_dir / "vqrec-finetune", overwrite=True, quiet=True).fit

    ds = Dataset.load(target)
    chance = {"recall@10": 10 / ds.n_items, "recall@50": 50 / ds.n_items}
    _say(f"\ntest metrics on {TARGET_DOMAIN} (full ranking over all {ds.n_items} items):\n")
    _say(metrics_table([*((k, v.test) for k, v in results.items()), ("chance level", chance)]))

    run = load_run(runs_dir / "vqrec-finetune", target, device)
    _say(f"\nrecommendations of the fine-tuned VQ-Rec for user {ds.user_keys[0]}:")
    examples = _show_recommendations(run.model, run.dataset, run.cfg.data.max_seq_len)

    # a brand-new item, described by text only, matching the user's style and the next colour on the wheel
    from textrec.data.synthetic import COLORS

    last = ds.item_attributes[ds.sequence(0)[-3] - 1]["title"]
    colour = next(c for c in COLORS if f" {c} " in f" {last} ")
    style = last.rsplit(", ", 1)[1]
    text = f"Zorblat {COLORS[(COLORS.index(colour) + 1) % len(COLORS)]} bamboo birdhouse, {style}. Garden Outdoor Living. Zorblat. "
    extended = add_items(run, ["NEW-0001"], [text])
    _say(f"\nadded a brand-new item by its text alone (no retraining): {shorten(text, 80)}")
    seq = ds.sequence(0)
    new_examples = _show_recommendations(extended.model, extended.dataset, run.cfg.data.max_seq_len, history=seq[:-2], k=10)
    everything = recommend(extended.model, extended.dataset, seq[:-2], k=extended.dataset.n_items, max_seq_len=run.cfg.data.max_seq_len)
    new_rank = next(r.rank for r in everything if r.item_key == "NEW-0001")
    _say(f"  the new item ranks {new_rank} of {len(everything)} candidates for this user")
    seconds = time.perf_counter() - start
    _say(f"\ndemo finished in {seconds:.0f}s; datasets and runs are in {out_dir}")
    return {
        "out": str(out_dir),
        "target": TARGET_DOMAIN,
        "runs": {k: v.to_dict() for k, v in results.items()},
        "pretrain": pt.fit.to_dict(),
        "chance": chance,
        "example_recommendations": examples,
        "new_item": {"text": text, "rank": new_rank, "recommendations": new_examples},
        "seconds": seconds,
    }
