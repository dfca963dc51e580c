"""Audit: a tamper-evident, signed record of every decision, verifiable offline."""
