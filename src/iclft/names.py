"""Names that several floors read, declared once at the bottom floor (nothing here imports
anything of iclft): the patching estimators and the positions they patch. The experiment's arms
and the fine-tuning methods are in :mod:`iclft.records`, beside the records that carry them."""

from __future__ import annotations

#: how a patching effect is measured: one patched forward per component (exact) or the
#: first-order estimate from one backward pass (attribution); see iclft.analysis.patching
ESTIMATORS: tuple[str, ...] = ("exact", "attribution")
#: the token positions a patch replaces: the query's tokens, the last token, or every token
PATCH_POSITIONS: tuple[str, ...] = ("query", "last", "all")
#: component kinds that per-position patching takes (heads: a layer x head x position table is
#: not drawn)
PER_POSITION_KINDS: tuple[str, ...] = ("resid", "mlp")
#: circuits settings that configs, runs and circuits.json files once wrote under another name
#: (old -> new), mapped where they are read
CIRCUIT_RENAMED: dict[str, str] = {"method": "estimator"}
