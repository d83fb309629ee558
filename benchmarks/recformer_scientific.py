"""Recformer on Amazon Scientific (UniSRec split), fine-tuned from the embedded MiniLM initialisation.

Every row is a `textrec train ... --config recformer-reference` run (the reference's fine-tuning recipe:
AdamW 5e-5, batch 16, two stages with patience 5 / 3; `textrec/configs/recformer-reference.toml`), listed
under the table with its seconds per epoch of training and of item re-encoding (stage 1 re-encodes all
4,385 items at the start of every epoch) measured separately.

Recformer is far heavier than the ID and embedding models (a 6-layer, 384-d MiniLM reads every history's
tokens, and every item's, each epoch), so the default is a reduced setting sized for about an hour on a
2-core CPU; the full setting is one flag away:

* default (reduced): MiniLM's 6 layers kept (a 2-layer cut was measured to break it); histories of at most
  128 tokens and attributes of at most 16 tokens (reference 1024 / 32); a seeded sample of 2,000 of the
  8,442 users to train and validate on (the catalogue stays all 4,385 items), test on all 8,442 users
  (`textrec evaluate RUN --data SCIENTIFIC`); at most 6 epochs, validation every epoch, patience 2 / 1, and an
  optimiser step every batch (with 125 batches an epoch, the reference's accumulation of 8 would leave 94
  steps in 6 epochs, all inside its 100-step warm-up);
* `--full`: all users, 512 tokens (reference 1024; MiniLM has 512 positions), 32 tokens per attribute and
  the reference recipe unchanged (128 epochs at most, validation every 3, accumulation 8): a GPU run;
* `--all-users`: the reduced setting's token budgets and epochs, trained and validated on all 8,442 users (about two
  hours on one CPU thread with `train.amp_cpu=true`, bf16 autocast of the training forward, for CPUs with bf16 instructions);
* `--smoke`: under two minutes end to end on 48 users, 48 tokens, titles only, one epoch, in a temporary folder, writing
  nothing to docs/ (checks the script, says nothing about accuracy).

    python benchmarks/recformer_scientific.py                # reduced, about an hour on 2 CPU cores
    python benchmarks/recformer_scientific.py --full         # the full setting (GPU: bf16 autocast)
    python benchmarks/recformer_scientific.py --all-users train.amp_cpu=true
    python benchmarks/recformer_scientific.py --smoke
    python benchmarks/recformer_scientific.py --all-users --init PT_RUN   # fine-tuned from a pre-trained Recformer run
    python benchmarks/recformer_scientific.py --skip-finetune --zero-shot PT_RUN --zero-shot-minilm   # zero-shot rows
    # the faithful CPU route (issue 31): the reference's attributes (3 x 32 tokens), 192 tokens, stage 2 reached
    python benchmarks/recformer_scientific.py --all-users --name faithful --seeds 2020 2021 2022 --resume --random-ties \
        --work ~/.cache/textrec-work/recformer train.amp_cpu=true train.num_threads=1 train.lr=1e-4 model.max_token_num=192 \
        model.max_attr_length=32 train.epochs=8 model.stage_1_max_epochs=6 model.stage_1_eval_every=2
    # the same after an in-domain contrastive warm-up of 2 epochs (textrec pretrain on Scientific's training sequences)
    python benchmarks/recformer_scientific.py --all-users --name faithful --warmup-epochs 2 ...
    # the full setting on a GPU (512 tokens, the reference recipe until both stages' patience runs out)
    python benchmarks/recformer_scientific.py --full --random-ties --seeds 2020 --resume --work ~/.cache/textrec-work/recformer-full

Zero-shot rows rank every test user's item over the whole catalogue with no training on Scientific: a pre-trained run
(`textrec evaluate PT_RUN --data SCIENTIFIC`), and as its control Recformer built from MiniLM and never trained.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
from _common import (
    ROOT,
    SHARED_DATA,
    WORK,
    finished,
    fmt,
    machine,
    machine_line,
    mean_metrics,
    previous_runs,
    run_dir,
    save_result,
    textrec,
    update_results,
)

SETTINGS = {
    "reduced": {"users": 2000, "test_all_users": True,
                "overrides": ["model.max_token_num=128", "model.max_attr_length=16", "train.epochs=6", "train.eval_every=1",
                              "train.grad_accum=1", "model.stage_1_patience=2", "model.stage_2_patience=1"]},
    "full": {"users": None, "test_all_users": False, "overrides": []},
    "smoke": {"users": 48, "test_all_users": False,
              "overrides": ["model.max_token_num=48", "model.max_attr_num=1", "model.max_attr_length=8", "train.epochs=1",
                            "train.eval_every=1",
                            "train.grad_accum=1", "train.warmup_steps=0"]},
}


def user_sample(sci: Path, n_users: int | None, seed: int, work: Path) -> Path:
    """``sci`` itself, or a dataset of a seeded sample of its users with the whole catalogue (same item ids)."""
    from textrec.data.dataset import Dataset

    if n_users is None:
        return sci
    out = work / "data" / f"scientific-users{n_users}-seed{seed}"
    if (out / "meta.json").exists():
        return out
    ds = Dataset.load(sci)
    if n_users > ds.n_users:
        sys.exit(f"--users {n_users}: Scientific has {ds.n_users} users")
    rows = np.sort(np.random.default_rng(seed).choice(ds.n_users, n_users, replace=False))
    times = None if ds.seq_times is None else [ds.seq_times[ds.seq_offsets[u] : ds.seq_offsets[u + 1]] for u in rows]
    meta = {"source": ds.meta.get("source"), "user_sample": {"of": str(sci), "users": n_users, "seed": seed}}
    Dataset.from_sequences(ds.name, ds.item_keys, ds.item_texts, [ds.user_keys[u] for u in rows], [ds.sequence(u) for u in rows],
                           times, item_attributes=ds.item_attributes, meta=meta).save(out, overwrite=True)
    return out


def epoch_seconds(run: Path) -> dict:
    """Per-epoch medians from the run's log.jsonl: training alone, item re-encoding (stage 1), validation."""
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    encode = [r["item_encode_seconds"] for r in log if "item_encode_seconds" in r]
    train = [r["train_seconds"] - r.get("item_encode_seconds", 0.0) for r in log]
    valid = [r["eval_seconds"] for r in log if "eval_seconds" in r]
    # medians: an epoch slowed by something else on the machine (a check run beside it) does not move them
    median = lambda xs: float(np.median(xs)) if xs else None
    return {"train": median(train), "encode": median(encode), "valid": median(valid), "epochs": len(log),
            "stage_1_epochs": sum(r.get("phase", "").startswith("stage 1") for r in log)}


def curve(run: Path) -> list[list[float]] | None:
    """Validation R@10 and N@10 after each evaluated epoch, from the run's log.jsonl (None when the log is gone)."""
    log = run / "log.jsonl"
    if not log.exists():
        return None
    records = [json.loads(line) for line in log.read_text().splitlines()]
    return [[r["epoch"], r["valid"]["recall@10"], r["valid"]["ndcg@10"]] for r in records if "valid" in r]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    size = p.add_mutually_exclusive_group()
    size.add_argument("--full", action="store_true", help="the full setting (all users, 512 tokens, the reference recipe)")
    size.add_argument("--smoke", action="store_true", help="a tiny end-to-end check in a temporary folder; writes no docs")
    p.add_argument("--seeds", type=int, nargs="+", default=[2020])
    p.add_argument("--users", type=int, help="users to train and validate on (default: the setting's)")
    p.add_argument("--all-users", action="store_true", help="train and validate on every user (the reduced setting otherwise)")
    p.add_argument("--sample-seed", type=int, default=0, help="seed of the user sample")
    p.add_argument("--work", type=Path, help="prepared data and runs (default benchmarks/.work; --smoke: a temporary folder)")
    p.add_argument("--no-write", action="store_true")
    p.add_argument("--section", help="docs/RESULTS.md section and benchmarks/results/SECTION.json "
                                     "(default recformer_scientific, or recformer_scientific_full with --full)")
    p.add_argument("--zero-shot", type=Path, nargs="+", default=[], metavar="PT_RUN",
                   help="also rank Scientific's test users with these pre-trained Recformer runs, no fine-tuning "
                        "(`textrec evaluate PT_RUN --data SCIENTIFIC`), a row each")
    p.add_argument("--zero-shot-minilm", action="store_true",
                   help="also rank Scientific's test users with Recformer built from MiniLM and never trained (the control "
                        "for the pre-trained zero-shot rows)")
    p.add_argument("--init", type=Path, metavar="PT_RUN",
                   help="fine-tune from this pre-trained Recformer run (`textrec finetune --init PT_RUN`) instead of MiniLM")
    p.add_argument("--warmup-epochs", type=int, default=0, metavar="N",
                   help="before each seed's fine-tuning, N epochs of in-domain contrastive pre-training on Scientific's own "
                        "training sequences (`textrec pretrain`: the reference's pre-training loss, in-batch pairs of "
                        "(history, next item) with gradients through both sides, + MLM; its optimiser settings), then fine-tune "
                        "from it (`textrec finetune --init`)")
    p.add_argument("--skip-finetune", action="store_true", help="only the zero-shot rows")
    p.add_argument("--name", help="a suffix of the row's key, for a row whose overrides differ from another's with the same setting")
    p.add_argument("--resume", action="store_true", help="keep the finished runs of an interrupted invocation and continue an "
                                                         "interrupted training run from its last epoch")
    p.add_argument("--random-ties", action="store_true",
                   help="also evaluate each finished run's test split with ties in random order (`--ties random`), "
                        "recording its metrics and how many targets tie with another item")
    p.add_argument("--render-only", action="store_true", help="rewrite the RESULTS.md section from the saved JSON")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="extra textrec config overrides (named in the table)")
    args = p.parse_args()
    setting = "full" if args.full else "smoke" if args.smoke else "reduced"
    section = args.section or {"reduced": "recformer_scientific", "full": "recformer_scientific_full", "smoke": None}[setting]
    work = args.work or (Path(tempfile.mkdtemp(prefix="recformer-smoke-")) if args.smoke else WORK)
    results = (ROOT / "benchmarks" / "results" / f"{section}.json") if section else work / "recformer_smoke.json"
    write_docs = not args.no_write and section is not None
    if args.render_only:
        md = render(json.loads(results.read_text()))
        print(md)
        if write_docs:
            update_results(section, md)
        return

    cfg = SETTINGS[setting]
    if args.all_users and args.users is not None:
        sys.exit("--all-users and --users N: choose one")
    n_users = None if args.all_users else args.users if args.users is not None else cfg["users"]
    overrides = [*cfg["overrides"], *args.overrides]
    sci = work / "data" / "scientific"
    if not (sci / "meta.json").exists():
        textrec("prepare", SHARED_DATA / "amazon-scientific-unisrec", "--format", "unisrec", "--out", sci, "--overwrite")
    data = user_sample(sci, n_users, args.sample_seed, work)
    runs, cmds, _ = previous_runs(results, args.resume)
    old_note = json.loads(results.read_text())["machine"].get("note") if results.exists() else None
    for rs in runs.values():  # rows saved before curves were recorded: read them from the run's log while it exists
        for x in rs:
            if x.get("kind") is None and "machine_note" not in x:  # rows saved before per-row notes: the file's last note
                x["machine_note"] = old_note
            if x.get("kind") is None and "curve" not in x:
                x["curve"] = curve(run_dir(x))
            if x.get("kind") is None and (run_dir(x) / "log.jsonl").exists():  # timings as epoch_seconds gives them now
                x["seconds"] = epoch_seconds(run_dir(x))
    from _common import _shorten_path

    argv = [_shorten_path(a) for a in sys.argv if a != "--resume"]  # no machine paths in the committed script line
    from textrec.config import load_config

    info = {"setting": setting, "users": n_users, "sample_seed": args.sample_seed, "overrides": overrides,
            "test_all_users": cfg["test_all_users"] and n_users is not None,
            # rows made before the option existed drew histories of at least one item
            "empty_history": load_config("recformer-reference", overrides).model_config.empty_history}

    budget = history_fit(sci, overrides)  # what the token budget holds of a test history
    fit_key = f"{budget['max_token_num']}/{budget['max_attr_num']}/{budget['max_attr_length']}"
    twins = token_ties(sci, overrides)  # items token-identical to another at this attribute budget
    twins_key = f"{twins['max_attr_num']}x{twins['max_attr_length']}"

    def save():
        result = save_result(results, {"section": section, "machine": machine(), "info": info, "runs": runs, "commands": cmds,
                                       "argv": argv, "facts": {"history_fit": {fit_key: budget}, "token_ties": {twins_key: twins}}})  # merged with rows another process wrote
        md = render(result)
        if write_docs:
            update_results(section, md)
        return md

    for pt in args.zero_shot:  # pre-trained, no fine-tuning: the whole catalogue, every user's test item
        zkey = f"recformer-zeroshot-{pt.name}"
        if zkey in runs:
            continue
        res = textrec("evaluate", pt, "--data", sci, "--split", "test", log=cmds)
        pt_cfg = json.loads((pt / "config.json").read_text())
        runs[zkey] = [{"kind": "zeroshot", "run": _shorten_path(str(pt / "zeroshot-scientific")), "argv": argv,
                       "pretrained": _shorten_path(str(pt)), "test": {k: v for k, v in res.items() if "@" in k},
                       "test_seconds": res["seconds"], "pretrain_datasets": [{k: d.get(k) for k in ("name", "n_items")} for d in
                                                                              (pt_cfg.get("pretrain") or {}).get("datasets", [])],
                       "pretrain_metrics": json.loads((pt / "metrics.json").read_text())}]
        print(f"{zkey}: {json.dumps(runs[zkey][0]['test'])}", file=sys.stderr)
        save()
    zkey = "recformer-zeroshot-minilm" + (f"-{args.name}" if args.name else "")
    if args.zero_shot_minilm and zkey not in runs:
        runs[zkey] = [{**minilm_zero_shot(sci, [*overrides, f"train.seed={args.seeds[0]}"]), "argv": argv}]
        print(f"{zkey}: {json.dumps(runs[zkey][0]['test'])}", file=sys.stderr)
        save()
    if args.init and args.warmup_epochs:
        sys.exit("--init and --warmup-epochs: choose one")
    start = f"from-{args.init.name}" if args.init else f"warmup{args.warmup_epochs}" if args.warmup_epochs else "minilm"
    key = f"recformer-{start}-{setting}" + (f"-u{n_users}" if n_users else "-all-users") + (f"-{args.name}" if args.name else "")
    for seed in ([] if args.skip_finetune else args.seeds):
        if finished(runs, key, seed):
            continue
        out = work / "runs" / "recformer_scientific" / f"{key}-{seed}"
        log = cmds if seed == args.seeds[0] else None
        unfinished = args.resume and (out / "state.pt").exists()  # an interrupted run continues from its last epoch
        init = args.init
        if args.warmup_epochs:  # in-domain warm-up of this seed, continued if interrupted, kept if finished
            init = out.with_name(out.name + "-warmup")
            if not (init / "metrics.json").exists():
                warm = warmup_overrides(overrides, args.warmup_epochs)
                textrec("pretrain", data, "--model", "recformer", "--out", init,
                        "--resume" if args.resume and (init / "state.pt").exists() else "--overwrite", "--quiet",
                        f"train.seed={seed}", *warm, log=log)
        how = ["finetune", data, "--init", init] if init else ["train", data]
        res = textrec(*how, "--config", "recformer-reference", "--out", out, "--resume" if unfinished else "--overwrite", "--quiet",
                      f"train.seed={seed}", *overrides, log=log)
        if init:
            res["init"] = _shorten_path(str(init))
        if args.warmup_epochs:
            res["warmup"] = {"epochs": args.warmup_epochs, "metrics": json.loads((init / "metrics.json").read_text())}
        res["machine_note"] = os.environ.get("TEXTREC_BENCH_NOTE")  # rows of one table may be measured differently
        res["argv"] = argv
        res["seconds"] = epoch_seconds(run_dir(res))
        res["setting"] = info
        res["curve"] = curve(run_dir(res))
        if info["test_all_users"]:  # the same catalogue and weights, every user's test item
            full = textrec("evaluate", out, "--data", sci, "--split", "test", log=log)
            res["test_sample"], res["test"] = res["test"], {k: v for k, v in full.items() if "@" in k}
            res["test_all_users_seconds"] = full["seconds"]
        if args.random_ties:  # ties in a uniformly random order instead of all ranked above the target
            rnd = textrec("evaluate", out, "--data", sci, "--split", "test", "--ties", "random", log=log)
            res["test_random_ties"] = {k: v for k, v in rnd.items() if "@" in k}
            res["targets_with_ties"] = rnd["targets_with_ties"]
        runs.setdefault(key, []).append(res)
        print(f"{key} seed {seed}: {json.dumps(res['test'])}", file=sys.stderr)
        save()
    print(save())
    if args.smoke:
        print(f"smoke run: wrote {results} and {work}", file=sys.stderr)


# the reference's pre-training optimiser (REFERENCE_NOTES section 4: AdamW 5e-5, linear decay, no warm-up, clip 1.0; batch
# 16 per GPU x 4 GPUs all-gathered: 64 in-batch pairs), as benchmarks/seqrecbench.py's corpus pre-training
WARMUP = ["train.optimizer=adamw", "train.lr=5e-5", "train.schedule=linear", "train.warmup_steps=0", "train.grad_clip=1.0",
          "train.batch_size=64", "train.grad_accum=1"]


def warmup_overrides(overrides: list[str], epochs: int) -> list[str]:
    """The in-domain warm-up's settings: the row's model and machine settings (token budgets, pooling, threads,
    autocast), the reference's pre-training optimiser, ``epochs`` epochs validated once at the end."""
    kept = [o for o in overrides if o.startswith("model.") or o.split("=", 1)[0] in
            ("train.amp_cpu", "train.num_threads", "train.device", "train.amp")]
    return [*kept, *WARMUP, f"train.epochs={epochs}", f"train.eval_every={epochs}", f"train.patience={epochs + 1}"]


def history_fit(sci: Path, overrides: list[str]) -> dict:
    """How much of each test history the token budget holds: the most recent items whose tokens fit whole after
    ``<s>`` (the model then cuts the next item at the budget), against the history's length."""
    from textrec.config import load_config
    from textrec.data.dataset import Dataset
    from textrec.data.sentences import item_attributes, tokenize_items
    from textrec.models.recformer import _tokenizer, backbone_config

    cfg = load_config("recformer-reference", overrides)
    mc = cfg.model_config
    ds = Dataset.load(sci)
    _, folder, _ = backbone_config(mc)
    lengths = tokenize_items(item_attributes(ds), _tokenizer(str(folder)), mc.max_attr_num, mc.max_attr_length).lengths
    fits, sizes = [], []
    for u in range(ds.n_users):
        items = ds.sequence(u)[:-1][-min(cfg.data.max_seq_len, mc.max_item_embeddings - 1):][::-1]  # test history, newest first
        used = np.cumsum(lengths[items])
        fits.append(int((used <= mc.max_token_num - 1).sum()))
        sizes.append(len(items))
    fits, sizes = np.asarray(fits), np.asarray(sizes)
    return {"max_token_num": mc.max_token_num, "max_attr_num": mc.max_attr_num, "max_attr_length": mc.max_attr_length,
            "tokens_per_item": float(lengths[1:].mean()), "items_whole": float(fits.mean()), "history_items": float(sizes.mean()),
            "histories_whole": float((fits == sizes).mean())}


def token_ties(sci: Path, overrides: list[str]) -> dict:
    """Items whose token rows are identical to another item's at the setting's attribute budget (they get identical
    vectors, and a tie ranks above the target under the table's pessimistic rule), and how many test targets are such
    items: in any group, and in groups of 10 or more (which can rank 10th at best)."""
    from collections import Counter

    from textrec.config import load_config
    from textrec.data.dataset import Dataset
    from textrec.data.sentences import item_attributes, tokenize_items
    from textrec.models.recformer import _tokenizer, backbone_config

    mc = load_config("recformer-reference", overrides).model_config
    ds = Dataset.load(sci)
    _, folder, _ = backbone_config(mc)
    t = tokenize_items(item_attributes(ds), _tokenizer(str(folder)), mc.max_attr_num, mc.max_attr_length)
    keys = [None] + [(t.token_ids[a:b].tobytes(), t.token_types[a:b].tobytes()) for a, b in zip(t.offsets[1:-1], t.offsets[2:])]
    size = Counter(keys[1:])
    group = np.array([0] + [size[k] for k in keys[1:]])  # (n_items + 1,) size of each item's group of identical rows
    targets = np.asarray([ds.sequence(u)[-1] for u in range(ds.n_users)])
    return {"max_attr_num": mc.max_attr_num, "max_attr_length": mc.max_attr_length,
            "items_with_a_twin": int((group[1:] > 1).sum()), "largest_group": int(group.max()),
            "test_targets_with_a_twin": int((group[targets] > 1).sum()),
            "test_targets_in_groups_of_10_or_more": int((group[targets] >= 10).sum()), "test_targets": int(targets.size)}


def minilm_zero_shot(sci: Path, overrides: list[str]) -> dict:
    """Recformer built from MiniLM exactly as fine-tuning starts it (new token-type and item-position tables at their seeded
    random initialisation), never trained: every test user's item ranked over the whole catalogue."""
    import time

    from textrec.config import load_config
    from textrec.data.batching import EvalBatcher
    from textrec.data.dataset import Dataset
    from textrec.data.split import eval_examples
    from textrec.eval.ranking import evaluate
    from textrec.train.inputs import build_model, load_item_inputs
    from textrec.train.loop import resolve_device, seed_everything

    cfg = load_config("recformer-reference", overrides)
    if cfg.train.num_threads > 0:
        import torch

        torch.set_num_threads(cfg.train.num_threads)
    start = time.perf_counter()
    inputs, _ = load_item_inputs(cfg, [sci])
    seed_everything(cfg.train.seed)
    device = resolve_device(cfg.train.device)
    model = build_model(cfg, inputs).to(device).eval()
    ds = Dataset.load(sci)
    batcher = EvalBatcher(eval_examples(ds, "test", cfg.data.max_seq_len), cfg.eval.batch_size, device)
    res = evaluate(model, batcher, cfg.eval.ks, cfg.eval.mask_history, cfg.eval.item_chunk)
    from textrec.eval.metrics import compute_metrics

    random_ties = compute_metrics(res.ranks, cfg.eval.ks, ties=res.ties)  # the same ranking, ties in random order
    return {"kind": "zeroshot-minilm", "run": "-", "test": {k: v for k, v in res.metrics.items() if "@" in k},
            "test_random_ties": {k: v for k, v in random_ties.items() if "@" in k}, "targets_with_ties": int((res.ties > 0).sum()),
            "test_seconds": time.perf_counter() - start, "seed": cfg.train.seed,
            "token_budgets": {"max_token_num": cfg.model_config.max_token_num, "max_attr_length": cfg.model_config.max_attr_length},
            "pooling": cfg.model_config.pooling, "new_tables": cfg.model_config.new_tables}


def sasrec_reference() -> dict | None:
    """SASRec's test metrics (mean over seeds) from the SASRec results table, when it has been run."""
    path = ROOT / "benchmarks" / "results" / "sasrec_scientific.json"
    if not path.exists():
        return None
    runs = json.loads(path.read_text()).get("textrec") or []
    return (mean_metrics(runs), len(runs)) if runs else None


def _options(row: dict) -> str:
    """The script options the row was made with (rows saved before they were kept: none)."""
    return f" (`{' '.join(row['argv'][1:])}`)" if row.get("argv") else ""


def _model_notes(pooling: str, new_tables: str = "random") -> str:
    """The setting cell's note of a pooling other than the reference's <s> state, and of new tables started from
    the backbone (``model.new_tables``) instead of at random."""
    return ("" if pooling == "bos" else f", {pooling} pooling") + ("" if new_tables == "random" else ", new tables from MiniLM")


def _knobs(overrides: list[str]) -> str:
    """The token budget, learning rate, pooling, new tables' start, training rows and stage-1 cap of a row (the
    recipe's, overridden)."""
    from textrec.config import load_config

    cfg = load_config("recformer-reference", overrides)
    mantissa, exponent = f"{cfg.train.lr:.3e}".split("e")
    mc = cfg.model_config
    return (f"; {mc.max_token_num} tokens, attributes of {mc.max_attr_length}, lr {mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
            + _model_notes(cfg.model_config.pooling, cfg.model_config.new_tables)
            + ("" if cfg.data.train_rows in ("auto", "sampled") else f", training rows: {cfg.data.train_rows}")
            + (f", stage 1 at most {mc.stage_1_max_epochs} epochs" if mc.stage_1_max_epochs else "")
            + (f", stage 1 validated every {mc.stage_1_eval_every} epochs" if mc.stage_1_eval_every else ""))


def _savings_lines(sv: dict | None) -> list[str]:
    """What the exact savings save (``benchmarks/recformer_savings.py``), where it was measured."""
    if not sv:
        return []
    st, last, ev, tb = sv["setting"], sv["last_layer_bos_only"], sv["eval_rows_by_tokens"], sv["train_buckets_by_tokens"]
    return [(f"Exact savings (same outputs; `python benchmarks/recformer_savings.py`, MiniLM, {st['max_token_num']} tokens, "
             f"attributes of {st['max_attr_length']}, one thread, medians of {st['repeats']}, interleaved; machine: "
             f"{machine_line(sv['machine'])}; "
             + (f"1-minute load average {sv['load_average'][0]:.1f} at the start, {sv['load_average'][1]:.1f} at the end"
                if "load_average" in sv else "load of other jobs not recorded")
             + f"): the last layer computed for `<s>` alone, forward + backward of 16 "
             f"histories {last['whole_s']:.2f} s -> {last['bos_only_s']:.2f} s ({last['speedup']:.2f}x); evaluation rows grouped "
             f"by token count, one batch of 256 short validation histories {ev['item_order_s']:.2f} s -> {ev['token_groups_s']:.2f} s "
             f"({ev['speedup']:.2f}x; largest difference of a representation {ev['max_abs_difference']:.1e}), token positions of "
             f"a whole validation pass {ev['pass_positions_by_items']:,} -> {ev['pass_positions_by_tokens']:,} "
             f"({ev['pass_ratio']:.2f}x; {ev['pass_real_tokens']:,} real); training buckets sorted by token count, token "
             f"positions of an epoch {tb['positions_by_items']:,} -> {tb['positions_by_tokens']:,} ({tb['ratio']:.2f}x; "
             f"{tb['real_tokens']:,} real). Also: no second validation pass after the best weights are restored (exact: the "
             "best epoch's pass is kept; one pass less a run); the training logits in fp32 under autocast (they were "
             "bf16); stage 1 validated every k epochs where a row says so (`model.stage_1_eval_every`: fewer passes, not "
             "exact, since it can change which epoch is kept)."), ""]


def _ties_note(x: dict) -> str:
    """The row's test metrics with ties in random order and its tied targets, where it recorded them."""
    if "test_random_ties" not in x:
        return ""
    t = x["test_random_ties"]
    return (f"; with ties in random order (`--ties random`) R@10 {fmt(t['recall@10'])} / N@10 {fmt(t['ndcg@10'])}, "
            f"{x['targets_with_ties']:,} test targets tied with at least one other item")


def _stages(rs: list[dict]) -> str:
    """How many epochs each seed spent in stage 2 (item table fixed), where the rows recorded it."""
    second = [x["epochs_run"] - x["seconds"]["stage_1_epochs"] for x in rs if "stage_1_epochs" in x.get("seconds", {})]
    if len(second) < len(rs):
        return ""
    if not any(second):
        return "; stage 2 never ran (the epoch limit came before stage 1's patience ran out)"
    return "; epochs in stage 2 (item table fixed): " + ", ".join(map(str, second))


def _row(label: str, setting: str, m: dict, rest: list[str]) -> str:
    cells = [label, setting, *(fmt(m[k]) for k in ("recall@10", "ndcg@10", "recall@50", "ndcg@50")), *rest]
    return "| " + " | ".join(cells) + " |"


def render(r: dict) -> str:
    rows = [("| model | setting | R@10 | N@10 | R@50 | N@50 | seeds | epochs (best) | train s / epoch | re-encode s / epoch "
            "| valid s / pass |"), "|---|---|---|---|---|---|---|---|---|---|---|"]
    settings, reduced = [], False
    for rs in sorted(r["runs"].values(), key=lambda rs: rs[0].get("kind") is not None):  # fine-tuned rows first
        if rs[0].get("kind") == "zeroshot-minilm":
            z = rs[0]
            rows.append(_row("Recformer, MiniLM init, not trained (zero-shot control)",
                             "all 8,442 users, no training" + _model_notes(z.get("pooling", "bos"), z.get("new_tables", "random")),
                             z["test"], ["1", "-", "-", "-", "-"]))
            start = ("at their random initialisation" if z.get("new_tables", "random") == "random"
                     else "started from MiniLM's type-0 row and at zero")
            settings.append(f"- zero-shot control{_options(z)}: Recformer built from MiniLM as fine-tuning starts it (the new token-type and "
                            f"item-position tables {start}, seed {z['seed']}; "
                            f"{z['token_budgets']['max_token_num']} tokens, attributes of {z['token_budgets']['max_attr_length']}"
                            f"{_model_notes(z.get('pooling', 'bos'))}), "
                            "never trained; test ranked over Scientific's 4,385 items" + _ties_note(z))
            continue
        if rs[0].get("kind") == "zeroshot":
            z = rs[0]
            rows.append(_row(f"Recformer, pre-trained (`{Path(z['pretrained']).name}`), zero-shot", "all 8,442 users, no fine-tuning",
                             z["test"], ["1", "-", "-", "-", "-"]))
            pm = z["pretrain_metrics"]
            settings.append(f"- zero-shot from `{z['pretrained']}`{_options(z)}: pre-trained {pm.get('epochs_run')} epochs on "
                            + ", ".join(d["name"] for d in z["pretrain_datasets"])
                            + f" ({sum(d['n_items'] or 0 for d in z['pretrain_datasets']):,} items; the recipe's "
                            "`seqrecbench.py --steps prepare,pretrain-recformer`, whose command is in its work folder's "
                            "summary.json); test ranked over Scientific's 4,385 items encoded by that checkpoint")
            continue
        info = rs[0].get("setting", r["info"])
        reduced |= info["setting"] != "full"
        users = f"{info['setting']}: {info['users']:,} sampled users" if info["users"] else f"{info['setting']}: all 8,442 users"
        tested = ((", test on all 8,442" if info["test_all_users"] else "") + _knobs(info["overrides"])
                  + (", empty histories drawn" if info.get("empty_history") else ""))

        def sec(k: str, rs: list = rs) -> str:
            values = [x["seconds"][k] for x in rs]
            return "-" if None in values else fmt(sum(values) / len(values), 1)

        epochs = ", ".join(f"{x['epochs_run']} ({x['best_epoch']})" for x in rs)
        init = rs[0].get("init")
        warm = rs[0].get("warmup")
        epochs_word = "" if not warm else "epoch" if warm["epochs"] == 1 else "epochs"
        label = (f"Recformer, MiniLM + {warm['epochs']} {epochs_word} of in-domain contrastive warm-up, fine-tuned" if warm
                 else f"Recformer, pre-trained (`{Path(init).name}`), fine-tuned" if init else "Recformer, MiniLM init, fine-tuned")
        rows.append(_row(label, users + tested, mean_metrics(rs),
                         [str(len(rs)), epochs, sec("train"), sec("encode"), sec("valid")]))
        last = {o.split("=", 1)[0]: o for o in info["overrides"]}  # a later key=value wins, as in textrec
        measured = {x.get("machine_note") for x in rs} - {None}
        settings.append(f"- {label}, {users + tested}{_options(rs[0])}: " + (" ".join(f"`{o}`" for o in last.values())
                                                   or "none (the reference recipe as shipped)")
                        + (f" (from `{init}`)" if init else "")
                        + (f"; timed with {', '.join(sorted(measured))}" if measured else "") + _stages(rs))
        for x in rs:
            if "test_random_ties" in x:
                settings.append(f"  test (seed {Path(x['run']).name.rsplit('-', 1)[-1]}):" + _ties_note(x).removeprefix(";"))
            if x.get("curve"):
                settings.append(f"  validation R@10 / N@10 by epoch (seed {Path(x['run']).name.rsplit('-', 1)[-1]}): "
                                + ", ".join(f"{int(e)}: {fmt(r)} / {fmt(n)}" for e, r, n in x["curve"]))
    sas = sasrec_reference()
    if sas:
        rows.append(_row("SASRec (item IDs), from the SASRec table", "all 8,442 users", sas[0], [str(sas[1]), "-", "-", "-", "-"]))
    lines = [
        "## Recformer on Amazon Scientific (from MiniLM, from a pre-trained checkpoint, zero-shot)",
        "",
        (f"Machine: {machine_line(r['machine'])} (the last invocation's; each row says how it was timed). Rows: "
        "`python benchmarks/recformer_scientific.py` with the options each row lists (means over seeds)."),
        "",
        *rows,
        "",
        ("Recformer reads the embedded all-MiniLM-L6-v2 (all 6 layers, 384-d) through the reference's fine-tuning recipe "
        "(`--config recformer-reference`: AdamW 5e-5, batch 16, warm-up 100 then linear decay, stage 1 re-encoding every "
        "item each epoch with patience 5, stage 2 with the item table fixed, patience 3). The paper fine-tunes a "
        "Longformer-base checkpoint pre-trained on seven Amazon domains; the MiniLM rows start from MiniLM with no pre-training, "
        "the pre-trained rows from a MiniLM-initialised Recformer pre-trained with the reference's recipe on a sample of the "
        "ten-domain corpus (`seqrecbench.py --steps prepare,pretrain-recformer`). "
        "Overrides of the recipe, per row:"),
        "",
        *settings,
        "",
        ("Reduced CPU settings: shorter token budgets (and a user sample to train and validate on, where the row says so) "
         "and a few epochs (see the script's doc); not the full setting (`--full`: every user, 512 tokens, the recipe "
         "unchanged), which needs a GPU." if reduced else "The full setting: every user, 512 tokens, the recipe unchanged."),
        *(f"Token budget {b['max_token_num']} (at most {b['max_attr_num']} attributes of {b['max_attr_length']} tokens, key "
          f"included): an item takes {b['tokens_per_item']:.1f} tokens on average, so a test history keeps its "
          f"{b['items_whole']:.1f} most recent items whole (the next one cut) of {b['history_items']:.1f} on average; "
          f"{b['histories_whole']:.0%} of test histories fit whole."
          for b in (r.get("facts") or {}).get("history_fit", {}).values()),
        *(f"Attributes of {t['max_attr_length']} tokens: {t['items_with_a_twin']} of Scientific's 4,385 items are token-identical "
          f"to another item (largest group {t['largest_group']}); {t['test_targets_with_a_twin']:,} of the {t['test_targets']:,} test "
          f"targets are such items, {t['test_targets_in_groups_of_10_or_more']} of them in groups of 10 or more (identical vectors: "
          "under the table's pessimistic ties such a target ranks 10th at best)."
          for t in sorted((r.get("facts") or {}).get("token_ties", {}).values(), key=lambda t: t["max_attr_length"])),
        *_savings_lines((r.get("facts") or {}).get("savings")),
        ("Seconds per epoch (medians over a run's epochs): training alone (the epoch's `train_seconds` less its re-encoding), the re-encoding of the whole "
        "catalogue at the start of each stage-1 epoch (`item_encode_seconds`), and one validation pass. Training rows: one "
        "(history, next item) row per user and epoch; rows marked \"empty histories drawn\" also draw the first item with "
        "no history as the reference (`model.empty_history`, the default since it was added), the others drew histories of "
        "one item at least."),
        "",
        "Commands (first seed; `$WORK` = benchmarks/.work; the user sample is written by the script):",
        "",
        "```",
        *r["commands"],
        "```",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
