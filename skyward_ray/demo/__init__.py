"""The demo's cluster config and job, shipped inside the package so ``skyward-ray demo`` runs from an installed wheel.

``emulator.yaml`` is also the config to ``ray up`` by hand on the local emulator; ``demo_job.py`` is the workload the
demo submits (a step that needs more GPUs at once than the head has).
"""

from pathlib import Path

CLUSTER_CONFIG = Path(__file__).with_name("emulator.yaml")
JOB = Path(__file__).with_name("demo_job.py")
