"""Devices this project has never seen, generated in code: the held-out check of every default.

The defaults (model shape, training length, threshold, precision) must not be fitted to the data sets that ship
(SKAB, Shuttle, the synthetic fleet, the own-data example): a user's devices look like none of them. So the defaults
are chosen on devices generated here, of shapes the shipped data sets do not have, from many seeds, and only then
checked on the shipped ones. Each device is written as the CSV export a logger would write and read back through
the tabular source from a config, exactly as "Use your own data" in the README does it.

Three device types: the two narrow cases a user meets first, and a wider one:

- ``compressor``: a refrigerated cabinet, one reading a minute — temperature, power draw and the compressor's state
  (``on`` / ``off``, a categorical column) — three nodes, rows scored one by one (``window: 1``), so the model has
  3 inputs. A thermostat cycles the compressor between two temperatures; power follows the state. Faults: a worn
  compressor drawing more power, a relay that reports ``off`` while the motor runs, a door left open (warm, the
  compressor runs on), a refrigerant leak (cools too slowly, draws less), a frozen temperature sensor.
- ``machine``: one temperature sensor of an industrial machine, a reading every 5 minutes, one node, ``window: 12``
  (an hour) summarised by mean / std / slope: again 3 inputs. A daily load cycle, quieter weekends, slow noise.
  Faults: overheating that builds up over hours, an oscillating cooling loop, a noisy sensor, a stuck sensor, a
  shutdown that lets the machine cool to ambient.
- ``conveyor``: a conveyor drive, one reading a minute — motor current, belt speed, vibration, bearing and hall
  temperature, hydraulic pressure, moved together by the load and the speed set-point — three nodes, ``window: 10``
  with mean / std / slope: 18 inputs. Faults: a wearing bearing, a slipping belt, a hydraulic leak, a frozen
  temperature sensor, misalignment.

Every fault is labelled row by row; each device starts fault-free for the rows that train. Deterministic for
(kind, seed): ``python -m services.evaluation.unseen --seeds 0,1,2`` (``make evaluate-unseen``) evaluates each kind on
each seed through the evaluation's own path (services/evaluation/runner.py) and prints the served detector against
the same-run IsolationForest; ``--set model.score=error`` and the like measure an alternative.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from services.config import Settings, load_settings

KINDS = ("compressor", "machine", "conveyor")
START = np.datetime64("2025-03-03T00:00:00", "s")  # a Monday


@dataclass(frozen=True)
class Device:
    """One generated node: its rows as CSV text, the share of rows that are faults."""

    name: str
    csv: str
    rows: int
    anomalies: int


def compressor(seed: int, node: int, days: float = 4.0, fault_free_days: float = 1.0) -> Device:
    """A refrigerated cabinet, one reading a minute: temperature_c, power_w, compressor (on/off), label."""
    rng = np.random.default_rng([seed, node, 101])
    n = int(days * 1440)
    low = rng.uniform(1.5, 4.0)
    high = low + rng.uniform(2.0, 4.0)
    warm_rate = rng.uniform(0.04, 0.08)  # °C per minute with the compressor off (ambient-dependent, below)
    cool_rate = rng.uniform(0.08, 0.16)  # °C per minute with it on
    p_on, p_off = rng.uniform(600, 1200), rng.uniform(8, 25)
    day = np.arange(n) / 1440.0
    ambient = 1 + 0.3 * np.sin(2 * np.pi * (day - rng.uniform(0.2, 0.4)))  # warmer afternoons: faster warming

    labels = np.zeros(n, dtype=np.int8)
    faults = _fault_slots(rng, n, start=int(fault_free_days * 1440), count=int(rng.integers(6, 10)),
                          lengths=(40, 240))
    kinds = ["worn", "relay", "door", "leak", "stuck"]
    plan = {}
    for i, (start, length) in enumerate(faults):
        plan.update({t: kinds[(i + node) % len(kinds)] for t in range(start, start + length)})
        labels[start:start + length] = 1

    temp, state = np.empty(n), np.empty(n, dtype=bool)
    t, on = rng.uniform(low, high), False
    for i in range(n):
        fault = plan.get(i)
        rate_up = warm_rate * ambient[i] * (3.0 if fault == "door" else 1.0)
        rate_down = cool_rate * (0.35 if fault == "leak" else 1.0)
        if on and t <= low:
            on = False
        elif not on and t >= high:
            on = True
        t += (rate_up - rate_down) if on else rate_up
        t += rng.normal(0, 0.01)
        temp[i], state[i] = t, on
    power = np.where(state, p_on * (1 + 0.05 * (ambient - 1)), p_off) * (1 + rng.normal(0, 0.02, n))
    shown_state = state.copy()
    reading = temp + rng.normal(0, 0.05, n)
    for i, fault in plan.items():
        if fault == "worn" and state[i]:
            power[i] *= 1.3
        elif fault == "leak" and state[i]:
            power[i] *= 0.8
        elif fault == "relay":
            shown_state[i] = False  # the motor runs as it would; the state column says off
        elif fault == "stuck":
            reading[i] = reading[min(plan_start(plan, i), n - 1) - 1]
    times = START + np.arange(n) * np.timedelta64(60, "s")
    lines = ["time,temperature_c,power_w,compressor,label"]
    lines += [f"{str(ts).replace('T', ' ')},{r:.2f},{p:.0f},{'on' if s else 'off'},{'fault' if y else 'ok'}"
              for ts, r, p, s, y in zip(times, reading, power, shown_state, labels)]
    return Device(f"cabinet-{node}", "\n".join(lines) + "\n", n, int(labels.sum()))


def plan_start(plan: dict, i: int) -> int:
    """The first row of the fault that row ``i`` belongs to."""
    while i - 1 in plan and plan[i - 1] == plan[i]:
        i -= 1
    return i


def machine(seed: int, node: int = 0, weeks: float = 6.0, fault_free_weeks: float = 2.0) -> Device:
    """An industrial machine's temperature, one reading every 5 minutes: temperature, label."""
    rng = np.random.default_rng([seed, node, 202])
    per_day = 288
    n = int(weeks * 7 * per_day)
    day = np.arange(n) / per_day
    weekday = (day.astype(int) % 7) < 5
    level = rng.uniform(60, 90)
    cycle = rng.uniform(3, 8) * np.clip(np.sin(2 * np.pi * (day - rng.uniform(0.2, 0.35))), -0.3, 1)
    load = np.where(weekday, 1.0, rng.uniform(0.3, 0.6))
    wander = np.zeros(n)
    for i in range(1, n):
        wander[i] = 0.995 * wander[i - 1] + rng.normal(0, 0.15)
    values = level + load * cycle + wander + rng.normal(0, rng.uniform(0.2, 0.5), n)
    labels = np.zeros(n, dtype=np.int8)
    kinds = ["overheat", "oscillation", "noisy", "stuck", "shutdown"]
    for i, (start, length) in enumerate(_fault_slots(rng, n, start=int(fault_free_weeks * 7 * per_day),
                                                     count=int(rng.integers(5, 8)), lengths=(36, 288))):
        rows = slice(start, start + length)
        kind = kinds[(i + seed) % len(kinds)]
        ramp = np.linspace(0, 1, length)
        if kind == "overheat":
            values[rows] += rng.uniform(6, 14) * ramp ** 2
        elif kind == "oscillation":
            values[rows] += rng.uniform(1.5, 3) * np.sin(2 * np.pi * np.arange(length) / rng.uniform(4, 10))
        elif kind == "noisy":
            values[rows] += rng.normal(0, rng.uniform(1.5, 3), length)
        elif kind == "stuck":
            values[rows] = values[start - 1]
        else:  # shutdown: cools towards ambient, then back
            ambient = rng.uniform(20, 30)
            decay = 1 - np.exp(-np.arange(length) / rng.uniform(6, 24))
            values[rows] = values[rows] + (ambient - values[rows]) * decay
        labels[rows] = 1
    times = START + np.arange(n) * np.timedelta64(300, "s")
    lines = ["timestamp,value,label"]
    lines += [f"{str(ts).replace('T', ' ')},{v:.3f},{y}" for ts, v, y in zip(times, values, labels)]
    return Device(f"machine-{node}", "\n".join(lines) + "\n", n, int(labels.sum()))


def conveyor(seed: int, node: int, days: float = 5.0, fault_free_days: float = 1.5) -> Device:
    """A conveyor drive, one reading a minute: motor current, belt speed, vibration, bearing temperature, hall
    temperature, hydraulic pressure, label. Two hidden drivers move them together: the load (shifts and a daily
    pattern) and the speed set-point (steps between a few values)."""
    rng = np.random.default_rng([seed, node, 303])
    n = int(days * 1440)
    day = np.arange(n) / 1440.0
    load = 0.6 + 0.25 * np.clip(np.sin(2 * np.pi * (day - rng.uniform(0.2, 0.3))), -0.5, 1) + _wander(rng, n, 0.05)
    setpoints = rng.choice([0.8, 1.0, 1.2], size=int(days * 24) + 1)
    speed_set = np.repeat(setpoints, 60)[:n]
    hall = rng.uniform(15, 25) + 4 * np.sin(2 * np.pi * (day - 0.35)) + _wander(rng, n, 0.3)
    values = np.stack([
        rng.uniform(8, 14) * (0.4 + load * speed_set),  # current, A
        speed_set * rng.uniform(1.5, 2.5),  # belt speed, m/s
        rng.uniform(0.5, 1.5) * (0.3 + 0.7 * speed_set ** 2),  # vibration, mm/s
        hall + rng.uniform(15, 25) * load * speed_set,  # bearing temperature, °C
        hall,  # hall temperature, °C
        rng.uniform(80, 120) * (0.5 + 0.5 * load),  # hydraulic pressure, bar
    ], axis=1)
    values += values.std(axis=0) * 0.05 * rng.normal(0, 1, values.shape)
    labels = np.zeros(n, dtype=np.int8)
    kinds = ["bearing", "slip", "leak", "frozen", "misalignment"]
    for i, (start, length) in enumerate(_fault_slots(rng, n, start=int(fault_free_days * 1440),
                                                     count=int(rng.integers(6, 10)), lengths=(30, 240))):
        rows, ramp = slice(start, start + length), np.linspace(0, 1, length)
        kind = kinds[(i + node + seed) % len(kinds)]
        if kind == "bearing":
            values[rows, 2] *= 1 + 0.8 * ramp
            values[rows, 3] += 8 * ramp
        elif kind == "slip":
            values[rows, 1] *= 0.85
            values[rows, 0] *= 1.1
        elif kind == "leak":
            values[rows, 5] *= 1 - 0.25 * ramp
        elif kind == "frozen":
            values[rows, 3] = values[start - 1, 3]
        else:  # misalignment: vibration up, the rest as usual
            values[rows, 2] *= 1.5
        labels[rows] = 1
    times = START + np.arange(n) * np.timedelta64(60, "s")
    lines = ["time,current_a,speed_ms,vibration_mms,bearing_c,hall_c,pressure_bar,label"]
    lines += [f"{str(ts).replace('T', ' ')}," + ",".join(f"{v:.3f}" for v in row) + f",{y}"
              for ts, row, y in zip(times, values, labels)]
    return Device(f"conveyor-{node}", "\n".join(lines) + "\n", n, int(labels.sum()))


def _wander(rng: np.random.Generator, n: int, scale: float) -> np.ndarray:
    out = np.zeros(n)
    shocks = rng.normal(0, scale * np.sqrt(1 - 0.995 ** 2), n)
    for i in range(1, n):
        out[i] = 0.995 * out[i - 1] + shocks[i]
    return out


def _fault_slots(rng: np.random.Generator, n: int, start: int, count: int, lengths: tuple[int, int]):
    """``count`` non-overlapping (start, length) faults after ``start``, normal rows between them."""
    sizes = rng.integers(lengths[0], lengths[1] + 1, count)
    free = n - start - int(sizes.sum()) - lengths[1]
    gaps = rng.dirichlet(np.ones(count + 1)) * free
    slots, at = [], float(start)
    for gap, size in zip(gaps[:-1], sizes):
        at += gap
        slots.append((int(at), int(size)))
        at += size
    return slots


def config(kind: str, folder: Path, devices: list[Device], overrides: dict | None = None) -> dict:
    """The config a user would write for these exports, from the README's "Use your own data" section alone:
    only the data section, the workers and the ports; every other key keeps its default."""
    if kind == "compressor":
        data = {"source": {"dir": str(folder), "delimiter": ",", "timestamp": "time",
                           "label": {"column": "label", "normal": ["ok"]},
                           "categorical": {"compressor": {"levels": ["off", "on"]}}},
                "training": {"policy": "first_rows", "rows": 1440},
                "features": ["temperature_c", "power_w", "compressor"], "window": 1, "window_stats": [],
                "baseline": "node"}
    elif kind == "conveyor":
        data = {"source": {"dir": str(folder), "delimiter": ",", "timestamp": "time",
                           "label": {"column": "label", "normal": [0]}},
                "training": {"policy": "first_rows", "rows": int(1.5 * 1440)},
                "features": ["current_a", "speed_ms", "vibration_mms", "bearing_c", "hall_c", "pressure_bar"],
                "window": 10, "baseline": "node"}
    else:
        data = {"source": {"dir": str(folder), "delimiter": ",", "timestamp": "timestamp",
                           "label": {"column": "label", "normal": [0]}},
                "training": {"policy": "first_rows", "rows": 2 * 7 * 288},
                "features": ["value"], "window": 12, "baseline": "node"}
    raw: dict = {"data": data, "federation": {"min_workers": len(devices), "quorum": len(devices)},
                 "aggregator": {"state_dir": str(folder / "state" / "aggregator")},
                 "workers": [{"id": d.name, "partition": [f"{d.name}.csv"], "port": 8480 + i,
                              "state_dir": str(folder / "state" / d.name), "token": f"dev-token-{d.name}"}
                             for i, d in enumerate(devices)]}
    for dotted, value in (overrides or {}).items():
        node = raw
        *path, last = dotted.split(".")
        for key in path:
            node = node.setdefault(key, {})
        node[last] = value
    return raw


def write_dataset(kind: str, seed: int, folder: Path, overrides: dict | None = None) -> Path:
    """The device exports and their config.yaml in ``folder``; returns the config's path."""
    folder.mkdir(parents=True, exist_ok=True)
    devices = ([compressor(seed, k) for k in range(3)] if kind == "compressor" else
               [conveyor(seed, k) for k in range(3)] if kind == "conveyor" else [machine(seed)])
    for d in devices:
        (folder / f"{d.name}.csv").write_text(d.csv)
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config(kind, folder, devices, overrides), sort_keys=False))
    return path


def dataset_settings(kind: str, seed: int, folder: Path, overrides: dict | None = None) -> Settings:
    return load_settings(write_dataset(kind, seed, folder, overrides), environ={})


def main(argv: list[str] | None = None) -> None:
    from services.evaluation.runner import run_evaluation, summary

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--modes", default="federated")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=YAML",
                        help="a config override, e.g. model.hidden=[8,1,8] (repeatable)")
    parser.add_argument("--out", default=None, help="write every result here as JSON lines")
    args = parser.parse_args(argv)
    overrides = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)}
    rows = []
    with tempfile.TemporaryDirectory(prefix="fedad-unseen-") as tmp:
        for kind in args.kinds.split(","):
            for seed in (int(s) for s in args.seeds.split(",")):
                started = time.time()
                settings = dataset_settings(kind, seed, Path(tmp) / f"{kind}-{seed}", overrides)
                results = run_evaluation(settings, Path(tmp) / f"{kind}-{seed}" / "results",
                                         tuple(args.modes.split(",")), echo=None, latent=False)
                row = {"kind": kind, "seed": seed, "seconds": round(time.time() - started, 1),
                       "reference": results["reference"]["pooled"]}
                for mode, entry in results["modes"].items():
                    row[mode] = {**{p: entry["kinds"][p]["pooled"] for p in ("fp32", "int8")},
                                 "served": entry["served"]["pooled"],
                                 "precision": {w: v["precision"]["served"]
                                               for w, v in entry["served"]["workers"].items()}}
                rows.append(row)
                fed = row.get("federated") or row[next(m for m in row if m in ("centralised", "local"))]
                print(f"{kind} seed {seed}: served {summary(fed['served'])} ({'/'.join(fed['precision'].values())}) | "
                      f"fp32 {summary(fed['fp32'])} | int8 {summary(fed['int8'])} | forest {summary(row['reference'])}"
                      f"  ({row['seconds']:.0f}s)", flush=True)
    if args.out:
        Path(args.out).write_text("".join(json.dumps(r) + "\n" for r in rows))


if __name__ == "__main__":
    main()
