"""``foodpipe dashboard``: the pipeline and the business, live in a browser.

- :mod:`~foodpipe.dashboard.views` turns what the operations commands read into the
  documents the page shows (pure functions, unit-tested without services);
- :mod:`~foodpipe.dashboard.queries` holds the business view's SQL (SQLAlchemy Core);
- :mod:`~foodpipe.dashboard.collector` reads Kafka and PostgreSQL on a timer, through the
  same code as ``foodpipe status``, ``foodpipe dlq list`` and ``foodpipe audit``;
- :mod:`~foodpipe.dashboard.app` serves the page, its JSON and a server-sent event stream;
- ``static/`` holds the page and the vendored chart library (``static/vendor/README.md``).
"""
