"""Direct-callback IVR for Asterisk (ARI)."""

__version__ = "0.2.0"
