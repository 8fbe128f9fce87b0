"""Loading a tokenizer by the class AutoTokenizer chose (wavalign/model_files.py): only transformers'
own tokenizer classes are named and loaded that way; a class this transformers lacks goes through
AutoTokenizer (the equality with AutoTokenizer's tokenizer, per model family:
tests/integration/test_model_families.py)."""

import pytest

from wavalign.model_files import load_tokenizer, tokenizer_class_of


def a_class(module: str, qualname: str | None = None):
    cls = type("Tok", (), {"__module__": module})
    cls.__qualname__ = qualname or cls.__name__
    return cls()


def test_a_library_class_is_named_and_a_checkpoints_own_code_is_not():
    assert tokenizer_class_of(a_class("transformers.models.qwen2.tokenization_qwen2")) == (
        "transformers.models.qwen2.tokenization_qwen2:Tok"
    )
    assert tokenizer_class_of(a_class("transformers_modules.my_model.tokenization")) is None  # its own code
    assert tokenizer_class_of(a_class("my_package.tokenizers")) is None
    assert tokenizer_class_of(a_class("transformers.x", "Outer.Tok")) is None  # not reachable by name


@pytest.mark.parametrize("named", ["os:system", "transformers.x", "transformers.x:a.b", "transformers_modules.m:T"])
def test_a_class_name_that_is_not_transformers_own_is_refused(tmp_path, named):
    with pytest.raises(ValueError, match=f"tokenizer_class: {named!r} is not a class of transformers"):
        load_tokenizer(tmp_path, False, named)


def test_a_class_of_transformers_that_is_no_tokenizer_is_refused(tmp_path):
    named = "transformers.utils.import_utils:OptionalDependencyNotAvailable"
    with pytest.raises(ValueError, match=f"tokenizer_class: {named!r} is not a tokenizer class"):
        load_tokenizer(tmp_path, False, named)


def test_a_class_this_transformers_lacks_loads_through_autotokenizer(tmp_path, monkeypatch):
    """(A worker whose transformers is not the driver's: AutoTokenizer chooses there, as it would
    have without a class.)"""
    import transformers

    asked = []
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda path, **kw: asked.append(path) or "auto")
    assert load_tokenizer(tmp_path, False, "transformers.no_such_module:Tok") == "auto"
    assert load_tokenizer(tmp_path, False, "transformers.tokenization_utils_base:NoSuchTok") == "auto"
    assert asked == [tmp_path, tmp_path]
