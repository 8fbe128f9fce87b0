"""Protocol compatibility of the judge client with a real OpenAI-compatible server: vLLM's own
server (`vllm.entrypoints.openai.api_server`, what `vllm serve` runs) serving the tiny model on
127.0.0.1, constrained by vLLM's structured outputs to answer in the rubric's `<score>` format."""

import sys
import time
import urllib.request
from pathlib import Path

import pytest

from rewards.judge import JudgeSettings, OpenAIJudge
from rewards.types import ScoredResponse
from tests import background
from tests.background import Background
from tests.integration.conftest import ROOT
from wavalign.ports import free_port

TEST = "test_judge_client_speaks_to_a_real_openai_compatible_server"


def start_server(toy_assets, folder: Path) -> Background:
    """vLLM's OpenAI server on the tiny model, on a free port of 127.0.0.1 (info: port)."""
    port = free_port()
    # eager sampler helpers, as the rollout engines run them on CPU (actors/vllm_engine.py: eager_torch_on_cpu)
    env = {"VLLM_CPU_KVCACHE_SPACE": "1", "TORCH_COMPILE_DISABLE": "1"}
    command = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(toy_assets.model_dir),
        "--served-model-name",
        "tiny-judge",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--dtype",
        "float32",
        "--enforce-eager",
        "--max-model-len",
        "512",
    ]
    return Background.start(command, folder / "vllm-server.log", ROOT, env, port=port)


# In a one-process session its minute of start-up overlaps with the tests that go first (tests/background.py).
PRESTART = {TEST: start_server}


@pytest.fixture(scope="module")
def vllm_server(toy_assets, tmp_path_factory):
    server = background.take(TEST) or start_server(toy_assets, tmp_path_factory.mktemp("vllm-server"))
    port = server.info["port"]
    try:
        deadline = time.monotonic() + 300
        while True:  # wait for the health endpoint (or the process to die), bounded by the deadline
            if server.process.poll() is not None:
                pytest.fail(f"vLLM server exited: {server.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("vLLM server not healthy after 300 s")
            time.sleep(1)
        yield f"http://127.0.0.1:{port}/v1/chat/completions"
    finally:
        server.stop()


def test_judge_client_speaks_to_a_real_openai_compatible_server(vllm_server):
    judge = OpenAIJudge(
        JudgeSettings(
            url=vllm_server,
            model="tiny-judge",
            timeout_s=60,
            max_attempts=2,
            backoff_s=0.1,
            send_audio=False,
            max_tokens=16,
            extra_body={"structured_outputs": {"regex": "<score>[1-5]</score>"}},
        )
    )
    responses = [
        ScoredResponse("what is one plus one", "one plus one is two"),
        ScoredResponse("what is two plus two", ""),
    ]
    scores = judge(responses)
    assert all(1.0 <= s <= 5.0 and s == int(s) for s in scores)
    assert judge.counters() == {"requests": 2, "attempts": 2}  # no retry, no failure: the protocol fits
    wrong_model = OpenAIJudge(JudgeSettings(url=vllm_server, model="no-such-model", timeout_s=30, max_attempts=1))
    assert wrong_model(responses[:1]) == [2.5] and wrong_model.counters()["http_errors"] == 1
