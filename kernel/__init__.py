"""The llmos kernel: processes, scheduler and paged KV memory. It knows nothing of gRPC."""
from llmos.kernel.errors import (FailedPrecondition, InvalidArgument, KernelError, NotFound, ResourceExhausted,
                                 Unavailable)
from llmos.kernel.kernel import Kernel, KernelConfig
from llmos.kernel.proc import Limits, Process, Signal, State, StopRules
from llmos.kernel.sched import SchedConfig

__all__ = ["Kernel", "KernelConfig", "Process", "State", "Signal", "Limits", "StopRules", "SchedConfig",
           "KernelError", "InvalidArgument", "NotFound", "ResourceExhausted", "FailedPrecondition", "Unavailable"]
