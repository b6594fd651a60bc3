"""The book's verdict is stated once, in chapter 13 (its landing page and its verdict page), and the
chapters before it agree with it.

Chapters 8, 9 and 12 run their experiments from weaker starts (a label-free MLP, an ImageNet
extractor at 32×32); each says so and points to chapter 13, whose answer on the field's benchmark
must be the one the committed table supports. Every chapter that compares rows states the same
significance rule.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from bgcn.experiments import field

ROOT = Path(__file__).resolve().parents[1]
POINTING = ["08_end_to_end_3_experiment", "09_estimators", "09_estimators_4_digits", "12_real_extractor_3_table"]
COMPARING = ["08_end_to_end_3_experiment", "09_estimators_4_digits", "12_real_extractor_3_table", "13_what_we_found_1_benchmark",
             "13_what_we_found_3_verdict"]
RULE = ("more than two standard errors from zero; with m comparisons about m/20 such differences "
        "appear by chance alone, so every table names m")


def page(name: str) -> str:
    return " ".join((ROOT / "chapters" / f"{name}.md").read_text(encoding="utf-8").split())


@pytest.fixture(scope="module")
def res():
    return field.load_field_results()


@pytest.mark.parametrize("name", POINTING)
def test_chapter_points_to_chapter_13_and_its_answer_matches_the_committed_table(res, name):
    text = page(name)
    e2e = [s for s in res["summary"] if s["row"].startswith("e2e_")]
    ahead = [s["row"] for s in e2e if s["beyond_noise"] and s["diff_mean"] > 0]
    assert "{doc}`13_what_we_found`" in text
    assert ("there the answer is no" in text) == (not ahead), (name, ahead)
    # "barely": exactly one row ahead by the rule, and the graph baseline above every row
    assert ("there the answer is barely" in text) == (len(ahead) == 1), (name, ahead)
    if "Laplace learning on the frozen pixels beats every row" in text:
        assert all(s["test_mean"] < res["by_row"]["laplace"]["test_mean"] for s in e2e)


@pytest.mark.parametrize("name", COMPARING)
def test_chapter_states_the_one_significance_rule(name):
    assert RULE in page(name), name
