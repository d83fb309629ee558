"""Run RecBole 1.2.1's SASRec on UniSRec atomic files with the reference settings; print one JSON line.

Executed by ``sasrec_scientific.py`` with the Python of a separate virtual environment that has RecBole
(RecBole is never a textrec dependency). Settings are those of the UniSRec/VQ-Rec baseline runs
(REFERENCE_NOTES sections 0-1): the benchmark files used as-is, SASRec hidden 300, 2 layers, 2 heads,
inner 256, dropout 0.5, CE over all items, Adam lr 1e-3, batch 2048, full ranking, NDCG@10 with patience 10.

    python recbole_sasrec_runner.py ATOMIC_DIR NAME --epochs 2 [--out-dir DIR]
"""

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("atomic_dir")
    p.add_argument("name")
    p.add_argument("--epochs", type=int, default=2, help="max epochs (300 = run to early stopping)")
    p.add_argument("--hidden-size", type=int, default=300)
    p.add_argument("--seed", type=int, default=2020)
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args()

    import torch
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.model.sequential_recommender import SASRec
    from recbole.trainer import Trainer
    from recbole.utils import init_seed

    if args.threads:
        torch.set_num_threads(args.threads)
    atomic = Path(args.atomic_dir).resolve()
    work = Path(tempfile.mkdtemp(prefix="recbole-"))
    os.chdir(work)  # RecBole writes log/ and log_tensorboard/ into the working directory
    (work / args.name).mkdir()
    for f in atomic.glob(f"{args.name}.*"):
        if f.suffix in (".inter", ".item2index", ".user2index"):
            os.symlink(f.resolve(), work / args.name / f.name)
    config = Config(
        model="SASRec",
        dataset=args.name,
        config_dict={
            "data_path": str(work),
            "checkpoint_dir": str(work / "saved"),
            "benchmark_filename": ["train", "valid", "test"],
            "alias_of_item_id": ["item_id_list"],
            "load_col": {"inter": ["user_id", "item_id_list", "item_id"]},
            "train_neg_sample_args": None,
            "MAX_ITEM_LIST_LENGTH": 50,
            "hidden_size": args.hidden_size,
            "n_layers": 2,
            "n_heads": 2,
            "inner_size": 256,
            "hidden_dropout_prob": 0.5,
            "attn_dropout_prob": 0.5,
            "hidden_act": "gelu",
            "layer_norm_eps": 1e-12,
            "initializer_range": 0.02,
            "loss_type": "CE",
            "learning_rate": 0.001,
            "train_batch_size": 2048,
            "eval_batch_size": 2048,
            "epochs": args.epochs,
            "eval_step": 1,
            "stopping_step": 10,
            "topk": [10, 50],
            "metrics": ["Hit", "NDCG"],
            "valid_metric": "NDCG@10",
            "eval_args": {"mode": "full", "order": "TO"},
            "seed": args.seed,
            "reproducibility": True,
            "device": "cpu",
            "use_gpu": False,
            "show_progress": False,
            "log_wandb": False,
        },
    )
    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    model = SASRec(config, train_data.dataset).to(config["device"])
    trainer = Trainer(config, model)

    train_times, eval_times = [], []
    train_epoch, valid_epoch = trainer._train_epoch, trainer._valid_epoch

    def timed_train(*a, **k):
        t = time.perf_counter()
        out = train_epoch(*a, **k)
        train_times.append(time.perf_counter() - t)
        print(f"recbole epoch {len(train_times)} train {train_times[-1]:.1f}s", file=sys.stderr, flush=True)
        return out

    def timed_valid(*a, **k):
        t = time.perf_counter()
        out = valid_epoch(*a, **k)
        eval_times.append(time.perf_counter() - t)
        return out

    trainer._train_epoch, trainer._valid_epoch = timed_train, timed_valid
    _, best_valid = trainer.fit(train_data, valid_data, saved=True, show_progress=False)
    t = time.perf_counter()
    test = trainer.evaluate(test_data, load_best_model=True, show_progress=False)
    test_seconds = time.perf_counter() - t
    rename = lambda r: {k.replace("hit@", "recall@"): float(v) for k, v in r.items()}
    print(json.dumps({
        "n_users": int(dataset.user_num - 1),
        "n_items": int(dataset.item_num - 1),
        "train_rows": len(train_data.dataset),
        "epochs_run": len(train_times),
        "best_epoch": len(train_times) - int(trainer.cur_step),
        "seconds_per_epoch": sum(train_times) / len(train_times),
        "train_seconds": train_times,
        "seconds_per_eval": sum(eval_times) / max(len(eval_times), 1),
        "test_eval_seconds": test_seconds,
        "valid": rename(best_valid) if best_valid else None,
        "test": rename(test),
        "peak_memory_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "threads": torch.get_num_threads(),
    }))


if __name__ == "__main__":
    main()
