"""Generate the Python stubs for ``proto/pbkv/v1/pbkv.proto`` (the one generation script).

    python proto/generate.py            # rewrite proto/pbkv/v1/pbkv_pb2*.py
    python proto/generate.py --out DIR  # write them under DIR instead (drift test)

protoc runs with ``proto/`` as the include root, so the stubs import each other as
``pbkv.v1.pbkv_pb2``, which is where setup.py installs this folder.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent
PROTO_FILE = Path("pbkv/v1/pbkv.proto")
STUB_DIR = PROTO_ROOT / PROTO_FILE.parent
# No .pyi: ruff's exclude (pyproject) covers only the generated .py files.
GENERATED = ("pbkv_pb2.py", "pbkv_pb2_grpc.py")


def generate(out_dir: Path) -> list[Path]:
    """Run protoc (grpcio-tools) and write the generated files into ``out_dir``."""
    from grpc_tools import protoc  # build-time dependency only

    include = Path(protoc.__file__).resolve().parent / "_proto"
    with tempfile.TemporaryDirectory() as tmp:
        code = protoc.main(
            [
                "grpc_tools.protoc",
                f"-I{PROTO_ROOT}",
                f"-I{include}",
                f"--python_out={tmp}",
                f"--grpc_python_out={tmp}",
                str(PROTO_FILE),
            ]
        )
        if code != 0:
            raise RuntimeError(f"protoc failed on {PROTO_ROOT / PROTO_FILE} (exit {code})")
        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        for name in GENERATED:
            target = out_dir / name
            shutil.copyfile(Path(tmp) / PROTO_FILE.parent / name, target)
            written.append(target)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=STUB_DIR, help="output folder")
    args = parser.parse_args(argv)
    for path in generate(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
