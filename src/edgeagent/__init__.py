"""edgeagent: an async field-bus gateway daemon for roadside and lamp-pole gateways."""

__version__ = "0.1.0"
