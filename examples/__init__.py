"""Example handlers (run from the repository root: `manifold serve --handler examples.echo_handler:answer`)."""
