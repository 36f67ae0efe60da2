"""chimneyd: an emulator of NDIS TCP Chimney Offload."""

__version__ = "0.1.0"
