"""pytest plugin for ``make drills``: one table row per drill with its expectation and its result.

Loaded with ``-p drills.table`` (``tests`` on ``PYTHONPATH``). A drill names itself through the
``drill`` fixture (tests/drills/conftest.py); any other test becomes a row named after its module,
its name read as the expectation (``test_short_outage_loses_no_metric`` -> "short outage loses no metric").

Example output::

    | drill                                   | expectation                          | result        |
    |-----------------------------------------|--------------------------------------|---------------|
    | kill -9 mid stage one's last.pt write   | exit -9; the rerun resumes; ...      | pass (41 s)   |
"""

from __future__ import annotations

from typing import Any

import pytest

_ROWS: list[tuple[str, str, str]] = []
_SEEN: set[str] = set()


def _humane(name: str) -> str:
    return name.removeprefix("test_").removeprefix("drill_").replace("_", " ")


def _row(report: pytest.TestReport) -> tuple[str, str, str]:
    props = dict(report.user_properties)
    module, _, name = report.nodeid.rpartition("::")
    base, bracket, param = name.partition("[")
    drill = props.get("drill") or _humane(module.rsplit("/", 1)[-1].removesuffix(".py"))
    expect = props.get("expect") or _humane(base) + (f" [{param}" if bracket else "")
    return drill, expect, _result(report)


def _result(report: pytest.TestReport) -> str:
    if report.skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        return f"skipped ({reason.removeprefix('Skipped: ')})"
    if report.failed:
        return f"FAIL ({report.when})"
    return f"pass ({report.duration:.0f} s)"


@pytest.hookimpl(trylast=True)
def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Keep the call report (or the setup report when setup failed or skipped), once per test."""
    if report.nodeid in _SEEN or not (report.when == "call" or report.failed or report.skipped):
        return
    _SEEN.add(report.nodeid)
    _ROWS.append(_row(report))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Print the drill table after pytest's own summary."""
    if not _ROWS:
        return
    header = ("drill", "expectation", "result")
    widths = [max(len(r[i]) for r in [header, *_ROWS]) for i in range(3)]
    terminalreporter.write_sep("=", f"drills: {sum(r[2].startswith('pass') for r in _ROWS)} of {len(_ROWS)} pass")
    for row in [header, tuple("-" * w for w in widths), *_ROWS]:
        terminalreporter.write_line("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
