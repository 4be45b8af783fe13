"""The syscall ABI: the plain data every syscall boundary shares, like Linux's uapi headers.

`spec` holds what a process is asked to be (SpawnSpec and its parts); `wire` turns it into
the gRPC messages of protos/llmos/v1 and back. The SDK builds specs, the servicer and the
HTTP gateway translate requests into them, the kernel spawns from them and the journal
stores them. Nothing here imports torch, grpc's server side or the kernel.
"""
