"""Driver-side pieces on hand-made data: the prompt stream's order and cursor, and step assembly."""

import pytest
import torch

from driver.prompts import PromptStream
from driver.step_data import advantages_of, assemble_groups, learner_batches
from tests.conftest import HAND
from wavalign.data import PromptRow
from wavalign.layout import SpeechLayout
from wavalign.messages import RewardResult, RolloutRecord


def rows(n):
    return [PromptRow(f"q{i}", (i, i), (9, i), f"question {i}", f"answer {i}", answer=i) for i in range(n)]


def test_prompt_stream_covers_each_epoch_and_resumes_from_its_cursor():
    stream = PromptStream(rows(10), seed=3, prompts_per_step=4)
    taken = [[r.row_id for r in stream.next_step()] for _ in range(2)]
    assert len(set(taken[0] + taken[1])) == 8  # no repeat within an epoch
    state = stream.state_dict()
    third = [r.row_id for r in stream.next_step()]  # only 2 left: the next epoch starts
    assert stream.epoch == 1 and len(set(third)) == 4
    again = PromptStream(rows(10), seed=3, prompts_per_step=4)
    again.load_state_dict(state)
    assert [r.row_id for r in again.next_step()] == third
    given_back = PromptStream(rows(10), seed=3, prompts_per_step=4)
    given_back.load_state_dict(stream.state_dict(give_back_last_step=True))
    assert [r.row_id for r in given_back.next_step()] == third
    with pytest.raises(ValueError, match="rollout_batch_size"):
        PromptStream(rows(3), seed=0, prompts_per_step=4)


def record(prompt_id, index, version=0):
    return RolloutRecord(prompt_id, index, (1, 2, index), (-0.1, -0.2, -0.3), (1, 1, 1), "stop", version)


def test_groups_are_checked_whole_and_split_evenly_over_learner_ranks():
    prompts = rows(4)
    records = [record(r.row_id, i) for r in reversed(prompts) for i in reversed(range(2))]  # any arrival order
    rewards = {
        (r.row_id, i): RewardResult(r.row_id, i, {"toy": float(i + k)}, float(i + k))
        for k, r in enumerate(prompts)
        for i in range(2)
    }
    groups = assemble_groups(prompts, records, rewards, group_size=2)
    assert [g.row.row_id for g in groups] == ["q0", "q1", "q2", "q3"]
    assert all([r.sample_index for r in g.records] == [0, 1] for g in groups)
    advantages = advantages_of(groups, unbiased_std=False)
    assert torch.allclose(advantages, torch.tensor([[-1.0, 1.0]] * 4, dtype=torch.float64), atol=1e-3)
    layout = SpeechLayout(**HAND, interleave_ratio=(1, 4))
    batches = learner_batches(groups, advantages, [0.3], 2, layout, "all", staleness=1)
    assert [len(b.sft_prompts) for b in batches] == [2, 2] and all(b.lam == 0.3 for b in batches)
    assert [b.sft_rank_weight for b in batches] == [1.0, 1.0]  # every reference has tokens of every kind
    assert batches[1].sft_targets == [(9, 2), (9, 3)] and batches[0].rollout_logprobs[0] == (-0.1, -0.2, -0.3)
    with pytest.raises(RuntimeError, match="q0"):
        assemble_groups(prompts, records[:-1], rewards, group_size=2)


def test_checkpoint_random_states_are_json_and_restore_exactly():
    import json
    import random

    import numpy as np
    import torch

    from driver.checkpoint import random_states, set_random_states

    random.seed(3), np.random.seed(4), torch.manual_seed(5)
    random.gauss(0, 1), np.random.randn()  # cached Gaussians are part of the state
    saved = json.loads(json.dumps(random_states()))
    first = (random.random(), random.gauss(0, 1), np.random.rand(), np.random.randn(), torch.rand(3).tolist())
    set_random_states(saved)
    assert (random.random(), random.gauss(0, 1), np.random.rand(), np.random.randn(), torch.rand(3).tolist()) == first


@pytest.mark.parametrize("pointer", ["../../elsewhere", "/etc", "step-1", "step-000010/../../x", ""])
def test_a_latest_pointer_that_is_not_a_checkpoint_name_is_refused(tmp_path, pointer):
    from driver.checkpoint import latest_checkpoint
    from driver.preflight import PreflightError, check_resume
    from wavalign.storage import RunStore

    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "latest").write_text(pointer)
    with pytest.raises(ValueError, match="expected a checkpoint name like step-000010"):
        latest_checkpoint(RunStore(str(tmp_path)))
    with pytest.raises(PreflightError, match="^--resume: .*latest: expected a checkpoint name"):
        check_resume(RunStore(str(tmp_path)))


def test_the_toy_build_never_replaces_a_folder_it_did_not_make(tmp_path):
    from wavalign.config import LayoutConfig, ToyConfig
    from wavalign.toy.assets import ensure_toy_assets

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match=f"toy.assets_dir: {mine} exists and is not a toy asset cache"):
        ensure_toy_assets(ToyConfig(assets_dir=str(mine)), LayoutConfig())
    assert [p.name for p in mine.iterdir()] == ["notes.txt"] and (mine / "notes.txt").read_text() == "keep me"
