"""Tests of common.synthesis (a package so that test_generator.py cannot clash with a same-named module)."""
