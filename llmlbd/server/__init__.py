"""The proxy: `master/` (gunicorn master, pre-fork) and `worker/` (after fork).

Modules at this level (parse, responses) are plain functions used by both sides
and by `llmlbctl explain`; they import no client library.
"""
