"""OPA as a reference oracle for Vigil's policy engine (authz/tests/opa_oracle.rs).

Reads one JSON request per line on stdin and writes one JSON answer per line on stdout, so the
whole differential suite runs in one python3 process:

  request: {"modules": [{"path": str, "text": str}], "data": object, "query": "data.a.b",
            "inputs": [object, ...]}
  answer:  {"compile_error": str | null,
            "results": [{"kind": "value", "value": any} | {"kind": "undefined"}
                        | {"kind": "builtin_error" | "error", "message": str}, ...]}

or, to probe builtins one call at a time:

  request: {"probes": ["count(\"abc\")", ...]}
  answer:  {"results": [<result as above, or {"kind": "compile_error", "message": str}>, ...]}

OPA comes from the opa-golib-python-bindings package (OPA as a Go shared library). It runs
with strict builtin errors, so a builtin that fails is reported as "builtin_error" rather than
making its expression undefined; the Rust side compares those cases with Vigil in strict mode.
"""

import json
import sys

try:
    from opa_bindings import OpaEngine, OpaError
except ImportError:  # the Rust side checks this first and prints an install hint
    sys.stderr.write(
        "opa_bindings is missing: pip3 install --ignore-requires-python "
        "opa-golib-python-bindings\n"
    )
    sys.exit(3)


def classify(error):
    """A result for an evaluation error: builtin (and builtin type) errors apart."""
    builtin = "eval_builtin_error" in error.message or "eval_type_error" in error.message
    return {"kind": "builtin_error" if builtin else "error", "message": error.message}


def probe(expressions):
    engine = OpaEngine()
    engine.print_handler = lambda message, location: None
    results = []
    try:
        for expression in expressions:
            try:
                bindings = engine.eval_query("x := " + expression, {})
            except OpaError as e:
                if e.code in ("prepare_error", "parse_error", "compile_error"):
                    results.append({"kind": "compile_error", "message": e.message})
                else:
                    results.append(classify(e))
                continue
            if not bindings:
                results.append({"kind": "undefined"})
            else:
                results.append({"kind": "value", "value": bindings[0]["x"]})
    finally:
        engine.close()
    return {"results": results}


def evaluate(request):
    if "probes" in request:
        return probe(request["probes"])
    engine = OpaEngine()
    engine.print_handler = lambda message, location: None
    try:
        try:
            for module in request["modules"]:
                engine.add_policy(module["path"], module["text"])
            if request.get("data"):
                engine.add_data(request["data"])
        except OpaError as e:
            return {"compile_error": str(e), "results": []}
        query = "x := " + request["query"]
        results = []
        for document in request["inputs"]:
            try:
                bindings = engine.eval_query(query, document)
            except OpaError as e:
                if e.code == "prepare_error":
                    return {"compile_error": str(e), "results": []}
                results.append(classify(e))
                continue
            if not bindings:
                results.append({"kind": "undefined"})
            else:
                results.append({"kind": "value", "value": bindings[0]["x"]})
        return {"compile_error": None, "results": results}
    finally:
        engine.close()


def main():
    for line in sys.stdin:
        if not line.strip():
            continue
        answer = evaluate(json.loads(line))
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
