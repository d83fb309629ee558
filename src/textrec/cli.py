"""The ``textrec`` command: each subcommand parses arguments, calls one library function and formats its result.

Human-readable progress and tables go to stderr; ``--json`` puts exactly one JSON object on stdout so
scripts can read it. Errors caused by input exit with status 2 and one line ``textrec: error: ...``.
The library reports through the ``textrec`` logger and ``TextrecWarning`` (``textrec.log``); for the length of
a command the CLI shows both on stderr, ``--quiet`` keeping warnings only and ``-v`` adding debug messages.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

from textrec import __version__
from textrec.errors import TextrecError, storage_message


def _print_json(obj) -> None:
    print(json.dumps(obj, indent=2))


def _err(*args) -> None:
    print(*args, file=sys.stderr)


# ---- prepare / info ----------------------------------------------------------------------------


def cmd_prepare(args) -> None:
    from textrec.data.formats import read_dataset
    from textrec.data.formats.common import PrepareOptions

    opts = PrepareOptions(
        name=args.name,
        k_core=args.k_core,
        text_fields=tuple(f.strip() for f in args.text_fields.split(",") if f.strip()),
        skip_bad_lines=args.skip_bad_lines,
        items=args.items,
        user_col=args.user_col,
        item_col=args.item_col,
        time_col=args.time_col,
        text_col=args.text_col,
        rating_col=args.rating_col,
        min_rating=args.min_rating,
        drop_items_without_text=not args.keep_items_without_text,
        max_users=args.max_users,
        sample_seed=args.sample_seed,
        encoding=args.encoding,
    )
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise TextrecError(f"{out} already exists (pass --overwrite to replace it)")
    if out.exists():
        from textrec.data.dataset import check_replaceable

        check_replaceable(out)  # before the work: --overwrite replaces only what textrec wrote
    ds = read_dataset(args.source, args.format, opts)
    ds.save(out, overwrite=args.overwrite)
    stats = ds.statistics()
    if args.json:
        _print_json({"out": str(out), **stats})
    else:
        _err(_format_stats(stats))
        _err(f"wrote {out}")


def cmd_holdout(args) -> None:
    from textrec.data.dataset import Dataset
    from textrec.data.holdout import hold_out_items

    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise TextrecError(f"{out} already exists (pass --overwrite to replace it)")
    train, evaluation = hold_out_items(Dataset.load(args.data), args.fraction, args.seed)
    train.save(out / "train", overwrite=args.overwrite)
    evaluation.save(out / "eval", overwrite=args.overwrite)
    h = train.meta["holdout"]
    summary = {"out": str(out), "train": str(out / "train"), "eval": str(out / "eval"),
               **{k: h[k] for k in ("held_out_items", "cold_test_users", "dropped_users")},
               "train_items": train.n_items, "eval_items": evaluation.n_items, "users": train.n_users,
               "train_interactions": train.n_interactions}
    if args.json:
        _print_json(summary)
    else:
        _err(f"held out {h['held_out_items']:,} of {evaluation.n_items:,} items (seed {args.seed}); {train.n_users:,} users "
             f"({h['dropped_users']:,} dropped: fewer than 3 interactions left), {h['cold_test_users']:,} of them with a "
             f"held-out test target")
        _err(f"wrote {out / 'train'} (train on it) and {out / 'eval'} (evaluate RUN --data it)")


def _format_stats(stats: dict) -> str:
    keys = [
        ("name", "dataset"),
        ("users", "users"),
        ("items", "items"),
        ("interactions", "interactions"),
        ("avg_seq_len", "avg sequence length"),
        ("max_seq_len", "max sequence length"),
        ("avg_text_words", "avg text words"),
        ("avg_text_chars", "avg text characters"),
        ("items_without_text", "items without text"),
    ]
    lines = [f"{label:<22}{stats[k]:,}" if isinstance(stats[k], int) else f"{label:<22}{stats[k]}" for k, label in keys]
    for i, (name, f) in enumerate(stats.get("features", {}).items()):  # one line per item feature table
        lines.append(f"{'features' if i == 0 else '':<22}{name}: {f['dim']}-d, present for {f['items_present']:,} of "
                     f"{stats['items']:,} items")
    return "\n".join(lines)


def recipes_text(kinds=("train", "pretrain", "finetune")) -> str:
    """Each model's recipe, one block per model: what it sets by default, under a user's config and overrides."""
    from textrec.config import format_setting, model_recipes

    lines = ["model recipes (defaults under your --config and key=value overrides):"]
    for name, r in model_recipes().items():
        if "missing" in r:
            lines.append(f"  {name}: {r['missing']}")
            continue
        lines.append(f"  {name}: {r['source']}" + (f" [needs textrec[{r['extra']}]]" if r["extra"] else ""))
        for kind in kinds:
            lines.append(f"    {kind:<9}" + (" ".join(f"{k}={format_setting(v)}" for k, v in r[kind].items()) or "(generic defaults)"))
    return "\n".join(lines)


class _HelpWithRecipes(argparse.Action):
    """``-h`` of ``textrec train``: the usual help, then each model's recipe (imported only when asked)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        parser.print_help()
        print("\n" + recipes_text(("train",)))
        parser.exit()


def cmd_info(args) -> None:
    from textrec.data.dataset import Dataset

    if args.models:
        from textrec.config import model_recipes

        return _print_json(model_recipes()) if args.json else print(recipes_text())
    if args.data is None:
        raise TextrecError("info needs a dataset directory (or --models)")
    ds = Dataset.load(args.data)
    if args.item is not None:
        return _item_info(ds, args)
    stats = ds.statistics()
    stats["content_hash"] = ds.meta.get("content_hash")
    stats["source"] = ds.meta.get("source")
    if ds.meta.get("holdout"):
        stats["holdout"] = {k: v for k, v in ds.meta["holdout"].items() if k != "held_out"}
    for sub in ("embeddings", "codes"):
        folder = Path(args.data) / sub
        stats[sub] = sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else []
    if args.json:
        _print_json(stats)
    else:
        print(_format_stats(stats))
        for sub in ("embeddings", "codes"):
            if stats[sub]:
                print(f"{sub:<22}{', '.join(stats[sub])}")
        h = ds.meta.get("holdout")
        if h:  # made by `textrec holdout`
            what = ("training side: the held-out items are in no sequence and not in the catalogue" if h.get("role") == "train"
                    else f"evaluation side: whole catalogue, {h['cold_test_users']:,} users' test target is a held-out item")
            print(f"{'holdout':<22}{h['held_out_items']:,} items of {h['of']} held out (seed {h['seed']}); {what}")


def _item_info(ds, args) -> None:
    """One item: its text, its key-value attributes and the sentence a key-value model reads."""
    from textrec.data.sentences import item_attributes, ordered_attributes, sentence

    index = ds.item_index()
    if args.item not in index:
        close = [k for k in ds.item_keys if args.item.lower() in k.lower()][:5]
        hint = f" (similar keys: {', '.join(close)})" if close else ""
        raise TextrecError(f"{args.data}: no item {args.item!r}{hint}")
    item_id = index[args.item]
    attrs = item_attributes(ds)[item_id - 1]
    kept = ordered_attributes(attrs, args.max_attr_num)
    info = {"item": args.item, "id": item_id, "text": ds.item_texts[item_id - 1], "attributes": attrs,
            "sentence": sentence(attrs, args.max_attr_num),
            "dropped_attributes": [k for k, _ in ordered_attributes(attrs)[len(kept):]]}
    if args.json:
        _print_json(info)
        return
    print(f"{'item':<12}{args.item} (id {item_id})")
    print(f"{'text':<12}{info['text']}")
    for key, value in ordered_attributes(attrs):
        print(f"{key:<12}{value}")
    print(f"{'sentence':<12}{info['sentence']}")
    if info["dropped_attributes"]:
        print(f"{'not read':<12}{', '.join(info['dropped_attributes'])} (beyond --max-attr-num {args.max_attr_num})")


# ---- encode / quantize --------------------------------------------------------------------------


def cmd_encode(args) -> None:
    from textrec.text.encode import attach_embeddings, encode_dataset

    if args.images is not None:
        return _encode_images(args)
    if args.image_root:
        raise TextrecError("--image-root only applies with --images")
    if args.attach:
        if not args.name:
            raise TextrecError("--attach needs --name for the attached embeddings")
        path = attach_embeddings(args.data, args.attach, args.name)
        if args.json:
            _print_json({"name": args.name, "path": str(path)})
        else:
            _err(f"attached {args.attach} as {args.name}; wrote {path}")
        return
    res = encode_dataset(
        args.data, args.encoder, pooling=args.pooling, max_length=args.max_length, batch_size=args.batch_size,
        device=args.device, word_drop=args.word_drop, name=args.name, cache=not args.no_cache, progress=not args.json,
        seed=args.seed,
    )
    out = {"name": res.name, "path": str(res.path), "items": res.n_items, "dim": res.dim, "encoded": res.n_encoded,
           "cached": res.n_cached, "seconds": round(res.seconds, 3)}
    if args.json:
        _print_json(out)
    else:
        _err(f"{res.n_items:,} items -> {res.dim}-d embeddings {res.name!r}: {res.n_encoded:,} distinct texts encoded, "
             f"{res.n_cached:,} from the cache, {res.seconds:.1f}s; wrote {res.path}")


def _encode_images(args) -> None:
    """``textrec encode DIR --images [FOLDER|COLUMN]``: image feature tables (and CLIP text ones) into DIR/features."""
    from textrec.vision.encode import encode_dataset_images

    if args.attach or args.word_drop:
        raise TextrecError("--images cannot be combined with --attach or --word-drop")
    res = encode_dataset_images(
        args.data, None if args.images == "" else args.images, args.encoder, name=args.name,
        image_root=args.image_root, batch_size=args.batch_size, device=args.device, cache=not args.no_cache,
        progress=not args.json,
    )
    n_absent = len(res.missing) + len(res.unreadable)
    if n_absent:  # on stderr in --json mode too: a masked item is worth a look either way
        shown = [f"{k} ({why})" for k, why in list(res.unreadable.items())[:3]] + list(res.missing)[:3]
        _err(f"textrec: {n_absent:,} of {res.n_items:,} items have no usable image ({len(res.missing):,} missing, "
             f"{len(res.unreadable):,} unreadable), masked as absent: {'; '.join(shown)}{' ...' if n_absent > 6 else ''} "
             f"(all listed in {res.tables[0].path.with_suffix('.json')})")
    tables = [{"name": t.name, "modality": t.modality, "path": str(t.path), "dim": t.dim, "present": t.n_present,
               "encoded": t.n_encoded, "cached": t.n_cached} for t in res.tables]
    if args.json:
        _print_json({"source": res.source, "items": res.n_items, "features": tables,
                     "missing": len(res.missing), "unreadable": len(res.unreadable),
                     "missing_items": list(res.missing)[:20], "unreadable_items": dict(list(res.unreadable.items())[:20]),
                     "seconds": round(res.seconds, 3)})
        return
    for t in tables:
        _err(f"{t['name']}: {t['dim']}-d, present for {t['present']:,} of {res.n_items:,} items; {t['encoded']:,} distinct "
             f"{t['modality']}s encoded, {t['cached']:,} from the cache; wrote {t['path']}")
    _err(f"images from {res.source}; {res.seconds:.1f}s")


def cmd_quantize(args) -> None:
    from textrec.quant.codes import quantize_dataset, quantize_datasets

    common = dict(embeddings=args.embeddings, seed=args.seed, name=args.name, progress=not args.json)
    if args.random:
        from textrec.quant.codes import random_codes

        paths = [random_codes(d, args.codebooks, args.codebook_size, args.seed, args.name) for d in args.data]
        if args.json:
            _print_json({"paths": [str(p) for p in paths]})
        else:
            _err("wrote random codes: " + ", ".join(map(str, paths)))
        return
    if len(args.data) > 1:
        if args.from_index or args.quantizer:
            raise TextrecError("--from-index and --quantizer apply to one dataset; give one DIR")
        results = quantize_datasets(args.data, n_codebooks=args.codebooks, codebook_size=args.codebook_size,
                                    out_index=args.out_index, **common)
    else:
        results = [quantize_dataset(args.data[0], n_codebooks=args.codebooks, codebook_size=args.codebook_size,
                                    from_index=args.from_index, quantizer=args.quantizer, **common)]
    rows = [r._asdict() for r in results]
    for r in rows:
        r.update({k: str(v) for k, v in r.items() if isinstance(v, Path)})
    if args.json:
        _print_json(rows[0] if len(rows) == 1 else {"results": rows})
        return
    for r in results:
        _err(r.summary())


# ---- train / evaluate / recommend --------------------------------------------------------------


def _report_run(args, model: str, result, what: str = "") -> None:
    """One JSON object, or a metrics table and where the run went."""
    from textrec.report import metrics_table

    fit = result.fit
    if os.environ.get("RANK", "0") != "0":  # under torchrun rank 0 alone reports
        return
    if args.json:
        _print_json({"run": str(result.out_dir), **fit.to_dict()})
        return
    rows = [(f"{model} {what}valid", fit.valid)] + ([(f"{model} test", fit.test)] if fit.test else [])
    _err(metrics_table(rows))
    _err(f"best epoch {fit.best_epoch} of {fit.epochs_run}; wrote {result.out_dir}")


def cmd_train(args) -> None:
    from textrec.config import load_config
    from textrec.train.run import train_run

    cfg = load_config(args.config, args.overrides, model=args.model)
    result = train_run(args.data, cfg, args.out, resume=args.resume, overwrite=args.overwrite, quiet=args.quiet)
    _report_run(args, cfg.model, result)


def _overrides_for_finetune(args) -> list[str]:
    extra = []
    if args.mode:
        extra.append(f"model.mode={args.mode}")
    if args.freeze_encoder is not None:
        extra.append(f"model.freeze_encoder={'true' if args.freeze_encoder else 'false'}")
    return extra + list(args.overrides)


def cmd_pretrain(args) -> None:
    from textrec.config import load_config
    from textrec.train.transfer import pretrain_run

    cfg = load_config(args.config, args.overrides, model=args.model, kind="pretrain")
    result = pretrain_run(args.data, cfg, args.out, resume=args.resume, overwrite=args.overwrite, quiet=args.quiet)
    _report_run(args, cfg.model, result, "pre-training ")


def cmd_finetune(args) -> None:
    from textrec.train.transfer import finetune_config, finetune_run

    cfg = finetune_config(args.init, _overrides_for_finetune(args), args.config)
    result = finetune_run(args.data, args.init, cfg, args.out, resume=args.resume, overwrite=args.overwrite, quiet=args.quiet)
    _report_run(args, cfg.model, result)


def _complete_catalogue(args) -> None:
    """With ``--data``: make the item inputs a pre-trained run reads that the dataset lacks (loading never writes)."""
    if args.data is not None:
        from textrec.train.newcatalogue import complete_run_catalogue

        complete_run_catalogue(args.run, args.data)


def cmd_evaluate(args) -> None:
    from textrec.api import evaluate_run
    from textrec.report import metrics_table

    _complete_catalogue(args)
    res = evaluate_run(args.run, args.data, args.split, ks=args.ks, mask_history=args.mask_history or None, ties=args.ties,
                       device=args.device, overrides=args.overrides)
    if args.json:
        _print_json(res.to_dict())
        return
    if res.zero_shot:
        _err(f"zero-shot: {args.run} was trained on {res.trained_on}; ranking the "
             f"{res.n_items:,} items of {res.dataset} from their content, with no training on them")
    cols = [f"{m}@{k}" for k in res.ks for m in ("recall", "ndcg", "mrr")]
    rows = [(f"{res.model} {args.split}", res.metrics)]
    rows += [(f"  {name} targets ({g['users']:,} users)", g) for name, g in res.groups.items() if g["users"]]
    print(metrics_table(rows, cols))
    _err(f"{res.users:,} users x {res.n_items:,} items in {res.seconds:.2f}s")


def cmd_recommend(args) -> None:
    from textrec.api import recommend
    from textrec.report import shorten

    if (args.user is None) == (args.items is None):
        raise TextrecError("give exactly one of --user ID or --items ID,ID,...")
    if args.k < 1:
        raise TextrecError(f"k must be >= 1, not {args.k}")
    _complete_catalogue(args)
    history = None if args.items is None else [k.strip() for k in args.items.split(",") if k.strip()]
    res = recommend(args.run, history=history, user=args.user, k=args.k, new_items=args.new_items,
                    include_history=args.include_history, data=args.data, encoder=args.encoder, device=args.device,
                    overrides=args.overrides)
    if args.json:
        _print_json(res.to_dict())
        return
    print("history (most recent last):")
    for h in res.history[-5:]:
        print(f"      {h['item']:<14} {shorten(h['text'])}")
    print(f"top {len(res.recommendations)}:")
    for r in res.recommendations:
        print(f"  {r.rank:>3}. {r.item_key:<14} {r.score:8.3f}  {shorten(r.text)}")
    for n in res.new_items or []:
        where = f"ranks {n['rank']:,} of {res.candidates:,}" if n["rank"] else "is in the history (not a candidate)"
        print(f"new item {n['item']} {where}")


def cmd_pretrained(args) -> None:
    from textrec.pretrained import list_shipped, shipped_root

    rows = list_shipped()
    if args.json:
        _print_json({"root": str(shipped_root()), "checkpoints": [r.to_dict() for r in rows]})
        return
    if not rows:
        _err(f"no shipped checkpoints in {shipped_root()}")
        return
    print(f"{'name':<24}{'model':<10}{'corpus':<34}{'size':>9}  {'best valid':<18}card")
    for r in rows:
        corpus = f"{len(r.corpus)} datasets" if len(r.corpus) > 2 else " + ".join(r.corpus)
        best = f"{r.select_metric} {r.best_valid:.4f}" if r.best_valid is not None else "-"
        print(f"{r.name:<24}{r.model:<10}{corpus:<34}{r.size_bytes / 2**20:>6.1f} MB  {best:<18}{r.card}")


# ---- demo --------------------------------------------------------------------------------------


def cmd_demo(args) -> None:
    from textrec.demo import run_demo

    # result tables on stdout (``textrec demo > out.txt`` keeps them), progress on stderr; with --json the
    # tables join the progress on stderr so that stdout holds exactly one JSON object
    summary = run_demo(data=args.data, out=args.out, quick=args.quick, device=args.device, encoder=args.encoder,
                       results=sys.stderr if args.json else sys.stdout)
    if args.json:
        _print_json(summary)


def cmd_plot(args) -> None:
    from textrec.plot import plot_curves

    out = plot_curves(args.run, args.out, tuple(args.metrics))
    if args.json:
        _print_json({"figure": str(out)})
    print(f"wrote {out}", file=sys.stderr)


# ---- parser ------------------------------------------------------------------------------------


def _parents() -> dict[str, argparse.ArgumentParser]:
    """Option groups several subcommands share (argparse parent parsers)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    common.add_argument("--quiet", action="store_true", help="no progress bars, per-epoch lines or notes; warnings and "
                        "errors only")
    common.add_argument("-v", "--verbose", action="store_true", help="also debug messages")
    training = argparse.ArgumentParser(add_help=False)  # train, pretrain, finetune
    training.add_argument("--out", required=True, help="run directory to write")
    training.add_argument("--resume", action="store_true", help="continue an interrupted run in OUT")
    training.add_argument("--overwrite", action="store_true", help="start over in an existing OUT")
    reading = argparse.ArgumentParser(add_help=False)  # evaluate, recommend: read a finished run
    reading.add_argument("run", help="run directory, or a shipped checkpoint's name (textrec pretrained lists them)")
    reading.add_argument("overrides", nargs="*", metavar="key=value", help="settings of the run's data section, e.g. "
                         "data.codes=NAME (which item codes or embeddings of --data to read)")
    reading.add_argument("--data", help="dataset directory (default: the one the run was trained on)")
    reading.add_argument("--device", default="auto")
    return {"common": common, "training": training, "reading": reading}


def _add_prepare(sub, parents) -> None:
    from textrec.data.formats import READERS  # the registry names the formats

    s = sub.add_parser("prepare", parents=[parents["common"]], help="raw or published files -> a processed dataset directory")
    s.add_argument("source", help="file or directory to read")
    s.add_argument("--format", required=True, metavar="FORMAT", help=f"one of {', '.join(READERS)}")
    s.add_argument("--out", required=True, help="dataset directory to write")
    s.add_argument("--name", help="dataset name (also picks one dataset when SOURCE holds several)")
    s.add_argument("--k-core", type=int, default=5, help="iterative user/item k-core (default 5, as the references)")
    s.add_argument("--text-fields", default="title,category,brand", help="item text fields in order (default title,category,brand)")
    s.add_argument("--items", help="csv/parquet format: the items table (item, text, other columns)")
    s.add_argument("--user-col", default="user")
    s.add_argument("--item-col", default="item")
    s.add_argument("--time-col", default="timestamp")
    s.add_argument("--text-col", default="text")
    s.add_argument("--rating-col", default="rating")
    s.add_argument("--min-rating", type=float, default=None, help="keep interactions rated at least this")
    s.add_argument("--keep-items-without-text", action="store_true", help="keep items that have no text/metadata")
    s.add_argument("--skip-bad-lines", action="store_true", help="count and skip malformed lines instead of failing")
    s.add_argument("--max-users", type=int, metavar="N", help="raw formats: keep a seeded sample of N users after the "
                   "k-core, with their whole histories (a corpus sized to the machine)")
    s.add_argument("--sample-seed", type=int, default=0, help="which users --max-users keeps (default 0)")
    s.add_argument("--encoding", help="text files' encoding, e.g. latin-1 (default: UTF-8, or UTF-16 with its byte-order "
                   "mark; bytes that do not decode are an error)")
    s.add_argument("--overwrite", action="store_true", help="replace OUT if it exists (only a directory textrec wrote)")
    s.set_defaults(func=cmd_prepare)



def _add_info(sub, parents) -> None:
    s = sub.add_parser("info", parents=[parents["common"]], help="users, items, interactions, sequence and text statistics")
    s.add_argument("data", nargs="?", help="dataset directory")
    s.add_argument("--models", action="store_true", help="instead: each model's recipe (its default training settings)")
    s.add_argument("--item", metavar="KEY", help="show one item: its text, attributes and key-value sentence")
    s.add_argument("--max-attr-num", type=int, default=3, help="attributes a sentence keeps (with --item; Recformer's default 3)")
    s.set_defaults(func=cmd_info)


def _add_holdout(sub, parents) -> None:
    s = sub.add_parser("holdout", parents=[parents["common"]],
                       help="cold-start items: hold a slice of the catalogue out of training, test on it")
    s.add_argument("data", help="dataset directory")
    s.add_argument("--fraction", type=float, default=0.1, help="share of the catalogue's items to hold out (default 0.1)")
    s.add_argument("--seed", type=int, default=0, help="which items (a seeded sample; default 0)")
    s.add_argument("--out", required=True, help="writes OUT/train (no held-out item anywhere) and OUT/eval (whole "
                   "catalogue; a user whose last item was held out gets it back as the test target)")
    s.add_argument("--overwrite", action="store_true", help="replace OUT/train and OUT/eval if they exist")
    s.set_defaults(func=cmd_holdout)


def _add_encode(sub, parents) -> None:
    s = sub.add_parser("encode", parents=[parents["common"]],
                       help="item text embeddings into DIR/embeddings, or image features into DIR/features (cached)")
    s.add_argument("data", help="dataset directory")
    s.add_argument("--encoder", help="text: 'minilm' (default, embedded), 'hashing[-N]', or a local HF / sentence-transformers "
                   "folder; with --images: 'efficientnet-lite0' (default, embedded) or a local CLIP folder (text and image)")
    s.add_argument("--images", nargs="?", const="", metavar="FOLDER|COLUMN",
                   help="encode item images instead: a folder of <item key>.jpg|jpeg|png|webp files, or the items-table "
                        "column of image paths (no value: the column 'image'); missing or unreadable images are masked")
    s.add_argument("--image-root", metavar="DIR", help="with an image path column: where relative paths start "
                   "(default: the folder of the items table the dataset was prepared from)")
    s.add_argument("--pooling", choices=("mean", "cls"), default="mean")
    s.add_argument("--max-length", type=int, default=512, help="tokens per text (default 512, as the references)")
    s.add_argument("--batch-size", type=int, default=64)
    s.add_argument("--device", default="auto")
    s.add_argument("--word-drop", type=float, default=0.0, help="encode a word-drop view (UniSRec pre-training uses 0.15)")
    s.add_argument("--seed", type=int, default=2020, help="word-drop seed")
    s.add_argument("--name", help="embedding name (default <encoder>-<pooling>[-wdNN]); with --images the feature name "
                   "(default efficientnet-lite0; CLIP: NAME-image and NAME-text, default clip-image / clip-text)")
    s.add_argument("--no-cache", action="store_true", help="do not read or write the embedding cache")
    s.add_argument("--attach", metavar="FILE", help="attach precomputed features (.npy, raw float32 .feat file, or a dataset feature name)")
    s.set_defaults(func=cmd_encode)


def _add_quantize(sub, parents) -> None:
    s = sub.add_parser("quantize", parents=[parents["common"]],
                       help="OPQ/PQ item codes into DIR/codes (several DIRs: one joint quantizer)")
    s.add_argument("data", nargs="+", help="dataset directory (several: fit one quantizer jointly)")
    s.add_argument("--embeddings", help="which embeddings to quantize (default: the only ones)")
    s.add_argument("--codebooks", type=int, default=32, help="sub-spaces D (default 32)")
    s.add_argument("--codebook-size", type=int, default=256, help="codewords per sub-space M (default 256)")
    s.add_argument("--from-index", metavar="FAISS_FILE", help="import codes from a released faiss index (VQ-Rec)")
    s.add_argument("--quantizer", metavar="FAISS_FILE", help="encode with an existing quantizer (reuse the index set)")
    s.add_argument("--out-index", metavar="FAISS_FILE", help="several DIRs: also save the joint quantizer here")
    s.add_argument("--random", action="store_true", help="uniformly random codes instead (ablation: text plays no part)")
    s.add_argument("--seed", type=int, default=2020)
    s.add_argument("--name", help="codes name")
    s.set_defaults(func=cmd_quantize)



def _add_train(sub, parents, model_names: str) -> None:
    s = sub.add_parser("train", parents=[parents["common"], parents["training"]],
                       help="train a model on one dataset, select on validation, report test", add_help=False)
    s.add_argument("-h", "--help", action=_HelpWithRecipes, help="show this help and each model's recipe, then exit")
    s.add_argument("data", help="dataset directory")
    s.add_argument("--model", help=f"model name: one of {model_names}; may come from --config instead")
    s.add_argument("--config", help="TOML config file")
    s.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.lr=0.003")
    s.set_defaults(func=cmd_train)


def _add_pretrain(sub, parents, model_names: str) -> None:
    s = sub.add_parser("pretrain", parents=[parents["common"], parents["training"]],
                       help="multi-domain pre-training on several datasets")
    s.add_argument("data", nargs="+", help="source dataset directories")
    s.add_argument("--model", help=f"model name: one of {model_names}; may come from --config instead")
    s.add_argument("--config", help="TOML config file")
    s.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.epochs=50")
    s.set_defaults(func=cmd_pretrain)


def _add_finetune(sub, parents) -> None:
    s = sub.add_parser("finetune", parents=[parents["common"], parents["training"]],
                       help="transfer a pre-trained run to a target dataset")
    s.add_argument("data", help="target dataset directory")
    s.add_argument("--init", required=True, help="the pre-trained run directory, or a shipped checkpoint's name "
                   "(textrec pretrained lists them)")
    s.add_argument("--config", help="TOML config file, or a shipped config's short name (e.g. recformer-reference): its "
                   "values apply on top of the pre-trained run's model settings; --mode, --freeze-encoder and key=value "
                   "overrides on top of it")
    s.add_argument("--mode", choices=("inductive", "transductive"), help="text/codes only, or plus item-ID embeddings")
    s.add_argument("--freeze-encoder", dest="freeze_encoder", action="store_true", default=None,
                   help="freeze position embeddings and Transformer while fine-tuning (default: the pre-trained "
                        "model's setting; unisrec and vqrec freeze position embeddings and Transformer by default, "
                        "as the references do)")
    s.add_argument("--no-freeze-encoder", dest="freeze_encoder", action="store_false",
                   help="fine-tune position embeddings and Transformer too")
    s.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.lr=0.003")
    s.set_defaults(func=cmd_finetune)


def _add_evaluate(sub, parents) -> None:
    s = sub.add_parser("evaluate", parents=[parents["common"], parents["reading"]], help="full-ranking metrics of a trained run")
    s.add_argument("--split", choices=("valid", "test"), default="test")
    s.add_argument("--ks", type=int, nargs="+", help="cut-offs (default: the run's eval.ks)")
    s.add_argument("--mask-history", action="store_true", help="remove history items from the candidates")
    s.add_argument("--ties", choices=("pessimistic", "random"), help="tied candidates rank above the target (default), or expected rank under random tie order")
    s.set_defaults(func=cmd_evaluate)


def _add_recommend(sub, parents) -> None:
    s = sub.add_parser("recommend", parents=[parents["common"], parents["reading"]],
                       help="top-k items for a user or an item history, with item texts")
    s.add_argument("--user", help="a user key of the dataset")
    s.add_argument("--items", help="comma-separated item keys, oldest first")
    s.add_argument("-k", type=int, default=10)
    s.add_argument("--include-history", action="store_true", help="allow items already in the history")
    s.add_argument("--new-items", metavar="FILE", help="add items to the catalogue without retraining (content models): a CSV/TSV "
                   "with a column item and a text column and/or attribute columns (title, brand, category, ...), plus "
                   "image (a path relative to FILE's folder) for image feature tables; or JSON lines (.jsonl) with the "
                   "same keys; a text is derived from the attributes when absent")
    s.add_argument("--encoder", help="with --new-items: the text encoder, when it is not the embedded one")
    s.set_defaults(func=cmd_recommend)


def _add_pretrained(sub, parents) -> None:
    s = sub.add_parser("pretrained", parents=[parents["common"]],
                       help="list the shipped pre-trained checkpoints (a name stands for a run in finetune --init, "
                            "evaluate, recommend, serve, export)")
    s.set_defaults(func=cmd_pretrained)


def _add_demo(sub, parents) -> None:
    s = sub.add_parser("demo", parents=[parents["common"]],
                       help="the whole pipeline end to end on the built-in synthetic world (or --data DIR)")
    s.add_argument("--data", help="a prepared dataset directory to run the demo on instead")
    s.add_argument("--out", default="textrec-demo", help="where datasets and runs go (default ./textrec-demo)")
    s.add_argument("--quick", action="store_true", help="a smoke run (33 s against 69 s measured on a 2-core CPU): checks "
                   "every stage runs, too short to compare the models")
    s.add_argument("--encoder", default="minilm", help="text encoder for the synthetic world (default: the embedded MiniLM)")
    s.add_argument("--device", default="auto")
    s.set_defaults(func=cmd_demo)


def _add_plot(sub, parents) -> None:
    s = sub.add_parser("plot", parents=[parents["common"]],
                       help="draw a run's training curves (loss, validation metrics by epoch) to a PNG")
    s.add_argument("run", help="run directory (or its log.jsonl)")
    s.add_argument("--out", help="PNG to write (default RUN/curves.png)")
    s.add_argument("--metrics", nargs="+", default=["recall@10", "ndcg@10"], help="validation metrics to draw")
    s.set_defaults(func=cmd_plot)


def build_parser() -> argparse.ArgumentParser:
    from textrec.models import MODELS  # the registry's keys name the models in --model's help

    model_names = ", ".join(MODELS)
    p = argparse.ArgumentParser(prog="textrec", description="Transferable sequential recommendation from item text.")
    p.add_argument("--version", action="version", version=f"textrec {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    parents = _parents()
    for add in (_add_prepare, _add_info, _add_holdout, _add_encode, _add_quantize):
        add(sub, parents)
    _add_train(sub, parents, model_names)
    _add_pretrain(sub, parents, model_names)
    for add in (_add_finetune, _add_evaluate, _add_recommend, _add_pretrained):
        add(sub, parents)
    from textrec.serve.commands import add_export_parser, add_serve_parser

    add_serve_parser(sub)  # serve and export live in textrec.serve (parser and handler)
    add_export_parser(sub)
    for add in (_add_demo, _add_plot):
        add(sub, parents)
    for s in sub.choices.values():
        _add_threads(s)
    return p


def _add_threads(s: argparse.ArgumentParser) -> None:
    s.add_argument("--threads", type=int, metavar="N", help="CPU threads for torch and faiss together (default: "
                   "OMP_NUM_THREADS, else the available cores shared among torchrun's processes on this machine)")


class _StderrHandler(logging.Handler):
    """The ``textrec`` logger's messages on stderr, one per line, written around any open tqdm bar."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001 (logging's own contract: a failing handler reports, never raises)
            self.handleError(record)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A ``TextrecWarning`` as one ``warning: ...`` line; other warnings as Python shows them."""
    from textrec.log import TextrecWarning

    if issubclass(category, TextrecWarning):
        logging.getLogger("textrec").warning("warning: %s", message)
    else:
        _python_showwarning(message, category, filename, lineno, file, line)


_python_showwarning = warnings.showwarning


@contextlib.contextmanager
def _reporting(args) -> Iterator[None]:
    """Install the stderr handler of the ``textrec`` logger for one command (``--quiet``: warnings only; ``-v``: debug)."""
    from textrec.log import TextrecWarning

    logger = logging.getLogger("textrec")
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    level = logging.DEBUG if getattr(args, "verbose", False) else logging.WARNING if getattr(args, "quiet", False) else logging.INFO
    before = logger.level
    logger.addHandler(handler)
    logger.setLevel(level)
    with warnings.catch_warnings():
        warnings.simplefilter("always", TextrecWarning)  # each run of a command reports its own input
        warnings.showwarning = _show_warning
        try:
            yield
        finally:
            logger.removeHandler(handler)
            logger.setLevel(before)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from textrec import threads

    early = argparse.ArgumentParser(add_help=False)  # before torch and faiss load: they read OpenMP settings once
    early.add_argument("--threads", type=int)
    threads.prepare(early.parse_known_args(argv)[0].threads)
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may come anywhere after the subcommand; argparse only collects the first run
    if hasattr(args, "overrides"):
        args.overrides = list(args.overrides) + [e for e in extra if "=" in e and not e.startswith("-")]
        extra = [e for e in extra if not ("=" in e and not e.startswith("-"))]
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    on_main = threading.current_thread() is threading.main_thread()  # signal handlers can only be set there
    previous = signal.signal(signal.SIGTERM, _terminate) if on_main else None  # SIGTERM cleans up as Ctrl-C does
    try:
        with _reporting(args):
            _resolve_run_argument(args)
            args.func(args)
    except (TextrecError, FileExistsError) as e:
        print(f"textrec: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # read-only, no space, permission, a path of the wrong kind: one line, no traceback
        print(f"textrec: error: {storage_message(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        print("textrec: interrupted (a training run can continue with --resume)", file=sys.stderr)
        return 143 if isinstance(e, Terminated) else 130
    finally:
        if on_main:
            signal.signal(signal.SIGTERM, previous)
    return 0


_RUN_ARGUMENTS = {"evaluate": "run", "recommend": "run", "serve": "run", "export": "run", "finetune": "init"}


def _resolve_run_argument(args) -> None:
    """The run argument of a command that reads a run (RUN, ``--init``) as a folder: a shipped checkpoint's name
    becomes its verified folder (``textrec.runs.resolve_run``); a path stays as given."""
    attr = _RUN_ARGUMENTS.get(args.command)
    if attr is not None:
        from textrec.runs import resolve_run

        setattr(args, attr, str(resolve_run(getattr(args, attr))))
    if args.command in ("serve", "export"):  # evaluate and recommend complete it themselves (cmd_evaluate, cmd_recommend)
        _complete_catalogue(args)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the process is so that the same clean-up runs as for Ctrl-C."""


def _terminate(signum, frame) -> None:
    raise Terminated()


if __name__ == "__main__":
    sys.exit(main())
