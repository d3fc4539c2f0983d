"""Device I/O: one module per protocol plus the simulator; nothing else talks to devices."""

from adapters.base import Adapter, AdapterHealth, ConnectionState, TelemetrySink

__all__ = ["Adapter", "AdapterHealth", "ConnectionState", "TelemetrySink"]
