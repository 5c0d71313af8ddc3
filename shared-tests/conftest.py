"""Prints the bad-input matrix's own closing line, `bad_inputs: N passed, N failed`."""

_outcomes = {"passed": 0, "failed": 0}


def pytest_runtest_logreport(report):
    if "test_bad_inputs.py::test_case" in report.nodeid:
        if report.when == "call":
            _outcomes["passed" if report.passed else "failed"] += 1
        elif report.failed:
            _outcomes["failed"] += 1


def pytest_terminal_summary(terminalreporter):
    if sum(_outcomes.values()):
        terminalreporter.write_line(f"bad_inputs: {_outcomes['passed']} passed, {_outcomes['failed']} failed")
