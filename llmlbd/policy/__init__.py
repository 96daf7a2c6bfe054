"""Routing policies, built as filter -> scorer -> picker pipelines plus one Redis script."""
