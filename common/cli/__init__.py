"""The ``edgesight`` command. It starts services only as processes, never by importing them."""
