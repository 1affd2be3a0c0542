"""``skyward-ray doctor``: check the assumptions ``ray up`` makes against a real Vast account, free first, then for
cents.

It sits at the console's level (it may import every layer): the free checks (:mod:`.free`) use the Vast client and
the placement planner exactly as the provider does; the rental checks (:mod:`.rent`) rent through the provider itself,
so the create body, the label and the SSH runner are those of ``ray up``. :mod:`.report` holds the rows, the verdict
and the secret scrubbing; :mod:`.wire` watches what the API answered (429 bodies and headers, raw rows);
:mod:`.node_probe` is the standard-library script run on a rented node.
"""

from skyward_ray.doctor.report import Report, Row, Status

__all__ = ["Report", "Row", "Status"]
