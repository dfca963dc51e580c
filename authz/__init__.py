"""authz: the trust layer for LLM and MCP traffic, as an Envoy ext_authz / ext_proc sidecar."""

__version__ = "0.1.0"
