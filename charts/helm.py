#!/usr/bin/env python3
"""Helm's own engine (the helm-python-sdk package: Helm's Go SDK behind a C ABI), driven from
the chart tests: one command per call, JSON in and out.

    helm.py lint     CHART  < values.json   -> {"messages": [...], "errors": [...]}
    helm.py render   CHART  NAME NAMESPACE < values.json   -> [{"template", "manifest"}]
    helm.py install  CHART  NAME NAMESPACE < values.json   (the cluster of KUBECONFIG)
    helm.py upgrade  CHART  NAME NAMESPACE < values.json
    helm.py uninstall NAME NAMESPACE

A failure prints {"error": "..."} and exits 1.
"""

import json
import sys

import helm_python
from helm_python import _native


def release_action(config, action, chart, name, values, namespace):
    """helm install/upgrade with Helm 4's server-side apply taking over fields another manager
    (kubectl) set on objects installed before the chart; the Python wrapper does not expose
    that option, the engine does."""
    options = {"namespace": namespace, "timeout_seconds": 120, "force_conflicts": True}
    payload = _native.call_string(
        f"helm_{action}",
        config._raw(),
        _native.HANDLE(0),
        _native.HANDLE(0),
        chart,
        name,
        json.dumps(values),
        json.dumps(options),
    )
    return json.loads(payload)


def main(argv):
    command, args = argv[1], argv[2:]
    values = json.load(sys.stdin) if command != "uninstall" else None
    if command == "lint":
        return helm_python.lint(args[0], values, strict=True, namespace="ft-system")
    if command == "render":
        chart = helm_python.Chart.load(args[0])
        chart.validate_schema(values)
        rendered = chart.render(values, name=args[1], namespace=args[2], is_install=True)
        return [{"template": t, "manifest": m} for t, m in sorted(rendered.items())]
    config = helm_python.Config(namespace=args[-1])
    if command in ("install", "upgrade"):
        release = release_action(config, command, args[0], args[1], values, args[2])
    elif command == "uninstall":
        release = config.uninstall(args[0], timeout=120)
    else:
        raise ValueError(f"unknown command {command!r}")
    return {"manifest": release.get("manifest") if isinstance(release, dict) else None}


if __name__ == "__main__":
    try:
        print(json.dumps(main(sys.argv)))
    except Exception as error:  # Helm's errors carry the message worth showing.
        print(json.dumps({"error": f"{type(error).__name__}: {error}"}))
        sys.exit(1)
