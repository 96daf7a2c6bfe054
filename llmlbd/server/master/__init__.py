"""The gunicorn master: application, arbiter, child supervision, `llmlbd start`.

Pre-fork rule: nothing here imports `llmlbd.server.worker`, redis, urllib3, requests
or http.client at module level (tests/test_master_imports.py enforces it). Those
keep direct references to ssl.SSLContext; imported before gevent patches a
forked worker, they would block its event loop on every TLS handshake.
"""
