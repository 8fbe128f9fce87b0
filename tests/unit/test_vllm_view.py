"""The checkpoint view the rollout engines load when the checkpoint holds modules vLLM lacks
(wavalign/vllm_view.py): those tensors gone from the shards that held them (and from the index),
every other file the original's, made once per checkpoint contents."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from wavalign.vllm_view import unmatched_prefixes, vllm_view


@pytest.fixture
def checkpoint(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    save_file({"model.embed.weight": torch.ones(2, 2), "mtp_heads.0.weight": torch.zeros(2)}, model / "a.safetensors")
    save_file({"lm_head.weight": torch.full((2, 2), 3.0)}, model / "b.safetensors")
    weight_map = {"model.embed.weight": "a.safetensors", "mtp_heads.0.weight": "a.safetensors"}
    index = {"metadata": {}, "weight_map": {**weight_map, "lm_head.weight": "b.safetensors"}}
    (model / "model.safetensors.index.json").write_text(json.dumps(index))
    (model / "config.json").write_text("{}")
    return model


def test_the_view_leaves_out_the_extra_modules_and_links_the_rest(checkpoint, tmp_path):
    view = vllm_view(checkpoint, ["mtp_heads."], tmp_path / "cache")
    assert view.parent == tmp_path / "cache" and view.name.startswith("model-vllm-")
    assert load_file(view / "a.safetensors").keys() == {"model.embed.weight"}
    assert (view / "b.safetensors").is_symlink() and (view / "config.json").is_symlink()
    index = json.loads((view / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == {"model.embed.weight", "lm_head.weight"}
    assert load_file(checkpoint / "a.safetensors").keys() == {"model.embed.weight", "mtp_heads.0.weight"}  # untouched
    assert vllm_view(checkpoint, ["mtp_heads."], tmp_path / "cache") == view  # made once
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [view.name]  # no staging folder left


def test_a_changed_checkpoint_gets_a_new_view_and_one_without_the_modules_is_its_own(checkpoint, tmp_path):
    first = vllm_view(checkpoint, ["mtp_heads."], tmp_path / "cache")
    save_file(
        {"model.embed.weight": torch.ones(2, 2), "mtp_heads.0.weight": torch.ones(3)}, checkpoint / "a.safetensors"
    )
    assert vllm_view(checkpoint, ["mtp_heads."], tmp_path / "cache") != first
    assert vllm_view(checkpoint, ["other."], tmp_path / "cache") == checkpoint.resolve()
    assert unmatched_prefixes(checkpoint, ["mtp_heads.", "other.", "lm_head"]) == ["other."]
