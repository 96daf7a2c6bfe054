"""The proxy: gunicorn master and gevent workers running the WSGI app."""
