"""Offers: the cached offer rows of every listed machine and the bundles search over them."""

from __future__ import annotations

from typing import Any

from skyward_ray.emulator.records import Caller
from skyward_ray.emulator.search import (
    CONTROL_KEYS,
    OfferQuery,
    SearchContext,
    build_offer_rows,
    finish_offer,
    sort_rows,
)
from skyward_ray.emulator.state.lifecycle import Lifecycle


class OfferBook(Lifecycle):
    """Offer rows are built per machine and cached until the machine changes (:meth:`MarketCore.touch`)."""

    offer_fields: frozenset[str] = frozenset()  # set once the machines are known

    def collect_offer_fields(self) -> frozenset[str]:
        """Every field a query may name: the finished row's keys plus the control keys."""
        sample = next((m for m in self.machine_order), None)
        fields: set[str] = set(CONTROL_KEYS)
        if sample is not None:
            with self.lock:
                saved = sample.listed, sample.free_gpus
                sample.listed, sample.free_gpus = True, max(sample.free_gpus, 1)
                rows = build_offer_rows(sample, self.epoch0)
                sample.listed, sample.free_gpus = saved
                sample.offer_rows = None
            ctx = SearchContext(0.0, 5.0, False, frozenset())
            fields |= set(finish_offer(rows[0], ctx, 1, True))
        return frozenset(fields)

    def rows_locked(self) -> list[dict[str, Any]]:
        if self.all_rows is None:
            rows: list[dict[str, Any]] = []
            for machine in self.machine_order:
                if machine.offer_rows is None:
                    machine.offer_rows = build_offer_rows(machine, self.epoch0)
                rows.extend(machine.offer_rows)
            self.all_rows = rows
        return self.all_rows

    def search(self, plan: OfferQuery, caller: Caller | None) -> tuple[list[dict[str, Any]], SearchContext]:
        """The static rows ``plan`` selects, in its order, and the context that finishes them."""
        self.tick()
        with self.lock:
            rows = self.rows_locked()
            rented = frozenset(inst.machine.machine_id for inst in self.instances.values()
                               if caller is not None and inst.user_id == caller.user.user_id)
            now_epoch = self.clock.epoch()
        ctx = SearchContext(now_epoch=now_epoch, storage_gb=plan.storage_gb, is_bid=plan.is_bid,
                            rented_machines=rented)
        matched = rows
        for check in plan.checks:
            matched = [row for row in matched if check(row, ctx)]
        return sort_rows(matched, plan.order, ctx, plan.limit), ctx

    def offer_count(self) -> int:
        with self.lock:
            return len(self.rows_locked())

    def gpu_names(self) -> list[str]:
        with self.lock:
            return sorted({m.gpu_name for m in self.machine_order})
