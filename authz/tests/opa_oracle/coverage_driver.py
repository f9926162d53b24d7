"""OPA's line coverage of a test run, as `opa test --coverage` would report it.

Usage: coverage_driver.py DIR TEST... ; prints {path: {"covered": [rows], "not_covered": [rows]}}.

The bindings report coverage per evaluation, so each test rule is evaluated on its own and the
covered rows are united, as `opa test` does over one coverage tracer.
"""

import json
import os
import sys

from opa_bindings import OpaEngine


def rows(ranges):
    return {r for x in ranges for r in range(x["start"]["row"], x["end"]["row"] + 1)}


def main():
    root, tests = sys.argv[1], sys.argv[2:]
    engine = OpaEngine()
    for name in sorted(os.listdir(root)):
        if name.endswith(".rego"):
            with open(os.path.join(root, name)) as f:
                engine.add_policy(name, f.read())
    covered, counted = {}, {}
    for test in tests:
        engine.eval_query(test, coverage=True)
        for path, report in engine.last_coverage["files"].items():
            hit = rows(report.get("covered", []))
            covered.setdefault(path, set()).update(hit)
            counted.setdefault(path, set()).update(hit | rows(report.get("not_covered", [])))
    out = {
        path: {
            "covered": sorted(covered.get(path, set())),
            "not_covered": sorted(lines - covered.get(path, set())),
        }
        for path, lines in counted.items()
    }
    print(json.dumps(out, sort_keys=True))


if __name__ == "__main__":
    main()
