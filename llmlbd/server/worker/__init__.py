"""What runs only after fork, in a gevent worker: the WSGI app, routing runtime,
upstream HTTP client, forwarding with retries, the response relay, /v1/models.

The master reaches this package only from gunicorn's post-fork `load()` hook.
"""
