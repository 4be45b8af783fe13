"""The gRPC side of llmosd: the servicer (`servicer`), kernel objects as messages
(`convert`) and what runs before each handler (`interceptors`: who is calling, malformed
requests)."""
