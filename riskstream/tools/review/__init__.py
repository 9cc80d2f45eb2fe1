"""`riskstream review`: the review queue, a small web service where analysts work the `review` decisions.

- ``store``: the database (SQLite by default): cases, decision history, consumed offsets, analysts,
  sessions, the label outbox and the append-only audit trail.
- ``ingest``: reads the decisions (and events, control) topics with ``read_committed`` into the store,
  exactly once: the consumed offsets are written in the same transaction as the cases.
- ``labels``: sends each verdict to the labels topic once (an outbox in the store).
- ``web``: the pages (Flask, Jinja2 autoescape), sign-in, CSRF, metrics.
- ``service``: runs the three together (waitress serves the pages).
"""
