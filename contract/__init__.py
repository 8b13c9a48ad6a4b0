"""The contract every system under test meets, and the only package an adapter needs to import.

What a rule may rely on lives here, apart from any one implementation:

* :mod:`.trace` -- the trace event schema (who called whom, with what, and what came back);
* :mod:`.errors` -- the typed error tree with the errno each error maps to;
* :mod:`.profiles` -- the platform profiles (TDX Connect, SEV-TIO, CCA) as data;
* :mod:`.tdisp` -- the TDISP wire codec and the TDI state table (PCIe 6.x §11.3);
* :mod:`.ide_km` -- the IDE_KM wire codec (PCIe 6.x §6.33.3);
* :mod:`.framing` -- the spdm-emu socket frame, DOE objects and the SPDM messages that carry TDISP/IDE_KM.

The reference implementation, the conformance suite, the strategies and the reports all build on it; an
adapter for a real kernel, VMM, TSM or device imports this package alone.
"""
