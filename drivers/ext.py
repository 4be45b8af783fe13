"""Fused CPU ops built from drivers/csrc/ at install time (`make setup` runs `python -m
llmos.drivers.ext`), and loaded when the driver starts.

The ops are optional: where the library was not built (no C++ compiler, another torch), every
caller keeps its plain torch path. For the int8 ops and RMSNorm that path gives the same bits;
llmos's own fp32 and int8 products are then not offered (oneDNN's or MKL's serve), and decode attention
gathers the pages for SDPA, which rounds differently (a row still never depends on its batch).
`available()` says which it is, and the model's kernels line (`llmos models`, the load answer)
says which.

    python -m llmos.drivers.ext          # build into drivers/_build/ (about 30 s of g++)

The ops: the int8 activation quantization and oneDNN's product around it (quant_rows.cpp),
RMSNorm and the packed fp32 product as ops torch.compile calls whole (opaque.cpp), llmos's own
fp32 product (linear_dot.cpp) and the same product on weights kept as 4- or 8-bit blocks
(block_dot.cpp), its own int8 product (int8_dot.cpp, AVX-512 VNNI; elsewhere plain integer
code, not offered), paged decode attention (paged_attention.cpp), a decode step's layers in one
call (decode_stack.cpp, the class llmos.DecodeStack) and greedy sampling's argmax (argmax.cpp);
vec.h is their vector arithmetic, quant_row.h the activation quantization of a row and ops.h
the ops they call in C++.
"""
from __future__ import annotations

import os
import sys
from functools import cache
from pathlib import Path

import torch

SOURCES = [Path(__file__).resolve().parent / "csrc" / name
           for name in ("quant_rows.cpp", "opaque.cpp", "linear_dot.cpp", "block_dot.cpp", "paged_attention.cpp",
                         "int8_dot.cpp", "decode_stack.cpp", "argmax.cpp")]
HEADERS = [SOURCES[0].parent / name for name in ("vec.h", "quant_row.h", "ops.h")]
NAME = "llmos_fused"
OPS = ("quantize_rows_u8", "int8_linear", "rms_norm", "linear_packed", "dot_pack", "linear_dot", "paged_decode",
       "dot8_pack", "int8_dot", "int8_dot_fast", "block_pack", "block_dot", "argmax_rows")


def build_dir() -> Path:
    """Where the library is built: $LLMOS_EXT_DIR, else drivers/_build/ beside this file."""
    env = os.environ.get("LLMOS_EXT_DIR")
    return Path(env) if env else Path(__file__).resolve().parent / "_build"


def library() -> Path:
    return build_dir() / f"{NAME}.so"


def build(verbose: bool = False) -> Path:
    """Compile the sources into library() with torch's C++ extension builder; returns its path.
    For this machine's CPU (-march=native: it is built where it runs); -ffp-contract=off keeps
    every float operation as written, so the bits stay those of the torch ops."""
    from torch.utils import cpp_extension
    out = build_dir()
    out.mkdir(parents=True, exist_ok=True)
    cpp_extension.load(NAME, [str(s) for s in SOURCES], build_directory=str(out), is_python_module=False,
                       extra_cflags=["-O3", "-march=native", "-fno-math-errno", "-ffp-contract=off", "-fopenmp"],
                       extra_ldflags=["-fopenmp"], verbose=verbose)
    return library()


@torch.compiler.assume_constant_result  # torch.compile takes the answer as a constant, unread
def available() -> bool:
    """Whether the fused ops are loaded (once per process; False where they were not built)."""
    return _load()


@cache
def _load() -> bool:
    if hasattr(torch.ops, "llmos") and all(hasattr(torch.ops.llmos, op) for op in OPS):
        return True
    path = library()
    if not path.exists() or any(s.stat().st_mtime > path.stat().st_mtime for s in SOURCES + HEADERS):
        return False  # not built, or built from older sources: the torch path serves
    try:
        torch.ops.load_library(str(path))
    except (OSError, RuntimeError):
        return False
    if not all(hasattr(torch.ops.llmos, op) for op in OPS) or not _has_class("DecodeStack"):
        return False
    torch.library.register_fake("llmos::quantize_rows_u8", _quantize_rows_u8_shapes)  # traceable by torch.compile
    torch.library.register_fake("llmos::rms_norm", _rms_norm_shapes)
    torch.library.register_fake("llmos::int8_linear", _int8_linear_shapes)
    torch.library.register_fake("llmos::linear_packed", _linear_packed_shapes)
    torch.library.register_fake("llmos::linear_dot", _linear_dot_shapes)
    torch.library.register_fake("llmos::paged_decode", _paged_decode_shapes)
    torch.library.register_fake("llmos::int8_dot", _int8_dot_shapes)
    torch.library.register_fake("llmos::block_dot", _block_dot_shapes)
    return True


def _has_class(name: str) -> bool:
    try:
        getattr(torch.classes.llmos, name)
    except (AttributeError, RuntimeError):
        return False
    return True


def _quantize_rows_u8_shapes(x: torch.Tensor, smooth: torch.Tensor | None, eps: float,
                             qmax: float) -> tuple[torch.Tensor, torch.Tensor]:
    return x.new_empty(x.shape, dtype=torch.uint8), x.new_empty((x.shape[0], 1))


def _int8_linear_shapes(x: torch.Tensor, packed: torch.Tensor, scale: torch.Tensor, zeros: torch.Tensor,
                        bias: torch.Tensor | None, smooth: torch.Tensor | None, eps: float, qmax: float) -> torch.Tensor:
    return x.new_empty((*x.shape[:-1], scale.shape[0]))


def _int8_dot_shapes(x: torch.Tensor, packed: torch.Tensor, comp: torch.Tensor, scale: torch.Tensor,
                     bias: torch.Tensor | None, smooth: torch.Tensor | None, eps: float, qmax: float) -> torch.Tensor:
    return x.new_empty((*x.shape[:-1], scale.shape[0]))


def _block_dot_shapes(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor, n: int, bits: int,
                      bias: torch.Tensor | None) -> torch.Tensor:
    return x.new_empty((*x.shape[:-1], n))


def _linear_packed_shapes(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return x.new_empty((*x.shape[:-1], packed.shape[0]))


def _linear_dot_shapes(x: torch.Tensor, packed: torch.Tensor, n: int, bias: torch.Tensor | None) -> torch.Tensor:
    return x.new_empty((*x.shape[:-1], n))


def _paged_decode_shapes(q: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor, pages: torch.Tensor,
                         lens: torch.Tensor, scale: float, window: int) -> torch.Tensor:
    return torch.empty_like(q)


def _rms_norm_shapes(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return torch.empty_like(x)


def main() -> int:
    try:
        path = build(verbose="-v" in sys.argv)
    except Exception as e:  # noqa: BLE001 - a failed build leaves the torch path, and says why
        print(f"llmos fused ops not built ({type(e).__name__}: {e}); the plain torch path serves", file=sys.stderr)
        return 1
    print(f"built {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
