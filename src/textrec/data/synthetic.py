"""A seeded synthetic multi-domain world whose item text carries a transferable signal.

Every domain sells its own kinds of products (tools, kitchen, garden, ...) under its own brands, but all
domains share one attribute vocabulary: colours, materials and styles. Item texts read like the Amazon
"title. category. brand." texts of the papers, e.g.::

    Brenvo blue steel hammer, vintage style. Tools Hand Tools. Brenvo.

Users follow one planted rule in every domain: a user keeps a preferred *style*, and each next item's
*colour* is the successor of the current item's colour on a fixed colour wheel (red -> orange -> yellow
-> ...); the next item is drawn uniformly among the domain's items with that style and colour. With
probability ``noise`` the next item is uniform instead. So:

* a model reading text can learn "same style, next colour" once and apply it in a new domain whose
  items it has never seen (transfer);
* an ID model must learn each domain's item transitions from that domain's interactions;
* ``noise=1.0`` makes sequences uniformly random: a negative control where nothing can be learned.

The chance level of Recall@K is about K / n_items; the best possible is far above it (a handful of items
share each (style, colour) pair).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from textrec.data.dataset import Dataset

COLORS = ("red", "orange", "yellow", "green", "teal", "blue", "purple", "pink")  # the colour wheel, in order
MATERIALS = ("steel", "wood", "plastic", "glass", "cotton", "leather", "ceramic", "bamboo")
STYLES = ("vintage", "modern", "rustic", "minimalist", "industrial", "classic")
DOMAINS = {
    "tools": ("Hand Tools", ("hammer", "drill", "wrench", "saw", "chisel", "clamp", "level", "pliers")),
    "kitchen": ("Cookware", ("pan", "mug", "knife", "bowl", "kettle", "spatula", "teapot", "platter")),
    "garden": ("Outdoor Living", ("planter", "rake", "hose", "lantern", "bench", "trowel", "birdhouse", "shears")),
    "office": ("Office Supplies", ("lamp", "stapler", "notebook", "organizer", "pen", "clipboard", "desk mat", "binder")),
    "home": ("Home Decor", ("vase", "cushion", "mirror", "clock", "rug", "candle holder", "frame", "basket")),
}
_SYLLABLES = ("bren", "vo", "kal", "mira", "tek", "zu", "dor", "lin", "sa", "quo", "fen", "ra", "ix", "mo", "tal", "ne")


@dataclass(frozen=True)
class WorldSpec:
    n_items: int = 240  # items per domain
    n_users: int = 800  # users per domain
    min_len: int = 5  # shortest user sequence
    max_len: int = 20  # longest user sequence
    noise: float = 0.1  # probability that a step ignores the rule and picks a uniform item
    n_brands: int = 6  # brands per domain


def _brand_names(rng: np.random.Generator, n: int) -> list[str]:
    names: list[str] = []
    while len(names) < n:
        name = "".join(rng.choice(_SYLLABLES, size=2)).capitalize()
        if name not in names:
            names.append(name)
    return names


def make_domain(domain: str, spec: WorldSpec = WorldSpec(), seed: int = 0) -> Dataset:
    """One domain of the world as a ``Dataset`` (items with text and attributes, user sequences)."""
    if domain not in DOMAINS:
        raise ValueError(f"unknown synthetic domain {domain!r} (valid: {', '.join(DOMAINS)})")
    rng = np.random.default_rng([seed, list(DOMAINS).index(domain)])
    category, kinds = DOMAINS[domain]
    brands = _brand_names(rng, spec.n_brands)
    color = rng.integers(len(COLORS), size=spec.n_items)
    style = rng.integers(len(STYLES), size=spec.n_items)
    material = rng.integers(len(MATERIALS), size=spec.n_items)
    kind = rng.integers(len(kinds), size=spec.n_items)
    brand = rng.integers(len(brands), size=spec.n_items)
    texts, attrs, keys = [], [], []
    for i in range(spec.n_items):
        a = {
            "title": f"{brands[brand[i]]} {COLORS[color[i]]} {MATERIALS[material[i]]} {kinds[kind[i]]}, {STYLES[style[i]]} style",
            "category": f"{domain.capitalize()} {category}",
            "brand": brands[brand[i]],
        }
        attrs.append(a)
        texts.append(f"{a['title']}. {a['category']}. {a['brand']}. ")
        keys.append(f"{domain}-{i:05d}")
    # items[style][color] -> candidate item indices
    by_pair = [[np.flatnonzero((style == s) & (color == c)) for c in range(len(COLORS))] for s in range(len(STYLES))]
    sequences = []
    for _ in range(spec.n_users):
        length = int(rng.integers(spec.min_len, spec.max_len + 1))
        user_style = int(rng.integers(len(STYLES)))
        cands = [c for c in by_pair[user_style] if c.size]
        current = int(rng.choice(cands[int(rng.integers(len(cands)))]))
        seq = [current]
        while len(seq) < length:
            pool = by_pair[user_style][(color[current] + 1) % len(COLORS)]
            if rng.random() < spec.noise or pool.size == 0:
                current = int(rng.integers(spec.n_items))
            else:
                current = int(rng.choice(pool))
            seq.append(current)
        sequences.append(np.array(seq, dtype=np.int32) + 1)
    times = [np.arange(len(s), dtype=np.int64) * 86400 + 1_600_000_000 for s in sequences]
    return Dataset.from_sequences(
        name=f"synthetic-{domain}",
        item_keys=keys,
        item_texts=texts,
        user_keys=[f"{domain}-user{u:05d}" for u in range(spec.n_users)],
        sequences=sequences,
        times=times,
        item_attributes=attrs,
        meta={"source": {"format": "synthetic", "domain": domain, "seed": seed, **spec.__dict__}},
    )


def make_world(domains: tuple[str, ...] = ("tools", "kitchen", "garden"), spec: WorldSpec = WorldSpec(), seed: int = 0) -> dict[str, Dataset]:
    """Several domains sharing the attribute vocabulary and the user rule."""
    return {d: make_domain(d, spec, seed) for d in domains}
