"""`make bench`: throughput and latency through real Envoy, against the floor of the gRPC hop."""
