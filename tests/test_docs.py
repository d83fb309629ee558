"""The README and the docs agree with the code: commands parse, config keys exist, generated pages are current."""

from __future__ import annotations

import csv
import importlib.util
import dataclasses
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from textrec.cli import build_parser, main
from textrec.config import DataConfig, EvalConfig, TrainConfig, load_config
from textrec.errors import ConfigError
from textrec.models import MODELS

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOC_PAGES = sorted((ROOT / "docs").rglob("*.md"))
SECTIONS = {"data": DataConfig, "train": TrainConfig, "eval": EvalConfig}
REDIRECTS = {">", ">>", "2>", "2>&1", "|"}


def shell_blocks(path: Path) -> list[str]:
    """The ```bash blocks of a Markdown file."""
    return re.findall(r"```bash\n(.*?)```", path.read_text(), re.S)


def commands(block: str) -> list[list[str]]:
    """Each command of a shell block as argv: continuation lines joined, comments dropped, ``&&`` split,
    redirections cut off."""
    out = []
    for line in block.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        while words:
            cut = words.index("&&") if "&&" in words else len(words)
            argv, words = words[:cut], words[cut + 1:]
            stop = next((i for i, w in enumerate(argv) if w in REDIRECTS), len(argv))
            if argv[:stop]:
                out.append(argv[:stop])
    return out


def readme_commands() -> list[list[str]]:
    return [c for b in shell_blocks(README) for c in commands(b)]


def check_textrec_command(argv: list[str]) -> None:
    """Fail unless ``textrec ARGV`` parses with the real parser and its key=value overrides are config keys."""
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
    except SystemExit:
        pytest.fail(f"`textrec {shlex.join(argv)}` does not parse")
    overrides = [e for e in extra if "=" in e and not e.startswith("-")]
    assert not [e for e in extra if e not in overrides], f"`textrec {shlex.join(argv)}`: unknown arguments {extra}"
    overrides = list(getattr(args, "overrides", []) or []) + overrides
    assert not overrides or hasattr(args, "overrides"), f"`textrec {argv[0]}` takes no key=value overrides"
    for item in overrides:
        key = item.partition("=")[0]
        section, _, name = key.partition(".")
        if section == "model":
            models = [args.model] if getattr(args, "model", None) else list(MODELS)
            fields = {f.name for m in models for f in dataclasses.fields(MODELS[m]().Config)}
        else:
            assert section in SECTIONS, f"`{item}`: unknown config section {section!r}"
            fields = {f.name for f in dataclasses.fields(SECTIONS[section])}
        assert name in fields, f"`textrec {shlex.join(argv)}`: {key} is not a config key"
    if getattr(args, "model", None):
        load_config(model=args.model, overrides=overrides)  # values of the right type and range too


def check_command(argv: list[str], where: str) -> None:
    if argv[0] == "textrec":
        check_textrec_command(argv[1:])
    elif argv[:1] == ["python"] and argv[1].endswith(".py"):
        assert (ROOT / argv[1]).exists(), f"{where}: `{shlex.join(argv)}` runs a script that does not exist"
    elif argv[:2] == ["pip", "install"] and argv[-1].startswith(".["):
        extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
        wanted = argv[-1][2:-1].split(",")
        assert set(wanted) <= set(extras), f"{where}: `{shlex.join(argv)}` names an extra pyproject.toml lacks"


def test_readme_is_short_and_starts_with_the_two_commands():
    lines = README.read_text().splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines (at most 200)"
    first_screen = "\n".join(lines[:40])
    blocks = shell_blocks(README)
    assert "textrec demo" in blocks[0] and "pip install" in blocks[0] and blocks[0] in first_screen
    assert "python -m pytest" in blocks[1] and blocks[1] in first_screen  # .ci/run checks for this command too


def test_readme_names_no_path_outside_the_repository_but_the_development_data():
    text = README.read_text()
    assert not re.search(r"(?<![\w.])(/work|/home|/root|/tmp|~/)", text), "a machine path in README.md"
    outside = set(re.findall(r"\.\./[\w./-]*", text))
    assert outside and all(p.startswith("../shared/") for p in outside), outside
    assert "development copy" in text  # ../shared/data is named for what it is


def test_every_readme_command_uses_subcommands_flags_and_keys_that_exist():
    cmds = readme_commands()
    used = {c[1] for c in cmds if c[0] == "textrec"}
    assert {"demo", "prepare", "encode", "train", "evaluate", "recommend", "plot"} <= used
    for argv in cmds:
        check_command(argv, "README.md")


@pytest.mark.parametrize("page", DOC_PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_docs_command_parses(page):
    for block in shell_blocks(page):
        for argv in commands(block):
            check_command(argv, str(page.relative_to(ROOT)))


@pytest.mark.parametrize("argv", [
    ["textrec", "train", "d", "--model", "unisrec", "--out", "r", "train.lrr=1"],
    ["textrec", "train", "d", "--model", "sasrec", "--out", "r", "model.n_experts=4"],  # a UniSRec key
    ["textrec", "recommend", "r", "--user", "u", "--top", "5"],
    ["textrec", "serve-all", "r"],
])
def test_the_command_check_catches_what_does_not_exist(argv):
    with pytest.raises((pytest.fail.Exception, AssertionError, ConfigError)):
        check_command(argv, "test")


def test_generated_docs_pages_match_the_code():
    # docs/configuration.md and the models' config blocks are generated from the config dataclasses
    spec = importlib.util.spec_from_file_location("gen_docs", ROOT / "docs" / "tools" / "gen_docs.py")
    gen_docs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen_docs)
    stale = [str(path.relative_to(ROOT)) for path, text in gen_docs.pages().items()
             if not path.exists() or path.read_text() != text.rstrip() + "\n"]
    assert not stale, f"out of date, run python docs/tools/gen_docs.py: {stale}"
    page = (ROOT / "docs" / "configuration.md").read_text()
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            assert f"`{section}.{f.name}`" in page


def test_results_open_on_the_headline_written_from_the_results_json():
    lines = (ROOT / "docs" / "RESULTS.md").read_text().splitlines()
    first_table = next(i for i, line in enumerate(lines) if line.startswith("|"))
    assert first_table < 40, f"docs/RESULTS.md's first table is on line {first_table + 1}"
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "report.py"), "--check"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "- of 8,442" not in "\n".join(lines) and not re.search(r"\bissue \d+", "\n".join(lines))


def test_readme_numbers_come_from_results():
    """Every metric in the README's results table appears in docs/RESULTS.md."""
    text = README.read_text()
    table = text[text.index("## Results"):text.index("## Models")]
    results = (ROOT / "docs" / "RESULTS.md").read_text()
    numbers = re.findall(r"\b0\.\d{4}\b", table)
    assert len(numbers) >= 10
    missing = [n for n in numbers if n not in results]
    assert not missing, f"README numbers not in docs/RESULTS.md: {missing}"


def test_the_example_new_items_file_reads():
    from textrec.serve.catalogue import read_new_item_table

    items = read_new_item_table(ROOT / "examples" / "new_items.csv")
    assert len(items.keys) >= 3 and all(a.get("title") for a in items.attributes)


def _write_own_data(tmp_path: Path, tiny_world) -> None:
    """interactions.csv and items.csv, as the README's "Use your own data" expects, from the synthetic world."""
    with open(tmp_path / "interactions.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["user", "item", "timestamp"])
        for u in range(tiny_world.n_users):
            user = "U123" if u == 0 else tiny_world.user_keys[u]
            for t, i in enumerate(tiny_world.sequence(u)):
                w.writerow([user, tiny_world.item_keys[i - 1], t])
    with open(tmp_path / "items.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["item", "text"])
        for key, text in zip(tiny_world.item_keys, tiny_world.item_texts):
            w.writerow([key, text])
    (tmp_path / "examples").mkdir()
    shutil.copy(ROOT / "examples" / "new_items.csv", tmp_path / "examples")


@pytest.mark.slow
def test_the_readme_own_data_block_runs_as_written(tmp_path, tiny_world, monkeypatch, capsys):
    """Runs every command of the "Use your own data" block on a small interactions table (MiniLM, CPU)."""
    _write_own_data(tmp_path, tiny_world)
    monkeypatch.chdir(tmp_path)
    block = shell_blocks(README)[2]
    assert "--items items.csv" in block  # the README's "Use your own data" block
    for argv in commands(block):
        assert argv[0] == "textrec"
        assert main(argv[1:] + (["train.num_threads=1"] if argv[1] == "train" else [])) == 0, argv
    assert (tmp_path / "runs" / "mine" / "curves.png").exists()
    assert "NEW-0001" in capsys.readouterr().out


def test_report_renders_every_figure_from_the_committed_results(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("report", ROOT / "benchmarks" / "report.py")
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    monkeypatch.setattr(report, "FIGURES", tmp_path)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for make in (report.figure_accuracy, report.figure_multimodal, report.figure_gain, report.figure_curves):
        path = make(plt)
        assert path.parent == tmp_path and path.read_bytes()[:4] == b"\x89PNG"
        assert (ROOT / "docs" / "figures" / path.name).exists()  # committed, and shown by a page
    shown = README.read_text() + "".join(p.read_text() for p in DOC_PAGES)
    assert all(f"figures/{p.name}" in shown for p in tmp_path.glob("*.png"))
