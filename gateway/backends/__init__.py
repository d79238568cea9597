"""How the pipeline reaches encoders and the LM: interfaces (`base`), in-process (`local`) and
gRPC (`remote`, over `replicas`) implementations."""
