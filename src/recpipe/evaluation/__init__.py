"""Metrics and full-catalog ranking evaluation."""
