"""DirectCall: a compiled kernel's entry point, only for the argument types it was compiled
for; everything else goes through Numba's dispatcher."""

from __future__ import annotations

import numpy as np
import pytest
from numba import config, njit

from trajwatch._direct_call import DirectCall, fingerprint


@njit
def _total(values: np.ndarray, scale: float) -> float:
    return float(values.sum() * scale)


@pytest.mark.skipif(config.DISABLE_JIT, reason="entry points are compiled code")
def test_the_entry_point_serves_only_the_types_it_was_compiled_for() -> None:
    direct = DirectCall(_total)
    values = np.arange(4.0)
    assert direct.entry((values,), (2.0,)) is _total  # nothing compiled yet: the dispatcher
    assert not direct.entries
    assert _total(values, 2.0) == 12.0  # the dispatcher compiles (float64, 1-D, C)
    entry = direct.entry((values,), (2.0,))
    assert entry is not _total and direct.entries == {fingerprint((values,)): entry}
    assert entry(values, 2.0) == 12.0
    read_only = values.copy()
    read_only.setflags(write=False)
    others = (values[::2], read_only, values.astype(np.float32), values.reshape(2, 2))
    for other in others:  # strided, read-only, another dtype, another ndim: other types
        assert direct.entry((other,), (2.0,)) is _total
    assert direct.entry((object(),), (2.0,)) is _total  # nothing Numba can type
    assert len(direct.entries) == 1
    assert len(_total.overloads) == 1  # and looking compiled nothing
