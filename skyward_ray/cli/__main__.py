"""``python -m skyward_ray.cli``: the console without relying on the installed entry point."""

import sys

from skyward_ray.cli import main

sys.exit(main())
