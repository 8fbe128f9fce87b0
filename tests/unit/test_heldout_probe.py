"""The held-out probe's command line: a question count below 0 is one line naming the option."""

import pytest

from wavalign.toy.heldout_probe import parse_args


def test_a_negative_question_count_is_one_line_naming_the_option(capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--out", "probe.json", "--questions", "-3"])
    assert exit_info.value.code == 2
    assert (
        capsys.readouterr()
        .err.strip()
        .splitlines()[-1]
        .endswith("error: --questions: -3 is below 0 (0 = every question)")
    )


def test_question_counts_of_zero_and_more_are_taken():
    assert parse_args(["--out", "p.json"]).questions == 0
    assert parse_args(["--out", "p.json", "--questions", "8"]).questions == 8
