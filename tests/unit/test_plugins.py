"""Plug-ins by import path (wavalign/plugins.py, rewards/registry.py, the preflight check): each bad
plug-in is one line naming its config key and path; good ones are built with their kwargs. The
plug-in modules are written to a temporary folder here: they are not part of the project."""

import sys
import textwrap
from pathlib import Path

import pytest

from actors.reward import checked_audio
from driver.preflight import PreflightError, check_plugins
from rewards.registry import build_reward_functions, reward_function_factories, speech_decoder_factory
from rewards.speech import ToySpeechDecoder
from rewards.toy import toy_answer_reward
from rewards.types import Audio, ScoredResponse
from wavalign.config_file import read_config
from wavalign.plugins import PluginError, decoder_factory, importable, reward_factory

PIPELINE = str(Path(__file__).resolve().parents[2] / "pipeline.yaml")
PLUGIN = """
from rewards.types import Audio

built = []

def length_reward(responses, bonus=0.0):
    return [min(5.0, 1.0 + len(r.text.split()) + bonus) for r in responses]

def no_arguments():
    return []

class Scaled:
    def __init__(self, factor):
        built.append(factor)
        self.factor = factor

    def __call__(self, responses):
        return [self.factor] * len(responses)

class NotCallable:
    pass

class Failing:
    def __init__(self):
        raise RuntimeError("model weights not found at /ckpt")

    def __call__(self, responses):
        return []

class Decoder:
    def __init__(self, sample_rate=8000):
        self.sample_rate = sample_rate

    def decode(self, codes):
        return Audio(samples=[0.0] * len(codes), sample_rate=self.sample_rate)

class NoDecode:
    pass

class DecodeTakesTwo:
    def decode(self, codes, speaker):
        return None

CONSTANT = 3
"""


@pytest.fixture
def plugins(tmp_path):
    package = tmp_path / "my_plugins"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "scoring.py").write_text(textwrap.dedent(PLUGIN))
    (package / "broken.py").write_text("raise ImportError('libfoo.so: cannot open shared object file')\n")
    (package / "needs_dep.py").write_text("import not_installed_anywhere\n")
    with importable([tmp_path]):
        yield "my_plugins.scoring"
    for name in [m for m in sys.modules if m.startswith("my_plugins")]:
        del sys.modules[name]


RESPONSES = [ScoredResponse(question="q", text="one two"), ScoredResponse(question="q", text="one")]


def test_a_function_gets_its_kwargs_with_each_call_and_a_class_is_built_once_with_them(plugins):
    function = reward_factory(f"{plugins}:length_reward", {"bonus": 0.5}, "key")()
    assert function(RESPONSES) == [3.5, 2.5]
    build = reward_factory(f"{plugins}:Scaled", {"factor": 2.0}, "key")
    built = sys.modules[plugins].built
    assert built == []  # checked, not built: only the reward workers build (a class may load a model)
    assert build()(RESPONSES) == [2.0, 2.0] and built == [2.0]
    decoder = decoder_factory(f"{plugins}:Decoder", {"sample_rate": 16000}, "key")()
    assert decoder.decode([1, 2, 3]) == Audio(samples=[0.0] * 3, sample_rate=16000)


@pytest.mark.parametrize(
    "path, kwargs, expected",
    [
        ("nowhere.rewards:fn", {}, "k: nowhere.rewards:fn: no module named 'nowhere'"),
        ("my_plugins.needs_dep:fn", {}, "no module named 'not_installed_anywhere' (needed by my_plugins.needs_dep)"),
        ("my_plugins.broken:fn", {}, "importing my_plugins.broken failed: ImportError: libfoo.so: cannot open"),
        ("my_plugins.scoring:missing", {}, "my_plugins.scoring has no attribute 'missing'"),
        ("my_plugins.scoring:CONSTANT", {}, "is a int, not a function or a class"),
        ("my_plugins.scoring:no_arguments", {}, "the function does not take (responses): too many positional"),
        ("my_plugins.scoring:length_reward", {"weight": 1}, "does not take (responses, weight): got an unexpected"),
        ("my_plugins.scoring:Scaled", {}, "its constructor does not take no arguments: missing a required argument"),
        ("my_plugins.scoring:NotCallable", {}, "a reward class must define __call__(self, responses)"),
    ],
)
def test_a_bad_reward_plugin_is_one_line_naming_the_key_and_path(plugins, path, kwargs, expected):
    with pytest.raises(PluginError) as raised:
        reward_factory(path, kwargs, "k")
    assert expected in str(raised.value) and str(raised.value).startswith(f"k: {path}: ")
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize(
    "path, expected",
    [
        ("my_plugins.scoring:length_reward", "is a function, not a class with decode(codes)"),
        ("my_plugins.scoring:NoDecode", "a speech decoder class must define decode(self, codes)"),
        ("my_plugins.scoring:DecodeTakesTwo", "its decode does not take (self, codes): missing a required argument"),
    ],
)
def test_a_bad_decoder_plugin_is_one_line(plugins, path, expected):
    with pytest.raises(PluginError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        decoder_factory(path, {}, "k")


def test_an_asr_backend_is_a_plugin_of_the_same_kind(plugins):
    """reward.asr.backend: a class with transcribe(audios), or the built-in pocketsphinx."""
    from rewards.registry import asr_backend_factory

    cfg = read_config(PIPELINE, [f"reward.asr.backend='{plugins}:NoDecode'"])
    with pytest.raises(
        PluginError, match=r"^reward.asr.backend: .*an ASR backend class must define transcribe\(self, audios\)"
    ):
        asr_backend_factory(cfg.reward)
    assert type(asr_backend_factory(read_config(PIPELINE, []).reward)()).__name__ == "PocketSphinxRecognizer"


def test_a_plugin_that_fails_to_build_says_why(plugins):
    build = reward_factory(f"{plugins}:Failing", {}, "reward.functions[1].path")
    with pytest.raises(PluginError, match=r"^reward.functions\[1\].path: .*: building it failed: RuntimeError: model"):
        build()


def test_built_ins_are_entries_of_the_same_registry(plugins):
    cfg = read_config(
        PIPELINE,
        [
            "reward.functions=[{name: toy_answer, weight: 0.5}, "
            f"{{name: mine, path: '{plugins}:Scaled', kwargs: {{factor: 4.0}}, weight: 0.5}}]",
        ],
    )
    functions = build_reward_functions(cfg.reward)
    assert functions["toy_answer"] is toy_answer_reward and functions["mine"](RESPONSES) == [4.0, 4.0]
    assert isinstance(speech_decoder_factory(cfg.reward)(), ToySpeechDecoder)
    assert speech_decoder_factory(read_config(PIPELINE, ["reward.speech_decoder=none"]).reward)() is None
    plugged = read_config(PIPELINE, [f"reward.speech_decoder={{path: '{plugins}:Decoder'}}"])
    assert speech_decoder_factory(plugged.reward)().sample_rate == 8000
    bad = read_config(PIPELINE, [f"reward.functions=[{{name: x, path: '{plugins}:nope'}}]"])
    with pytest.raises(PluginError, match=r"^reward.functions\[0\].path: my_plugins.scoring:nope: "):
        reward_function_factories(bad.reward)


def test_the_dry_run_check_imports_plugins_from_the_shipped_folders(tmp_path, monkeypatch):
    """What run.runtime_env.py_modules ships is importable in the check as in the workers; a
    folder that is not there, or a plug-in missing from it, is one line."""
    package = tmp_path / "shipped" / "team_rewards"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("def fine(responses):\n    return [5.0] * len(responses)\n")
    monkeypatch.chdir(tmp_path)  # the driver's working directory: relative paths start there
    fine = "reward.functions=[{name: team, path: 'team_rewards:fine'}]"
    check_plugins(read_config(PIPELINE, [fine, "run.runtime_env.py_modules=[shipped/team_rewards]"]))
    assert "team_rewards" not in sys.path and not any("shipped" in p for p in sys.path)  # sys.path restored
    sys.modules.pop("team_rewards", None)
    with pytest.raises(PreflightError, match=r"^reward.functions\[0\].path: team_rewards:fine: no module named"):
        check_plugins(read_config(PIPELINE, [fine]))
    with pytest.raises(PreflightError, match=r"^run.runtime_env.py_modules\[0\]: gone: no such file or folder"):
        check_plugins(read_config(PIPELINE, [fine, "run.runtime_env.py_modules=[gone]"]))
    submitted = '{"runtime_env": {"py_modules": ["gcs://_ray_pkg_x.zip"], "env_vars": {"A": "1"}}}'
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", submitted)  # as `ray job submit` sets it for the driver
    shipped = "run.runtime_env.py_modules=[shipped/team_rewards]"
    with pytest.raises(PreflightError, match=r"^run.runtime_env.py_modules: the job was submitted with a runtime env"):
        check_plugins(read_config(PIPELINE, [fine, shipped]))
    with pytest.raises(PreflightError, match=r"^run.runtime_env.env_vars: .* sets variables A too"):
        check_plugins(read_config(PIPELINE, [fine, "run.runtime_env.env_vars={A: '2', B: '3'}"]))
    check_plugins(read_config(PIPELINE, ["run.runtime_env.env_vars={B: '3'}"]))  # merged: no field twice
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR")
    notes = []
    check_plugins(read_config(PIPELINE, [fine, "run.runtime_env.pip=[team-rewards==1.0]"]), notes.append)
    assert notes and "left to the reward workers, which install run.runtime_env.pip first" in notes[0]


def test_a_decoder_that_returns_no_audio_is_a_one_line_error():
    assert checked_audio(Audio([0.0], 16000)).sample_rate == 16000
    for bad in (None, [0.0, 0.1], Audio([0.0], 16000.0), Audio([0.0], 0)):
        with pytest.raises(TypeError, match=r"^reward.speech_decoder: decode\(\) returned \w+ \(sample_rate "):
            checked_audio(bad)
