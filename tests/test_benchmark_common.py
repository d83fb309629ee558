"""benchmarks/_common.py: result files two processes fill side by side, and pre-training records without checkpoints."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import _common  # noqa: E402


def _row(name: str, r10: float = 0.1) -> dict:
    return {"run": f"/x/{name}", "valid": {"ndcg@10": r10}, "epochs_run": 3}


def test_save_result_merges_rows_of_another_process(tmp_path):
    path = tmp_path / "sec.json"
    # process A: pre-training + inductive seed 2020; process B (started from A's file): transductive seed 2020
    a = {"section": "sec", "runs": {"pretrain": [_row("pt")], "pt-ind": [_row("pt-ind-2020")]}, "commands": ["pt", "ind"]}
    _common.save_result(path, json.loads(json.dumps(a)))
    b = {"section": "sec", "runs": {"pretrain": [_row("pt")], "pt-trans": [_row("pt-trans-2020")]}, "commands": ["pt", "trans"]}
    _common.save_result(path, b)
    # A finishes seed 2021 without knowing of B's row: B's row must survive A's write
    a["runs"]["pt-ind"].append(_row("pt-ind-2021"))
    merged = _common.save_result(path, a)
    on_disk = json.loads(path.read_text())
    assert on_disk == merged
    assert [Path(x["run"]).name for x in on_disk["runs"]["pt-ind"]] == ["pt-ind-2020", "pt-ind-2021"]
    assert [Path(x["run"]).name for x in on_disk["runs"]["pt-trans"]] == ["pt-trans-2020"]
    assert len(on_disk["runs"]["pretrain"]) == 1
    assert on_disk["commands"] == ["pt", "ind", "trans"]
    assert not list(tmp_path.glob("*.tmp"))


def test_save_result_does_not_merge_another_section(tmp_path):
    path = tmp_path / "sec.json"
    _common.save_result(path, {"section": "other", "runs": {"k": [_row("k-1")]}, "commands": []})
    out = _common.save_result(path, {"section": "sec", "runs": {}, "commands": []})
    assert out["runs"] == {}


def test_pretrained_needs_its_checkpoint(tmp_path, capsys):
    runs = {"pretrain": [_row("pt")]}
    assert not _common.pretrained({}, "pretrain", tmp_path)
    assert not _common.pretrained(runs, "pretrain", tmp_path)
    assert "is gone" in capsys.readouterr().err
    (tmp_path / "model.safetensors").write_bytes(b"")
    assert _common.pretrained(runs, "pretrain", tmp_path)


def test_report_rerun_accepts_a_reproduction_and_refuses_a_difference():
    runs = {"pretrain": [_row("pt", 0.04)]}
    new = _row("pt", 0.04) | {"seconds_per_epoch": 9.0}
    _common.report_rerun(runs, "pretrain", new)
    assert runs["pretrain"] == [new]
    with pytest.raises(SystemExit, match="differs"):
        _common.report_rerun(runs, "pretrain", _row("pt", 0.05))


def test_save_result_keeps_the_facts_of_another_process(tmp_path):
    # the VQ-Rec process records its pre-training, the UniSRec process its own: neither may drop the other's
    path = tmp_path / "sec.json"
    _common.save_result(path, {"section": "sec", "runs": {}, "commands": [], "facts": {"pretrained": {"vqrec-pt": 1}, "pt_work": "w"}})
    out = _common.save_result(path, {"section": "sec", "runs": {}, "commands": [], "facts": {"pretrained": {"unisrec-pt": 2}}})
    assert out["facts"] == {"pretrained": {"vqrec-pt": 1, "unisrec-pt": 2}, "pt_work": "w"}


def test_transfer_resume_and_scratch_reuse_match_by_command():
    import transfer_seqrecbench as t

    runs = {"scientific/vqrec-pt": [{"run": "$WORK/runs/transfer_seqrecbench/scientific/vqrec-pt-2021"}]}
    assert t.finished(runs, "scientific/vqrec-pt", 2021)
    assert not t.finished(runs, "scientific/vqrec-pt", 2020)
    assert not t.finished(runs, "office/vqrec-pt", 2021)
    a = "textrec train D --model unisrec --out $WORK/runs/a/u-2020 --quiet train.seed=2020 data.embeddings=e model.mode=inductive"
    b = "textrec train D --model unisrec --out $WORK/runs/b/u-2021 --quiet model.mode=inductive train.seed=2021 data.embeddings=e"
    assert t.same_command(a) == t.same_command(b)  # run folder, seed and override order do not matter
    assert t.same_command(a) != t.same_command(b.replace("inductive", "transductive"))
    assert t.same_command(a) != t.same_command(a.replace("--model unisrec", "--model missrec"))


def test_run_dir_maps_the_stored_placeholders_back():
    """Rows store run folders as $WORK/... or $TMPDIR/... (no machine paths); run_dir finds them again."""
    import tempfile

    for stored, base in (("$WORK/runs/x", _common.WORK), ("$TMPDIR/smoke/runs/x", Path(tempfile.gettempdir()))):
        assert _common.run_dir({"run": stored}) == base / stored.split("/", 1)[1]
    assert _common.run_dir({"run": "/abs/runs/x"}) == Path("/abs/runs/x")
