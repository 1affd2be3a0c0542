"""The end of a rental: destroy whatever carries the run's label (found on the raw list pages, so a row our models do
not fit is still found), delete its overlay, confirm with a list, and estimate the spend; signals wait meanwhile.
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Iterator
from types import FrameType

from skyward_ray.doctor.node_checks import POLL_S, Node
from skyward_ray.doctor.report import Report, Status
from skyward_ray.doctor.wire import raw_instance_pages
from skyward_ray.provider.tags import is_cluster_label
from skyward_ray.vast.client import VastClient
from skyward_ray.vast.errors import VastError

SWEEP_TIMEOUT_S = 180.0


@contextlib.contextmanager
def shielded(report: Report) -> Iterator[None]:
    """Ctrl-C and SIGTERM only say "cleaning up" while the block runs, so the sweep is never cut short."""
    def note(signum: int, _frame: FrameType | None) -> None:
        report.note(f"signal {signal.Signals(signum).name} received: still destroying what was rented, please wait")

    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        for sig in previous:
            signal.signal(sig, note)
    except ValueError:  # not the main thread: nothing to shield
        previous = {}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class Cleanup:
    """Destroys what one rental left and reports it; safe to run after any failure."""

    def __init__(self, report: Report, client: VastClient, cluster_name: str, overlay_name: str, nodes: list[Node],
                 *, overlay: bool, prefix: str, credit_before: float | None) -> None:
        self.report = report
        self.client = client
        self.cluster_name = cluster_name
        self.overlay_name = overlay_name
        self.nodes = nodes
        self.overlay = overlay
        self.prefix = prefix
        self.credit_before = credit_before

    def labelled(self) -> list[int]:
        """Ids of every instance carrying this run's label, from the raw pages (a misfit row is still found)."""
        ids: list[int] = []
        for body in raw_instance_pages(self.client, 400):
            rows = body.get("instances") if isinstance(body, dict) else None
            for row in rows if isinstance(rows, list) else []:
                if isinstance(row, dict) and is_cluster_label(row.get("label"), self.cluster_name):
                    with contextlib.suppress(TypeError, ValueError):
                        ids.append(int(row["id"]))
        return ids

    def sweep(self) -> None:
        """Destroy everything carrying this run's label, delete its overlay, and confirm with a list."""
        if self.report.meta.get("doctor_cluster") != self.cluster_name:
            return  # nothing was attempted
        started = time.monotonic()
        deadline = started + SWEEP_TIMEOUT_S
        destroyed: list[int] = []
        left: list[int] = []
        errors: list[str] = []
        quiet_lists = 0
        while time.monotonic() < deadline:
            try:
                left = self.labelled()
            except VastError as exc:
                errors.append(str(exc))
                time.sleep(POLL_S)
                continue
            if not left:
                quiet_lists += 1
                if quiet_lists >= 2:  # a second empty list: a rental answered late would show by now
                    break
                time.sleep(POLL_S)
                continue
            quiet_lists = 0
            for instance_id in left:
                try:
                    if self.client.destroy_instance(instance_id):
                        destroyed.append(instance_id)
                        self.report.note(f"destroyed instance {instance_id}")
                except VastError as exc:
                    errors.append(str(exc))
            time.sleep(POLL_S)
        for instance_id in destroyed:
            if instance_id not in self.report.destroyed:
                self.report.destroyed.append(instance_id)
            if instance_id not in self.report.rented:
                self.report.rented.append(instance_id)
        for node in self.nodes:
            if node.gone_at is None and node.instance_id in destroyed:
                node.gone_at = time.monotonic()
        overlay_note = self.delete_overlay(errors)
        self.report.meta["left_rented"] = left
        all_ours = sorted(set(self.report.rented))
        observed = (f"destroyed {sorted(set(self.report.destroyed)) or 'nothing'} of rented {all_ours or 'nothing'}; "
                    f"the list shows {left or 'nothing'} with label {self.cluster_name} after "
                    f"{time.monotonic() - started:.1f} s{overlay_note}")
        if errors:
            observed += f"; errors: {errors[:2]}"
        expected = "nothing left rented (found by label)" + (", overlay deleted" if self.overlay else "")
        self.report.add(self.prefix + "destroyed", expected, observed,
                        Status.FAIL if left else Status.OK, destroyed=sorted(set(self.report.destroyed)), left=left)

    def delete_overlay(self, errors: list[str]) -> str:
        if not self.overlay:
            return ""
        try:
            present = [o for o in self.client.list_overlays() if o.name == self.overlay_name]
            if present:
                self.client.delete_overlay(name=self.overlay_name)
                return f"; overlay {self.overlay_name} deleted"
            return "; no overlay left"
        except VastError as exc:
            errors.append(str(exc))
            return f"; overlay {self.overlay_name} may remain"

    def spend(self) -> None:
        if not self.nodes:
            return
        total = 0.0
        for node in self.nodes:
            price = (node.instance.dph_total if node.instance and node.instance.dph_total else 0.0) or 0.0
            end = node.gone_at or time.monotonic()
            total += price * (end - node.accepted_at) / 3600
        after: float | None = None
        with contextlib.suppress(VastError):
            user = self.client.current_user()
            after = user.credit if user.credit is not None else user.balance
        credit = ""
        if self.credit_before is not None and after is not None:
            credit = f"; credit ${self.credit_before:.4f} -> ${after:.4f} (Vast may bill later)"
        self.report.add(self.prefix + "spend", "cents", f"about ${total:.4f} (price x time rented){credit}", Status.OK,
                        estimate=round(total, 6), credit_before=self.credit_before, credit_after=after)
