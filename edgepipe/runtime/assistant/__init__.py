"""Assistants in `serve`: tool calls and grammar-constrained JSON (and, beside them, chat templates)."""
