"""shortened: the one way a long list goes into a one-line message."""
from __future__ import annotations

import numpy as np

from svreg_core.errors import shortened


def test_shortened_hand_cases() -> None:
    assert shortened([], 3) == ""
    assert shortened(["a.nii"], 3) == "a.nii"
    assert shortened(["a", "b", "c"], 3) == "a, b, c"
    assert shortened(["a", "b", "c", "d", "e"], 3) == "a, b, c and 2 more"
    assert shortened(np.arange(2, 16), 12) == "2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13 and 2 more"
