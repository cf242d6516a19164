"""Small pure-ASGI layers around the dispatch, composed in one place (`ManifoldApp.compose`; `app.layers` lists
them, outermost first): observing (observe.py), the request id (request_id.py), then a library user's own
(docs/library.md)."""
