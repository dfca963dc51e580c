"""Policy: what a request is about (MCP, LLM API, HTTP) and whether this user may do it."""
