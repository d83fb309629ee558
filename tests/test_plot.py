"""``textrec.plot``: a run's log.jsonl read into curves and drawn to a PNG; ``textrec plot``."""

from __future__ import annotations

import json

import pytest

from textrec.cli import main
from textrec.errors import DataError, NotFoundError
from textrec.plot import plot_curves, read_curves


def _write_log(run, records):
    run.mkdir(parents=True, exist_ok=True)
    (run / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return run


def _records():
    # two phases, validation every other epoch, the best at epoch 4
    out = []
    for epoch in range(1, 7):
        rec = {"epoch": epoch, "loss": 10.0 - epoch, "phase": "permute" if epoch <= 2 else "fine-tune"}
        if epoch % 2 == 0:
            rec["valid"] = {"recall@10": 0.1 * epoch, "ndcg@10": 0.05 * epoch}
            rec["improved"] = epoch <= 4
        out.append(rec)
    return out


def test_read_curves_keeps_epochs_metrics_phases_and_the_best_epoch(tmp_path):
    curves = read_curves(_write_log(tmp_path / "run", _records()))
    assert curves.epochs == [1, 2, 3, 4, 5, 6] and curves.loss == [9.0, 8.0, 7.0, 6.0, 5.0, 4.0]
    assert curves.valid_epochs == [2, 4, 6]
    assert curves.valid["recall@10"] == pytest.approx([0.2, 0.4, 0.6])
    assert curves.best_epoch == 4  # epoch 6 evaluated but did not improve
    assert curves.phases == [("permute", 1, 2), ("fine-tune", 3, 6)]


def test_plot_curves_writes_a_png(tmp_path):
    run = _write_log(tmp_path / "run", _records())
    out = plot_curves(run)
    assert out == run / "curves.png"
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    other = plot_curves(run / "log.jsonl", tmp_path / "figs" / "c.png", metrics=("ndcg@10",))
    assert other.exists()


def test_bad_logs_are_one_line_errors(tmp_path):
    with pytest.raises(NotFoundError, match="no training log"):
        read_curves(tmp_path / "missing")
    run = _write_log(tmp_path / "run", _records())
    (run / "log.jsonl").write_text('{"epoch": 1, "loss": 2.0}\n{"loss": 1.0}\n')
    with pytest.raises(DataError, match=r"log.jsonl:2: not an epoch record"):
        read_curves(run)
    _write_log(run, _records())
    with pytest.raises(DataError, match="no validation metric mrr@10"):
        plot_curves(run, metrics=("mrr@10",))


def test_plot_command(tmp_path, capsys):
    run = _write_log(tmp_path / "run", _records())
    assert main(["plot", str(run), "--out", str(tmp_path / "c.png")]) == 0
    assert (tmp_path / "c.png").exists() and f"wrote {tmp_path / 'c.png'}" in capsys.readouterr().err
    assert main(["plot", str(tmp_path / "nope")]) == 2
    assert "no training log" in capsys.readouterr().err
