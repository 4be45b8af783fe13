"""Generated stubs of protos/llmos/v1/syscalls.proto (regenerate with `python protos/gen.py`)."""
