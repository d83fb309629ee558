"""``textrec demo``: the whole pipeline end to end, offline, on CPU, in a few minutes.

Without ``--data`` it builds the synthetic multi-domain world (``textrec.data.synthetic``), writes each
domain as a dataset directory, trains SASRec on the target domain, evaluates it with full ranking against
the chance level, and shows example recommendations with their item texts. With ``--data DIR`` it does
the same on a prepared real dataset with the references' hyper-parameters.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from textrec.config import load_config
from textrec.data.dataset import Dataset
from textrec.data.synthetic import WorldSpec, make_world
from textrec.report import metrics_table, shorten
from textrec.serve.recommend import recommend
from textrec.train.run import train_run

SOURCE_DOMAINS = ("tools", "kitchen")
TARGET_DOMAIN = "garden"


def _say(*args) -> None:
    print(*args, file=sys.stderr, flush=True)


def _show_recommendations(model, ds: Dataset, max_seq_len: int, user: int = 0, k: int = 5) -> list[dict]:
    """Print the last items of one user's training history and the model's top-k after it."""
    seq = ds.sequence(user)
    history, truth = seq[:-2], seq[-2]  # what the model saw in training, and the validation target
    recs = recommend(model, ds, history, k=k, max_seq_len=max_seq_len)
    _say(f"\nuser {ds.user_keys[user]}: last items")
    for i in history[-3:]:
        _say(f"      {shorten(ds.item_texts[i - 1], 80)}")
    _say(f"next item actually bought: {shorten(ds.item_texts[truth - 1], 80)}")
    _say(f"top {k} recommendations:")
    for r in recs:
        mark = "  <- the actual next item" if r.item_id == truth else ""
        _say(f"  {r.rank}. {shorten(r.text, 80)}{mark}")
    return [r.to_dict() for r in recs]


def run_demo(data: str | None = None, out: str = "textrec-demo", quick: bool = False, device: str = "auto") -> dict:
    start = time.perf_counter()
    out_dir = Path(out)
    overrides = [f"train.device={device}"]
    if data is not None:
        data_dir = Path(data)
        ds = Dataset.load(data_dir)
        _say(f"demo on {ds.name}: {ds.n_users:,} users, {ds.n_items:,} items")
        if quick:
            overrides += ["train.epochs=5"]
    else:
        spec = WorldSpec(n_items=120, n_users=300) if quick else WorldSpec()
        world = make_world((*SOURCE_DOMAINS, TARGET_DOMAIN), spec, seed=0)
        _say(f"building the synthetic world in {out_dir / 'data'}: domains {', '.join(world)} "
             f"({spec.n_items} items and {spec.n_users} users each)")
        for name, domain in world.items():
            domain.save(out_dir / "data" / name, overwrite=True)
        data_dir = out_dir / "data" / TARGET_DOMAIN
        ds = world[TARGET_DOMAIN]
        overrides += ["model.hidden_size=64", "train.batch_size=512", "train.patience=5",
                      f"train.epochs={8 if quick else 40}"]
        _say("example item texts: " + " | ".join(shorten(t, 60) for t in ds.item_texts[:2]))

    cfg = load_config(model="sasrec", overrides=overrides)
    _say(f"\ntraining SASRec (item IDs) on {ds.name} ...")
    run = train_run(data_dir, cfg, out_dir / "runs" / f"sasrec-{ds.name}", overwrite=True, quiet=True)
    fit = run.fit
    chance = {"recall@10": 10 / ds.n_items, "recall@50": 50 / ds.n_items}
    rows = [(f"SASRec ({ds.name}) test", fit.test), ("chance level", chance)]
    _say("\n" + metrics_table(rows))
    _say(f"(best epoch {fit.best_epoch} of {fit.epochs_run}, {fit.to_dict()['seconds_per_epoch']:.1f}s per epoch)")

    from textrec.train.run import load_run

    loaded = load_run(run.out_dir, data_dir, device)
    examples = _show_recommendations(loaded.model, loaded.dataset, cfg.data.max_seq_len)
    seconds = time.perf_counter() - start
    _say(f"\ndemo finished in {seconds:.0f}s; datasets and runs are in {out_dir}")
    return {
        "out": str(out_dir),
        "dataset": ds.name,
        "runs": {"sasrec": {"dir": str(run.out_dir), **fit.to_dict()}},
        "chance": chance,
        "example_recommendations": examples,
        "seconds": seconds,
    }
