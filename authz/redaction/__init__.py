"""Redaction: find and mask PII and secrets in request bodies before they leave."""
