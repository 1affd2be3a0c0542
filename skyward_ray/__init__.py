"""skyward-ray: Ray clusters on Vast.ai, and the ``sky`` API as thin shims over Ray.

``import skyward_ray as sky`` gives the public names; everything else lives in the layered subpackages.
"""

__version__ = "0.1.0"
