"""Shims that let code written for other libraries run unchanged."""
