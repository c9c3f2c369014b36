"""The realised-compression benchmark runs end to end in its smoke size (CI)."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

from tests.support import ROOT

BENCH = ROOT / "bench" / "realised.py"


def test_realised_smoke_writes_rows_for_every_method(tmp_path: Path) -> None:
    main = runpy.run_path(str(BENCH))["main"]
    out = tmp_path / "realised.json"
    assert main(["--smoke", "--repeats", "1", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    rows = result["rows"]
    assert set(rows) == {
        "dense",
        "channel 50% (exported)",
        "magnitude 90% (masked, dense)",
        "2:4 (masked, dense)",
    }
    assert rows["channel 50% (exported)"]["macs"] < 0.3 * rows["dense"]["macs"]
    assert abs(rows["magnitude 90% (masked, dense)"]["mask_sparsity"] - 0.9) < 1e-3
    # Masks keep the model dense: same stored size as the dense model.
    assert rows["2:4 (masked, dense)"]["file_bytes"] == rows["dense"]["file_bytes"]
    assert result["export_max_abs_diff"] <= 1e-5
