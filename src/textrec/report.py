"""Terminal formatting shared by the CLI and the demo."""

from __future__ import annotations

from collections.abc import Iterable


def metrics_table(rows: Iterable[tuple[str, dict[str, float]]], columns: Iterable[str] = ("recall@10", "ndcg@10", "recall@50", "ndcg@50")) -> str:
    """A fixed-width table: one row per (label, metrics)."""
    rows = list(rows)
    columns = list(columns)
    width = max([len("model")] + [len(label) for label, _ in rows])
    head = f"{'model':<{width}}  " + "  ".join(f"{c:>9}" for c in columns)
    lines = [head, "-" * len(head)]
    for label, metrics in rows:
        cells = "  ".join(f"{metrics[c]:>9.4f}" if c in metrics else f"{'-':>9}" for c in columns)
        lines.append(f"{label:<{width}}  {cells}")
    return "\n".join(lines)


def shorten(text: str, width: int = 90) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."
