"""Demo upstreams and a dev token issuer for `make run`, the README walk-through and the tests."""
