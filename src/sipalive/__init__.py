"""sipalive: tells whether SIP peers are dead or alive, and keeps the paths to them alive."""

__version__ = "0.1.0"
