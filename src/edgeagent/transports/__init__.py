"""Transports move bytes and own a bus; they translate library errors into ours."""
