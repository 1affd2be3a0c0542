"""The market's state, split per resource (accounts, offers, instances, overlays) over one lock and one clock; it
returns records (:mod:`skyward_ray.emulator.records`) and knows nothing of HTTP."""

from skyward_ray.emulator.state.backend import MarketBackend

__all__ = ["MarketBackend"]
