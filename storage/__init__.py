"""Encrypted photo storage through presigned URLs."""
