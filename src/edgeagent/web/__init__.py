"""The local status page and its JSON API, served by the agent itself (no CDN)."""
