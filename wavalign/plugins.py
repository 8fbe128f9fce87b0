"""Plug-ins by import path ('package.module:attribute'): users' reward functions and speech decoders.

Each is checked before it is built — imported, and its signature bound to the arguments the
pipeline will pass — so that a wrong path, a missing package or a wrong signature is one line naming
the config key and the path, in `launch.py --dry-run` and in a reward worker alike. `factory`
returns a builder that does no more than that check; calling it builds the plug-in (a class may load
a model: only the workers build it). Pure module: the standard library only.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import inspect
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any


class PluginError(ValueError):
    """Why a plug-in cannot be used, in one line naming its config key and import path."""

    def __init__(self, key: str, path: str, reason: str) -> None:
        super().__init__(f"{key}: {path}: {' '.join(reason.split())}")


def load(path: str, key: str) -> Any:
    """The object at 'package.module:attribute' (attribute may be dotted: 'module:Class.method')."""
    module_name, _, attribute = path.partition(":")
    try:
        obj = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        where = "" if err.name == module_name else f" (needed by {module_name})"
        raise PluginError(key, path, f"no module named {err.name!r}{where}") from None
    except Exception as err:  # the plug-in's own import-time code failed: say so, in one line
        raise PluginError(key, path, f"importing {module_name} failed: {type(err).__name__}: {err}") from None
    for part in attribute.split("."):
        if not hasattr(obj, part):
            raise PluginError(key, path, f"{getattr(obj, '__name__', obj)!s} has no attribute {part!r}")
        obj = getattr(obj, part)
    return obj


def _bind(target: Callable, args: tuple, kwargs: dict[str, Any], key: str, path: str, what: str) -> None:
    """TypeError-free call of target(*args, **kwargs), as far as its signature can tell."""
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):  # a builtin without a signature: it answers for itself when called
        return
    try:
        signature.bind(*args, **kwargs)
    except TypeError as err:
        raise PluginError(key, path, f"{what} does not take {_described(args, kwargs)}: {err}") from None


def _described(args: tuple, kwargs: dict[str, Any]) -> str:
    shown = [*(str(a) for a in args), *kwargs]
    return "(" + ", ".join(shown) + ")" if shown else "no arguments"


class _StandIn:
    """An argument in a signature check, shown by its name."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __str__(self) -> str:
        return self.name


_RESPONSES, _SELF = _StandIn("responses"), _StandIn("self")


def reward_factory(path: str, kwargs: dict[str, Any], key: str) -> Callable[[], Callable]:
    """A reward plug-in's builder. The object at `path` is either a function scored as
    fn(responses, **kwargs), or a class built as cls(**kwargs) whose instances are called with
    (responses)."""
    obj = load(path, key)
    if inspect.isclass(obj):
        _bind(obj, (), kwargs, key, path, "its constructor")
        call = next((vars(c)["__call__"] for c in obj.__mro__ if "__call__" in vars(c)), None)
        if not callable(call):  # (what calling the class itself does is type's __call__: not this)
            raise PluginError(key, path, "a reward class must define __call__(self, responses)")
        _bind(call, (_SELF, _RESPONSES), {}, key, path, "its __call__")
        return functools.partial(_built, obj, kwargs, key, path)
    if callable(obj):
        _bind(obj, (_RESPONSES,), kwargs, key, path, "the function")
        return lambda: functools.partial(obj, **kwargs) if kwargs else obj
    raise PluginError(key, path, f"is a {type(obj).__name__}, not a function or a class")


def decoder_factory(path: str, kwargs: dict[str, Any], key: str) -> Callable[[], Any]:
    """A speech-decoder plug-in's builder: a class with decode(self, codes) -> rewards.types.Audio,
    built as cls(**kwargs)."""
    return class_factory(path, kwargs, key, "decode", "codes", "a speech decoder")


def class_factory(path: str, kwargs: dict[str, Any], key: str, method: str, argument: str, role: str):
    """The builder of a plug-in class built as cls(**kwargs) whose instances are called as
    instance.method(argument): a speech decoder (decode(codes)), an ASR backend (transcribe(audios)),
    a speech tokenizer (encode(audios))."""
    obj = load(path, key)
    if not inspect.isclass(obj):
        raise PluginError(key, path, f"is a {type(obj).__name__}, not a class with {method}({argument})")
    _bind(obj, (), kwargs, key, path, "its constructor")
    bound = getattr(obj, method, None)
    if not callable(bound):
        raise PluginError(key, path, f"{role} class must define {method}(self, {argument})")
    _bind(bound, (_SELF, _StandIn(argument)), {}, key, path, f"its {method}")
    return functools.partial(_built, obj, kwargs, key, path)


def _built(cls: type, kwargs: dict[str, Any], key: str, path: str) -> Any:
    try:
        return cls(**kwargs)
    except Exception as err:
        raise PluginError(key, path, f"building it failed: {type(err).__name__}: {err}") from None


@contextlib.contextmanager
def importable(roots: Sequence[Path]) -> Iterator[None]:
    """sys.path with `roots` in front for the duration (the driver's check sees what workers see)."""
    added = [str(root) for root in roots if str(root) not in sys.path]
    sys.path[:0] = added
    importlib.invalidate_caches()
    try:
        yield
    finally:
        for entry in added:
            with contextlib.suppress(ValueError):
                sys.path.remove(entry)
