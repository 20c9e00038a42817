"""Uplink: the only process that talks to the world outside the site; store and forward."""
