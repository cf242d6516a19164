"""OpenAI wire types and pure wire logic: no I/O, and no imports from the rest of the package."""
