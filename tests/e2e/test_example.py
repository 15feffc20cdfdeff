"""The example configuration as installed, under the hardened unit: CSVs in, rows out.

validate-csv, transform (its scratch folder under the state directory),
sqlite-load into /var/lib/dropline/orders.db and the notify step (a Python
stage from /opt/automation/pipelines, in a worker process) all inside the
sandbox, with the samples dropped by a member of droppers.
"""

from __future__ import annotations

import json

from ..harness import REPO, wait_until
from .container import CONFIG, DATA, DROPPER, UNIT, Container

SAMPLES = REPO / "config" / "samples"


def test_example_pipeline_under_the_service(dropline: Container) -> None:
    dropline.put(CONFIG, (REPO / "config" / "dropline.yaml").read_bytes())
    dropline.systemctl("restart", UNIT)
    dropline.wait_active()
    for sample in sorted(SAMPLES.glob("*.csv")):
        dropline.sh(
            f"cat > {DATA}/incoming/.{sample.name}.tmp && "
            f"mv {DATA}/incoming/.{sample.name}.tmp {DATA}/incoming/{sample.name}",
            input_data=sample.read_bytes(),
            user=DROPPER,
        )
    bad = "orders-bad-2026-11-03.csv"
    error_file = dropline.path(f"{DATA}/failed/{bad}.error.json")
    wait_until(error_file.exists, 30, interval=0.1, what=f"{bad} failed")
    error = json.loads(error_file.read_text())
    assert 'line 3, column "amount": "abc" is not a decimal' in error["error"], error

    def loaded() -> int:
        done = dropline.run(
            "python3",
            "-c",
            "import sqlite3; print(sqlite3.connect('file:/var/lib/dropline/orders.db?mode=ro', "
            "uri=True).execute('SELECT count(*) FROM orders').fetchone()[0])",
            check=False,
        )
        return int(done.stdout.strip() or 0) if done.returncode == 0 else 0

    wait_until(lambda: loaded() == 6, 30, interval=0.2, what="6 rows in orders.db")
    announced = wait_until(
        lambda: dropline.journal("EVENT=orders.loaded"), 10, interval=0.1, what="orders.loaded"
    )
    assert sorted(e["ROWS"] for e in announced)[-2:] == ["3", "3"], announced
    assert dropline.journal("EVENT=orders.rejected"), "the on_failure step ran"
    scratch = dropline.path("/var/lib/dropline/scratch")
    assert not scratch.exists() or not any(scratch.iterdir()), "scratch folders removed"
