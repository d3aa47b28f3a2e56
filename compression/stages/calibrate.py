"""The ``calibrate`` stage: fits a score calibrator (``ranking.score_calibration``: Platt scaling
or isotonic regression) on the validation split's raw scores and writes the input checkpoint
again with the calibrator beside its task file.

The weights are not touched: the output's files are hard links to the input's where the
filesystem allows (checkpoints are never modified in place), copies otherwise. The manifest the
pipeline writes covers the calibrator, and the calibrator records the weights' sha256, so it is
refused beside any other weights.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path

from compression.stages.base import StageContext, StageType
from ranking.score_calibration import METHODS

# what is not part of the input checkpoint: its stage summary, manifest, evaluation caches and
# its own calibrator / score reference (fitted to the input's scores, not to the output's)
NOT_COPIED = ("stage.json", "manifest.json", "eval-*", "*.png", "score_*.json")


@dataclass
class CalibrateConfig:
    """Fitted on the validation split: held out from training (train scores are optimistic)
    and from the report (which scores test)."""

    method: str = "platt"  # platt | isotonic (ranking.score_calibration)

    def validate(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, not {self.method!r}")


def link_checkpoint(src: Path, dst: Path) -> None:
    """``dst`` holds the files of checkpoint ``src`` (hard links, or copies across filesystems),
    without its summary, manifest and score files."""
    for f in sorted(src.rglob("*")):
        rel = f.relative_to(src)
        if f.is_dir() or any(fnmatch(rel.name, pat) for pat in NOT_COPIED):
            continue
        out = dst / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(f, out)
        except OSError:
            shutil.copy2(f, out)


SPLIT = "validation"


class CalibrateStage(StageType):
    Config = CalibrateConfig
    data_splits = (SPLIT,)

    def run(self, ctx: StageContext, src: Path, dst: Path) -> dict:
        import time

        from ranking.datafolder import read_split
        from ranking.dataset import labels_in_group_order
        from ranking.evaluation import evaluate_checkpoint
        from ranking.score_calibration import fit, save_calibrator

        t0 = time.time()
        _, raw, _ = evaluate_checkpoint(
            src, ctx.data, SPLIT, bootstrap=0, progress=True, calibrated=False
        )
        labels = labels_in_group_order(read_split(ctx.data, SPLIT))
        cal = fit(ctx.config.method, labels, raw, SPLIT)
        dst.mkdir(parents=True, exist_ok=True)
        link_checkpoint(src, dst)
        save_calibrator(cal, dst)
        summary = {"method": cal.method, **cal.fitted_on, "seconds": round(time.time() - t0, 1)}
        if cal.method == "platt":
            summary.update(a=cal.params["a"], b=cal.params["b"])
        else:
            summary["knots"] = len(cal.params["x"])
        print(
            f"[calibrate] {ctx.name}: {cal.method} on {SPLIT} ({len(labels)} pairs): "
            f"ECE {cal.fitted_on['ece_raw']:.4f} -> {cal.fitted_on['ece']:.4f}"
        )
        return summary
