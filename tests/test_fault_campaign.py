"""benchmarks/fault_campaign.py: its judge, and two of its cheap cases through the real command line
(the whole campaign is a script: minutes of training runs)."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def campaign():
    spec = importlib.util.spec_from_file_location("fault_campaign", ROOT / "benchmarks" / "fault_campaign.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["fault_campaign"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    yield module
    del sys.modules["fault_campaign"]


def test_the_judge_flags_a_traceback_a_wrong_exit_and_a_made_up_position(campaign):
    verdict = campaign.Verdict()
    done = campaign.Done(1, "", "Traceback (most recent call last):\n  File x\nValueError: y\n")
    campaign.judge_error(verdict, done, 2, "y")
    assert verdict.problems == ["exit 1, expected 2", "a Python traceback"]
    verdict = campaign.Verdict()
    campaign.judge_error(verdict, campaign.Done(2, "", "f.pth:1:1: error: bad\n"), 2, "bad")
    assert verdict.problems == ["a made-up position 1:1 outside a spec"]
    verdict = campaign.Verdict()  # a position in a quoted flag value is a real one
    campaign.judge_error(verdict, campaign.Done(2, "", "--set:1:1: error: bad\n    1 | x=1\n      | ^\n"), 2)
    assert verdict.problems == []
    verdict = campaign.Verdict()
    campaign.judge_error(verdict, campaign.Done(2, "", "--set a=b: error: bad\n"), 2, "--set a=b")
    assert verdict.problems == [] and verdict.facts == ["--set a=b: error: bad"]


def test_every_group_of_the_issue_has_cases(campaign):
    groups = {c.group for c in campaign.CASES}
    assert groups == {"kill -9", "signals", "corrupt checkpoints", "disk full", "concurrent runs", "NaN",
                      "bad configs", "bad --set", "hostile specs", "bad images", "wrong checkpoints",
                      "bad dataset folders"}
    assert len({c.name for c in campaign.CASES}) == len(campaign.CASES) >= 78


def test_two_cases_run_through_the_command_line(campaign, tmp_path, capsys):
    assert campaign.main(["--only", "set-bool-batch|duplicate-key", "--keep", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "2 of 2 cases fine" in out
    assert "| bad --set | set-bool-batch |" in out and "| bad configs | duplicate-key |" in out
