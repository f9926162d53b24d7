#!/usr/bin/env python3
"""Validates Kubernetes YAML offline.

Built-in kinds are checked with the kubernetes-validate package (strict: unknown fields are
errors); custom resources against the openAPIV3Schema of their CustomResourceDefinition,
read from the --crd files. A kind with no schema at all is an error, not a warning.

    validate_manifests.py [-k 1.33] [--crd crds.yaml]... FILE...
"""
import argparse
import sys

try:
    import jsonschema
    import kubernetes_validate
    from kubernetes_validate import utils
    import yaml
except ImportError as e:  # pragma: no cover
    print(f"cannot import {e.name}: install it with `pip install kubernetes-validate`")
    sys.exit(3)


def documents(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def strict(schema):
    """Structural CRD schemas prune unknown fields; here they are errors instead."""
    if isinstance(schema, dict):
        if schema.get("type") == "object" and "properties" in schema \
                and not schema.get("x-kubernetes-preserve-unknown-fields"):
            schema.setdefault("additionalProperties", False)
        for value in schema.values():
            strict(value)
    elif isinstance(schema, list):
        for value in schema:
            strict(value)
    return schema


def crd_schemas(paths):
    schemas = {}
    for path in paths:
        for crd in documents(path):
            if crd.get("kind") != "CustomResourceDefinition":
                continue
            group = crd["spec"]["group"]
            kind = crd["spec"]["names"]["kind"]
            for version in crd["spec"]["versions"]:
                schema = strict(version["schema"]["openAPIV3Schema"])
                # apiVersion, kind and metadata belong to every object; the API server
                # checks them, not the CRD's schema.
                schema.setdefault("properties", {}).update({
                    "apiVersion": {"type": "string", "enum": [f"{group}/{version['name']}"]},
                    "kind": {"type": "string", "enum": [kind]},
                    "metadata": {"type": "object"},
                })
                schemas[(f"{group}/{version['name']}", kind)] = schema
    return schemas


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("-k", "--kubernetes-version", default="1.33")
    parser.add_argument("--crd", action="append", default=[])
    parser.add_argument("files", nargs="+")
    args = parser.parse_args()
    crds = crd_schemas(args.crd)
    passed = failed = 0
    for path in args.files:
        for doc in documents(path):
            name = f"{path}: {doc.get('kind')}/{(doc.get('metadata') or {}).get('name')}"
            key = (doc.get("apiVersion"), doc.get("kind"))
            try:
                if key in crds:
                    jsonschema.validate(doc, crds[key])
                else:
                    kubernetes_validate.validate(doc, args.kubernetes_version, strict=True)
                passed += 1
                print(f"ok    {name}")
            except utils.ValidationError as e:
                failed += 1
                where = ".".join(str(p) for p in e.path)
                print(f"FAIL  {name}: {where}: {e.message}")
            except jsonschema.ValidationError as e:
                failed += 1
                where = ".".join(str(p) for p in e.absolute_path)
                print(f"FAIL  {name}: {where}: {e.message}")
            except utils.SchemaNotFoundError as e:
                failed += 1
                print(f"FAIL  {name}: no schema: {e.message}")
    print(f"manifests: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
