"""Test helpers shared by the e2e suites (stand-ins for the sidecar and for upstreams)."""
