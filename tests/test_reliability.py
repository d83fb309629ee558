"""Nothing a user made is silently changed or lost, and every storage failure is one line.

Each test reproduces one escape found by trying textrec as a new user would (re-preparing a dataset under a
trained run, ``--overwrite`` onto a folder textrec did not write, Latin-1 input, two writers of one run,
read-only or full storage, ``train.lr=inf``, SIGTERM, a killed ``prepare``), through the command line on
tiny CSV datasets.
"""

from __future__ import annotations

import codecs
import json
import logging
import os
import signal

import numpy as np
import pytest

from doubles import one_line_error
from textrec.cli import main
from textrec.data.dataset import Dataset, check_dataset_hash
from textrec.errors import DataError
from textrec.io import locked, remove_stale_temporaries

TINY = ["model.hidden_size=16", "model.inner_size=16", "train.epochs=1", "train.batch_size=64", "train.device=cpu"]


def write_csv(folder, n_users=40, n_items=25, seed=0, user_prefix="u", text=lambda i: f"item {i} text",
              encoding="utf-8", users=None):
    """interactions.csv + items.csv of a small random world; every user has 6 interactions."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    users = users or [f"{user_prefix}{u}" for u in range(n_users)]
    rows = ["user,item,timestamp"]
    for u in users:
        for t, i in enumerate(rng.choice(n_items, 6, replace=False)):
            rows.append(f"{u},i{i},{t}")
    (folder / "interactions.csv").write_bytes(("\n".join(rows) + "\n").encode(encoding))
    items = ["item,text"] + [f"i{i},{text(i)}" for i in range(n_items)]
    (folder / "items.csv").write_bytes(("\n".join(items) + "\n").encode(encoding))
    return folder


def prepare(src, out, *extra) -> int:
    return main(["prepare", str(src), "--format", "csv", "--out", str(out), "--k-core", "0", *map(str, extra)])


# ---- a run refuses a dataset prepared again under it --------------------------------------------


def test_a_run_refuses_its_dataset_prepared_again_in_place(tmp_path, capsys):
    write_csv(tmp_path / "raw", seed=0)
    assert prepare(tmp_path / "raw", tmp_path / "data") == 0
    old = Dataset.load(tmp_path / "data").meta["content_hash"]
    run = tmp_path / "run"
    assert main(["train", str(tmp_path / "data"), "--model", "sasrec", "--out", str(run), "--quiet", *TINY]) == 0
    write_csv(tmp_path / "raw", seed=1)  # other interactions: item ids are reassigned
    assert prepare(tmp_path / "raw", tmp_path / "data", "--overwrite") == 0
    new = Dataset.load(tmp_path / "data").meta["content_hash"]
    assert new != old
    user = Dataset.load(tmp_path / "data").user_keys[0]
    for argv in (["evaluate", run], ["recommend", run, "--user", user]):
        one_line_error(capsys, argv, old[:12], new[:12], str(run))
    one_line_error(capsys, ["train", tmp_path / "data", "--model", "sasrec", "--out", run, "--resume", "--quiet",
                            *TINY, "train.epochs=2"], old[:12], new[:12])
    # the same data prepared again has the same hash: the run still loads
    write_csv(tmp_path / "raw", seed=0)
    assert prepare(tmp_path / "raw", tmp_path / "data", "--overwrite") == 0
    assert main(["evaluate", str(run), "--json"]) == 0


def test_check_dataset_hash_names_both_hashes():
    with pytest.raises(DataError, match="aaaaaaaaaaaa.*bbbbbbbbbbbb"):
        check_dataset_hash("a" * 64, {"content_hash": "b" * 64, "name": "x"}, "run")
    check_dataset_hash("a" * 64, {"content_hash": "a" * 64}, "run")
    check_dataset_hash(None, {"content_hash": "b" * 64}, "run")  # recorded before textrec kept hashes


def test_embeddings_codes_and_feature_tables_are_refused_for_another_dataset(tmp_path, capsys):
    from textrec.quant.codes import load_item_codes, random_codes
    from textrec.text.encode import encode_dataset, load_item_embeddings

    write_csv(tmp_path / "raw")
    data = tmp_path / "data"
    assert prepare(tmp_path / "raw", data) == 0
    encode_dataset(data, "hashing-32", name="h", cache=False, progress=False)
    random_codes(data, 4, 8, 0, "r")
    feature = data / "features" / "img.npy"
    feature.parent.mkdir()
    np.save(feature, np.zeros((Dataset.load(data).n_items + 1, 3), np.float32))
    feature.with_suffix(".json").write_text(json.dumps({"dataset_content_hash": Dataset.load(data).meta["content_hash"]}))
    load_item_embeddings(data, "h"), load_item_codes(data, "r"), Dataset.load(data)  # all fit as made
    meta = json.loads((data / "meta.json").read_text())
    meta["content_hash"] = "f" * 64  # the dataset changed under them
    (data / "meta.json").write_text(json.dumps(meta))
    for load, where in ((lambda: load_item_embeddings(data, "h"), "h.npy"), (lambda: load_item_codes(data, "r"), "r.npy"),
                        (lambda: Dataset.load(data), "img.npy")):
        with pytest.raises(DataError, match=f"{where}.*ffffffffffff"):
            load()


# ---- --overwrite replaces only what textrec wrote -----------------------------------------------


def test_overwrite_refuses_a_folder_textrec_did_not_write(tmp_path, capsys):
    write_csv(tmp_path / "raw")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    one_line_error(capsys, ["prepare", tmp_path / "raw", "--format", "csv", "--out", mine, "--overwrite", "--k-core", "0"],
                   "not a directory textrec wrote")
    assert (mine / "thesis.tex").read_text() == "years of work"
    afile = tmp_path / "notes.txt"
    afile.write_text("keep")
    one_line_error(capsys, ["prepare", tmp_path / "raw", "--format", "csv", "--out", afile, "--overwrite", "--k-core", "0"],
                   "not a directory")
    assert afile.read_text() == "keep"
    # a dataset textrec wrote, or an empty folder, is replaced
    assert prepare(tmp_path / "raw", tmp_path / "data") == 0
    assert prepare(tmp_path / "raw", tmp_path / "data", "--overwrite") == 0
    (tmp_path / "empty").mkdir()
    assert prepare(tmp_path / "raw", tmp_path / "empty", "--overwrite") == 0


def test_overwrite_refuses_the_current_directory(tmp_path, capsys, monkeypatch):
    write_csv(tmp_path / "raw")
    work = tmp_path / "work"
    assert prepare(tmp_path / "raw", work) == 0  # even a dataset directory, when the command runs in it
    monkeypatch.chdir(work)
    one_line_error(capsys, ["prepare", tmp_path / "raw", "--format", "csv", "--out", ".", "--overwrite", "--k-core", "0"],
                   "current directory")
    assert (work / "meta.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw", "work"]


# ---- input is decoded, never replaced --------------------------------------------------------------


def test_latin1_input_is_an_error_naming_file_and_line_or_read_with_encoding(tmp_path, capsys):
    users = ["José", "Josè"] + [f"u{k}" for k in range(10)]
    write_csv(tmp_path / "raw", users=users, text=lambda i: f"café {i}", encoding="latin-1")
    err = one_line_error(capsys, ["prepare", tmp_path / "raw", "--format", "csv", "--out", tmp_path / "data", "--k-core", "0"],
                         "interactions.csv:2:", "not valid UTF-8", "--encoding")
    assert "0xe9" in err
    assert not (tmp_path / "data").exists()
    assert prepare(tmp_path / "raw", tmp_path / "data", "--encoding", "latin-1") == 0
    ds = Dataset.load(tmp_path / "data")
    assert {"José", "Josè"} <= set(ds.user_keys)
    assert not any("\ufffd" in k for k in ds.user_keys) and "café 0" in ds.item_texts
    one_line_error(capsys, ["prepare", tmp_path / "raw", "--format", "csv", "--out", tmp_path / "d2", "--encoding", "nope"],
                   "unknown encoding")


def test_utf16_with_its_mark_reads_as_utf8_and_without_it_is_refused(tmp_path, capsys):
    write_csv(tmp_path / "utf8")
    write_csv(tmp_path / "utf16", encoding="utf-16")  # Python writes the byte-order mark
    assert (tmp_path / "utf16" / "items.csv").read_bytes()[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)
    assert prepare(tmp_path / "utf8", tmp_path / "a") == 0
    assert prepare(tmp_path / "utf16", tmp_path / "b") == 0
    assert Dataset.load(tmp_path / "a").content_hash() == Dataset.load(tmp_path / "b").content_hash()
    write_csv(tmp_path / "bare", encoding="utf-16-le")  # no mark: NUL bytes between the letters
    one_line_error(capsys, ["prepare", tmp_path / "bare", "--format", "csv", "--out", tmp_path / "c", "--k-core", "0"],
                   "interactions.csv:1:", "NUL", "utf-16")


def test_a_csv_text_field_over_128k_is_accepted(tmp_path):
    write_csv(tmp_path / "raw", text=lambda i: "long " * 40_000 if i == 3 else f"item {i}")
    assert prepare(tmp_path / "raw", tmp_path / "data", "--keep-items-without-text") == 0
    assert max(len(t) for t in Dataset.load(tmp_path / "data").item_texts) >= 199_999


# ---- what prepare drops, degenerate inputs, bad options -----------------------------------------


def test_prepare_reports_what_it_drops(tmp_path, caplog):
    raw = write_csv(tmp_path / "raw", n_items=25)
    items = (raw / "items.csv").read_text().splitlines()
    (raw / "items.csv").write_text("\n".join(items[:-5] + [items[1]]) + "\n")  # 5 items without a row, 1 repeated
    with caplog.at_level(logging.WARNING, logger="textrec"):
        assert prepare(raw, tmp_path / "data") == 0
    text = caplog.text
    assert "interactions of items with no text/metadata" in text and "1 repeated item rows" in text
    counts = Dataset.load(tmp_path / "data").meta["counts"]
    assert f"{counts['items_without_text_removed']:,} interactions of items with no text" in text


def test_all_identical_texts_and_a_huge_history_warn(tmp_path, caplog):
    from textrec.data.formats import degenerate_problems

    write_csv(tmp_path / "raw", text=lambda i: "same text")
    with caplog.at_level(logging.WARNING, logger="textrec"):
        assert prepare(tmp_path / "raw", tmp_path / "data") == 0
    assert "all 25 item texts are identical" in caplog.text
    seqs = [np.arange(1, 4)] * 50 + [np.resize(np.arange(1, 11), 3000)]
    ds = Dataset.from_sequences("d", [f"i{k}" for k in range(10)], [f"t{k}" for k in range(10)],
                                [f"u{k}" for k in range(51)], seqs)
    assert any("'u50' has 3,000 interactions" in p for p in degenerate_problems(ds))
    assert not degenerate_problems(Dataset.from_sequences("d", ["a", "b"], ["x", "y"], ["u"], [[1, 2, 1]]))


def test_every_interaction_dropped_is_an_error(tmp_path, capsys):
    write_csv(tmp_path / "raw")
    one_line_error(capsys, ["prepare", tmp_path / "raw", "--format", "csv", "--out", tmp_path / "d", "--k-core", "50"],
                   "no interactions left")
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("argv, fragment", [
    (["prepare", "{raw}", "--format", "csv", "--out", "{tmp}/d", "--k-core", "-3"], "--k-core"),
    (["prepare", "{raw}", "--format", "csv", "--out", "{tmp}/d", "--max-users", "0"], "--max-users"),
    (["train", "{data}", "--model", "sasrec", "--out", "{tmp}/r", *TINY, "train.lr=inf"], "finite"),
    (["train", "{data}", "--model", "sasrec", "--out", "{tmp}/r", *TINY, "train.lr=nan"], "finite"),
    (["train", "{data}", "--model", "sasrec", "--out", "{tmp}/r", *TINY, "train.weight_decay=-inf"], "finite"),
])
def test_out_of_range_settings_are_refused_before_any_work(tmp_path, capsys, argv, fragment):
    write_csv(tmp_path / "raw")
    assert prepare(tmp_path / "raw", tmp_path / "data") == 0
    argv = [a.format(raw=tmp_path / "raw", data=tmp_path / "data", tmp=tmp_path) for a in argv]
    one_line_error(capsys, argv, fragment)
    assert not (tmp_path / "d").exists() and not (tmp_path / "r").exists()


def test_evaluate_refuses_a_cutoff_of_zero(tmp_path, capsys):
    write_csv(tmp_path / "raw")
    assert prepare(tmp_path / "raw", tmp_path / "data") == 0
    run = tmp_path / "run"
    assert main(["train", str(tmp_path / "data"), "--model", "sasrec", "--out", str(run), "--quiet", *TINY]) == 0
    one_line_error(capsys, ["evaluate", run, "--ks", "10", "0"], "--ks")


# ---- locks, signals, killed writers -------------------------------------------------------------


def test_a_second_writer_of_a_run_or_dataset_gets_one_line(tmp_path, capsys):
    write_csv(tmp_path / "raw")
    assert prepare(tmp_path / "raw", tmp_path / "data") == 0
    run = tmp_path / "run"
    with locked(run):  # as a first `train` holds it while it runs
        one_line_error(capsys, ["train", tmp_path / "data", "--model", "sasrec", "--out", run, "--quiet", *TINY],
                       "another textrec command is writing it")
        assert not run.exists()
    with locked(tmp_path / "d2"):
        one_line_error(capsys, ["prepare", tmp_path / "raw", "--format", "csv", "--out", tmp_path / "d2", "--k-core", "0"],
                       "another textrec command is writing it")
    assert main(["train", str(tmp_path / "data"), "--model", "sasrec", "--out", str(run), "--quiet", *TINY]) == 0
    epochs = [json.loads(line).get("epoch") for line in (run / "log.jsonl").read_text().splitlines()]
    assert len(epochs) == len(set(epochs))  # each epoch once
    assert not list(tmp_path.glob(".*.lock"))  # the lock file goes with its holder


def test_sigterm_cleans_up_a_run_as_ctrl_c_does(tmp_path, capsys, monkeypatch):
    import textrec.train.run as run_module

    write_csv(tmp_path / "raw")
    assert prepare(tmp_path / "raw", tmp_path / "data") == 0
    run = tmp_path / "run"

    def fit_until_terminated(*args, **kwargs):
        assert (run / "config.json").exists()
        os.kill(os.getpid(), signal.SIGTERM)  # what `kill` or a scheduler sends during the first epoch
        raise AssertionError("SIGTERM did not interrupt training")

    monkeypatch.setattr(run_module, "fit", fit_until_terminated)
    assert main(["train", str(tmp_path / "data"), "--model", "sasrec", "--out", str(run), "--quiet", *TINY]) == 143
    assert not run.exists()  # so the plain rerun needs no --overwrite
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_a_killed_prepares_temporary_folder_is_removed_by_the_next(tmp_path):
    write_csv(tmp_path / "raw")
    stale = tmp_path / ".data.k1ll3d_x.tmp"
    stale.mkdir()
    (stale / "items.parquet").write_bytes(b"half")
    other = tmp_path / ".other.k1ll3d_x.tmp"  # another output's: not ours to remove
    other.mkdir()
    assert prepare(tmp_path / "raw", tmp_path / "data") == 0
    assert not stale.exists() and other.exists()


def test_a_prepare_killed_between_the_two_renames_gets_the_old_dataset_back(tmp_path):
    write_csv(tmp_path / "raw")
    assert prepare(tmp_path / "raw", tmp_path / "data") == 0
    before = Dataset.load(tmp_path / "data").content_hash()
    trash = tmp_path / ".data.abcd1234.old"
    trash.mkdir()
    os.replace(tmp_path / "data", trash / "old")  # killed right after moving the old dataset aside
    assert not (tmp_path / "data").exists()
    write_csv(tmp_path / "raw", seed=1)
    with locked(tmp_path / "data"):  # what the next writer of it does first
        remove_stale_temporaries(tmp_path / "data")
    assert Dataset.load(tmp_path / "data").content_hash() == before and not trash.exists()


# ---- storage failures: one line, nothing half-written --------------------------------------------


def _no_space(path):
    raise OSError(28, "No space left on device", str(path))


def test_a_full_disk_during_prepare_is_one_line_and_leaves_the_old_dataset(tmp_path, capsys, monkeypatch):
    import pyarrow.parquet as pq

    write_csv(tmp_path / "raw", seed=0)
    assert prepare(tmp_path / "raw", tmp_path / "data") == 0
    before = Dataset.load(tmp_path / "data").content_hash()
    write_csv(tmp_path / "raw", seed=1)
    monkeypatch.setattr(pq, "write_table", lambda table, where, **kw: _no_space(where))
    one_line_error(capsys, ["prepare", tmp_path / "raw", "--format", "csv", "--out", tmp_path / "data", "--overwrite",
                            "--k-core", "0"], "items.parquet: No space left on device")
    assert Dataset.load(tmp_path / "data").content_hash() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "raw"]  # no temporary folder left


def _trained_sasrec(tmp_path):
    """(the train command, its run directory) of a SASRec run trained on a small prepared CSV dataset."""
    write_csv(tmp_path / "raw")
    assert prepare(tmp_path / "raw", tmp_path / "data") == 0
    run = tmp_path / "run"
    argv = ["train", str(tmp_path / "data"), "--model", "sasrec", "--out", str(run), "--quiet", *TINY]
    assert main(argv) == 0
    return argv, run


def test_a_full_disk_while_saving_a_checkpoint_keeps_the_last_complete_one(tmp_path, capsys, monkeypatch):
    import torch

    argv, run = _trained_sasrec(tmp_path)
    state = (run / "state.pt").read_bytes()
    monkeypatch.setattr(torch, "save", lambda obj, where, *a, **k: _no_space(where))
    one_line_error(capsys, [*argv, "--resume", "train.epochs=2"], "No space left on device")
    assert (run / "state.pt").read_bytes() == state and not list(run.glob(".*.tmp"))
    monkeypatch.undo()
    assert main([*argv, "--resume", "train.epochs=2"]) == 0


@pytest.mark.parametrize("errno_, reason", [(30, "Read-only file system"), (13, "Permission denied")])
def test_read_only_outputs_are_one_line(tmp_path, capsys, monkeypatch, errno_, reason):
    import textrec.io as io_module

    write_csv(tmp_path / "raw")
    assert prepare(tmp_path / "raw", tmp_path / "data") == 0

    def refuse(*args, **kwargs):
        raise OSError(errno_, reason, str(tmp_path / "x"))

    monkeypatch.setattr(io_module.tempfile, "mkstemp", refuse)
    monkeypatch.setattr(io_module.tempfile, "mkdtemp", refuse)
    for argv in (["prepare", tmp_path / "raw", "--format", "csv", "--out", tmp_path / "d2", "--k-core", "0"],
                 ["encode", tmp_path / "data", "--encoder", "hashing-16", "--no-cache"],
                 ["quantize", tmp_path / "data", "--random", "--codebooks", "2", "--codebook-size", "4"],
                 ["holdout", tmp_path / "data", "--out", tmp_path / "h"],
                 ["train", tmp_path / "data", "--model", "sasrec", "--out", tmp_path / "r", "--quiet", *TINY]):
        one_line_error(capsys, argv, reason)


def test_paths_of_the_wrong_kind_or_encoding_are_one_line(tmp_path, capsys):
    write_csv(tmp_path / "raw")
    assert prepare(tmp_path / "raw", tmp_path / "data") == 0
    train = ["train", tmp_path / "data", "--model", "sasrec", "--quiet", *TINY]
    (tmp_path / "latin.toml").write_bytes("[train]\n# réglage\nlr = 0.001\n".encode("latin-1"))
    one_line_error(capsys, [*train, "--out", tmp_path / "r", "--config", tmp_path / "latin.toml"], "latin.toml", "UTF-8")
    one_line_error(capsys, [*train, "--out", tmp_path / "r", "--config", tmp_path / "raw"], str(tmp_path / "raw"))
    (tmp_path / "afile").write_text("x")
    one_line_error(capsys, [*train, "--out", tmp_path / "afile"], "afile")
    run = tmp_path / "run"
    assert main([str(a) for a in [*train, "--out", run]]) == 0
    one_line_error(capsys, ["recommend", run, "--items", "i1", "--new-items", tmp_path / "raw"], "raw")


@pytest.mark.parametrize("writer", ["safetensors", "torch"])
def test_a_full_disk_reported_by_a_serialiser_is_one_line(tmp_path, capsys, monkeypatch, writer):
    import textrec.train.loop as loop
    from safetensors import SafetensorError

    argv, run = _trained_sasrec(tmp_path)
    weights = (run / "model.safetensors").read_bytes()
    if writer == "safetensors":  # what safetensors raises on a full disk
        def fail(*args, **kwargs):
            raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: '
                                  '"No space left on device" })')
        monkeypatch.setattr(loop, "save_model", fail)
        expected = "model.safetensors: No space left on device"
    else:  # what torch.save raises on a full disk
        def fail(*args, **kwargs):
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 512 vs 402")
        monkeypatch.setattr(loop.torch, "save", fail)
        expected = "state.pt: write failed"
    one_line_error(capsys, [*argv, "--resume", "train.epochs=2"] if writer == "torch" else [*argv[:5], str(tmp_path / "run2"),
                                                                                           *argv[6:]], expected)
    assert (run / "model.safetensors").read_bytes() == weights
    assert not (tmp_path / "run2").exists()  # failed before its first epoch was saved: nothing left
    monkeypatch.undo()
    assert main([*argv, "--resume", "train.epochs=2"]) == 0


def test_an_embedding_cache_that_cannot_be_written_is_a_warning(tmp_path, caplog, monkeypatch):
    from textrec.text.cache import EmbeddingCache

    write_csv(tmp_path / "raw")
    assert prepare(tmp_path / "raw", tmp_path / "data") == 0

    def read_only(self, *args):
        raise OSError(30, "Read-only file system", str(self.dir))

    monkeypatch.setattr(EmbeddingCache, "_write_chunk", read_only)
    with caplog.at_level(logging.WARNING, logger="textrec"):
        assert main(["encode", str(tmp_path / "data"), "--encoder", "hashing-16", "--name", "h"]) == 0
    assert "cannot write the embedding cache" in caplog.text and "Read-only file system" in caplog.text
    assert (tmp_path / "data" / "embeddings" / "h.npy").exists()


def test_encode_is_locked_and_removes_a_killed_encoders_temporaries(tmp_path, capsys):
    write_csv(tmp_path / "raw")
    assert prepare(tmp_path / "raw", tmp_path / "data") == 0
    out = tmp_path / "data" / "embeddings" / "h.npy"
    argv = ["encode", tmp_path / "data", "--encoder", "hashing-16", "--name", "h", "--no-cache"]
    with locked(out):
        one_line_error(capsys, argv, "another textrec command is writing it")
    stale = out.parent / ".h.npy.abcd_123.tmp"
    stale.write_bytes(b"half an array")
    assert main([str(a) for a in argv]) == 0
    assert not stale.exists() and not list(out.parent.glob(".*"))


def test_a_timestamp_beyond_int64_is_refused_not_wrapped(tmp_path, capsys):
    raw = write_csv(tmp_path / "raw")
    lines = (raw / "interactions.csv").read_text().splitlines()
    lines[1] = lines[1].rsplit(",", 1)[0] + ",1e300"  # found by fuzzing: cast to int64 it became garbage, silently
    (raw / "interactions.csv").write_text("\n".join(lines) + "\n")
    one_line_error(capsys, ["prepare", raw, "--format", "csv", "--out", tmp_path / "d", "--k-core", "0"], "1e+300", "out of range")
