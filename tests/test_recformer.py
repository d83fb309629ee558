"""Recformer: item sentences, tokenisation as the reference, the Longformer attention pattern, backbones,
save -> load, whole-word masking, learning (with a negative control) and the two fine-tuning stages."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, load_model, save_model

from conftest import requires_shared
from textrec.cli import main
from textrec.config import load_config
from textrec.data.batching import SeqBatch
from textrec.data.dataset import Dataset
from textrec.data.sentences import (infer_root_category, item_attributes, ordered_attributes, sentence, split_flat_text,
                                    tokenize_items)
from textrec.data.synthetic import WorldSpec, make_domain
from textrec.errors import ConfigError
from textrec.models.recformer import Recformer, backbone_state
from textrec.models.spec import ItemInputs
from textrec.text.encoders import default_encoder_path
from textrec.train.inputs import build_model

TINY = ["model.backbone=random", "model.hidden_size=32", "model.n_heads=2", "model.inner_size=37", "model.n_layers=2"]
CPU = ["train.device=cpu", "train.num_threads=1", "eval.ks=[10]"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: one thread beats two contending ones


@pytest.fixture(scope="module")
def tok():
    from textrec.models.recformer import _tokenizer

    return _tokenizer(str(default_encoder_path()))


def ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def build(attributes, *overrides, seed=0) -> Recformer:
    cfg = load_config(model="recformer", overrides=[*TINY, *overrides])
    torch.manual_seed(seed)
    return build_model(cfg, ItemInputs(n_items=len(attributes), attributes=list(attributes))).eval()


# ---- 1. item attributes and sentences -------------------------------------------------------------
def test_attributes_in_reference_order_flattened_and_cut():
    attrs = {"size": "L", "category": ["Tools", "Hand Tools"], "colour": None, "brand": "", "title": " Red hammer "}
    assert ordered_attributes(attrs) == [("title", "Red hammer"), ("category", "Tools Hand Tools"), ("size", "L")]
    assert ordered_attributes({**attrs, "brand": "Acme"}, max_attr_num=3) == [
        ("title", "Red hammer"), ("brand", "Acme"), ("category", "Tools Hand Tools")]
    assert sentence({"brand": "Acme", "title": "Red hammer"}) == "title Red hammer brand Acme"


ROOT = "Industrial & Scientific"


@pytest.mark.parametrize("text, expected", [
    ("Wall Jack, Red. Industrial & Scientific Jacks. Qualcraft. ",
     {"title": "Wall Jack, Red", "category": "Industrial & Scientific Jacks", "brand": "Qualcraft"}),
    ("24 Oz. Sprayer Bottles. Industrial & Scientific Lab Bottles. Continental. ",  # ". " inside the title
     {"title": "24 Oz. Sprayer Bottles", "category": "Industrial & Scientific Lab Bottles", "brand": "Continental"}),
    ("Glazing Tape. Industrial & Scientific Tapes. J.V. Converting. ",  # ". " inside the brand
     {"title": "Glazing Tape", "category": "Industrial & Scientific Tapes", "brand": "J.V. Converting"}),
    ("Pruner, 12 oz. (Pack of 1). . Hydrofarm. ", {"title": "Pruner, 12 oz. (Pack of 1)", "brand": "Hydrofarm"}),  # no category
    ("Tinned Lugs. Industrial & Scientific Terminals. . ", {"title": "Tinned Lugs", "category": "Industrial & Scientific Terminals"}),
    ("Protective Eyewear. . . ", {"title": "Protective Eyewear"}),
    ("A lone title", {"title": "A lone title"}),
])
def test_split_flat_unisrec_text(text, expected):
    assert split_flat_text(text, ROOT) == expected


def test_split_without_root_and_root_inference():
    assert split_flat_text("T. C. B. ", None) == {"title": "T", "category": "C", "brand": "B"}
    assert split_flat_text("T. B. ", None) == {"title": "T", "brand": "B"}
    assert split_flat_text("a. b. c. d. ", None) == {"text": "a. b. c. d."}  # cannot be attributed
    kinds = ("Lab Supplies", "Tapes", "Fasteners Nuts")
    texts = [f"Item {i}. Industrial & Scientific {kinds[i % 3]}. Brand{i}. " for i in range(10)] + ["odd. text. "]
    assert infer_root_category(texts) == "Industrial & Scientific"
    assert infer_root_category(["only one. segment"]) is None


def _dataset(texts, attributes=None, source=None) -> Dataset:
    return Dataset.from_sequences("d", [f"i{k}" for k in range(len(texts))], texts, ["u0"], [[1, 2, 1]],
                                  item_attributes=attributes, meta={"source": source or {}})


def test_item_attributes_from_each_kind_of_dataset():
    flat = _dataset(["T1. Industrial & Scientific A. B1. ", "T2. Industrial & Scientific B. B2. ", "x y"],
                    source={"format": "unisrec"})
    assert item_attributes(flat)[:2] == [{"title": "T1", "category": "Industrial & Scientific A", "brand": "B1"},
                                         {"title": "T2", "category": "Industrial & Scientific B", "brand": "B2"}]
    table = _dataset(["Red hammer", "Saw"], [{"colour": "red"}, {}], source={"format": "csv", "columns": {"text": "title"}})
    assert item_attributes(table) == [{"title": "Red hammer", "colour": "red"}, {"title": "Saw"}]
    plain = _dataset(["Red hammer", "Saw"], [{"title": "Red hammer", "brand": "Acme"}, {}], source={"format": "amazon2018"})
    assert item_attributes(plain) == [{"title": "Red hammer", "brand": "Acme"}, {"text": "Saw"}]
    assert item_attributes(_dataset(["Red hammer", "Saw"])) == [{"text": "Red hammer"}, {"text": "Saw"}]


def test_scientific_texts_split_into_fields():
    folder = requires_shared("amazon-scientific-unisrec")
    lines = (folder / "Scientific.text").read_text(encoding="utf-8").splitlines()[1:]
    texts = [line.split("\t", 1)[1] for line in lines]
    root = infer_root_category(texts)
    assert root == ROOT
    fields = [split_flat_text(t, root) for t in texts]
    assert sum("title" in f for f in fields) == len(texts)  # every item keeps its title
    assert sum(set(f) == {"title", "category", "brand"} for f in fields) > 0.95 * len(texts)
    assert all(not f.get("category") or f["category"].startswith(root) for f in fields)


def test_info_prints_an_items_sentence(tmp_path, capsys):
    ds = make_domain("tools", WorldSpec(n_items=12, n_users=10), seed=0)
    ds.save(tmp_path / "d")
    assert main(["info", str(tmp_path / "d"), "--item", "tools-00003", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    attrs = ds.item_attributes[3]
    assert info["id"] == 4 and info["attributes"] == attrs
    assert info["sentence"] == f"title {attrs['title']} brand {attrs['brand']} category {attrs['category']}"
    assert main(["info", str(tmp_path / "d"), "--item", "tools-00003", "--max-attr-num", "1"]) == 0
    assert "not read    brand, category" in capsys.readouterr().out
    assert main(["info", str(tmp_path / "d"), "--item", "nope"]) == 2


# ---- 2. tokenisation ------------------------------------------------------------------------------
ITEMS = [{"title": "red hammer", "brand": "acme"}, {"title": "blue unaffable saw"}, {"category": "tools", "title": "green"}]


def test_item_tokens_hand_built(tok):
    t = tokenize_items(ITEMS, tok)
    title, brand, category = ids(tok, "title"), ids(tok, "brand"), ids(tok, "category")
    first = title + ids(tok, "red hammer") + brand + ids(tok, "acme")
    assert t.item(1) == (first, [1] * len(title) + [2] * 2 + [1] * len(brand) + [2] * len(ids(tok, "acme")))
    assert t.item(3)[0] == title + ids(tok, "green") + category + ids(tok, "tools")  # title before category
    assert t.item(0) == ([], [])
    unaffable = ids(tok, "unaffable")
    assert len(unaffable) > 1  # a word of several pieces: one word start
    starts = t.word_starts[t.offsets[2] : t.offsets[3]].tolist()
    assert starts == [True] * (len(title) + 1) + [True] + [False] * (len(unaffable) - 1) + [True]
    blocks = tokenize_items(ITEMS, tok, block=2)  # tokenised two items at a time: the same table
    assert all(np.array_equal(getattr(t, f), getattr(blocks, f)) for f in ("token_ids", "token_types", "word_starts", "offsets"))
    cut = tokenize_items(ITEMS, tok, max_attr_num=1, max_attr_length=2)  # key + value cut together
    assert cut.item(1) == (title + ids(tok, "red"), [1, 2]) and cut.item(2)[0] == title + ids(tok, "blue")


def reference_encode(sequence: list[int], table, max_item_embeddings: int, max_token_num: int, bos: int):
    """recformer/tokenization.py ``encode`` (items oldest first), transcribed: ids, item positions, types."""
    items = sequence[::-1][: max_item_embeddings - 1]
    input_ids, item_position_ids, token_type_ids = [bos], [0], [0]
    for item_idx, item in enumerate(items):
        item_ids, item_types = table.item(item)
        input_ids += item_ids
        token_type_ids += item_types
        item_position_ids += [item_idx + 1] * len(item_ids)
    return input_ids[:max_token_num], item_position_ids[:max_token_num], token_type_ids[:max_token_num]


def test_sequence_tokens_hand_built(tok):
    model = build(ITEMS)
    t = tokenize_items(ITEMS, tok)
    rows = model.sequence_tokens(torch.tensor([[1, 2], [3, 0]]), torch.tensor([2, 1]))
    n2, n1, n3 = (len(t.item(i)[0]) for i in (2, 1, 3))
    assert rows.ids[0].tolist() == [tok.cls_token_id] + t.item(2)[0] + t.item(1)[0]  # most recent first
    assert rows.item_pos[0].tolist() == [0] + [1] * n2 + [2] * n1
    assert rows.types[0].tolist() == [0] + t.item(2)[1] + t.item(1)[1]
    pad = n2 + n1 - n3
    assert rows.ids[1].tolist() == [tok.cls_token_id] + t.item(3)[0] + [tok.pad_token_id] * pad
    assert rows.item_pos[1].tolist() == [0] + [1] * n3 + [50] * pad and rows.types[1].tolist()[-pad:] == [3] * pad
    assert rows.real[1].tolist() == [True] * (1 + n3) + [False] * pad
    assert not rows.word_starts[:, 0].any()


@pytest.mark.parametrize("max_items, max_tokens", [(51, 512), (3, 512), (51, 11), (4, 17)])
def test_sequence_tokens_match_the_reference_encoder(tok, tiny_world, max_items, max_tokens):
    attrs = tiny_world.item_attributes
    model = build(attrs, f"model.max_item_embeddings={max_items}", f"model.max_token_num={max_tokens}")
    table = tokenize_items(attrs, tok)
    g = torch.Generator().manual_seed(0)
    lengths = [1, 2, 5, 9]
    seq = torch.zeros(4, 9, dtype=torch.long)
    for r, n in enumerate(lengths):
        seq[r, :n] = torch.randint(1, tiny_world.n_items + 1, (n,), generator=g)
    rows = model.sequence_tokens(seq, torch.tensor(lengths))
    for r, n in enumerate(lengths):
        want_ids, want_pos, want_types = reference_encode(seq[r, :n].tolist(), table, max_items, max_tokens, tok.cls_token_id)
        pad = rows.ids.shape[1] - len(want_ids)
        assert rows.ids[r].tolist() == want_ids + [tok.pad_token_id] * pad
        assert rows.item_pos[r].tolist() == want_pos + [max_items - 1] * pad
        assert rows.types[r].tolist() == want_types + [3] * pad
    assert rows.ids.shape[1] <= max_tokens


# ---- 3. attention pattern and backbones -------------------------------------------------------------
def _layer(window: int, seed: int = 0):
    cfg = load_config(model="recformer", overrides=[*TINY, f"model.attention_window={window}", "model.hidden_dropout=0",
                                                    "model.attn_dropout=0"]).model_config
    torch.manual_seed(seed)
    model = Recformer(cfg, ItemInputs(n_items=1, attributes=[{"text": "x"}]), 5)
    return model, model.layers[0]


def test_local_window_and_global_s_in_one_layer():
    model, layer = _layer(window=4)  # each token sees 2 on either side, and <s>
    real = torch.ones(1, 12, dtype=torch.bool)
    real[0, 11] = False
    h = torch.randn(1, 12, 32)
    mask = model.attention_mask(real)
    out = layer(h, mask, real)
    far = h.clone()
    far[0, 9] += 3.0  # outside the window of token 3
    changed = layer(far, mask, real)
    torch.testing.assert_close(changed[0, 1:7], out[0, 1:7])
    assert not torch.allclose(changed[0, 0], out[0, 0])  # <s> sees every token
    assert not torch.allclose(changed[0, 7], out[0, 7])  # within 2 of token 9
    padded = h.clone()
    padded[0, 11] += 3.0  # padding is seen by nobody
    torch.testing.assert_close(layer(padded, mask, real)[0, :11], out[0, :11])
    first = h.clone()
    first[0, 0] += 3.0  # every token sees <s>
    assert not torch.allclose(layer(first, mask, real)[0, 10], out[0, 10])


def test_layer_equals_transformers_longformer_layer():
    from transformers import LongformerConfig
    from transformers.models.longformer.modeling_longformer import LongformerLayer

    model, layer = _layer(window=4)
    lf = LongformerLayer(LongformerConfig(hidden_size=32, num_attention_heads=2, intermediate_size=37, attention_window=[4],
                                          hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)).eval()
    with torch.no_grad():
        for p in lf.parameters():
            p.normal_(0, 0.3)
    state = backbone_state({f"encoder.layer.0.{k}": v for k, v in lf.state_dict().items()}, 1)
    layer.load_state_dict({k.removeprefix("layers.0."): v for k, v in state.items()})
    real = torch.ones(2, 16, dtype=torch.bool)
    real[1, 10:] = False
    h = torch.randn(2, 16, 32)
    lf_mask = torch.where(real, 0.0, -10000.0)
    lf_mask[:, 0] = 10000.0  # global attention on <s>
    want = lf(h, attention_mask=lf_mask, is_index_masked=lf_mask < 0, is_index_global_attn=lf_mask > 0, is_global_attn=True)[0]
    got = layer(h, model.attention_mask(real), real)
    torch.testing.assert_close(got[real], want[real], atol=1e-5, rtol=1e-4)


def test_minilm_backbone_initialises_words_and_layers(tiny_world):
    from safetensors.torch import load_file as read

    cfg = load_config(model="recformer", overrides=["model.n_layers=1"])
    model = build_model(cfg, ItemInputs(n_items=tiny_world.n_items, attributes=tiny_world.item_attributes))
    minilm = read(str(default_encoder_path() / "model.safetensors"))
    prefix = "" if "embeddings.word_embeddings.weight" in minilm else "bert."
    assert torch.equal(model.embeddings.word_embeddings.weight, minilm[prefix + "embeddings.word_embeddings.weight"])
    query = model.layers[0].attention.self.query.weight
    assert torch.equal(query, minilm[prefix + "encoder.layer.0.attention.self.query.weight"])
    assert torch.equal(model.layers[0].global_query.weight, query)  # global projections start equal to the local ones
    assert len(model.layers) == 1 and model.embeddings.token_type_embeddings.weight.shape == (4, 384)
    assert model.item_position_embeddings.weight.shape == (51, 384)
    with pytest.raises(ConfigError, match="positions"):
        build_model(load_config(model="recformer", overrides=["model.n_layers=1", "model.max_token_num=600"]),
                    ItemInputs(n_items=tiny_world.n_items, attributes=tiny_world.item_attributes))


def test_new_tables_from_the_backbone_make_an_item_alone_minilms_encoding(tiny_world):
    """``new_tables="backbone"``: before training, an item encoded alone is exactly MiniLM's encoding of its tokens."""
    from transformers import BertModel

    attrs, overrides = tiny_world.item_attributes, ["model.n_layers=1", "model.max_attr_length=8"]
    ours = build_model(load_config(model="recformer", overrides=[*overrides, "model.new_tables=backbone"]),
                       ItemInputs(n_items=len(attrs), attributes=attrs)).eval()
    bert = BertModel.from_pretrained(str(default_encoder_path()), num_hidden_layers=1, add_pooling_layer=False).eval()
    rows = ours.item_tokens(torch.arange(1, 6))
    with torch.no_grad():
        want = bert(input_ids=rows.ids, attention_mask=rows.real.long(), token_type_ids=torch.zeros_like(rows.ids)).last_hidden_state
        torch.testing.assert_close(ours.hidden(rows)[rows.real], want[rows.real], atol=1e-5, rtol=1e-4)
        reference = build_model(load_config(model="recformer", overrides=overrides),
                                ItemInputs(n_items=len(attrs), attributes=attrs)).eval()  # random new tables
        assert not torch.allclose(reference.hidden(rows)[rows.real], want[rows.real], atol=1e-2)
    with pytest.raises(ConfigError, match="model.new_tables"):
        build(attrs, "model.new_tables=zeros")


def test_local_longformer_folder_gives_longformers_outputs(tmp_path, tok, tiny_world):
    from transformers import LongformerConfig, LongformerForMaskedLM

    config = LongformerConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
                              attention_window=[8, 8], max_position_embeddings=130, pad_token_id=tok.pad_token_id,
                              hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, type_vocab_size=1)
    torch.manual_seed(0)
    lf = LongformerForMaskedLM(config).eval()
    with torch.no_grad():
        for name, p in lf.named_parameters():
            if "global" in name:
                p.normal_(0, 0.1)  # global projections that differ from the local ones
        lf.longformer.embeddings.token_type_embeddings.weight.zero_()
    lf.save_pretrained(tmp_path / "lf")
    tok.save_pretrained(tmp_path / "lf")
    model = build(tiny_world.item_attributes, f"model.backbone={tmp_path / 'lf'}", "model.hidden_size=0", "model.n_heads=0",
                  "model.inner_size=0", "model.n_layers=0", "model.attention_window=8", "model.max_token_num=120")
    assert torch.equal(model.layers[1].global_key.weight, lf.longformer.encoder.layer[1].attention.self.key_global.weight)
    assert torch.equal(model.lm_head.transform.dense.weight, lf.lm_head.dense.weight)
    with torch.no_grad():  # without the new tables the model is that Longformer
        model.embeddings.token_type_embeddings.weight.zero_()
        model.item_position_embeddings.weight.zero_()
    rows = model.sequence_tokens(torch.tensor([[1, 2, 3, 4, 5], [6, 7, 0, 0, 0]]), torch.tensor([5, 2]))
    assert rows.ids.shape[1] > 16  # longer than the window
    global_attention = torch.zeros_like(rows.ids)
    global_attention[:, 0] = 1
    want = lf.longformer(input_ids=rows.ids, attention_mask=rows.real.long(), global_attention_mask=global_attention).last_hidden_state
    with torch.no_grad():
        torch.testing.assert_close(model.hidden(rows)[rows.real], want[rows.real], atol=1e-5, rtol=1e-4)


def test_backbone_state_maps_longformer_and_bert_names():
    raw = {"longformer.embeddings.word_embeddings.weight": 1, "longformer.embeddings.token_type_embeddings.weight": 2,
           "longformer.encoder.layer.0.attention.self.query_global.weight": 3,
           "longformer.encoder.layer.0.attention.self.query.weight": 4, "longformer.encoder.layer.5.output.dense.bias": 5,
           "lm_head.dense.weight": 6, "lm_head.layer_norm.bias": 7, "lm_head.bias": 8, "cls.predictions.transform.dense.bias": 9,
           "longformer.pooler.dense.weight": 10}
    assert backbone_state(raw, n_layers=2) == {
        "embeddings.word_embeddings.weight": 1, "layers.0.global_query.weight": 3, "layers.0.attention.self.query.weight": 4,
        "lm_head.transform.dense.weight": 6, "lm_head.transform.LayerNorm.bias": 7, "lm_head.bias": 8,
        "lm_head.transform.dense.bias": 9}


# ---- 4. the item table, save -> load, masking, pre-training loss -------------------------------------
def test_item_table_chunked_lazy_and_saved(tiny_world, tmp_path):
    attrs = tiny_world.item_attributes
    model = build(attrs)
    whole = model.item_embeddings().clone()
    small = build(attrs, "model.encode_tokens=40")  # one or two items per forward pass
    torch.testing.assert_close(small.item_embeddings(), whole, atol=1e-5, rtol=1e-5)
    assert torch.equal(whole[0], torch.zeros(32)) and torch.allclose(whole[1:].norm(dim=1), torch.ones(tiny_world.n_items))
    saved_keys = set(model.state_dict())
    assert "item_table" in saved_keys and not saved_keys & {"tok_ids", "tok_types", "tok_word_starts", "item_offsets", "item_lengths"}
    fixed = whole.clone()
    fixed[1:] = torch.nn.functional.normalize(torch.randn(tiny_world.n_items, 32), dim=1)  # a table from another epoch
    model.item_table.copy_(fixed)
    save_model(model, str(tmp_path / "m.safetensors"))
    other = build(attrs, seed=1)
    batch = SeqBatch(torch.tensor([[1, 2, 3], [4, 0, 0]]), torch.tensor([3, 1]))
    assert not torch.equal(model.encode(batch), other.encode(batch))
    load_model(other, str(tmp_path / "m.safetensors"))
    assert torch.equal(other.item_embeddings(), fixed)  # the stored table, not a re-encoding
    assert torch.equal(model.encode(batch) @ model.item_embeddings().T, other.encode(batch) @ other.item_embeddings().T)
    other.item_table[7] = 0.0
    assert torch.equal(other.item_embeddings()[8:], fixed[8:])  # only the stale (all-zero) row is encoded on use
    torch.testing.assert_close(other.item_embeddings()[7], whole[7])
    other.clear_item_table()
    torch.testing.assert_close(other.item_embeddings(), whole)


def test_mean_pooling_averages_the_real_tokens_and_ignores_padding(tiny_world):
    attrs = tiny_world.item_attributes
    model = build(attrs, "model.pooling=mean")
    batch = SeqBatch(torch.tensor([[1, 2, 3], [4, 0, 0]]), torch.tensor([3, 1]))
    tok = model.sequence_tokens(batch.item_seq, batch.seq_len)
    assert not tok.real[1].all()  # the short row is padded
    h = model.hidden(tok)
    by_hand = torch.stack([h[b, tok.real[b]].mean(dim=0) for b in range(2)])
    torch.testing.assert_close(model.encode(batch), torch.nn.functional.normalize(by_hand, dim=-1))
    alone = model.encode(SeqBatch(torch.tensor([[4]]), torch.tensor([1])))  # the same row with no padding
    torch.testing.assert_close(model.encode(batch)[1:], alone, atol=1e-5, rtol=1e-5)
    bos = build(attrs)  # the same weights (seed 0), the reference's <s> state
    torch.testing.assert_close(bos.encode(batch), torch.nn.functional.normalize(h[:, 0], dim=-1))
    assert not torch.allclose(bos.encode(batch), model.encode(batch), atol=1e-3)
    with pytest.raises(ConfigError, match="model.pooling"):
        build(attrs, "model.pooling=max")


def test_whole_word_masking(tiny_world):
    model = build(tiny_world.item_attributes)
    rows = model.sequence_tokens(torch.arange(1, 41).view(4, 10), torch.full((4,), 10))
    torch.manual_seed(0)
    rates, kinds = [], torch.zeros(3)
    for _ in range(20):
        masked, chosen = model.mask_words(rows)
        assert not (chosen & ~rows.real).any() and not chosen[:, 0].any()
        word = rows.word_starts.long().cumsum(dim=1)
        for r in range(4):  # a word is masked whole or not at all
            w = word[r][rows.real[r]]
            c = chosen[r][rows.real[r]]
            for k in torch.unique(w[c]):
                assert c[w == k].all()
        rates.append(float(chosen[rows.real].float().mean()))
        kinds += torch.stack([(masked[chosen] == model.mask_id).sum(), (masked[chosen] == rows.ids[chosen]).sum(),
                              ((masked[chosen] != model.mask_id) & (masked[chosen] != rows.ids[chosen])).sum()])
    assert abs(np.mean(rates) - 0.15) < 0.03
    share = kinds / kinds.sum()
    assert abs(share[0] - 0.8) < 0.05 and abs(share[1] - 0.1) < 0.04 and abs(share[2] - 0.1) < 0.04


def test_pretrain_loss_trains_both_sides_and_the_mlm_head(tiny_world):
    model = build(tiny_world.item_attributes).train()
    seq = torch.tensor([[1, 2, 3], [4, 5, 0], [6, 0, 0]])
    lengths = torch.tensor([3, 2, 1])
    targets = torch.zeros_like(seq)
    targets[torch.arange(3), lengths - 1] = torch.tensor([7, 8, 9])
    batch = SeqBatch(seq, lengths, targets, users=torch.arange(3))
    (phase,) = model.phases("pretrain")
    phase.trainable(model)
    assert not model.embeddings.word_embeddings.weight.requires_grad  # reference --fix_word_embedding
    loss = phase.loss(batch)
    loss.backward()
    assert model.lm_head.transform.dense.weight.grad.abs().sum() > 0
    assert model.item_position_embeddings.weight.grad[1].abs().sum() > 0
    stage_1, stage_2 = model.phases("train")
    stage_1.trainable(model)
    assert not model.lm_head.bias.requires_grad and model.embeddings.word_embeddings.weight.requires_grad


def _drawn_positions(ds, cfg, pretraining: bool, epochs: int = 200) -> dict[int, set[int]]:
    """user row -> the target positions t its per-epoch draws took (checked to be that user's item t)."""
    from textrec.train.run import make_batchers

    train_b, _, _ = make_batchers(ds, cfg, "cpu", pretraining=pretraining)
    seen: dict[int, set[int]] = {}
    for _ in range(epochs):
        n_rows = 0
        for b in train_b.epoch():
            n_rows += len(b.users)
            for u, t, target in zip(b.users.tolist(), b.seq_len.tolist(), b.targets.gather(1, (b.seq_len[:, None] - 1).clamp(min=0))[:, 0].tolist()):
                seq = ds.sequence(u)
                assert target == seq[t] and b.item_seq[b.users.tolist().index(u), :t].tolist() == seq[:t].tolist()
                seen.setdefault(u, set()).add(t)
        assert n_rows == ds.n_users  # one row per user per epoch
    return seen


def test_pretraining_pairs_cut_as_the_reference_fine_tuning_any_prefix():
    """Pre-training targets t ~ U[(n-1)//2, n-1] of the n training items (t >= 1); fine-tuning any t in 0..n-1 as the
    reference (t = 0: the first item with an empty history), or 1..n-1 with ``model.empty_history=false``."""
    ds = make_domain("tools", WorldSpec(n_items=30, n_users=40, min_len=4, max_len=11), seed=0)
    n = ds.seq_lengths - 2  # training part
    assert set(n.tolist()) >= {2, 3, 4, 5, 8, 9}
    cfg = load_config(model="recformer", overrides=TINY)
    for u, ts in _drawn_positions(ds, cfg, pretraining=True).items():
        assert ts == set(range(max(1, (n[u] - 1) // 2), n[u])), (n[u], ts)  # inside the range, every value (both ends) drawn
    anywhere = load_config(model="recformer", overrides=[*TINY, "model.pretrain_cut=any"])
    no_empty = load_config(model="recformer", overrides=[*TINY, "model.empty_history=false"])
    for seen in (_drawn_positions(ds, anywhere, pretraining=True), _drawn_positions(ds, no_empty, pretraining=False)):
        assert all(ts == set(range(1, n[u])) for u, ts in seen.items())
    assert all(ts == set(range(n[u])) for u, ts in _drawn_positions(ds, cfg, pretraining=False).items())


def test_a_run_written_before_a_setting_existed_still_resumes(tmp_path):
    """A setting added since a run started (here pretrain_cut) takes its default when the run resumes."""
    from textrec.errors import TextrecError
    from textrec.train.run import prepare_out_dir

    config = {"textrec_version": "0", **load_config(model="recformer", overrides=TINY).to_dict()}
    older = json.loads(json.dumps(config))
    del older["model"]["pretrain_cut"]
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text(json.dumps(older))
    prepare_out_dir(tmp_path / "run", config, resume=True, overwrite=False)
    other = {"textrec_version": "0", **load_config(model="recformer", overrides=[*TINY, "model.pretrain_cut=any"]).to_dict()}
    with pytest.raises(TextrecError, match="differs"):
        prepare_out_dir(tmp_path / "run", other, resume=True, overwrite=False)


# ---- 5. learning, two stages through the generic loop ----------------------------------------------
LEARN = [*TINY, *CPU, "model.hidden_dropout=0", "model.attn_dropout=0", "model.init_std=0.1", "data.max_seq_len=3",
         "train.batch_size=16", "train.lr=2e-3", "train.epochs=12",
         # textrec's generic schedule rather than Recformer's recipe (AdamW, 16 batches per step, 100 warm-up steps)
         "train.optimizer=adam", "train.grad_accum=1", "train.schedule=constant", "train.warmup_steps=0", "train.eval_every=1"]


def _train(tmp_path, noise: float):
    from textrec.train.run import train_run

    path = tmp_path / f"world-{noise}"
    make_domain("tools", WorldSpec(n_items=60, n_users=300, min_len=5, max_len=20, noise=noise), seed=1).save(path)
    cfg = load_config(model="recformer", overrides=LEARN)
    return train_run(path, cfg, tmp_path / f"run-{noise}", quiet=True)


def test_two_stages_learn_far_above_chance(tmp_path, monkeypatch):
    tables = []  # the item table after each re-encoding
    real = Recformer.refresh_item_table

    def spy(model):
        real(model)
        tables.append(model.item_table.clone())

    monkeypatch.setattr(Recformer, "refresh_item_table", spy)
    result = _train(tmp_path, noise=0.1).fit
    chance = 10 / 60
    assert result.test["recall@10"] > 2 * chance, result.test
    log = [json.loads(line) for line in (tmp_path / "run-0.1" / "log.jsonl").read_text().splitlines()]
    stage_1 = [r for r in log if r["phase"].startswith("stage 1")]
    assert len(tables) == len(stage_1)  # re-encoded at the start of every stage-1 epoch and never in stage 2
    saved = load_file(str(tmp_path / "run-0.1" / "model.safetensors"))["item_table"]
    best_1 = max(stage_1, key=lambda r: (r["valid"]["ndcg@10"], -r["epoch"]))["epoch"]
    assert torch.equal(saved, tables[best_1 - 1])  # stage 2 (reload best, table fixed) kept the best stage-1 epoch's table


def test_negative_control_stays_near_chance(tmp_path):
    result = _train(tmp_path, noise=1.0).fit
    assert result.test["recall@10"] < 0.26, result.test


# Fixed-init forward values (init_std 0.1, no dropout: the representations are not collapsed): a change must be deliberate.
GOLDEN = {"loss": 4.08093, "encode_sum": 0.92268}


def test_golden_fixed_init_forward(tiny_world):
    model = build(tiny_world.item_attributes, "model.init_std=0.1", "model.hidden_dropout=0", "model.attn_dropout=0")
    seq = torch.tensor([[1, 2, 3, 4], [5, 6, 0, 0], [7, 0, 0, 0]])
    lengths = torch.tensor([4, 2, 1])
    targets = torch.zeros_like(seq)
    targets[torch.arange(3), lengths - 1] = torch.tensor([9, 10, 11])
    batch = SeqBatch(seq, lengths, targets)
    with torch.no_grad():
        got = {"loss": float(model.loss(batch)), "encode_sum": float(model.encode(batch)[:, :8].sum())}
    assert got == pytest.approx(GOLDEN, abs=1e-4), got


def test_cli_pretrain_finetune_evaluate_recommend(tmp_path, capsys):
    for domain in ("tools", "kitchen", "garden"):
        make_domain(domain, WorldSpec(n_items=30, n_users=60, min_len=5, max_len=8), seed=0).save(tmp_path / domain)
    small = [*TINY, *CPU, "train.batch_size=16", "data.max_seq_len=4"]
    assert main(["pretrain", str(tmp_path / "tools"), str(tmp_path / "kitchen"), "--model", "recformer",
                 "--out", str(tmp_path / "pre"), "--quiet", *small, "train.epochs=2"]) == 0
    assert main(["finetune", str(tmp_path / "garden"), "--init", str(tmp_path / "pre"), "--out", str(tmp_path / "ft"), "--quiet",
                 "--json", *CPU, "train.batch_size=16", "data.max_seq_len=4", "train.epochs=4", "model.stage_1_patience=1",
                 "train.lr=1e-12", "train.eval_every=1"]) == 0  # no step changes a ranking: epoch 2 does not improve, so stage 1 ends there
    result = json.loads(capsys.readouterr().out)
    records = [json.loads(line) for line in (tmp_path / "ft" / "log.jsonl").read_text().splitlines()]
    assert [r["phase"][:7] for r in records] == ["stage 1", "stage 1", "stage 2", "stage 2"]
    # the re-encoding's own seconds, inside train_seconds, in every stage-1 epoch's record (benchmarks report it apart)
    assert [0 < r.get("item_encode_seconds", -1) < r["train_seconds"] for r in records] == [True, True, False, False]
    assert main(["evaluate", str(tmp_path / "ft"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ndcg@10"] == pytest.approx(result["test"]["ndcg@10"])
    (tmp_path / "new.csv").write_text("item,text\nNEW-1,Zorblat orange bamboo rake. Garden Outdoor Living. Zorblat.\n")
    assert main(["recommend", str(tmp_path / "ft"), "--items", "garden-00001,garden-00002", "--new-items",
                 str(tmp_path / "new.csv"), "-k", "31", "--json"]) == 0
    keys = [r["item"] for r in json.loads(capsys.readouterr().out)["recommendations"]]
    assert "NEW-1" in keys and len(keys) == 29  # the new item ranks among the whole catalogue (history left out)


@pytest.mark.slow
def test_catalogue_encoding_memory_is_bounded_by_the_chunk():
    import re
    from pathlib import Path

    status = Path("/proc/self/status")
    if not status.exists():
        pytest.skip("needs Linux /proc/self/status to read the peak resident set size")

    def mb(key):
        return int(re.search(rf"{key}:\s+(\d+) kB", status.read_text()).group(1)) / 1024

    n = 200_000
    attrs = [{"title": f"brand{i % 97} item {i}", "brand": f"brand{i % 97}", "category": f"Tools {i % 13}"} for i in range(n)]
    model = build(attrs, "model.encode_tokens=4096")
    del attrs
    model.item_table.fill_(0.0)  # the (n + 1, D) result itself, made resident before measuring
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak
    before = mb("VmRSS")
    model.item_embeddings()
    assert mb("VmHWM") - before < 48, "encoding 200k items needed more than 48 MB beyond the table"


# ---- 6. the shipped reference fine-tuning config ----------------------------------------------------
def test_shipped_reference_config_loads_by_name_with_every_key_valid():
    import tomllib

    from textrec.config import SHIPPED_CONFIGS, shipped_configs

    assert "recformer-reference" in shipped_configs()
    path = SHIPPED_CONFIGS / "recformer-reference.toml"
    cfg = load_config("recformer-reference")  # strict: an unknown key or a wrong type would raise
    resolved = json.loads(json.dumps(cfg.to_dict()))
    for section, values in tomllib.loads(path.read_text(encoding="utf-8")).items():
        for key, value in values.items():
            assert resolved[section][key] == value, f"{section}.{key}"
    t = cfg.train
    assert cfg.model == "recformer" and (t.optimizer, t.lr, t.batch_size, t.grad_accum, t.schedule, t.warmup_steps,
                                         t.eval_every, t.weight_decay) == ("adamw", 5e-5, 16, 8, "linear", 100, 3, 0.0)
    assert (cfg.model_config.stage_1_patience, cfg.model_config.stage_2_patience) == (5, 3)
    assert cfg.model_config.stage_1_max_epochs == 0  # reference: stage 1 ends by its patience alone
    for cap, expected in ((0, None), (2, 2)):
        stage_1, _ = build([{"title": "a"}], f"model.stage_1_max_epochs={cap}").phases("train")
        assert stage_1.max_epochs == expected
    with pytest.raises(ConfigError, match="stage_1_max_epochs"):
        load_config("recformer-reference", ["model.stage_1_max_epochs=-1"])
    assert load_config(str(path), ["train.lr=1e-4"], model="recformer").train.lr == 1e-4  # a path works too; overrides win
    with pytest.raises(ConfigError, match="shipped: .*recformer-reference"):
        load_config("recformer-refrence")
    assert '"configs/*.toml"' in (SHIPPED_CONFIGS.parents[2] / "pyproject.toml").read_text()  # installed with the package


# ---- 7. brand-new items by their attributes ---------------------------------------------------------
def test_new_items_file_with_attribute_columns_or_json_lines(tmp_path):
    import re

    from textrec.errors import DataError
    from textrec.serve.catalogue import derived_text, read_new_item_table, read_new_items

    csv_path = tmp_path / "new.csv"
    csv_path.write_text('item,title,brand,category\nN1,"Red hammer, vintage",Acme,Tools\nN2,Saw,,\n', encoding="utf-8-sig")
    items = read_new_item_table(csv_path)
    assert items.keys == ["N1", "N2"] and items.texts == ["", ""]
    assert items.attributes == [{"title": "Red hammer, vintage", "brand": "Acme", "category": "Tools"}, {"title": "Saw"}]
    assert read_new_items(csv_path) == (["N1", "N2"], ["", ""])
    jsonl = tmp_path / "new.jsonl"
    jsonl.write_text('{"item": "N1", "title": "Red hammer, vintage", "brand": "Acme", "category": ["Tools"]}\n\n'
                     '{"item": "N2", "text": "A saw.", "size": 3}\n', encoding="utf-8-sig")
    items = read_new_item_table(jsonl)
    assert items.texts == ["", "A saw."] and items.attributes[0]["category"] == "Tools" and items.attributes[1] == {"size": "3"}
    # a text for text models, built as `textrec prepare` builds item texts (title, category, brand first)
    assert derived_text({"brand": "Acme", "colour": "red", "title": "Red hammer", "category": "Tools"}) == \
        "Red hammer. Tools. Acme. red. "
    world = make_domain("tools", WorldSpec(n_items=12, n_users=10), seed=0)
    assert [derived_text(a) for a in world.item_attributes] == world.item_texts
    bad = {"item\n": ":1: needs a header", "item,title,title\nN1,a,b\n": ":1: column 'title' is given twice",
           "item,text,brand\nN1,,\n": ":2: empty item, or neither a text nor an attribute"}
    for body, message in bad.items():
        csv_path.write_text(body)
        with pytest.raises(DataError, match=re.escape(f"{csv_path}{message}")):
            read_new_item_table(csv_path)
    bad = {'{"item": "N1", "title": "a"}\n{"item": "N2", "title": {"x": 1}}\n': ":2: 'title' must be a string",
           '{"item": "N1", "title": "a"}\n{"item": "N1"\n': ":2: not JSON", '["N1"]\n': ":1: not a JSON object",
           '{"title": "a"}\n': ":1: empty item", '{"item": "N1", "title": "a"}\n{"item": "N1", "text": "b"}\n': ":2: duplicate item 'N1'"}
    for body, message in bad.items():
        jsonl.write_text(body)
        with pytest.raises(DataError, match=re.escape(f"{jsonl}{message}")):
            read_new_item_table(jsonl)


def test_new_item_by_attributes_is_ranked_and_its_attributes_decide_its_score(tmp_path, capsys):
    import csv

    make_domain("tools", WorldSpec(n_items=30, n_users=60, min_len=5, max_len=8), seed=0).save(tmp_path / "tools")
    run = tmp_path / "run"
    # one epoch of histories of one item at least: the training rows its score thresholds below were set with
    assert main(["train", str(tmp_path / "tools"), "--model", "recformer", "--out", str(run), "--quiet", *TINY, *CPU,
                 "model.init_std=0.1", "model.hidden_dropout=0", "model.attn_dropout=0", "train.batch_size=16",
                 "train.epochs=1", "model.empty_history=false"]) == 0
    copied = Dataset.load(tmp_path / "tools").item_attributes[4]  # item tools-00004

    def scores(rows: list[dict]) -> dict[str, float]:
        path = tmp_path / "new.csv"
        with path.open("w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, ["item", "title", "brand", "category", "colour"])
            w.writeheader()
            w.writerows(rows)
        capsys.readouterr()
        assert main(["recommend", str(run), "--items", "tools-00001,tools-00002", "--new-items", str(path), "-k", "40",
                     "--json"]) == 0
        out = json.loads(capsys.readouterr().out)
        assert len(out["recommendations"]) == 28 + len(rows) and all(n["rank"] for n in out["new_items"])
        return {r["item"]: r["score"] for r in out["recommendations"]}

    new = {"item": "NEW-1", "title": "Zorblat orange bamboo hammer, vintage style", "brand": "Zorblat",
           "category": "Tools Hand Tools", "colour": "orange"}
    first = scores([{"item": "COPY", **copied}, new])
    assert first["COPY"] == pytest.approx(first["tools-00004"], abs=1e-6)  # the same attributes: the same sentence and score
    assert "NEW-1" in first
    for changed in ({"title": "Zorblat teal glass saw, modern style"}, {"brand": "Acme"}):
        assert abs(scores([{**new, **changed}])["NEW-1"] - first["NEW-1"]) > 1e-4, changed
    # a fourth attribute is beyond max_attr_num=3, as the reference: it is not read
    assert scores([{**new, "colour": "teal"}])["NEW-1"] == pytest.approx(first["NEW-1"], abs=1e-6)
