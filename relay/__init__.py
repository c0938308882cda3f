"""The relay: forwards opaque encrypted CRDT updates between the devices of a book."""
