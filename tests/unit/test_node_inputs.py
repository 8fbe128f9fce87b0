"""wavalign/node_inputs.py: the policy as each node reads it — a folder as it is, a URI copied once per
node (a `file://` URI: the same pyarrow.fs calls as `s3://`), the toy model staged into a run's
storage."""

from __future__ import annotations

import socket
import tempfile
from concurrent.futures import ThreadPoolExecutor

import pytest

from wavalign.node_inputs import check_model_dir, local_model_dir, stage_directory
from wavalign.storage import RunStore


@pytest.fixture
def model(tmp_path):
    folder = tmp_path / "stored" / "model"
    (folder / "sub").mkdir(parents=True)
    (folder / "config.json").write_text('{"vocab_size": 8}')
    (folder / "model.safetensors").write_bytes(b"w" * 1000)
    (folder / "sub" / "tokenizer.json").write_text("{}")
    return folder


@pytest.fixture(autouse=True)
def node_temp(tmp_path, monkeypatch):
    """This "node"'s temporary folder, where URI copies go."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "node"))
    (tmp_path / "node").mkdir()
    return tmp_path / "node"


def files_of(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_a_folder_is_read_where_it_is_and_a_missing_one_names_the_key_and_the_node(model, tmp_path):
    assert local_model_dir(str(model)) == model
    with pytest.raises(FileNotFoundError) as err:
        local_model_dir(str(tmp_path / "nope"), "reward.reward_model_path")
    message = str(err.value)
    assert message.startswith(f"reward.reward_model_path: {tmp_path / 'nope'} is not an HF model directory")
    assert f"on node {socket.gethostname()}" in message and "s3://" in message


def test_a_uri_is_copied_once_per_node_and_again_when_the_stored_files_change(model, node_temp):
    uri = f"file://{model}"
    copy = local_model_dir(uri)
    assert node_temp in copy.parents and files_of(copy).items() >= files_of(model).items()
    (copy / "sub" / "tokenizer.json").write_text("kept")  # not fetched again while the listing holds
    assert local_model_dir(uri) == copy and (copy / "sub" / "tokenizer.json").read_text() == "kept"
    (model / "model.safetensors").write_bytes(b"v" * 1001)  # a new version of the model there
    assert local_model_dir(uri) == copy
    assert files_of(copy)["model.safetensors"] == b"v" * 1001 and (copy / "sub" / "tokenizer.json").read_text() == "{}"


def test_workers_starting_at_once_on_a_node_share_one_complete_copy(model):
    with ThreadPoolExecutor(4) as pool:
        copies = list(pool.map(lambda _: local_model_dir(f"file://{model}"), range(4)))
    assert len(set(copies)) == 1 and files_of(copies[0]).items() >= files_of(model).items()


def test_a_uri_without_a_model_is_an_error_naming_the_key(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"^model.path: file://.*empty is not an HF model directory"):
        local_model_dir(f"file://{tmp_path / 'empty'}")


@pytest.mark.parametrize("remote", [False, True])
def test_the_toy_model_is_staged_into_the_runs_storage_where_every_node_reads_it(model, tmp_path, remote):
    run = tmp_path / "runs" / "r1"
    store = RunStore(f"file://{run}" if remote else str(run))
    store.local.mkdir(parents=True, exist_ok=True)
    location = stage_directory(model, store, "inputs/model")
    assert location == store.uri("inputs/model")
    assert files_of(run / "inputs" / "model") == files_of(model)
    assert files_of(local_model_dir(location)).items() >= files_of(model).items()
    stage_directory(model, store, "inputs/model")  # again (a resumed run): replaced, not nested
    assert files_of(run / "inputs" / "model") == files_of(model)


def test_checking_a_uri_lists_it_and_copies_nothing(model, node_temp, tmp_path):
    """What the driver's start checks do with a reward model given as a URI: no copy on its node."""
    assert check_model_dir(f"file://{model}") == {"config.json": 17, "model.safetensors": 1000, "sub/tokenizer.json": 2}
    assert not any(node_temp.rglob("*.safetensors"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"^reward.reward_model_path: file://.*empty is not an HF model"):
        check_model_dir(f"file://{tmp_path / 'empty'}", "reward.reward_model_path")
