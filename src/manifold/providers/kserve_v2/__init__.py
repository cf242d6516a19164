"""KServe v2 / Open Inference Protocol backends (MLServer, Triton, KServe, Seldon Core 2)."""
