"""Wire protocol: generated gRPC stubs, the tensor codec and error mapping."""
