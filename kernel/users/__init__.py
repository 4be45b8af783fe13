"""Users: who a caller is (Cred), what they may do, their quotas, and the bearer tokens
that name them over TCP and HTTP. The kernel decides every rule here, in one place;
transports only find out who is calling (llmos.syscalls.server.interceptors, the HTTP
gateway) and hand the kernel a Cred."""
from llmos.kernel.users.cred import Cred
from llmos.kernel.users.quota import Quotas, QuotaKeeper, UserLimits

__all__ = ["Cred", "Quotas", "QuotaKeeper", "UserLimits"]
