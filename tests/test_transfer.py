"""Transfer (textrec.train.transfer): pre-training, fine-tuning and what carries over between catalogues."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_model

from doubles import CPU, MAX_SEQ_LEN, SMALL, TINY_TEXT, TRANSDUCTIVE, item_inputs
from textrec.config import load_config
from textrec.data.synthetic import WorldSpec, make_domain
from textrec.models.spec import spec_of
from textrec.text.encode import encode_dataset
from textrec.train.inputs import build_model
from textrec.train.run import load_run, train_run
from textrec.train.transfer import (
    finetune_config,
    finetune_run,
    load_pretrained,
    pretrain_run,
)


def _inputs_of_another_catalogue(name, ds):
    other = item_inputs(name, ds)
    noise = torch.randn(other.text_embeddings.shape, generator=torch.Generator().manual_seed(1))
    other.text_embeddings = other.text_embeddings + 0.5 * noise
    other.codes = (other.codes + 3) % other.codebook_size
    return other


@pytest.mark.parametrize("name", ["unisrec", "vqrec"])
def test_transfer_leaves_the_catalogue_keys_behind(name, tiny_world, tmp_path):
    cfg = load_config(model=name, overrides=SMALL[name] + [f"data.max_seq_len={MAX_SEQ_LEN}", *TRANSDUCTIVE])
    torch.manual_seed(1)
    source = build_model(cfg, _inputs_of_another_catalogue(name, tiny_world))
    with torch.no_grad():
        source.item_id_emb.weight.normal_()
    (tmp_path / "pre").mkdir()
    save_model(source, str(tmp_path / "pre" / "model.safetensors"))
    torch.manual_seed(0)
    target = build_model(cfg, item_inputs(name, tiny_world))
    own = {k: v.clone() for k, v in target.state_dict().items()}
    assert load_pretrained(target, tmp_path / "pre") == []
    src, now = source.state_dict(), target.state_dict()
    catalogue = {k for k in now if k.startswith(spec_of(target).catalogue_keys)}
    assert {"item_id_emb.weight", "text_table" if name == "unisrec" else "code_index"} <= catalogue
    for k in now:
        if k in catalogue:
            assert torch.equal(now[k], own[k]), f"{k} was carried over"
            assert k == "permuting" or not torch.equal(src[k], own[k])  # so the check means something
        else:
            assert torch.equal(now[k], src[k]), f"{k} was not transferred"


@pytest.fixture(scope="module")
def encoded(tmp_path_factory):
    """Three small domains with hashing-32 text embeddings and their 15% word-drop view."""
    root = tmp_path_factory.mktemp("encoded")
    dirs = {}
    for i, domain in enumerate(("tools", "kitchen", "garden")):
        path = root / domain
        make_domain(domain, WorldSpec(n_items=40, n_users=120, min_len=5, max_len=12), seed=10 + i).save(path)
        encode_dataset(path, "hashing-32", progress=False)
        encode_dataset(path, "hashing-32", word_drop=0.15, progress=False)
        dirs[domain] = path
    return dirs


@pytest.mark.parametrize("name", ["unisrec", "vqrec"])
def test_new_items_get_zero_id_rows(name, encoded, tmp_path):
    from textrec.serve.catalogue import add_items

    data = encoded["tools"]
    extra = []
    if name == "vqrec":
        pytest.importorskip("faiss", reason="VQ-Rec codes for new items need the quantiser (faiss)")
        from textrec.quant.codes import quantize_dataset

        result = quantize_dataset(data, embeddings="hashing-32-mean", n_codebooks=4, codebook_size=16, opq_iterations=5)
        extra = [f"data.codes={result.name}"]
    cfg = load_config(model=name, overrides=[*TINY_TEXT, *TRANSDUCTIVE, "train.epochs=1", *extra])
    train_run(data, cfg, tmp_path / "run", quiet=True)
    run = load_run(tmp_path / "run", device="cpu")
    grown = add_items(run, ["NEW-1", "NEW-2"], ["Zorblat orange bamboo hammer, vintage style.", "Zorblat blue glass saw."])
    old, new = run.model.item_id_emb.weight, grown.model.item_id_emb.weight
    assert new.shape[0] == old.shape[0] + 2
    assert torch.equal(new[: old.shape[0]], old) and torch.equal(new[old.shape[0]:], torch.zeros(2, new.shape[1]))
    assert old[1:].abs().sum() > 0  # trained rows are not zero, so zero rows mean something


# ---- UniSRec pre-train -> fine-tune ------------------------------------------------------------------
def test_unisrec_pretrain_then_finetune_keeps_the_frozen_encoder(encoded, tmp_path):
    cfg = load_config(model="unisrec", overrides=[*TINY_TEXT, "model.n_experts=2", "train.epochs=2",
                                                  "model.item_drop_coefficient=0.5"])
    pre = tmp_path / "pre"
    pretrain_run([encoded["tools"], encoded["kitchen"]], cfg, pre, quiet=True)
    record = json.loads((pre / "config.json").read_text())["item_inputs"]
    assert record["word_drop_embeddings"] == "hashing-32-mean-wd15"
    assert record["embeddings"] == ["hashing-32-mean", "hashing-32-mean"]
    ft_cfg = finetune_config(pre, ["train.epochs=2", "train.batch_size=256", "data.max_seq_len=10", "train.lr=0.01", *CPU])
    assert ft_cfg.model_config.freeze_encoder
    ft = tmp_path / "ft"
    finetune_run(encoded["garden"], pre, ft_cfg, ft, quiet=True)
    before = load_file(pre / "model.safetensors")
    for after in (load_file(ft / "model.safetensors"), torch.load(ft / "state.pt")["model"]):
        frozen = [k for k in before if k.startswith(("pos_emb.", "encoder."))]
        assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)
        assert not torch.equal(before["adaptor.weight"], after["adaptor.weight"])  # the rest did train
