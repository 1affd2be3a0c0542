"""The market's state, split per resource (accounts, offers, instances, overlays) over one lock and one clock
(:mod:`.core`, :mod:`.lifecycle`), combined in :class:`.backend.MarketBackend`; it returns records and knows no HTTP."""
