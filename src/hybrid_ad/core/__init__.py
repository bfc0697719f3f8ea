"""The scoring core: the fitted detector every runtime (batch, stream, service) calls."""
