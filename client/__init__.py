"""The reference client of the Home Pocket relay: what a phone does, in Python.

It holds every key and every plaintext; the server only ever sees what this package
has already encrypted. `client/PROTOCOL.md` walks through the same steps for app
developers in other languages.
"""
