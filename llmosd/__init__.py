"""llmos: an operating system for LLM programs.

This directory (llmosd/) is the root of the `llmos` import namespace: the daemon lives here,
and the package re-exports the client SDK so that `import llmos; llmos.load_model(...)` works.
"""
__version__ = "0.1.0"
