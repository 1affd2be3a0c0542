"""The HTTP layer: the route table (:mod:`.routes`), the aiohttp app with auth, counters and rate limits
(:mod:`.app`), fault injection (:mod:`.injection`) and the admin API (:mod:`.admin`)."""
