#!/usr/bin/env python3
"""Renders, lints and validates charts/bulkhead for tests/tests/chart.rs.

The real tools, no stand-ins: Helm 4's engine through PyPI `helm-python-sdk` (its
bundled libhelm_c: schema validation, rendering, `helm lint --strict`) and the
Kubernetes OpenAPI schemas of PyPI `kubernetes-validate` in strict mode (unknown
fields are errors).

Input (stdin, JSON):
    {"chart": DIR, "release": NAME, "namespace": NS, "kube_versions": ["1.29", ...],
     "scenarios": [{"name": ..., "values": {...}}]}
Output (stdout, JSON):
    {"tools": {...}, "value_keys": [dotted leaf paths of values.yaml],
     "results": {name: {"error": str|null, "lint": [finding...],
                        "invalid": [str...], "objects": [object...]}}}
A scenario whose values or templates fail gets "error" and no objects; the Rust
test decides whether that was expected. Exit 3: the tools are missing.
"""

from __future__ import annotations

import json
import sys

PACKAGES = "helm-python-sdk==0.2.2 kubernetes-validate==1.37.0"

try:
    import helm_python as helm
    import kubernetes_validate
    import yaml
    from kubernetes_validate import utils as kv_utils
except ImportError as missing:
    sys.stderr.write(
        f"chart test tools missing ({missing}).\n"
        "scripts/test installs them into a venv; by hand:\n"
        "  python3 -m venv target/tmp/chart-venv\n"
        f"  target/tmp/chart-venv/bin/pip install {PACKAGES}\n"
        "or point BULKHEAD_CHART_PYTHON at a python that has them.\n"
    )
    sys.exit(3)

# Lint severities (helm's support.Severity): 1 info, 2 warning, 3 error.
LINT_WARNING = 2


class StrictLoader(yaml.SafeLoader):
    """YAML that the API server would accept: a repeated mapping key is an error
    (PyYAML alone keeps the last one silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def leaf_keys(values: object, prefix: str = "") -> list[str]:
    """Dotted paths of every leaf of the default values (lists count as leaves)."""
    if isinstance(values, dict) and values:
        keys: list[str] = []
        for key, value in values.items():
            keys.extend(leaf_keys(value, f"{prefix}.{key}" if prefix else key))
        return keys
    return [prefix]


def validate_object(obj: dict, versions: list[str]) -> list[str]:
    """Strict schema validation against every version; a missing schema is an error."""
    label = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
    problems = []
    for version in versions:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as err:
            path = ".".join(str(p) for p in err.path)
            problems.append(f"{label} (Kubernetes {version}): {path}: {err.message}")
        except kubernetes_validate.SchemaNotFoundError as err:
            problems.append(f"{label}: {err.message}")
        except KeyError as err:
            problems.append(f"{label}: missing {err}")
    return problems


def run_scenario(chart: "helm.Chart", request: dict, scenario: dict, versions: list[str]) -> dict:
    values = scenario["values"]
    result: dict = {"error": None, "lint": [], "invalid": [], "objects": []}
    try:
        # What `helm install` checks before rendering: values.schema.json.
        chart.validate_schema(values)
        manifests = chart.render(
            values,
            name=request["release"],
            namespace=request["namespace"],
            is_install=True,
        )
    except helm.HelmError as err:
        result["error"] = f"{type(err).__name__}: {err}"
        return result

    # `helm lint --strict` with the same values, for the oldest version we validate.
    report = helm.lint(
        request["chart"],
        values,
        strict=True,
        namespace=request["namespace"],
        kube_version=f"v{versions[0]}.0",
    )
    result["lint"] = [
        f"[{m['severity']}] {m['path']}: {m['error']}"
        for m in report.get("messages", [])
        if m.get("severity", 0) >= LINT_WARNING
    ] + [f"[error] {e}" for e in report.get("errors", [])]

    for template, text in sorted(manifests.items()):
        if template.endswith("NOTES.txt") or not text.strip():
            continue
        try:
            documents = list(yaml.load_all(text, Loader=StrictLoader))
        except yaml.YAMLError as err:
            result["invalid"].append(f"{template}: not YAML: {err}")
            continue
        for doc in documents:
            if doc is None:
                continue
            if not isinstance(doc, dict):
                result["invalid"].append(f"{template}: a document is not a mapping")
                continue
            result["invalid"].extend(f"{template}: {p}" for p in validate_object(doc, versions))
            result["objects"].append({"template": template, "object": doc})
    return result


def main() -> int:
    request = json.load(sys.stdin)
    helm.disable_logging()
    versions = [
        kv_utils.latest_version().rsplit(".", 1)[0] if v == "latest" else v
        for v in request["kube_versions"]
    ]
    with helm.Chart.load(request["chart"]) as chart:
        results = {
            s["name"]: run_scenario(chart, request, s, versions) for s in request["scenarios"]
        }
        out = {
            "tools": {
                "helm": helm.helm_sdk_version(),
                "helm_python_sdk": helm.__version__,
                "kubernetes_validate": kubernetes_validate.__version__,
                "kube_versions": versions,
            },
            "chart": chart.metadata,
            "value_keys": leaf_keys(chart.values),
            "results": results,
        }
    json.dump(out, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
