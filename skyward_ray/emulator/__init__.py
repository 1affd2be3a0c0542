"""A local, wire-compatible Vast.ai marketplace, sharing no code with our client (``skyward_ray.vast``).

Layers, moto style: :mod:`.state` keeps the market and returns :mod:`.records`; :mod:`.market` parses wire bodies
(:mod:`.parse`), asks the state and renders the answer (:mod:`.rows`, :mod:`.render`, :mod:`.search`); :mod:`.wire`
is the HTTP layer (route table, auth, rate limits, fault injection, admin API); :mod:`.server` runs it in a thread.
"""
