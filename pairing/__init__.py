"""Pairing: a new device joins a book with a 6-digit code."""
