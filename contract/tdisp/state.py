"""The TDI state machine of PCIe TDISP, as one table.

Theory of operation
-------------------
PCIe r6.2 §11.2 gives a TDI four states::

                 LOCK_INTERFACE               START_INTERFACE
    CONFIG_UNLOCKED ---------> CONFIG_LOCKED ---------------> RUN
          ^                      |     |                       |
          |      STOP_INTERFACE  |     | tracked change,       | tracked change,
          +----------------------+     | FLR, IDE Insecure,    | FLR, IDE Insecure,
          +------------------------------- session end ... ----+-----> ERROR
          |                    STOP_INTERFACE                            |
          +---------------------------------------------------------------+

Rule 1: a request changes state only through :data:`TRANSITIONS`; a request that is not legal in
the current state (:data:`LEGAL_IN`) gets TDISP_ERROR(INVALID_INTERFACE_STATE) and *nothing
happens* (h11's "illegal transitions raise an error and nothing happens").
Rule 2: query requests (version, capabilities, report, state) never change state.
Rule 3: ERROR is sticky: only STOP leaves it (PCIe §11.2; rules-seed C.41).

STOP in CONFIG_UNLOCKED is where the spec (not legal) and the Intel validator (StopInterface.3:
success) disagree; the device's profile knob chooses (see :func:`stop_legal_in`).
``reports/diagrams.py`` renders this table as the legal-request matrix implementers read, so the
picture above and the code cannot drift apart silently: change the table, regenerate the docs.
"""

from __future__ import annotations

from teeio_conformance.contract.tdisp.codec import RequestCode as Rq
from teeio_conformance.contract.tdisp.codec import TdiState as S

__all__ = ["EVENT_TRIGGERED_ERROR_FROM", "LEGAL_IN", "QUERIES", "TRANSITIONS", "stop_legal_in"]

ALL_STATES = frozenset(S)

TRANSITIONS: dict[tuple[S, Rq], S] = {
    (S.CONFIG_UNLOCKED, Rq.LOCK_INTERFACE): S.CONFIG_LOCKED,
    (S.CONFIG_LOCKED, Rq.START_INTERFACE): S.RUN,
    (S.CONFIG_LOCKED, Rq.STOP_INTERFACE): S.CONFIG_UNLOCKED,
    (S.RUN, Rq.STOP_INTERFACE): S.CONFIG_UNLOCKED,
    (S.ERROR, Rq.STOP_INTERFACE): S.CONFIG_UNLOCKED,
}
"""(state, request) -> next state for every state-changing request (PCIe §11.2, Figure 11-4)."""

QUERIES = frozenset(
    {
        Rq.GET_TDISP_VERSION,
        Rq.GET_TDISP_CAPABILITIES,
        Rq.GET_DEVICE_INTERFACE_REPORT,
        Rq.GET_DEVICE_INTERFACE_STATE,
        Rq.VDM,
    }
)

LEGAL_IN: dict[Rq, frozenset[S]] = {
    Rq.GET_TDISP_VERSION: ALL_STATES,
    Rq.GET_TDISP_CAPABILITIES: ALL_STATES,
    Rq.GET_DEVICE_INTERFACE_STATE: ALL_STATES,
    Rq.VDM: ALL_STATES,
    Rq.LOCK_INTERFACE: frozenset({S.CONFIG_UNLOCKED}),
    Rq.GET_DEVICE_INTERFACE_REPORT: frozenset({S.CONFIG_LOCKED, S.RUN}),
    Rq.START_INTERFACE: frozenset({S.CONFIG_LOCKED}),
    Rq.STOP_INTERFACE: frozenset({S.CONFIG_LOCKED, S.RUN, S.ERROR}),
    Rq.BIND_P2P_STREAM: frozenset({S.RUN}),
    Rq.UNBIND_P2P_STREAM: frozenset({S.RUN}),
    Rq.SET_MMIO_ATTRIBUTE: frozenset({S.RUN}),
}
"""Where each request is legal (PCIe §11.3, per-request 'legal in' column)."""

EVENT_TRIGGERED_ERROR_FROM = frozenset({S.CONFIG_LOCKED, S.RUN})
"""Tracked events (config change, FLR, IDE Insecure, session end, poison) move these to ERROR."""


def stop_legal_in(*, idempotent: bool) -> frozenset[S]:
    """States where STOP_INTERFACE succeeds: the spec's, plus CONFIG_UNLOCKED if the profile says so."""
    legal = LEGAL_IN[Rq.STOP_INTERFACE]
    return legal | {S.CONFIG_UNLOCKED} if idempotent else legal


def _check_table() -> None:
    # Every transition's source state must be one where the request is legal.
    for (state, req), _ in TRANSITIONS.items():
        if state not in LEGAL_IN[req]:
            raise RuntimeError(f"TRANSITIONS has {req.name} from {state.name}, which LEGAL_IN forbids")
    for req in QUERIES:
        if any(r == req for (_, r) in TRANSITIONS):
            raise RuntimeError(f"query {req.name} must not change state")


_check_table()
