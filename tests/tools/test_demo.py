"""Until the pipeline exists, `make demo` says so and fails instead of pretending."""

from __future__ import annotations

import pytest

from tools import demo


def test_demo_refuses_honestly(capsys: pytest.CaptureFixture[str]) -> None:
    assert demo.main(["up"]) == 1
    assert "not built yet" in capsys.readouterr().err


def test_down_with_nothing_running_succeeds() -> None:
    assert demo.main(["down"]) == 0
