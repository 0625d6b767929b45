"""diffdefect package."""
