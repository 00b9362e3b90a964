"""The settings table of docs/quality.md: each row is one full evaluation (federated and centralised, fp32 and int8)
with config overrides relative to config.yaml — the same overrides reproduce it with ``make evaluate``, e.g.
``FEDAD__DATA__WINDOW=10 make evaluate``.

    .venv/bin/python -m services.evaluation.sweep [--only NAME ...] [--out reports/sweep]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from services.config import load_settings
from services.evaluation.runner import run_evaluation

ORIGINAL = {  # the core issue's defaults: single rows, one federated scaler, all 8 channels
    "FEDAD__DATA__WINDOW": "1", "FEDAD__DATA__WINDOW_STATS": "[]", "FEDAD__DATA__BASELINE": "federation",
    "FEDAD__DATA__MODEL_FEATURES": "null", "FEDAD__MODEL__HIDDEN": "[12, 6, 12]", "FEDAD__MODEL__LOCAL_EPOCHS": "5",
    "FEDAD__THRESHOLD__FACTOR": "1.0",
}
ALL_FEATURES = {"FEDAD__DATA__MODEL_FEATURES": "null"}

# (name, what changes, overrides relative to config.yaml)
SETTINGS_TRIED: list[tuple[str, str, dict[str, str]]] = [
    ("original", "core defaults: single rows, federated scaler, 8 channels, 8→12→6→12→8, 10×5 epochs, q0.99",
     ORIGINAL),
    ("window20-flat", "+ window of 20 rows, flattened (160 inputs)", {**ORIGINAL, "FEDAD__DATA__WINDOW": "20"}),
    ("window20-stats", "+ window statistics mean/std/slope instead (24 inputs)",
     {**ORIGINAL, "FEDAD__DATA__WINDOW": "20", "FEDAD__DATA__WINDOW_STATS": "[mean, std, slope]"}),
    ("run-baseline", "+ each run scaled by its own first 400 rows",
     {**ORIGINAL, "FEDAD__DATA__WINDOW": "20", "FEDAD__DATA__WINDOW_STATS": "[mean, std, slope]",
      "FEDAD__DATA__BASELINE": "run"}),
    ("no-temperatures", "+ model ignores Temperature and Thermocouple (18 inputs)",
     {k: v for k, v in ORIGINAL.items() if k.startswith(("FEDAD__MODEL", "FEDAD__THRESHOLD"))}),
    ("small-model", "+ 18→8→3→8→18, 10 rounds × 3 epochs", {"FEDAD__THRESHOLD__FACTOR": "1.0"}),
    ("default", "+ threshold × 1.2 (config.yaml default)", {}),
    ("factor1.5", "default, threshold × 1.5", {"FEDAD__THRESHOLD__FACTOR": "1.5"}),
    ("mean+3std", "default, threshold mean + 3·std (× 1.2)", {"FEDAD__THRESHOLD__RULE": "mean_std"}),
    ("window10", "default, window 10", {"FEDAD__DATA__WINDOW": "10"}),
    ("window30", "default, window 30", {"FEDAD__DATA__WINDOW": "30"}),
    ("mean-std-only", "default, window statistics mean/std only", {"FEDAD__DATA__WINDOW_STATS": "[mean, std]"}),
    ("all-channels", "default, with Temperature and Thermocouple", ALL_FEATURES),
    ("fedprox0.01", "default, FedProx μ = 0.01", {"FEDAD__FEDERATION__FEDPROX_MU": "0.01"}),
    ("seed1", "default, model.seed 1", {"FEDAD__MODEL__SEED": "1"}),
    ("seed2", "default, model.seed 2", {"FEDAD__MODEL__SEED": "2"}),
]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", help="names of rows to run (default: all)")
    parser.add_argument("--out", default="reports/sweep")
    parser.add_argument("--modes", default="federated,centralised")
    args = parser.parse_args(argv)
    modes = tuple(args.modes.split(","))
    rows = [r for r in SETTINGS_TRIED if not args.only or r[0] in args.only]
    lines = ["| setting | change | federated fp32 F1 / FAR / MAR | federated int8 F1 / FAR / MAR | ROC-AUC fed fp32 / "
             "int8 | centralised fp32 F1 / FAR | overrides |", "|---|---|---|---|---|---|---|"]
    for name, what, overrides in rows:
        settings = load_settings(environ=overrides)
        print(f"== {name}: {what}", flush=True)
        results = run_evaluation(settings, Path(args.out) / name, modes, echo=None, latent=False)
        fed = results["modes"]["federated"]["kinds"]
        cen = results["modes"].get("centralised", {}).get("kinds")
        f, q = fed["fp32"]["pooled"], fed["int8"]["pooled"]
        cell = f"{cen['fp32']['pooled']['f1']:.3f} / {cen['fp32']['pooled']['far']:.1f}" if cen else "–"
        env = " ".join(f"{k}='{v}'" for k, v in overrides.items()) or "(none)"
        line = (f"| {name} | {what} | {f['f1']:.3f} / {f['far']:.1f} / {f['mar']:.1f} | {q['f1']:.3f} / "
                f"{q['far']:.1f} / {q['mar']:.1f} | {f['roc_auc']:.3f} / {q['roc_auc']:.3f} | {cell} | `{env}` |")
        print(line, flush=True)
        lines.append(line)
    print("\n" + "\n".join(lines))
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "table.md").write_text("\n".join(lines) + "\n")
    (Path(args.out) / "rows.json").write_text(json.dumps([r[:2] + (r[2],) for r in rows], indent=1))


if __name__ == "__main__":
    main()
