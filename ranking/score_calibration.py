"""Score calibration: a monotone map from a model's own P(yes) to a probability that means what
it says (a 0.3 engaged with about 30% of the time), fitted on held-out labels.

Downstream of a ranker, scores are blended, thresholded and logged, so they must be
probabilities; compression moves a model's calibration even where its AUC holds. The map is
fitted once (the ``calibrate`` stage), saved beside the checkpoint's task file
(``score_calibrator.json``) and applied by every consumer that loads the checkpoint: the
evaluation, the server (``score``; ``score_raw`` keeps the model's own) and batch scoring.

Two methods, both monotone non-decreasing, so a ranking by the calibrated score is the ranking
by the raw score (consumers order by the raw score, which also breaks the calibrated map's
ties):

- ``platt``: ``sigmoid(a * logit(raw) + b)`` by maximum likelihood. Two parameters, strictly
  increasing (the AUC is unchanged exactly); enough pairs for any split.
- ``isotonic``: pool-adjacent-violators on the raw scores, then linear between the pooled
  blocks' (mean raw score, share of positives): strictly increasing between the lowest and the
  highest block, flat beyond them (raw scores there tie: the only AUC change). Needs
  ``MIN_ISOTONIC_PAIRS`` pairs: with fewer its steps fit the noise.

Pure numpy: the server and batch scoring apply a calibrator without torch or scikit-learn.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ranking.atomic import atomic_write_text
from ranking.errors import CheckpointError
from ranking.manifest import weight_hashes

CALIBRATOR_FILE = "score_calibrator.json"
METHODS = ("platt", "isotonic")
MIN_ISOTONIC_PAIRS = 1000
_EPS = 1e-6  # raw scores are clipped to [eps, 1 - eps] before the logit; outputs likewise


class CalibrationError(ValueError):
    """A calibrator that cannot be fitted (too few pairs, one class, scores that fall with the
    label)."""


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, _EPS, 1 - _EPS)
    return np.log(p) - np.log1p(-p)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # overflow-free


def fit_platt(labels: np.ndarray, scores: np.ndarray, iters: int = 100) -> tuple[float, float]:
    """(a, b) of ``sigmoid(a * logit(score) + b)`` maximising the likelihood of ``labels``:
    Newton's method on the two-parameter logistic regression (convex), with step halving."""
    x, y = _logit(np.asarray(scores, np.float64)), np.asarray(labels, np.float64)
    X = np.stack([x, np.ones_like(x)], axis=1)
    w = np.array([1.0, 0.0])  # the identity map: a calibrated model stays as it is

    def nll(w: np.ndarray) -> float:
        z = X @ w
        return float(np.sum(np.logaddexp(0.0, z) - y * z))

    cur = nll(w)
    for _ in range(iters):
        p = _sigmoid(X @ w)
        grad = X.T @ (p - y)
        hess = (X * (p * (1 - p))[:, None]).T @ X + 1e-9 * np.eye(2)
        step = np.linalg.solve(hess, grad)
        t = 1.0
        while t > 1e-6 and nll(w - t * step) > cur:
            t *= 0.5
        new = nll(w - t * step)
        w = w - t * step
        if cur - new < 1e-10 * max(1.0, abs(cur)):
            break
        cur = new
    return float(w[0]), float(w[1])


def fit_isotonic(labels: np.ndarray, scores: np.ndarray) -> tuple[list[float], list[float]]:
    """Knots (raw score, probability) of the isotonic fit: pool-adjacent-violators over the
    pairs sorted by raw score (equal raw scores pooled first), each block reduced to its mean
    raw score and share of positives. Blocks are merged while not strictly increasing, so the
    knots rise strictly in both coordinates."""
    s, y = np.asarray(scores, np.float64), np.asarray(labels, np.float64)
    order = np.argsort(s, kind="mergesort")
    s, y = s[order], y[order]
    uniq, start = np.unique(s, return_index=True)
    counts = np.diff(np.append(start, len(s))).astype(np.float64)
    pos = np.add.reduceat(y, start)
    xsum = uniq * counts
    # a stack of blocks: (pairs, positives, sum of raw scores)
    n_b, p_b, x_b = [], [], []
    for n, p, xs in zip(counts, pos, xsum, strict=True):
        n_b.append(n)
        p_b.append(p)
        x_b.append(xs)
        while len(n_b) > 1 and p_b[-2] / n_b[-2] >= p_b[-1] / n_b[-1]:
            n, p, xs = n_b.pop(), p_b.pop(), x_b.pop()
            n_b[-1] += n
            p_b[-1] += p
            x_b[-1] += xs
    n_arr = np.asarray(n_b)
    return (np.asarray(x_b) / n_arr).tolist(), (np.asarray(p_b) / n_arr).tolist()


@dataclass(frozen=True)
class Calibrator:
    """A fitted map from raw scores to probabilities, and what it was fitted on."""

    method: str  # platt | isotonic
    params: dict  # platt: {"a", "b"}; isotonic: {"x": knots' raw scores, "y": probabilities}
    fitted_on: dict = field(default_factory=dict)  # split, pairs, positive rate, ECE before/after
    weights: dict = field(default_factory=dict)  # sha256 of the checkpoint files it belongs to

    def apply(self, raw: np.ndarray) -> np.ndarray:
        """Calibrated probabilities of raw scores (any shape), in [eps, 1 - eps]."""
        r = np.asarray(raw, dtype=np.float64)
        if self.method == "platt":
            out = _sigmoid(self.params["a"] * _logit(r) + self.params["b"])
        else:
            out = np.interp(r, self.params["x"], self.params["y"])
        return np.clip(out, _EPS, 1 - _EPS)

    def to_json(self) -> str:
        return json.dumps({"version": 1, **asdict(self)}, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str, where: str = "calibrator") -> Calibrator:
        try:
            body = json.loads(text)
            cal = cls(body["method"], body["params"], body.get("fitted_on", {}), body["weights"])
            if cal.method == "platt":
                float(cal.params["a"]), float(cal.params["b"])
            elif cal.method == "isotonic":
                x, y = cal.params["x"], cal.params["y"]
                if not x or len(x) != len(y) or np.any(np.diff(x) < 0):
                    raise ValueError("isotonic knots must be non-empty, paired and sorted")
            else:
                raise ValueError(f"unknown method {cal.method!r} (one of {', '.join(METHODS)})")
        except (ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{where} is corrupt: {exc}") from exc
        return cal


def fit(
    method: str, labels: np.ndarray, scores: np.ndarray, split: str = "validation"
) -> Calibrator:
    """A calibrator of ``method`` fitted on (labels, raw scores); ``CalibrationError`` names why
    it cannot be (unknown method, one class only, too few pairs for isotonic, scores that fall
    as the label rises)."""
    from ranking.metrics import brier_score, expected_calibration_error, log_loss

    y, s = np.asarray(labels, np.float64).ravel(), np.asarray(scores, np.float64).ravel()
    if method not in METHODS:
        raise CalibrationError(
            f"unknown calibration method {method!r}; one of {', '.join(METHODS)}"
        )
    if y.shape != s.shape or not len(y):
        raise CalibrationError(f"{len(y)} labels and {len(s)} scores: need as many, and some")
    if not np.isin(y, (0.0, 1.0)).all() or y.min() == y.max():
        raise CalibrationError(f"the {split} labels must be 0/1 and hold both classes")
    if method == "isotonic" and len(y) < MIN_ISOTONIC_PAIRS:
        raise CalibrationError(
            f"isotonic regression needs at least {MIN_ISOTONIC_PAIRS} pairs, the {split} split "
            f"has {len(y)}: use method: platt (two parameters), or a larger split"
        )
    if method == "platt":
        a, b = fit_platt(y, s)
        if a <= 0:
            raise CalibrationError(
                f"the scores fall as the label rises on {split} (Platt slope {a:.3g}): this "
                "model does not rank; a monotone calibrator cannot fix it"
            )
        params: dict = {"a": a, "b": b}
    else:
        x, p = fit_isotonic(y, s)
        params = {"x": x, "y": p}
    cal = Calibrator(method, params)
    after = cal.apply(s)
    info = {
        "split": split,
        "pairs": int(len(y)),
        "positive_rate": float(y.mean()),
        "ece_raw": expected_calibration_error(y, s),
        "ece": expected_calibration_error(y, after),
        "brier_raw": brier_score(y, s),
        "brier": brier_score(y, after),
        "logloss_raw": log_loss(y, s),
        "logloss": log_loss(y, after),
    }
    return Calibrator(method, params, info)


def save_calibrator(cal: Calibrator, checkpoint: str | Path) -> Path:
    """Writes ``cal`` into the checkpoint folder, bound to its weights (their sha256)."""
    bound = Calibrator(cal.method, cal.params, cal.fitted_on, weight_hashes(checkpoint))
    return atomic_write_text(Path(checkpoint) / CALIBRATOR_FILE, bound.to_json())


def load_calibrator(checkpoint: str | Path) -> Calibrator | None:
    """The checkpoint's calibrator, None where it has none. A calibrator fitted for other
    weights (copied beside another checkpoint, or the weights replaced) is refused with a
    ``CheckpointError`` naming the files that differ: its map would be wrong for these scores."""
    root = Path(checkpoint)
    path = root / CALIBRATOR_FILE
    if not path.is_file():
        return None
    cal = Calibrator.from_json(path.read_text(), str(path))
    have = weight_hashes(root)
    differ = sorted(n for n in set(have) | set(cal.weights) if have.get(n) != cal.weights.get(n))
    if differ:
        raise CheckpointError(
            f"{path} was fitted for other weights ({', '.join(differ)} differ from what it "
            "records): refit it with the calibrate stage on this checkpoint, or remove it"
        )
    return cal
