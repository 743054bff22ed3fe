"""Scan discovery and reading, annotation tables, atomic writers and coordinate conversions."""
