"""The reference client of the Home Pocket relay: what a phone does, in Python.

It holds every key and every plaintext; the server only ever sees what this package
has already encrypted. `client/PROTOCOL.md` walks through the same steps for app
developers in other languages; its section "Using the reference client from Python"
lists the public API.

Public: `client.device.Device` (one phone), `client.pair` (`invite`, `run_generator`,
`run_joiner`, `side_by_side`, `Invitation`, `Paired`, the `CompareSas` callback type),
`client.ledger.Ledger` and `Entry`, `client.identity.Identity`, `client.api.Api` and
`RelayError`, `client.crypto` (`seal`, `open_sealed`, the associated data), and
`client.session.Backoff`. Internal (may change without notice): `client.state`,
`RelaySession`'s methods other than `live`, `running`, `online_peers` and `stop`, and
the `Device` methods marked "Internal" (the session calls them).
"""
