"""TDISP: the wire codec (:mod:`.codec`) and the TDI state table (:mod:`.state`)."""
