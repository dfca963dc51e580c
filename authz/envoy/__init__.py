"""Adapters between Envoy's protos and our own model: proto in, proto out, nothing else."""
