"""The "who decided" section of the tables: counts and times per stage of the cascade."""
import json

from bench.collate.stages import stage_blocks, stage_rows, stages_markdown


def _row(decided_by, times, verifier="milp", wall=1.0, startup=0.25):
    return {"verifier": verifier, "decided_by": decided_by, "wall_time": wall,
            "startup_time": startup, "stage_times": json.dumps(times) if times else None}


ROWS = [
    _row("clean", {"load": 0.1, "clean": 0.01}),
    _row("attack", {"load": 0.1, "clean": 0.01, "attack": 0.5}),
    _row("bounds:CROWN", {"load": 0.1, "clean": 0.01, "attack": 1.0, "bounds:IBP": 0.1,
                          "bounds:CROWN": 0.4}),
    _row("verifier", {"load": 0.1, "clean": 0.01, "attack": 1.0, "bounds:IBP": 0.1,
                      "bounds:CROWN": 0.4, "bounds:alpha-CROWN": 2.0, "verifier": 5.0}),
    _row(None, {"load": 0.1, "clean": 0.01, "attack": 1.0, "bounds:IBP": 0.1,
                "bounds:CROWN": 0.4, "bounds:alpha-CROWN": 2.0, "verifier": 60.0}),
]


def test_counts_shares_and_time_per_stage_in_running_order():
    table = {row[0]: row[1:] for row in stage_rows(ROWS)}
    assert list(table) == ["load", "clean", "bounds:IBP", "bounds:CROWN", "attack",
                           "bounds:alpha-CROWN", "verifier", "(undecided)"]
    assert table["clean"] == ["1", "20.0 %", "0.1", "5"]  # every instance reached it
    assert table["attack"] == ["1", "20.0 %", "3.5", "4"]
    assert table["bounds:IBP"] == ["0", "0.0 %", "0.3", "3"]
    assert table["verifier"] == ["1", "20.0 %", "65.0", "2"]
    assert table["(undecided)"] == ["1", "20.0 %", "-", "-"]


def test_the_tools_own_paths_and_rows_without_the_cascade():
    rows = [_row("verifier:attack", None), _row("verifier:bab", None), _row(None, None)]
    table = {row[0]: row[1:] for row in stage_rows(rows)}
    assert table == {"verifier:attack": ["1", "33.3 %", "-", "-"],
                     "verifier:bab": ["1", "33.3 %", "-", "-"],
                     "(undecided)": ["1", "33.3 %", "-", "-"]}
    # Results from before the cascade say nothing about stages: no section at all.
    old = [{"verifier": "milp", "decided_by": None, "stage_times": None, "wall_time": 1.0}]
    assert stage_rows(old) == [] and stages_markdown(old) == "" and stage_blocks(old) == []


def test_markdown_and_report_blocks():
    text = stages_markdown(ROWS)
    assert "## Who decided" in text and "| bounds:CROWN | 1 | 20.0 % | 1.2 | 3 |" in text
    assert "1.2 s of the instances' 5.0 s wall time (25 %)" in text
    blocks = stage_blocks([*ROWS, _row("verifier:bab", None, verifier="abcrown")])
    tables = [b for b in blocks if b.kind == "table"]
    assert [t.headers[0] for t in tables] == ["abcrown: stage", "milp: stage"]
