"""Report rows read in a forked child (`vitrun.rows`): the same rows and problems as read inline."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from vitrun.rows import rows
from vitrun.store import Store


def test_rows_read_in_a_child_equal_rows_read_inline(tmp_path):
    store = Store(tmp_path)
    for i in range(5):
        store.stage("exp", f"pretrain-{i:012x}").finish({"key": f"pretrain-{i:012x}", "kind": "pretrain", "experiment": "exp", "status": "done",
                                                       "config": {"model": {"name": "ViT-Mu/4"}, "pretrain": {"data": "fractal", "size": 100 * i}}, "metrics": {"accuracy": i / 10}})
    damaged = store.stage("exp", "pretrain-000000000002").stage_file
    damaged.write_bytes(damaged.read_bytes().replace(b"0.2", b"0.9"))
    # A fresh interpreter (no pandas, no torch loaded: the child is forked) with the threshold at 1.
    script = textwrap.dedent(f"""
        import concurrent.futures, json, sys
        from vitrun import rows
        from vitrun.store import Store
        made = []

        class Counting(concurrent.futures.ProcessPoolExecutor):
            def __init__(self, *args, **kwargs):
                made.append(kwargs["mp_context"].get_start_method())
                super().__init__(*args, **kwargs)

        concurrent.futures.ProcessPoolExecutor = Counting
        rows.MIN_STAGES = 1
        store = Store({str(tmp_path)!r})
        got, problems = rows.read_ahead(store, ["exp"])("exp")
        assert "pandas" not in sys.modules
        print(json.dumps({{"rows": got, "problems": [str(p) for p in problems], "forked": made == ["fork"]}}, default=str))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    child = json.loads(out)
    inline_rows, inline_problems = rows(store, "exp")
    assert child["forked"]
    assert child["rows"] == json.loads(json.dumps(inline_rows, default=str)) and len(child["rows"]["key"]) == 4
    assert child["problems"] == [str(p) for p in inline_problems] and "checksum mismatch" in child["problems"][0]
