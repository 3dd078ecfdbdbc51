"""Renders the tapwire chart with Helm's own template engine (helm-python-sdk: Helm v4 as a
library, no cluster, no helm binary) for the cases the checks cover: the defaults, each example
values file and tests/values-options.yaml.

As a program it writes each case's manifests to OUT_DIR/<case>/ for the policy checker:
    python deploy/helm/tests/chart.py OUT_DIR
"""

import sys
from pathlib import Path

import helm_python as helm
import yaml

HELM_DIR = Path(__file__).resolve().parent.parent
CHART_DIR = HELM_DIR / "tapwire"
RELEASE = "shadow"
NAMESPACE = "tapwire"


def cases() -> dict[str, Path | None]:
    """Case name -> values file (None: the chart's defaults alone)."""
    found: dict[str, Path | None] = {"default": None}
    for path in sorted((CHART_DIR / "examples").glob("*.yaml")):
        found[f"example-{path.stem}"] = path
    found["options"] = HELM_DIR / "tests" / "values-options.yaml"
    return found


def values_of(path: Path | None) -> dict:
    if path is None:
        return {}
    return yaml.safe_load(path.read_text()) or {}


def render(values: dict) -> dict[str, str]:
    """Template path -> rendered text, as `helm template` would produce (schema checked)."""
    with helm.Chart.load(str(CHART_DIR)) as chart:
        return chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)


def manifests(values: dict) -> list[dict]:
    """Every Kubernetes object the chart renders for `values`."""
    objects = []
    for path, text in sorted(render(values).items()):
        if not path.endswith(".yaml"):
            continue
        objects.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return objects


def find(objects: list[dict], kind: str, name_suffix: str = "") -> dict:
    """The one object of `kind` whose name ends with `name_suffix`; fails if not exactly one."""
    matches = [
        o for o in objects if o["kind"] == kind and o["metadata"]["name"].endswith(name_suffix)
    ]
    assert len(matches) == 1, f"expected one {kind} *{name_suffix}, got {len(matches)}"
    return matches[0]


def write_cases(out_dir: Path) -> None:
    for case, path in cases().items():
        case_dir = out_dir / case
        case_dir.mkdir(parents=True, exist_ok=True)
        for old in case_dir.glob("*.yaml"):
            old.unlink()
        for template, text in render(values_of(path)).items():
            if template.endswith(".yaml") and text.strip():
                (case_dir / Path(template).name).write_text(text)
        print(f"rendered {case} -> {case_dir}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: chart.py OUT_DIR")
    write_cases(Path(sys.argv[1]))
