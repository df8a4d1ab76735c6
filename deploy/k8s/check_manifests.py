"""Validate rendered kustomize output offline against the Kubernetes schemas.

Usage: python deploy/k8s/check_manifests.py RENDERED.yaml...   (run by `make test-deploy`
with the deploy tools' venv, which has kubernetes-validate and PyYAML). Every object is
validated strictly (unknown fields rejected) against each version in KUBERNETES_VERSIONS;
a kind without a schema fails unless deploy/waivers.yaml waives it with a reason. A waived
KServe ServingRuntime still has its pod template (containers, volumes) validated as a core
Pod, since KServe's own CRD schemas are not available offline.
With --checkov-skips, print the waived checkov check ids, comma-separated, and exit.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import yaml

WAIVERS_FILE = Path(__file__).resolve().parent.parent / "waivers.yaml"
# The oldest release we support (native gRPC probes are GA since 1.27) and the newest
# that kubernetes-validate knows.
KUBERNETES_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())


def load_waivers() -> dict[str, Any]:
    waivers: dict[str, Any] = yaml.safe_load(WAIVERS_FILE.read_text(encoding="utf-8"))
    for section in ("schema_validation", "checkov"):
        for waiver in waivers.get(section, []):
            if not str(waiver.get("reason", "")).strip():
                raise SystemExit(f"{WAIVERS_FILE}: waiver {waiver} in {section} has no reason")
    return waivers


SERVING_RUNTIME = ("serving.kserve.io/v1alpha1", "ServingRuntime")
POD_SPEC_FIELDS = ("containers", "volumes", "nodeSelector", "tolerations", "affinity")


def embedded_pod(obj: dict[str, Any]) -> dict[str, Any] | None:
    """The core Pod a ServingRuntime's spec describes (its ServingRuntimePodSpec part)."""
    if (obj.get("apiVersion"), obj.get("kind")) != SERVING_RUNTIME:
        return None
    spec = obj.get("spec", {})
    pod_spec = {field: spec[field] for field in POD_SPEC_FIELDS if field in spec}
    name = obj.get("metadata", {}).get("name", "runtime")
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": pod_spec}


def validate_object(obj: dict[str, Any], name: str) -> list[str]:
    """Strict validation of one object against every KUBERNETES_VERSIONS schema."""
    problems: list[str] = []
    api_kind = (obj.get("apiVersion", ""), obj.get("kind", ""))
    for version in KUBERNETES_VERSIONS:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            problems.append(f"{name}: no schema for {api_kind} in {version} and no waiver")
        except kubernetes_validate.ValidationError as error:
            location = "/".join(str(part) for part in error.path)
            problems.append(f"{name} ({version}) at {location}: {error.message}")
    return problems


def validate_file(path: Path, waived_kinds: dict[tuple[str, str], str]) -> list[str]:
    """Problems found in one rendered file (empty when every object is valid)."""
    problems: list[str] = []
    objects = [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]
    if not objects:
        return [f"{path}: no objects rendered"]
    for obj in objects:
        api_kind = (obj.get("apiVersion", ""), obj.get("kind", ""))
        name = f"{path.name}: {api_kind[1]}/{obj.get('metadata', {}).get('name', '?')}"
        if api_kind in waived_kinds:
            print(f"WAIVED {name}: {waived_kinds[api_kind]}")
            pod = embedded_pod(obj)
            if pod is not None:
                pod_problems = validate_object(pod, f"{name} (its pod template)")
                problems += pod_problems
                if not pod_problems:
                    print(f"OK {name}: its containers and volumes, as a core Pod")
            continue
        object_problems = validate_object(obj, name)
        problems += object_problems
        if not object_problems:
            print(f"OK {name} against {', '.join(KUBERNETES_VERSIONS)}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", type=Path)
    parser.add_argument("--checkov-skips", action="store_true")
    args = parser.parse_args(argv)
    waivers = load_waivers()
    if args.checkov_skips:
        print(",".join(waiver["id"] for waiver in waivers.get("checkov", [])))
        return 0
    waived_kinds = {
        (waiver["apiVersion"], waiver["kind"]): waiver["reason"]
        for waiver in waivers.get("schema_validation", [])
    }
    problems = [problem for path in args.files for problem in validate_file(path, waived_kinds)]
    for problem in problems:
        print(f"FAIL {problem}", file=sys.stderr)
    return 1 if problems or not args.files else 0


if __name__ == "__main__":
    sys.exit(main())
