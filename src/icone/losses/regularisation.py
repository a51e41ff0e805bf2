"""Losses (to be filled)."""
