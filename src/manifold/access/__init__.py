"""Access control and spend (docs/access.md): who is calling (`principal`), what they may use, how much."""
