"""benchmarks/recformer_scientific.py: the table names each row by how it started and how it was timed."""

from __future__ import annotations

from doubles import benchmark_script


def _metrics(r10: float) -> dict:
    return {"recall@10": r10, "ndcg@10": r10 / 2, "recall@50": 2 * r10, "ndcg@50": r10}


def _finetuned(run: str, r10: float, note: str, init: str | None = None) -> dict:
    row = {"run": run, "test": _metrics(r10), "epochs_run": 4, "best_epoch": 3, "machine_note": note,
           "seconds": {"train": 10.0, "encode": 2.0, "valid": 3.0},
           "setting": {"setting": "reduced", "users": None, "test_all_users": False,
                       "overrides": ["train.epochs=6", "train.lr=1e-4", "train.epochs=4"]},
           "curve": [[1, 0.05, 0.02], [2, 0.06, 0.03]]}
    if init:
        row["init"] = init
    return row


def test_rows_say_where_they_started_and_how_they_were_timed():
    table = benchmark_script("recformer_scientific").render({
        "machine": {"date": "2026-12-05", "cpu": "cpu", "cores": 2, "python": "3.11", "torch": "2", "gpu": None, "note": "last"},
        "argv": ["recformer_scientific.py"], "commands": ["textrec train ..."], "info": {},
        "facts": {"history_fit": {"128/3/16": {"max_token_num": 128, "max_attr_num": 3, "max_attr_length": 16,
                                                "tokens_per_item": 32.71, "items_whole": 3.3, "history_items": 6.04,
                                                "histories_whole": 0.1207}}},
        "runs": {
            "recformer-minilm-reduced-all-users": [_finetuned("$WORK/runs/a-2020", 0.0912, "two side by side")],
            "recformer-from-recformer-pt-reduced-all-users": [
                {**_finetuned("$WORK/runs/b-2020", 0.0934, "alone, two threads", init="$WORK/pt/recformer-pt"),
                 "argv": ["recformer_scientific.py", "--all-users", "--init", "$WORK/pt/recformer-pt"]}],
            "recformer-zeroshot-minilm": [{"kind": "zeroshot-minilm", "run": "-", "test": _metrics(0.0456), "seed": 2020,
                                           "token_budgets": {"max_token_num": 128, "max_attr_length": 16}}],
        },
    })
    lines = table.splitlines()
    row = {label: next(x for x in lines if x.startswith(f"| {label} |")) for label in (
        "Recformer, MiniLM init, fine-tuned", "Recformer, pre-trained (`recformer-pt`), fine-tuned",
        "Recformer, MiniLM init, not trained (zero-shot control)")}
    assert "0.0912" in row["Recformer, MiniLM init, fine-tuned"]
    assert "0.0934" in row["Recformer, pre-trained (`recformer-pt`), fine-tuned"]
    assert "0.0456" in row["Recformer, MiniLM init, not trained (zero-shot control)"]
    settings = [x for x in lines if x.startswith("- Recformer, pre-trained")]
    assert len(settings) == 1 and "(from `$WORK/pt/recformer-pt`)" in settings[0]
    assert "(`--all-users --init $WORK/pt/recformer-pt`)" in settings[0]
    assert "timed with alone, two threads" in settings[0]
    assert "`train.epochs=4`" in settings[0] and "train.epochs=6" not in settings[0]  # a later key=value wins
    assert any("timed with two side by side" in x for x in lines if x.startswith("- Recformer, MiniLM init"))
    assert any("seed 2020; 128 tokens, attributes of 16" in x for x in lines if x.startswith("- zero-shot control"))
    assert any(x.startswith("Token budget 128 (at most 3 attributes of 16 tokens") and "32.7 tokens" in x
               and "3.3 most recent items whole" in x and "of 6.0 on average; 12% of test histories" in x for x in lines)


def test_rows_differing_only_in_overrides_name_their_token_budget_and_learning_rate():
    short = _finetuned("$WORK/runs/a-2020", 0.0912, "alone")  # overrides: lr 1e-4, the recipe's 512 tokens
    long = _finetuned("$WORK/runs/t-2020", 0.0901, "alone")
    long["setting"] = {**long["setting"], "overrides": ["model.max_token_num=256", "train.lr=3e-4", "train.lr=2.5e-5"]}
    table = benchmark_script("recformer_scientific").render({
        "machine": {"date": "2026-12-05", "cpu": "cpu", "cores": 2, "python": "3.11", "torch": "2", "gpu": None, "note": "last"},
        "argv": ["recformer_scientific.py"], "commands": [], "info": {}, "facts": {},
        "runs": {"recformer-minilm-reduced-all-users": [short], "recformer-minilm-reduced-all-users-t256": [long]}})
    rows = [x for x in table.splitlines() if x.startswith("| Recformer, MiniLM init, fine-tuned |")]
    assert rows[0].startswith("| Recformer, MiniLM init, fine-tuned | reduced: all 8,442 users; 512 tokens, attributes of 32, lr 1e-4 | 0.0912 |")
    assert rows[1].startswith("| Recformer, MiniLM init, fine-tuned | reduced: all 8,442 users; 256 tokens, attributes of 32, lr 2.5e-5 | 0.0901 |")


def test_the_setting_cell_names_training_rows_and_a_stage_1_cap():
    row = _finetuned("$WORK/runs/p-2020", 0.0955, "alone")
    row["setting"] = {**row["setting"], "overrides": ["data.train_rows=prefixes", "model.stage_1_max_epochs=3"]}
    table = benchmark_script("recformer_scientific").render({
        "machine": {"date": "2026-12-05", "cpu": "cpu", "cores": 2, "python": "3.11", "torch": "2", "gpu": None, "note": "last"},
        "argv": ["recformer_scientific.py"], "commands": [], "info": {}, "facts": {},
        "runs": {"recformer-minilm-reduced-all-users-prefixes": [row]}})
    (line,) = [x for x in table.splitlines() if x.startswith("| Recformer, MiniLM init, fine-tuned |")]
    assert "512 tokens, attributes of 32, lr 5e-5, training rows: prefixes, stage 1 at most 3 epochs | 0.0955 |" in line


def test_faithful_rows_name_their_budgets_ties_both_ways_and_a_warm_up():
    script = benchmark_script("recformer_scientific")
    row = _finetuned("$WORK/runs/recformer-warmup2-reduced-all-users-f-2020", 0.1010, "alone")
    row["setting"] = {**row["setting"], "empty_history": True,
                      "overrides": ["model.max_attr_length=16", "model.max_token_num=192", "model.max_attr_length=32",
                                    "model.stage_1_eval_every=2"]}
    row.update(warmup={"epochs": 2, "metrics": {}}, init="$WORK/runs/recformer-warmup2-reduced-all-users-f-2020-warmup",
               test_random_ties={**_metrics(0.1031)}, targets_with_ties=293)
    table = script.render({
        "machine": {"date": "2026-12-07", "cpu": "cpu", "cores": 2, "python": "3.11", "torch": "2", "gpu": None, "note": "x"},
        "argv": ["recformer_scientific.py"], "commands": [], "info": {},
        "facts": {"token_ties": {"3x32": {"max_attr_num": 3, "max_attr_length": 32, "items_with_a_twin": 67, "largest_group": 6,
                                          "test_targets_with_a_twin": 293, "test_targets_in_groups_of_10_or_more": 0,
                                          "test_targets": 8442}}},
        "runs": {"recformer-warmup2-reduced-all-users-f": [row]}})
    lines = table.splitlines()
    (cell,) = [x for x in lines if x.startswith("| Recformer, MiniLM + 2 epochs of in-domain contrastive warm-up, fine-tuned |")]
    assert ("192 tokens, attributes of 32, lr 5e-5, stage 1 validated every 2 epochs, empty histories drawn | 0.1010 |"
            in cell)  # the later attribute length wins
    assert any(x.startswith("  test (seed 2020): with ties in random order (`--ties random`) R@10 0.1031 / N@10 0.0515, "
                            "293 test targets tied") for x in lines)
    assert not any(x.startswith("Exact savings") for x in lines)  # none measured in this file
    assert any(x.startswith("Attributes of 32 tokens: 67 of Scientific's 4,385 items are token-identical to another item "
                            "(largest group 6); 293 of the 8,442 test targets") for x in lines)


def test_warm_up_keeps_the_rows_model_and_machine_settings_with_the_reference_pre_training_optimiser():
    warm = benchmark_script("recformer_scientific").warmup_overrides(
        ["model.max_token_num=192", "train.lr=1e-4", "train.epochs=8", "train.amp_cpu=true", "train.num_threads=1",
         "train.eval_every=1", "model.max_attr_length=32"], 2)
    assert warm[:4] == ["model.max_token_num=192", "train.amp_cpu=true", "train.num_threads=1", "model.max_attr_length=32"]
    assert "train.lr=1e-4" not in warm and "train.lr=5e-5" in warm and "train.grad_clip=1.0" in warm
    assert warm[-3:] == ["train.epochs=2", "train.eval_every=2", "train.patience=3"]


def test_savings_are_rendered_with_their_figures():
    sv = {"setting": {"max_token_num": 192, "max_attr_length": 32, "repeats": 3},
          "last_layer_bos_only": {"whole_s": 2.0, "bos_only_s": 1.6, "speedup": 1.25},
          "eval_rows_by_tokens": {"item_order_s": 3.0, "token_groups_s": 2.0, "speedup": 1.5, "max_abs_difference": 2e-7,
                                  "pass_positions_by_items": 1000, "pass_positions_by_tokens": 800, "pass_real_tokens": 700,
                                  "pass_ratio": 1.25},
          "train_buckets_by_tokens": {"positions_by_items": 1200, "positions_by_tokens": 1000, "real_tokens": 900, "ratio": 1.2},
          "machine": {"date": "2026-12-07", "cpu": "cpu", "cores": 2, "python": "3.11", "torch": "2", "gpu": None}}
    table = benchmark_script("recformer_scientific").render({
        "machine": sv["machine"], "argv": ["recformer_scientific.py"], "commands": [], "info": {}, "facts": {"savings": sv},
        "runs": {}})
    (line,) = [x for x in table.splitlines() if x.startswith("Exact savings")]
    assert "2.00 s -> 1.60 s (1.25x)" in line and "1,000 -> 800 (1.25x; 700 real)" in line and "1,200 -> 1,000 (1.20x" in line
