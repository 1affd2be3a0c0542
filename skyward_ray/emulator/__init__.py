"""A local, wire-compatible Vast.ai marketplace.

Independent of our client: it imports nothing from ``skyward_ray.vast``, ``provider`` or ``compute``, so our client
is tested against a server that shares no code with it.

* :mod:`.market` - state and rules, no HTTP (one lock, one :mod:`.clock`); :mod:`.search` - offers and the bundles
  query language; :mod:`.rows` - instance rows and the v1 list; :mod:`.scenarios` - the seeded market generator;
  :mod:`.faults` - the fault switches; :mod:`.documented` - Vast's documented limits and bounds, and the inferred
  choices next to them, in one place.
* :mod:`.app` - the aiohttp routes and the ``/_emulator/`` admin API; :mod:`.ratelimit` - the documented rate limits
  as a rule; :mod:`.server` - ``EmulatorServer``.
* :mod:`.runtime` - what stands behind an instance (``none``); ``netns`` - Linux namespaces with sshd.
* :mod:`.testing` - ``running_emulator()``, ``wait_until()``, ``RecordingRuntime``, hand-made machines.
"""
