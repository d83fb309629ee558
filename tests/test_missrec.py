"""MISSRec specifics: interest discovery through faiss, interest tokens, masked modalities, dynamic fusion,
learning on the synthetic world (with a negative control), pre-training / fine-tuning phases, grown catalogues,
and the command line on a dataset with two feature tables."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from doubles import item_inputs, random_batch, small_model
from textrec.cli import main
from textrec.config import load_config
from textrec.data.batching import SeqBatch
from textrec.data.synthetic import WorldSpec, make_domain
from textrec.models.missrec import MISSRec
from textrec.models.spec import FeatureTable, ItemInputs, item_input_kinds
from textrec.text.encoders import HashingEncoder
from textrec.train.inputs import build_model
from textrec.train.loop import fit
from textrec.train.run import make_batchers

SMALL = ["model.hidden_size=32", "model.n_heads=2", "model.inner_size=32", "model.hidden_dropout=0.1", "model.attn_dropout=0.1",
         "train.batch_size=256", "train.lr=0.003", "train.device=cpu", "train.num_threads=1"]


def world_features(ds, d_text=32, d_image=24, absent_every=7, seed=0):
    """(text, image) feature arrays: hashed text, and an image-like noisy projection of it missing for some items."""
    rng = np.random.default_rng(seed)
    text = np.zeros((ds.n_items + 1, d_text), dtype=np.float32)
    text[1:] = HashingEncoder(d_text).encode(ds.item_texts)
    image = text @ rng.normal(size=(d_text, d_image)).astype(np.float32) / math.sqrt(d_text)
    image += 0.2 * rng.normal(size=image.shape).astype(np.float32)
    image[0] = 0.0
    image[absent_every::absent_every] = 0.0
    return text, image


def world_inputs(ds, **kw) -> ItemInputs:
    text, image = world_features(ds, **kw)
    table = lambda v: FeatureTable(torch.from_numpy(v), torch.from_numpy(np.abs(v).sum(axis=1) > 0))  # noqa: E731
    return ItemInputs(n_items=ds.n_items, text_embeddings=torch.from_numpy(text), features={"feat1CLS": table(text), "feat3CLS": table(image)})


def _build(ds, overrides=(), seed=0):
    cfg = load_config(model="missrec", overrides=SMALL + list(overrides))
    torch.manual_seed(seed)
    return cfg, build_model(cfg, world_inputs(ds)).eval()


def test_interest_tokens_are_the_distinct_cluster_ids_of_all_modalities(tiny_world):
    model = small_model("missrec", tiny_world)
    model.interest_of_text[1:] = torch.arange(tiny_world.n_items) % 4 + 1
    model.interest_of_image[1:] = torch.arange(tiny_world.n_items) % 3 + 7
    model.interest_of_image[5] = 0  # an item without an image row has no image interest
    seq = torch.tensor([[1, 5, 2, 9, 0], [5, 0, 0, 0, 0], [3, 4, 5, 6, 7]])
    tokens = model.interest_tokens(seq)
    for row, items in zip(tokens.tolist(), seq.tolist()):
        ids = {int(getattr(model, f"interest_of_{m}")[i]) for m in ("text", "image") for i in items if i} - {0}
        assert [t for t in row if t] == sorted(ids) and all(t == 0 for t in row[len(ids):])
    assert tokens.shape[1] == max(len(set(r.tolist()) - {0}) for r in tokens)
    model.interest_of_text.zero_()
    model.interest_of_image.zero_()
    memory, pad, omega = model.interests(seq)  # no interest yet: one unmasked zero token, no NaN
    assert pad[:, 0].logical_not().all() and torch.isfinite(memory).all() and torch.isfinite(omega)


def test_faiss_kmeans_runs_once_per_epoch_and_labels_every_present_row(tiny_world, monkeypatch, tmp_path):
    import faiss

    calls = []

    class CountingKmeans(faiss.Kmeans):
        def train(self, x, *args, **kwargs):
            calls.append((x.shape, self.k))
            return super().train(x, *args, **kwargs)

    monkeypatch.setattr(faiss, "Kmeans", CountingKmeans)
    cfg, model = _build(tiny_world, ["train.epochs=2", "model.interest_ratio=0.3"])
    train_b, valid_b, _ = make_batchers(tiny_world, cfg, "cpu")
    result = fit(model, train_b, valid_b, None, cfg, out_dir=tmp_path, quiet=True)
    n_points = int(model.present_text.sum() + model.present_image.sum())
    k = math.ceil(n_points * 0.3)
    assert calls == [((n_points, 32), k)] * 2 and len(model.discoveries) == 2 and int(model.interest_count) == k
    # each epoch's clustering is in its log record, and its mean in metrics.json
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [(r["n_interests"], r["cluster_points"]) for r in log] == [(k, n_points)] * 2
    assert [r["cluster_seconds"] for r in log] == [d.seconds for d in model.discoveries]
    assert all(0 < r["cluster_seconds"] < r["train_seconds"] for r in log)  # an epoch's time includes its clustering
    means = json.loads((tmp_path / "metrics.json").read_text())["epoch_hook_means"]
    assert means["cluster_seconds"] == pytest.approx(sum(d.seconds for d in model.discoveries) / 2) and means["n_interests"] == k
    assert result.to_dict()["epoch_hook_means"] == means
    for m in ("text", "image"):
        lookup, present = getattr(model, f"interest_of_{m}"), getattr(model, f"present_{m}")
        assert (lookup[present] >= 1).all() and (lookup[present] <= k).all() and (lookup[~present] == 0).all()
    assert (~model.present_image[1:]).sum() > 0  # the test world does have missing images
    assert model.interest_centroids[1 : k + 1].abs().sum(dim=1).gt(0).all() and not model.interest_centroids[k + 1 :].any()


def test_a_missing_modality_is_masked_not_fed(tiny_world):
    _, model = _build(tiny_world)
    model.discover_interests()
    absent = int(torch.nonzero(~model.present_image[1:])[0]) + 1
    batch = SeqBatch(torch.tensor([[1, absent, 3], [absent, 2, 0]]), torch.tensor([3, 2]))
    before = model.score_items(model.encode(batch), model.item_embeddings())
    model.feature_image[absent] = 5.0  # garbage in a row marked absent must change nothing
    after = model.score_items(model.encode(batch), model.item_embeddings())
    torch.testing.assert_close(before, after)


def test_dynamic_fusion_weights_change_the_scores_as_the_formula_says(tiny_world):
    model = small_model("missrec", tiny_world, extra=["model.mode=inductive"])
    batch = random_batch(tiny_world)
    u, rows = model.encode(batch), model.item_embeddings()
    D = model.cfg.hidden_size
    s_t, s_v = u @ rows[:, :D].T, u @ rows[:, D : 2 * D].T
    has_image = model.present_image.clone()
    has_image[0] = True  # row 0 is padding (no modality): scored -1, left out here
    got = {}
    for alpha in (0.0, 4.0, -4.0):
        model.fusion_alpha.data.fill_(alpha)
        w = torch.softmax(alpha * torch.stack([s_t, s_v], dim=-1), dim=-1)
        expected = torch.where(model.present_image, (w * torch.stack([s_t, s_v], dim=-1)).sum(-1), s_t)
        got[alpha] = model.score_items(u, rows)
        torch.testing.assert_close(got[alpha][:, 1:], expected[:, 1:])
    assert (got[0.0][:, 0] == -1).all()
    assert not torch.allclose(got[4.0], got[-4.0]) and not torch.allclose(got[0.0], got[4.0])
    trans = small_model("missrec", tiny_world, extra=["model.mode=transductive"])
    u, rows = trans.encode(batch), trans.item_embeddings()
    s_id = u @ rows[:, 2 * D : 3 * D].T
    inductive_part = MISSRec.score_items(trans, u, rows) * 3 - s_id  # = 2 * fused
    trans.item_id_emb = None  # the same model scored without its ID term
    torch.testing.assert_close(inductive_part[:, 1:] / 2, trans.score_items(u, rows[:, list(range(2 * D)) + [-2, -1]])[:, 1:])


def test_interest_tokens_change_what_is_scored(tiny_world):
    _, model = _build(tiny_world)
    model.discover_interests()
    batch = random_batch(tiny_world, lengths=(6, 3, 8))
    rows = model.item_embeddings()
    base = model.score_items(model.encode(batch), rows)
    model.interest_centroids[1:] = model.interest_centroids[1:].roll(1, dims=0)  # other interest vectors
    assert not torch.allclose(base, model.score_items(model.encode(batch), rows), atol=1e-4)
    model.interest_centroids[1:] = model.interest_centroids[1:].roll(-1, dims=0)
    torch.testing.assert_close(base, model.score_items(model.encode(batch), rows))
    model.interest_of_text[batch.item_seq[0, 0]] = 0  # one item loses its text interest: that row changes
    changed = model.score_items(model.encode(batch), rows)
    assert not torch.allclose(base[0], changed[0], atol=1e-5)


def test_padding_invariance_and_save_load_with_interests(tiny_world, tmp_path):
    from safetensors.torch import load_model, save_model

    _, model = _build(tiny_world)
    model.discover_interests()
    batch = random_batch(tiny_world, lengths=(3, 5))
    trimmed = SeqBatch(batch.item_seq[:, :5], batch.seq_len)
    padded = SeqBatch(torch.nn.functional.pad(trimmed.item_seq, (0, 4)), batch.seq_len)
    torch.testing.assert_close(model.encode(trimmed), model.encode(padded))
    save_model(model, str(tmp_path / "m.safetensors"))
    _, other = _build(tiny_world, seed=1)
    load_model(other, str(tmp_path / "m.safetensors"))
    assert len(other.discoveries) == 0  # loading restores the saved interests, it does not re-cluster
    assert torch.equal(model.score_items(model.encode(batch), model.item_embeddings()),
                       other.score_items(other.encode(batch), other.item_embeddings()))


@pytest.mark.parametrize("noise", [0.05, 1.0])
def test_learns_the_planted_pattern_far_above_chance_and_not_from_noise(noise):
    ds = make_domain("kitchen", WorldSpec(n_items=60, n_users=300, min_len=5, max_len=12, noise=noise), seed=2)
    cfg, model = _build(ds, ["model.mode=inductive", "train.epochs=16", "train.patience=16", "train.lr=0.01"])
    train_b, valid_b, test_b = make_batchers(ds, cfg, "cpu")
    result = fit(model, train_b, valid_b, test_b, cfg, quiet=True)
    recall, chance = result.test["recall@10"], 10 / ds.n_items
    if noise < 1:
        assert recall > 3 * chance  # measured 0.65 with chance 0.17 (UniSRec on these features: 0.49 in 20 epochs)
    else:
        assert recall < 1.6 * chance  # measured 0.20: uniform sequences hold nothing to learn


def test_text_only_from_embeddings_and_image_only_are_configurations(tiny_world):
    inputs = item_inputs("missrec", tiny_world)
    text_cfg = load_config(model="missrec", overrides=["model.text_feature=embeddings", 'model.image_feature=""', "model.hidden_size=16"])
    assert item_input_kinds(MISSRec, text_cfg.model_config) == ("text_embeddings",)
    text_only = build_model(text_cfg, ItemInputs(n_items=tiny_world.n_items, text_embeddings=inputs.text_embeddings))
    image_cfg = load_config(model="missrec", overrides=['model.text_feature=""', "model.hidden_size=16"])
    assert item_input_kinds(MISSRec, image_cfg.model_config) == ("features",)
    image_only = build_model(image_cfg, ItemInputs(n_items=tiny_world.n_items, features={"feat3CLS": inputs.features["feat3CLS"]}))
    assert text_only.modalities == ("text",) and image_only.modalities == ("image",)
    batch = random_batch(tiny_world)
    for model in (text_only, image_only):
        model.discover_interests()
        assert model.score_items(model.encode(batch), model.item_embeddings()).shape == (4, tiny_world.n_items + 1)
    with pytest.raises(Exception, match="data.features"):
        build_model(load_config(model="missrec"), ItemInputs(n_items=tiny_world.n_items, features={"other": inputs.features["feat1CLS"]}))


def test_pretrain_loss_and_fine_tuning_phases(tiny_world):
    model = small_model("missrec", tiny_world).train()
    model.discover_interests(model.cfg.pretrain_interest_ratio)
    assert int(model.interest_count) == math.ceil(0.02 * int(model.present_text.sum() + model.present_image.sum()))
    torch.manual_seed(0)
    loss = model.pretrain_loss(random_batch(tiny_world, lengths=(9, 7, 9, 4)))
    loss.backward()
    assert torch.isfinite(loss) and model.adaptors["image"].weight.grad.abs().sum() > 0
    (pt,) = model.phases("pretrain")
    assert pt.loss == model.pretrain_loss and pt.on_epoch_start is not None
    (ft,) = model.phases("finetune")
    ft.trainable(model)
    frozen = {n.split(".")[0] for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {"pos_emb", "encoder", "encoder_norm", "decoder", "decoder_norm"}
    open_ft = small_model("missrec", tiny_world, extra=["model.freeze_encoder=false"])
    open_ft.phases("finetune")[0].trainable(open_ft)
    assert all(p.requires_grad for p in open_ft.parameters())
    ablation = small_model("missrec", tiny_world, extra=["model.interest_tokens=false"])
    assert ablation.encoder is None and ablation.phases("train")[0].on_epoch_start is None


def _with_new_items(inputs: ItemInputs, n_new: int) -> ItemInputs:
    """``inputs`` and ``n_new`` brand-new items, each a nudged copy of an old item's rows; the last has no image row."""
    g = torch.Generator().manual_seed(5)
    grow = lambda v: torch.cat([v, v[1 : n_new + 1] + 0.05 * torch.randn(n_new, v.shape[1], generator=g)])  # noqa: E731
    features = {}
    for name, t in inputs.features.items():
        values, present = grow(t.values), torch.cat([t.present, torch.ones(n_new, dtype=torch.bool)])
        if name == "feat3CLS":
            values[-1], present[-1] = 0.0, False
        features[name] = FeatureTable(values, present)
    return ItemInputs(n_items=inputs.n_items + n_new, text_embeddings=grow(inputs.text_embeddings), features=features)


# (overrides, world_features keywords): with every text and image row present K = N, so the centroid table has
# n_items + 1 rows and looks like a per-item table by its shape alone
GROWN = {"text-and-image-all-present": ([], {"absent_every": 10**6}),
         "text-embeddings": (["model.text_feature=embeddings", 'model.image_feature=""'], {})}


@pytest.mark.parametrize("extra, world_kw", GROWN.values(), ids=GROWN.keys())
@torch.no_grad()
def test_a_grown_catalogue_keeps_the_trained_interests_and_gives_new_rows_the_nearest(tiny_world, extra, world_kw):
    from textrec.serve.catalogue import _carry_state

    cfg = load_config(model="missrec", overrides=SMALL + extra)
    torch.manual_seed(0)
    inputs = world_inputs(tiny_world, **world_kw)
    old = build_model(cfg, inputs).eval()
    old.discover_interests()
    n, n_new, k = tiny_world.n_items, 3, int(old.interest_count)
    if len(old.modalities) == 2:
        assert k == n and old.interest_centroids.shape[0] == n + 1  # the shape trap
    new = build_model(cfg, _with_new_items(inputs, n_new)).eval()
    _carry_state(old, new, n_new)
    assert len(new.discoveries) == 0 and int(new.interest_count) == k
    assert torch.equal(new.interest_centroids, old.interest_centroids)  # their number too: the checkpoint's
    for m in old.modalities:
        lookup, present = getattr(new, f"interest_of_{m}"), getattr(new, f"present_{m}")
        assert torch.equal(lookup[: n + 1], getattr(old, f"interest_of_{m}"))  # every trained cluster id unchanged
        rows = old.adaptors[m](getattr(new, f"feature_{m}")[n + 1 :])  # (n_new, D) under the trained adaptor
        nearest = torch.cdist(rows, old.interest_centroids[1 : k + 1]).argmin(dim=1) + 1
        assert torch.equal(lookup[n + 1 :], torch.where(present[n + 1 :], nearest, 0))
        assert bool(present[n + 1 :].any())
    batch = random_batch(tiny_world)  # histories of old items score the old items exactly as the trained model does
    torch.testing.assert_close(new.score_items(new.encode(batch), new.item_embeddings())[:, : n + 1],
                               old.score_items(old.encode(batch), old.item_embeddings()))


def test_cli_trains_evaluates_and_recommends_on_two_feature_tables(tmp_path, capsys):
    ds = make_domain("garden", WorldSpec(n_items=40, n_users=120, min_len=5, max_len=10, noise=0.1), seed=3)
    text, image = world_features(ds)
    ds.features.update(feat1CLS=text, feat3CLS=image)
    ds.save(tmp_path / "data")
    assert main(["info", str(tmp_path / "data"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["features"]["feat3CLS"] == {"dim": 24, "items_present": ds.n_items - ds.n_items // 7}
    run = tmp_path / "run"
    argv = ["train", str(tmp_path / "data"), "--model", "missrec", "--out", str(run), "--quiet", 'data.features=["feat1CLS","feat3CLS"]',
            "model.hidden_size=16", "model.n_heads=2", "model.inner_size=16", "train.epochs=2", "train.batch_size=128",
            "train.device=cpu", "train.num_threads=1"]
    assert main(argv) == 0
    assert json.loads((run / "config.json").read_text())["item_inputs"]["features"] == ["feat1CLS", "feat3CLS"]
    capsys.readouterr()
    assert main(["evaluate", str(run), "--json"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    metrics = json.loads((run / "metrics.json").read_text())
    assert evaluated["split"] == "test" and evaluated["recall@10"] == pytest.approx(metrics["test"]["recall@10"])
    assert main(["recommend", str(run), "--items", f"{ds.item_keys[0]},{ds.item_keys[1]}", "-k", "3", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["recommendations"]) == 3


def test_the_multimodal_scientific_subset_loads_unchanged_with_both_modalities(tmp_path):
    from conftest import requires_shared
    from textrec.data.dataset import Dataset

    source = requires_shared("amazon-scientific-mm-decorec")
    assert main(["prepare", str(source), "--format", "unisrec", "--out", str(tmp_path / "mm")]) == 0
    ds = Dataset.load(tmp_path / "mm")
    stats = ds.statistics()
    assert (stats["users"], stats["items"], stats["interactions"]) == (2928, 1585, 19712)
    assert stats["features"] == {"feat1CLS": {"dim": 512, "items_present": 1585}, "feat3CLS": {"dim": 512, "items_present": 1585}}
    raw = np.fromfile(source / "Scientific.feat3CLS", dtype=np.float32).reshape(-1, 512)
    np.testing.assert_array_equal(ds.features["feat3CLS"][1:], raw)  # item ids follow the .item2index order


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    """(dataset, run) of MISSRec on the text embeddings of a world without feature tables (``textrec encode``)."""
    tmp = tmp_path_factory.mktemp("text-run")
    ds = make_domain("office", WorldSpec(n_items=40, n_users=120, min_len=5, max_len=10, noise=0.1), seed=4)
    ds.save(tmp / "data")
    assert main(["encode", str(tmp / "data"), "--encoder", "hashing-32", "--json"]) == 0
    run = tmp / "run"
    assert main(["train", str(tmp / "data"), "--model", "missrec", "--out", str(run), "--quiet", "model.text_feature=embeddings",
                 "model.image_feature=", "model.hidden_size=16", "model.n_heads=2", "model.inner_size=16", "train.epochs=2",
                 "train.batch_size=128", "train.device=cpu", "train.num_threads=1"]) == 0
    return ds, run


def test_cli_text_only_from_the_text_embeddings_scores_new_items_by_their_text(text_run, tmp_path, capsys):
    ds, run = text_run
    record = json.loads((run / "config.json").read_text())["item_inputs"]
    assert record["embeddings"] == ["hashing-32-mean"] and "features" not in record
    new = tmp_path / "new.csv"
    new.write_text(f"item,text\nNEW1,{ds.item_texts[0]}\n", encoding="utf-8")
    capsys.readouterr()
    assert main(["recommend", str(run), "--items", ds.item_keys[1], "-k", "3", "--new-items", str(new), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["recommendations"]) == 3 and out["new_items"][0]["item"] == "NEW1" and out["new_items"][0]["rank"] >= 1


def test_recommending_with_new_items_keeps_the_trained_interests_without_kmeans_or_a_seed(text_run, tmp_path, capsys, monkeypatch):
    import faiss

    ds, run = text_run
    new = tmp_path / "new.csv"
    new.write_text(f"item,text\nNEW1,{ds.item_texts[0]}\nNEW2,{ds.item_texts[5]} with a lid\n", encoding="utf-8")
    argv = ["recommend", str(run), "--items", ",".join(ds.item_keys[1:4]), "-k", str(ds.n_items + 2), "--json"]
    capsys.readouterr()
    assert main(argv) == 0
    trained = {r["item"]: r["score"] for r in json.loads(capsys.readouterr().out)["recommendations"]}

    def no_kmeans(*args, **kwargs):
        raise AssertionError("k-means ran while new items were added")

    monkeypatch.setattr(faiss, "Kmeans", no_kmeans)
    seed = torch.manual_seed
    monkeypatch.setattr(torch, "manual_seed", lambda s: torch.default_generator)  # no fixed seed may make calls agree
    outs = []
    for s in (1, 2):
        seed(s)  # another random state before each call
        assert main(argv + ["--new-items", str(new)]) == 0
        outs.append(json.loads(capsys.readouterr().out))
    assert outs[0] == outs[1] and [r["item"] for r in outs[0]["new_items"]] == ["NEW1", "NEW2"]
    grown = {r["item"]: r["score"] for r in outs[0]["recommendations"]}
    assert grown.keys() - trained.keys() == {"NEW1", "NEW2"}
    assert all(grown[key] == pytest.approx(score, abs=1e-6) for key, score in trained.items())  # old items as trained
