"""Writes the three cold-room exports of the "Use your own data" example, as a typical logger saves them: UTF-8 with a
byte-order mark, quoted header, day-first date and time in two columns, the compressor's state as on/off, a few
empty humidity cells, and a label column (ok / fault) from the site's maintenance log.

Twelve hours every 30 s per room. The compressor cycles (on: the room cools and draws ~800 W); from 06:00 on, each
room has faults: the door left open (warm, humid air), the compressor stuck on (power without cooling), a failing fan
(power creeping up). Deterministic: ``python examples/own-data/make_data.py`` rewrites the same bytes.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
START = datetime(2024, 5, 1, 0, 0, 0)
STEP_S = 30
ROWS = 12 * 3600 // STEP_S


def room(seed: int, setpoint: float) -> list[str]:
    rng = np.random.default_rng(seed)
    temperature, on, lines = setpoint + 1.0, False, []
    faults = np.zeros(ROWS, dtype=int)
    for start in rng.choice(np.arange(ROWS // 2 + 20, ROWS - 60), 3, replace=False):
        faults[start:start + rng.integers(25, 50)] = 1 + len(np.unique(faults)) % 3
    for i in range(ROWS):
        t = START + timedelta(seconds=i * STEP_S)
        fault = faults[i]
        on = temperature > setpoint + 1.0 or (on and temperature > setpoint - 1.0)
        stuck = fault == 2
        cooling = on and not stuck
        temperature += (-0.12 if cooling else 0.05) + rng.normal(0, 0.02) + (0.25 if fault == 1 else 0.0)
        power = (800 + rng.normal(0, 15) if on or stuck else 20 + rng.normal(0, 2)) \
            + (min(400, 6 * i % 400) if fault == 3 else 0)
        humidity = 62 + 3 * np.sin(2 * np.pi * i / 120) + rng.normal(0, 0.8) + (18 if fault == 1 else 0)
        humidity_cell = "" if rng.random() < 0.002 else f"{humidity:.1f}"
        lines.append(f"{t:%d.%m.%Y},{t:%H:%M:%S},{temperature:.2f},{humidity_cell},{power:.0f},"
                     f"{' on' if on or stuck else 'off'},{'fault' if fault else 'ok'}")
    return lines


def main() -> None:
    header = '"date","time","temperature_c","humidity_pct","power_w","compressor","label"'
    for name, seed, setpoint in (("room-a", 1, 4.0), ("room-b", 2, 2.0), ("room-c", 3, 6.0)):
        text = "\n".join([header, *room(seed, setpoint)]) + "\n\n"
        (HERE / "data" / f"{name}.csv").parent.mkdir(exist_ok=True)
        (HERE / "data" / f"{name}.csv").write_bytes(text.encode("utf-8-sig"))


if __name__ == "__main__":
    main()
