"""The selective IDE stream moved to the contract (``teeio_conformance.contract.ide_stream``): the TLP format
and its protection are the wire both ends of a link must meet, so the suite's machines and an adapter use it
without the reference. Kept here so the reference's own imports keep working."""

from teeio_conformance.contract.ide_stream import *  # noqa: F403
from teeio_conformance.contract.ide_stream import __all__  # noqa: F401
