"""Limits: per-user rate limits and token/cost budgets, exact under concurrency."""
