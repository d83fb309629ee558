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


# ---- large corpora -------------------------------------------------------------------------------


@dataclass(frozen=True)
class CorpusSpec:
    """A corpus of any size with the shape of real interaction data (``make_corpus``).

    Sequence lengths are log-normal (median ``median_len``, spread ``len_sigma``), clipped to
    [``min_len``, ``max_len``]: most users are short, a few are long, as in the Amazon 5-core sets (median
    about 6, a long tail). Item popularity is Zipf-like: the item of popularity rank r is drawn with weight
    1 / r^``zipf``.
    Each user keeps one of ``n_topics`` topics; a step picks, with probability ``topic_share``, an item of that
    topic (by its popularity inside the topic), else any item (by global popularity): a learnable signal.
    """

    n_users: int = 100_000
    n_items: int = 50_000
    median_len: float = 6.0
    len_sigma: float = 0.8
    min_len: int = 5
    max_len: int = 200
    zipf: float = 1.0
    n_topics: int = 200
    topic_share: float = 0.7


def _zipf_draw(rng: np.random.Generator, n: int | np.ndarray, size: int, exponent: float) -> np.ndarray:
    """``size`` draws of a rank in 0..n-1 with weight 1 / (rank + 1)^exponent (inverse CDF, vectorised);
    ``n`` may be one bound per draw."""
    n = np.broadcast_to(np.asarray(n, dtype=np.int64), (size,))
    cdf = np.cumsum(1.0 / np.arange(1, int(n.max()) + 1, dtype=np.float64) ** exponent)
    return np.minimum(np.searchsorted(cdf, rng.random(size) * cdf[n - 1], side="right"), n - 1)


def make_corpus(spec: CorpusSpec = CorpusSpec(), seed: int = 0, name: str = "synthetic-corpus") -> Dataset:
    """A ``Dataset`` of ``spec.n_users`` users and ``spec.n_items`` items (``CorpusSpec``), built vectorised:
    a million users take seconds and memory of a few bytes per interaction beyond the item texts."""
    rng = np.random.default_rng(seed)
    lengths = np.clip(np.rint(rng.lognormal(np.log(spec.median_len), spec.len_sigma, spec.n_users)),
                      spec.min_len, spec.max_len).astype(np.int64)
    total = int(lengths.sum())
    topic_of_item = rng.integers(spec.n_topics, size=spec.n_items)
    popularity = rng.permutation(spec.n_items)  # popularity rank -> item index
    # every topic's items in global popularity order, so a Zipf draw inside a topic favours its popular items
    ordered_topics = topic_of_item[popularity]
    by_topic = np.argsort(ordered_topics, kind="stable")
    topic_start = np.searchsorted(ordered_topics[by_topic], np.arange(spec.n_topics + 1))
    user_topic = rng.integers(spec.n_topics, size=spec.n_users)
    step_topic = np.repeat(user_topic, lengths)
    items = popularity[_zipf_draw(rng, spec.n_items, total, spec.zipf)]  # global draws
    own = rng.random(total) < spec.topic_share
    sizes = (topic_start[1:] - topic_start[:-1])[step_topic]
    own &= sizes > 0
    if own.any():
        local = _zipf_draw(rng, sizes[own], int(own.sum()), spec.zipf)  # Zipf over each topic's own items
        items[own] = popularity[by_topic[topic_start[step_topic[own]] + local]]
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    times = np.arange(total, dtype=np.int64) - np.repeat(offsets[:-1], lengths)
    kinds = [k for _, (_, ks) in DOMAINS.items() for k in ks]
    words = rng.integers([len(COLORS), len(MATERIALS), len(STYLES), len(kinds)], size=(spec.n_items, 4))
    texts = [f"{COLORS[c]} {MATERIALS[m]} {kinds[k]}, {STYLES[s]} style. Topic {t}. " for (c, m, s, k), t in zip(words.tolist(), topic_of_item.tolist())]
    return Dataset(
        name=name,
        item_keys=[f"i{i}" for i in range(spec.n_items)],
        item_texts=texts,
        user_keys=[f"u{u}" for u in range(spec.n_users)],
        seq_offsets=offsets,
        seq_items=(items + 1).astype(np.int32),
        seq_times=times * 86400 + 1_600_000_000,
        meta={"source": {"format": "synthetic-corpus", "seed": seed, **spec.__dict__}},
    )
