"""Number answers by minimum Bayes risk over the model's own samples.

Greedy decoding writes a number one token at a time, each the most likely digit on its own, so
the answer can be a number the model finds unlikely as a whole: a tiny model torn between "11.9"
and "114.5" m² answers whichever first digits win. The answer is scored by relative accuracy
(VSI-Bench's MRA), so the engine draws K answers from the model and returns the drawn value with
the highest mean relative accuracy against all K, each taken as the truth in turn (Kumar & Byrne's
minimum-Bayes-risk decoding with MRA as the gain). That mean is the answer's confidence: the
relative accuracy the model expects of its own answer.

A model whose language bridge has a number head (LanguageBridgeConfig.number_head) gives a
distribution instead of samples: a Gaussian over the answer's log. Its K quantiles at evenly
spaced levels stand in for K draws, decoded the same way.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from .answer import parse_number

DEFAULT_NUMBER_SAMPLES = 16     # answers drawn per number question (the node's model.number_samples)

# VSI-Bench's relative-accuracy thresholds (evaluation/metrics.py scores with the same ones)
MRA_THRESHOLDS = np.linspace(0.5, 0.95, 10)


@dataclass(frozen=True)
class NumberDecision:
    value: float
    expected_accuracy: float          # mean MRA of `value` against the samples, in [0, 1]
    samples: int                      # samples that held a number


def relative_accuracy(predicted: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """MRA of every predicted value against every truth: [P] x [T] -> [P,T] (truth != 0)."""
    relative_error = np.abs(predicted[:, None] - truth[None, :]) / np.abs(truth[None, :])
    return (relative_error[..., None] <= 1 - MRA_THRESHOLDS).mean(axis=-1)


def decode_number(samples: Sequence[str]) -> NumberDecision | None:
    """The minimum-Bayes-risk value among the numbers in `samples`; None when none holds one."""
    return decode_values(np.array([v for v in map(parse_number, samples) if v is not None]))


def decode_values(values: np.ndarray) -> NumberDecision | None:
    """The minimum-Bayes-risk value among `values` [K] drawn from the model; None when there is
    none. A value of 0 can be the answer but not a truth to score against (MRA divides by it)."""
    truths = values[values != 0]
    if values.size == 0 or truths.size == 0:
        return None
    candidates = np.unique(values)
    gain = relative_accuracy(candidates, truths).mean(axis=1)          # [P]
    best = int(gain.argmax())
    return NumberDecision(float(candidates[best]), float(gain[best]), int(values.size))


def lognormal_quantiles(log_mean: float, log_std: float, count: int = DEFAULT_NUMBER_SAMPLES) -> np.ndarray:
    """[count] quantiles of a value whose log is Gaussian, at levels (i + 0.5) / count."""
    if count < 1 or not log_std > 0:
        raise ValueError(f"count must be >= 1 and log_std > 0, got {count} and {log_std}")
    standard = NormalDist()
    return np.exp([log_mean + log_std * standard.inv_cdf((i + 0.5) / count) for i in range(count)])
