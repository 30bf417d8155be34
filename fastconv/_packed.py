"""PackedWeights: a layer's cache of its weight in the forms kernels use.

A backend may compute a form of the filters before it convolves (the
Winograd-domain filters of a 3x3 layer: 36 values per filter). A stateless
call computes it every time; ``nn.Conv2d`` instead hands the functional
layer a ``PackedWeights`` (private keyword ``_packed``), through which the
backend keeps each form while the weight's values stay the same.

Staleness cannot be missed: every use compares the weight with a snapshot
taken when the forms were computed (shape, dtype and every value, so an
optimizer's in-place update, ``load_state_dict``, assignment to ``.data`` or
of a new Parameter all count), and drops every form when they differ. The
comparison reads the weight twice, much less than recomputing a form.
"""

from __future__ import annotations

import numpy as np


class PackedWeights:
    """Forms of one weight array, keyed by what computed them."""

    __slots__ = ("_snapshot", "_forms", "_constant")

    def __init__(self, constant=None):
        """``constant``: an array its owner never changes (an ONNX model's
        initializer): while it stays read-only, a call with that very
        array skips the comparison (for a 512 x 512 x 3 x 3 weight, about
        2 ms a call here)."""
        self._snapshot = None
        self._forms = {}
        if constant is not None:
            constant.flags.writeable = False
        self._constant = constant

    def __len__(self) -> int:
        """How many forms are held (for tests)."""
        return len(self._forms)

    def clear(self) -> None:
        self._snapshot = None
        self._forms = {}

    def get(self, weight: np.ndarray, key, compute):
        """The form ``key`` of ``weight``: ``compute()``'s result, kept
        while ``weight`` has the values it had then."""
        snapshot = self._snapshot
        if weight is self._constant and not weight.flags.writeable \
                and snapshot is not None:
            pass                      # the owner's read-only constant
        elif snapshot is None or snapshot.shape != weight.shape \
                or snapshot.dtype != weight.dtype \
                or not np.array_equal(snapshot, weight):
            self._snapshot = np.array(weight, copy=True)
            self._forms = {}
        form = self._forms.get(key)
        if form is None:
            form = compute()
            self._forms[key] = form
        return form
