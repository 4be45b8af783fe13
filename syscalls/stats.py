"""The Stats syscall: the daemon-wide figures of kernel/stats.py as a message.

They are aggregates (no owners, pids or text), so every identified caller may read them,
as with MemInfo and Devices. server.py lists the handler in its syscall table.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from llmos.kernel import stats as kstats
from llmos.kernel.errors import FailedPrecondition
from llmos.syscalls import convert, users
from llmos.syscalls.v1 import syscalls_pb2 as pb

if TYPE_CHECKING:
    from llmos.syscalls.server import SyscallServer


def message(s: kstats.Stats) -> pb.StatsResponse:
    """The StatsResponse of a Stats snapshot."""
    return pb.StatsResponse(generated_tokens=s.generated_tokens, tokens_per_s=s.tokens_per_s,
                            rate_window_s=s.rate_window_s, queue_depth=s.queue_depth, procs=s.procs,
                            pools=[convert.pool_info(p.model, p.mem, p.kv_bytes) for p in s.pools],
                            devices=[convert.device(d) for d in s.devices], uptime_s=s.uptime_s)


async def stats(server: "SyscallServer", req: pb.StatsRequest, context) -> pb.StatsResponse:
    users.caller()  # identified, like every syscall
    meter = server.meter
    if meter is None:
        raise FailedPrecondition("this daemon keeps no token meter, so it has no stats")
    return message(await server.call(lambda k: kstats.take(k, meter)))
