"""``skyward-ray doctor``: check the assumptions ``ray up`` makes against a real Vast account, free checks first
(:mod:`.free`), then for cents (:mod:`.rent` with :mod:`.node_checks` and :mod:`.cleanup`). It may import every layer:
it uses the client, the planner and the provider exactly as ``ray up`` does. :mod:`.report` holds the rows and the
verdict, :mod:`.wire` logs what the API answered, :mod:`.node_probe` runs on a rented node.
"""

from skyward_ray.doctor.report import Report, Row, Status

__all__ = ["Report", "Row", "Status"]
