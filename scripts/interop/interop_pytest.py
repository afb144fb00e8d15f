"""pytest plugin for scripts/interop.sh.

Loaded with `-p interop_pytest` (this directory on PYTHONPATH). It

* skips, by node id, the tests that scripts/interop-skips.txt lists for
  the suite being run ($INTEROP_SUITE), when the target is our module
  ($INTEROP_TARGET = ours), with the reason from that file; and
* writes one line per test to $INTEROP_RESULTS:
      node id <TAB> outcome <TAB> message
  outcome: pass, fail, skip (the suite skipped it itself), xfail (the
  suite's expected failure, counted as a skip) or bydesign (skipped from
  the skip list). A test fails if its setup, call, teardown or any of its
  subtests failed.

PyKCS11's tests take CK_INFO.libraryVersion for "the SoftHSM version" and
skip most key tests (generateKey, wrap, objects, RSA OAEP/PSS, ECDSA)
below 2.0. Our module reports its own version (0.1) over SoftHSM2, so on
ours, with $INTEROP_PYKCS11_LIBRARY_VERSION set (the backend's version,
"2.6"), PyKCS11Lib.getInfo() reports that libraryVersion to the tests;
nothing else of CK_INFO is changed. This makes more tests run on ours,
the same ones as on SoftHSM2; it hides nothing.
"""

import os

import pytest

BYDESIGN_PREFIX = "interop-skips.txt: "


def load_skips(path, suite):
    """{test id: reason} for `suite` from the skip list at `path`."""
    skips = {}
    with open(path, encoding="utf-8") as f:
        for lineno, raw in enumerate(f, 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            entry, sep, reason = line.partition("#")
            fields = entry.split()
            if len(fields) != 2 or not sep or not reason.strip():
                raise pytest.UsageError(
                    f"{path}:{lineno}: want 'suite test-id  # reason', got {raw!r}"
                )
            if fields[0] == suite:
                skips[fields[1]] = reason.strip()
    return skips


def pytest_configure(config):
    version = os.environ.get("INTEROP_PYKCS11_LIBRARY_VERSION")
    if not version or os.environ.get("INTEROP_TARGET") != "ours":
        return
    major, minor = (int(x) for x in version.split("."))
    from PyKCS11 import PyKCS11Lib

    original = PyKCS11Lib.getInfo

    def getInfo(self):
        info = original(self)
        info.libraryVersion = (major, minor)
        return info

    PyKCS11Lib.getInfo = getInfo


def pytest_collection_modifyitems(config, items):
    path = os.environ.get("INTEROP_SKIPS_FILE")
    if not path or os.environ.get("INTEROP_TARGET") != "ours":
        return
    skips = load_skips(path, os.environ["INTEROP_SUITE"])
    for item in items:
        reason = skips.get(item.nodeid)
        if reason is not None:
            item.add_marker(pytest.mark.skip(reason=BYDESIGN_PREFIX + reason))


_results = {}  # node id -> [outcome, message]


def _one_line(text, limit=400):
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _message(report):
    lr = report.longrepr
    if lr is None:
        return ""
    if isinstance(lr, tuple) and len(lr) == 3:  # skip: (path, lineno, reason)
        return lr[2]
    crash = getattr(lr, "reprcrash", None)
    if crash is not None and getattr(crash, "message", None):
        return crash.message
    return str(lr).strip().splitlines()[-1] if str(lr).strip() else ""


def pytest_runtest_logreport(report):
    nodeid = report.nodeid
    if nodeid not in _results:
        _results[nodeid] = ["pass", ""]
    entry = _results[nodeid]
    subtest = hasattr(report, "context")
    if report.failed:
        if entry[0] != "fail":
            msg = _message(report)
            if subtest:
                msg = f"[subtest {_one_line(report._sub_test_description(), 120)}] {msg}"
            elif report.when != "call":
                msg = f"[{report.when}] {msg}"
            entry[:] = ["fail", msg]
    elif report.skipped and not subtest and entry[0] == "pass":
        if hasattr(report, "wasxfail"):
            entry[:] = ["xfail", f"expected failure {report.wasxfail}".strip()]
        else:
            msg = _message(report).removeprefix("Skipped: ")
            if msg.startswith(BYDESIGN_PREFIX):
                entry[:] = ["bydesign", msg[len(BYDESIGN_PREFIX):]]
            else:
                entry[:] = ["skip", msg]
    elif report.passed and report.when == "call" and hasattr(report, "wasxfail"):
        # unittest's unexpected success
        entry[:] = ["fail", "unexpected success (the suite expected a failure)"]


def pytest_sessionstart(session):
    out = os.environ.get("INTEROP_RESULTS")
    if out:
        open(out, "w", encoding="utf-8").close()


def pytest_runtest_logfinish(nodeid, location):
    """Append the test's line as soon as it is done, so that a crash of the
    process (a module can take it down) still leaves the results so far."""
    out = os.environ.get("INTEROP_RESULTS")
    if not out or nodeid not in _results:
        return
    outcome, msg = _results[nodeid]
    with open(out, "a", encoding="utf-8") as f:
        f.write(f"{nodeid}\t{outcome}\t{_one_line(msg)}\n")
