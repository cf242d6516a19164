"""Choosing a deployment for a public model name."""
