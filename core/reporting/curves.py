"""The inputs of the ROC, precision-recall and calibration figures, built from each run's evidence.

Like scikit-learn's ``RocCurveDisplay.from_predictions``: one function per curve turns a list of
``core.evidence.run_evidence.RunEvidence`` into what ``core.reporting.figures`` draws, so the Compare page and the HTML
report plot the same points, AUC intervals and operating points. The curves' numbers themselves
are computed in ``core.evidence.run_evidence``; the figures are drawn in ``core.reporting.figures``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from core.evidence.run_evidence import RunEvidence


def roc_curves(evidence: Sequence[RunEvidence]) -> list[dict[str, Any]]:
    """One ``figures.roc_figure`` curve per run: its ROC (with each point's threshold, shown on hover),
    its AUC and interval, and its operating point.

    The point is the run's sensitivity and 1 − specificity at the threshold in use; a run whose
    test images lack a class has none (both rates are undefined).
    """
    curves = []
    for ev in evidence:
        interval = ev.interval("auc")
        sensitivity, specificity = ev.metrics["sensitivity"], ev.metrics["specificity"]
        has_point = math.isfinite(sensitivity) and math.isfinite(specificity)
        curves.append(
            {
                "name": ev.name, "fpr": ev.roc["fpr"], "tpr": ev.roc["tpr"],
                "thresholds": ev.roc.get("thresholds"), "auc": ev.metrics["auc"],
                "auc_low": interval.low if interval else None,
                "auc_high": interval.high if interval else None,
                "confidence": ev.confidence,
                "point": {"fpr": 1 - specificity, "tpr": sensitivity, "threshold": ev.threshold} if has_point else None,
            }
        )
    return curves


def precision_recall_curves(evidence: Sequence[RunEvidence]) -> list[dict[str, Any]]:
    """One ``figures.precision_recall_figure`` curve per run: precision, recall, average precision, prevalence."""
    return [{"name": ev.name, **ev.pr} for ev in evidence]


def calibration_curves(evidence: Sequence[RunEvidence]) -> list[dict[str, Any]]:
    """One ``figures.calibration_figure`` curve per run: its reliability curve, Brier score and ECE."""
    return [{"name": ev.name, **ev.reliability, "brier": ev.brier, "ece": ev.ece} for ev in evidence]
