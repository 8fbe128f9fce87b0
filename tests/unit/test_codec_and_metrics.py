"""The toy codec round-trips; toy metrics on hand-built responses."""

from collections import Counter

import pytest

from wavalign.config import LayoutConfig
from wavalign.interleave import interleave
from wavalign.layout import SpeechLayout
from wavalign.toy.codec import UNKNOWN_WORD, ToyCodec
from wavalign.toy.metrics import ToyScorer, edit_distance, js_divergence, word_error_rate
from wavalign.toy.rows import ToyEncoder
from wavalign.toy.task import NUMBER_WORDS, Question, all_questions, parse_answer, split_questions, vocabulary_words

WORDS = vocabulary_words()


@pytest.fixture(scope="module")
def codec():
    return ToyCodec(WORDS, num_codes=256, seed=1234, min_len=2, max_len=4)


def test_codec_is_seeded_prefix_free_and_round_trips(codec):
    assert ToyCodec(WORDS, 256, 1234, 2, 4).pronunciations == codec.pronunciations
    assert ToyCodec(WORDS, 256, 99, 2, 4).pronunciations != codec.pronunciations
    prons = list(codec.pronunciations.values())
    assert all(2 <= len(p) <= 4 for p in prons)
    assert not any(a != b and a[: len(b)] == b for a in prons for b in prons)  # prefix-free
    sentence = "three plus four is seven".split()
    assert codec.decode(codec.encode(sentence)) == sentence
    for q in all_questions(9):
        assert codec.decode(codec.encode(q.answer_words())) == q.answer_words()


def test_codec_marks_garbage_as_one_unknown_word(codec):
    seven = list(codec.pronunciations["seven"])
    unused = next(c for c in range(256) if all(p[0] != c for p in codec.pronunciations.values()))
    assert codec.decode([unused, unused, *seven, unused]) == [UNKNOWN_WORD, "seven", UNKNOWN_WORD]


def test_codec_rejects_unknown_words(codec):
    with pytest.raises(KeyError, match="banana"):
        codec.encode(["banana"])


def test_questions_and_answers():
    questions = all_questions(9)
    assert len(questions) == 100 + 55  # all sums, non-negative differences
    assert Question(9, "plus", 9).result == 18 and Question(3, "minus", 3).result == 0
    assert all(0 <= q.result < len(NUMBER_WORDS) for q in questions)
    train, evaluation = split_questions(questions, 0.2, seed=1)
    assert len(evaluation) == 31 and not {q.key for q in train} & {q.key for q in evaluation}
    assert parse_answer("three plus four is seven".split()) == 7
    assert parse_answer("is seven is two".split()) == 2  # the last "is" wins
    assert parse_answer("three plus four is".split()) is None
    assert parse_answer("three is banana".split()) is None


def test_word_error_rate_and_js_by_hand():
    assert edit_distance("a b c".split(), "a x c d".split()) == 2  # one substitution, one insertion
    assert word_error_rate("a b c d".split(), "a b".split()) == 0.5
    assert word_error_rate([], ["a"]) == 1.0
    assert js_divergence(Counter({1: 2, 2: 2}), Counter({1: 1, 2: 1})) == 0.0
    assert js_divergence(Counter({1: 1}), Counter({2: 1})) == 1.0
    # p = (1, 0), q = (1/2, 1/2): m = (3/4, 1/4); JS = 1/2 log2(4/3) + 1/2 (1/2 log2(2/3) + 1/2 log2(2))
    assert js_divergence(Counter({1: 2}), Counter({1: 1, 2: 1})) == pytest.approx(0.311278, abs=1e-6)


class HandTokenizer:
    """Whole words at 100 + index, newline at 50: encode/decode as pure callables."""

    def __init__(self):
        self.ids = {w: 100 + i for i, w in enumerate(WORDS)}
        self.words = {i: w for w, i in self.ids.items()}

    def encode(self, text):
        return [50 if w == "\n" else self.ids[w] for w in text.replace("\n", " \n ").split(" ") if w]

    def decode(self, ids):
        return " ".join("\n" if i == 50 else self.words[i] for i in ids)


def test_scorer_on_hand_built_responses(codec):
    tok = HandTokenizer()
    layout = SpeechLayout(
        speech_start=1000, speech_end=1256, boa_id=10, eoa_id=11, eos_id=12, pad_id=13, interleave_ratio=(2, 8, 3, 8)
    )
    scorer = ToyScorer(layout, codec, tok.decode)
    encoder = ToyEncoder(tok.encode, layout, LayoutConfig(preset="tiny"), codec)
    q = Question(3, "plus", 4)
    right = encoder.reference_ids(q)
    wrong = encoder.reference_ids(q, stated_result=8)
    # "three plus four is seven \n" is 6 text tokens: chunks 2 | 3 | 1 against speech chunks of 6
    assert right[:3] == [tok.ids["three"], tok.ids["plus"], 10]
    s = scorer.score(right, 7)
    assert s.correct and s.word_error_rate == 0 and s.well_formed
    assert s.n_text_tokens == 5 + 1 + 1  # five words, the newline and eos are text
    assert s.n_speech_tokens == len(right) - 7
    assert not scorer.score(wrong, 7).correct and scorer.score(wrong, 7).word_error_rate == 0
    # Speech that says "eight" under a text that says "seven": one substituted word of five.
    text_says_seven = [t for t in right if not 1000 <= t < 1256 and t not in (10, 11, 12)]
    speech_says_eight = [t for t in wrong if 1000 <= t < 1256]
    mixed = [*interleave(text_says_seven, speech_says_eight, layout), 12]
    assert scorer.score(mixed, 7).word_error_rate == pytest.approx(1 / 5)
    assert not scorer.score(right[:-1], 7).well_formed  # no eos
    summary = scorer.evaluate([right, wrong], [7, 7], [right])
    assert summary["semantic_accuracy"] == 0.5 and summary["acoustic_wer"] == 0.0 and summary["well_formed_frac"] == 1.0


def test_the_warm_starts_wrong_answers_by_rule():
    import random

    from wavalign.toy.task import HEDGE

    q = Question(3, "plus", 4)
    assert all(1 <= abs(q.wrong_result(random.Random(seed)) - 7) <= 3 for seed in range(20))  # nearby
    assert q.wrong_result(random.Random(0), "next") == 8 and Question(9, "plus", 9).wrong_result(None, "next") == 17
    assert q.wrong_result(None, "left_operand") == 3 and Question(3, "minus", 0).wrong_result(None, "left_operand") == 4
    hedged = q.answer_words(q.wrong_result(None, "hedge"))
    assert hedged == "three plus four is what".split() and parse_answer(hedged) is None and HEDGE == -1
