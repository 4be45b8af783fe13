"""Syscalls, each in its own room:

- abi/     the plain data every boundary shares: SpawnSpec and its parts, and their wire form
- v1/      the stubs generated from protos/llmos/v1/syscalls.proto
- sdk/     the client SDK (Client, AsyncClient): what the shell and apps import
- server/  the gRPC servicer and its interceptors: decode, one kernel operation, encode
- http/    the OpenAI-compatible HTTP gateway

Nothing here holds policy: the kernel decides.
"""
