"""Memory per request, over real HTTP: a big body costs a bounded multiple of its size, and is given back.

Peak resident memory is read from the kernel's high-water mark (VmHWM, reset through clear_refs), so a
short spike between two samples is not missed.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.serving.conftest import Server, StartServer
from tests.serving.models import COLUMNS
from tests.serving.test_under_load import BIG, big_csv, big_json


def status_kib(pid: int, field: str) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith(field + ":")))


def reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")


@pytest.fixture(scope="module")
def roomy(start_server: StartServer, model_dirs: dict[str, Path]) -> Server:
    return start_server(model_dirs["sklearn"], "--max-body-bytes", str(BIG + 1000))


@pytest.mark.parametrize("content_type", ["application/json", "text/csv"])
def test_a_10mb_request_peaks_under_5x_its_body_and_gives_it_back(roomy: Server, content_type: str) -> None:
    body = big_json() if content_type == "application/json" else big_csv()
    assert roomy.post("/invocations", body, content_type).status_code == 200  # warm: first-use allocations
    pid = roomy.proc.pid
    baseline = status_kib(pid, "VmRSS")
    peaks = []
    for _ in range(3):
        reset_peak(pid)
        assert roomy.post("/invocations", body, content_type).status_code == 200
        peaks.append(status_kib(pid, "VmHWM") - baseline)
    after = status_kib(pid, "VmRSS") - baseline
    print(f"{content_type}: body {len(body) / 2**20:.1f} MiB, peaks above the warm baseline "
          f"{[round(p / 1024) for p in peaks]} MiB, after +{after / 1024:.0f} MiB")
    assert max(peaks) * 1024 <= 5 * len(body), f"peaks {peaks} KiB for a {len(body) / 2**20:.1f} MiB body"
    assert after <= 50 * 1024, f"+{after / 1024:.0f} MiB kept after the requests"


def parquet(rows: int, groups: int = 1) -> bytes:
    """`rows` rows of 5 zeros per row group: run-length encoding makes `groups` million rows a tiny file."""
    table = pa.table({c: np.zeros(rows) for c in COLUMNS})
    sink = io.BytesIO()
    with pq.ParquetWriter(sink, table.schema, compression="zstd") as writer:
        for _ in range(groups):
            writer.write_table(table)
    return sink.getvalue()


def test_parquet_bodies_are_served_and_a_decompression_bomb_is_413_without_the_memory(roomy: Server) -> None:
    small = roomy.post("/invocations", parquet(3), "application/vnd.apache.parquet")
    assert small.status_code == 200, small.text
    assert small.json() == roomy.post("/invocations", json.dumps(
        {"dataframe_split": {"columns": COLUMNS, "data": [[0.0] * 5] * 3}}), "application/json").json()

    bomb = parquet(1_000_000, groups=30)  # decodes to 1.2 GB
    pid = roomy.proc.pid
    baseline = status_kib(pid, "VmRSS")
    reset_peak(pid)
    r = roomy.post("/invocations", bomb, "application/vnd.apache.parquet")
    peak = status_kib(pid, "VmHWM") - baseline
    print(f"Parquet bomb: {len(bomb) / 1024:.0f} KiB → {r.status_code}, peak +{peak / 1024:.0f} MiB")
    assert r.status_code == 413 and r.json()["error_code"] == "PAYLOAD_TOO_LARGE", r.text
    assert peak < 200 * 1024  # about the 128 MiB default limit, not the 1.2 GB the file stands for
