#!/usr/bin/env python3
"""Summarise scripts/interop.sh results: a table of pass/fail/skip per suite
and target, and the tests that pass on SoftHSM2 but not on our module.

    report.py --results DIR --skips FILE --targets "softhsm ours" SUITE...

DIR/SUITE/TARGET/results.tsv holds one line per test: id, outcome (pass,
fail, skip, xfail, bydesign), message; DIR/SUITE/TARGET/rc the runner's
exit code. Exit status 1 if, for a suite run on both targets, a test that
passed on SoftHSM2 failed on ours or was skipped there by the suite itself
(a skip from the skip list is by design and does not count), or if a run
produced no results or ended other than with 0 or 1 (a crash or a
timeout); else 0.
"""

import argparse
import os
import sys

LABEL = {"softhsm": "SoftHSM2 direct", "ours": "hsm-envelope (ours)"}


def load(results, suite, target):
    """({id: (outcome, message)}, rc) or (None, note) if the run left nothing."""
    d = os.path.join(results, suite, target)
    path = os.path.join(d, "results.tsv")
    rc = None
    try:
        with open(os.path.join(d, "rc"), encoding="utf-8") as f:
            rc = int(f.read().strip() or "0")
    except (OSError, ValueError):
        pass
    if not os.path.exists(path):
        return None, rc
    out = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) < 2:
                continue
            out[parts[0]] = (parts[1], parts[2] if len(parts) > 2 else "")
    return out, rc


def counts(res):
    c = {"pass": 0, "fail": 0, "skip": 0, "bydesign": 0}
    for outcome, _ in res.values():
        c["skip" if outcome == "xfail" else outcome] = c.get(outcome, 0) + 1
    return c


def skip_entries(path):
    """[(suite, id, reason)] from the skip list."""
    out = []
    with open(path, encoding="utf-8") as f:
        for raw in f:
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            entry, _, reason = line.partition("#")
            fields = entry.split()
            if len(fields) == 2:
                out.append((fields[0], fields[1], reason.strip()))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--results", required=True)
    ap.add_argument("--skips", required=True)
    ap.add_argument("--targets", required=True)
    ap.add_argument("suites", nargs="+")
    a = ap.parse_args()
    targets = a.targets.split()
    suites = sorted(set(a.suites), key=lambda s: (s.startswith("java"), s))

    data = {}
    broken = []
    for s in suites:
        for t in targets:
            res, rc = load(a.results, s, t)
            data[(s, t)] = res
            log = os.path.join(a.results, s, t, "output.log")
            if res is None or not res:
                broken.append(f"{s} on {t}: no results (runner exit code {rc}); see {log}")
                data[(s, t)] = None
            elif rc not in (0, 1, None):
                # 0/1: all passed / some failed; anything else is a crash,
                # a timeout (124) or a runner error: the results are partial.
                broken.append(f"{s} on {t}: runner exit code {rc} (crash, timeout or "
                              f"runner error), results may be partial; see {log}")

    # --- table ---
    w = max(len(s) for s in suites + ["suite"])
    head1 = f"{'':{w}} "
    head2 = f"{'suite':{w}} "
    for t in targets:
        extra = "  by-design" if t == "ours" else ""
        head1 += f"| {LABEL[t]:<{26 + len(extra)}}"
        head2 += f"| {'pass':>5} {'fail':>5} {'skip':>5} {'total':>6}{extra}  "
    print()
    print(head1.rstrip())
    print(head2.rstrip())
    print("-" * len(head2.rstrip()))
    for s in suites:
        row = f"{s:{w}} "
        for t in targets:
            res = data[(s, t)]
            extra_w = 11 if t == "ours" else 0
            if res is None:
                row += f"| {'(no results)':<{26 + extra_w}}"
                continue
            c = counts(res)
            row += f"| {c['pass']:>5} {c['fail']:>5} {c['skip']:>5} {len(res):>6}"
            if t == "ours":
                row += f"  {c['bydesign']:>9}"
            row += "  "
        print(row.rstrip())
    print()
    print("Counts are tests (a test with failing subtests is one failure). skip: skipped")
    print("by the suite itself (missing mechanism, version gate, xfail); by-design: from")
    print("scripts/interop-skips.txt, on ours only.")

    # --- differences ---
    regress = []  # (suite, id, kind, message)
    better = []
    if "softhsm" in targets and "ours" in targets:
        for s in suites:
            base, ours = data[(s, "softhsm")], data[(s, "ours")]
            if base is None or ours is None:
                continue
            for tid, (bo, _) in base.items():
                oo, om = ours.get(tid, ("missing", "not run on ours"))
                if bo == "pass" and oo in ("fail", "missing"):
                    regress.append((s, tid, "FAIL", om))
                elif bo == "pass" and oo in ("skip", "xfail"):
                    regress.append((s, tid, "SKIPPED on ours only", om))
                elif bo != "pass" and oo == "pass":
                    better.append((s, tid, bo))
        print()
        print(f"Pass on SoftHSM2, not on ours: {len(regress)}")
        for s, tid, kind, msg in regress:
            print(f"  {s}  {tid}  {kind}: {msg}")
        if better:
            print()
            print(f"Pass on ours, not on SoftHSM2: {len(better)}")
            for s, tid, bo in better:
                print(f"  {s}  {tid}  (SoftHSM2: {bo})")

    # --- skip list hygiene ---
    stale = []
    if "ours" in targets:
        for suite, tid, _ in skip_entries(a.skips):
            for s in suites:
                if suite == s or (suite == "java" and s.startswith("java")):
                    ours = data[(s, "ours")]
                    if ours is not None and ours.get(tid, ("",))[0] != "bydesign":
                        stale.append(f"{suite} {tid} (not found in the {s} run on ours)")
    if stale:
        print()
        print("Skip-list entries that matched no test (check scripts/interop-skips.txt):")
        for e in stale:
            print(f"  {e}")

    if broken:
        print()
        for b in broken:
            print(f"ERROR: {b}")
    print()
    if broken or regress:
        print("interop: FAILED" + (f" ({len(regress)} test(s) pass on SoftHSM2 but not on ours)" if regress else ""))
        return 1
    if "softhsm" in targets and "ours" in targets:
        print("interop: OK (every test that passes on SoftHSM2 passes on ours)")
    else:
        print(f"interop: ran on {targets[0]} only; nothing compared")
    return 0


if __name__ == "__main__":
    sys.exit(main())
