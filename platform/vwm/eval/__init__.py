"""Label-free and probe evaluation of representations."""
