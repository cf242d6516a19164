"""Small pure-ASGI layers around the app (composed in `manifold.server.app.ManifoldApp.layers`)."""
