"""The model repository of `make bench`'s shadow configuration: the served model twice.

`python -m bench.shadow_repository --model-repository model_repository --model-name mnist
--output bench/results/shadow-repository` copies the model's highest version (model.onnx
and its reference_profile.json) to versions 1 and 2 of a new repository, whose config.pbtxt
makes version 2 the shadow of version 1 (core/shadow.py): every image version 1 answers is
also run by version 2, the same model, so the configuration measures what a shadow of equal
cost does to the primary's latency (bench/report.py compares its p99 with the defaults').
"""

from __future__ import annotations

import argparse
import shutil
from collections.abc import Sequence
from pathlib import Path

from mnist_serving_server.core.monitoring import PROFILE_FILE_NAME
from mnist_serving_server.core.repository import MODEL_FILE_NAME, list_versions

CONFIG = """\
# Written by bench/shadow_repository.py: version 2 (the same model) shadows version 1.
name: "{name}"
version_policy {{ specific {{ versions: [1, 2] }} }}
parameters {{ key: "shadow_version" value: {{ string_value: "2" }} }}
"""


def write_shadow_repository(source: Path, name: str, output: Path) -> Path:
    versions = list_versions(source, name)
    if not versions:
        raise SystemExit(f"no {name}/<version>/{MODEL_FILE_NAME} under {source}")
    served = source / name / str(max(versions))
    model_dir = output / name
    if model_dir.exists():
        shutil.rmtree(model_dir)
    for version in ("1", "2"):
        folder = model_dir / version
        folder.mkdir(parents=True)
        for file_name in (MODEL_FILE_NAME, PROFILE_FILE_NAME):
            if (served / file_name).is_file():
                shutil.copy2(served / file_name, folder / file_name)
    (model_dir / "config.pbtxt").write_text(CONFIG.format(name=name), encoding="utf-8")
    return model_dir


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--model-name", default="mnist")
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args(argv)
    print(f"wrote {write_shadow_repository(args.model_repository, args.model_name, args.output)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
