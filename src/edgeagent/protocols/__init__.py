"""Pure protocol codecs: bytes in, values out, no I/O.

Each module turns the bytes of one wire format into frozen dataclasses and raises only
:class:`edgeagent.errors.DecodeError` on bad input, so that transports can feed them
whatever the line delivers and drivers can give the values meaning. Submodules are
imported by name (``edgeagent.protocols.ruuvi``); nothing is re-exported here.
"""
