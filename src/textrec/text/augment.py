"""Text augmentation for the second ("word-drop") view of an item, as UniSRec's ``.feat2CLS``.

Reference (UniSRec ``process_amazon.py --word_drop_ratio 0.15``; REFERENCE_NOTES section 0, step 5):
each word of the item text is kept when ``random.random() > ratio``, and the kept words are re-joined
with single spaces before encoding. Deliberate differences: words are split on any whitespace (the
reference splits on single spaces, so runs of spaces become empty "words" that can be dropped too), a
word is kept when a uniform draw is ``>= p`` (probability ``1 - p`` either way), and the draws come from
an explicit ``numpy.random.Generator`` so a view is reproducible from its seed.
"""

from __future__ import annotations

import numpy as np


def word_drop(text: str, p: float = 0.15, rng: np.random.Generator | None = None) -> str:
    """``text`` with each whitespace-separated word dropped independently with probability ``p``."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"word-drop probability must lie in [0, 1], not {p}")
    words = text.split()
    if p == 0.0 or not words:
        return " ".join(words)
    rng = rng if rng is not None else np.random.default_rng()
    keep = rng.random(len(words)) >= p
    return " ".join(w for w, k in zip(words, keep) if k)


def word_drop_texts(texts: list[str], p: float = 0.15, seed: int = 2020) -> list[str]:
    """One word-drop view of every text, drawn from a generator seeded with ``seed``."""
    rng = np.random.default_rng(seed)
    return [word_drop(t, p, rng) for t in texts]
