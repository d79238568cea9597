"""The gateway's public API: the gRPC servicer and its proto <-> domain conversions."""
