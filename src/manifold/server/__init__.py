"""Everything HTTP and nothing about backends."""
