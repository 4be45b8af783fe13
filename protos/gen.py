"""Generate the Python stubs of the syscall table into syscalls/v1 (or --out DIR).

    python protos/gen.py            # regenerate the committed stubs
    python protos/gen.py --out DIR  # generate elsewhere (the drift test does this)

grpc_tools writes `from llmos.v1 import syscalls_pb2`, after the proto package; the
stubs live in the `llmos.syscalls.v1` Python package, so that import is rewritten.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROTO = "llmos/v1/syscalls.proto"
FILES = ("syscalls_pb2.py", "syscalls_pb2.pyi", "syscalls_pb2_grpc.py")


def generate(out: Path) -> None:
    """Write the three stub files into `out`."""
    from grpc_tools import protoc

    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        args = ["protoc", f"-I{HERE}", f"--python_out={tmp}", f"--pyi_out={tmp}", f"--grpc_python_out={tmp}",
                str(HERE / PROTO)]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        for name in FILES:
            text = (Path(tmp) / "llmos" / "v1" / name).read_text()
            text = text.replace("from llmos.v1 import syscalls_pb2", "from llmos.syscalls.v1 import syscalls_pb2")
            (out / name).write_text(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=HERE.parent / "syscalls" / "v1")
    generate(ap.parse_args().out)


if __name__ == "__main__":
    sys.exit(main())
