"""``python -m pbkv.training.samples [DATASETS_DIR]``: rebuild the bundled samples."""

from __future__ import annotations

import sys
from pathlib import Path

from pbkv.training.samples import SAMPLES_DIR, build

if __name__ == "__main__":
    default = SAMPLES_DIR.parents[2] / "shared" / "datasets"  # /work/main/training/samples
    datasets = Path(sys.argv[1]) if len(sys.argv) > 1 else default
    for app, summary in build(datasets).items():
        print(f"== {app}\n{summary}")
