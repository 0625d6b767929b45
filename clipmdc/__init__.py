"""clipmdc package."""
