"""A user's Python handler as a backend (`provider: python`, and the engine of `manifold.frontend`)."""
