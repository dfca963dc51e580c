"""Redaction: find and mask PII and secrets in request bodies before they leave, and in answers
(MCP results, model answers, streams) on their way back; restore placeholders for the user."""
