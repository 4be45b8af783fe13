"""Quality of quantized weights: perplexity on a fixed text (bench/data/quality.txt) for fp32
and each quantization mode llmos serves, on the default model. int8 must stay within 3%.

    python bench/quality.py [--json bench/results/quality.json]

The same table also times a decode step per mode; bench/quantizers.py adds the methods llmos
measured and did not choose (torch.ao quantize_dynamic, torchao).
"""
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.quantizers import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(default_methods="fp32,llmos_int8,bf16"))
