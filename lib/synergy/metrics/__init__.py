"""Local Hugging Face `evaluate` metrics (hub metrics are not downloadable here)."""

from pathlib import Path

import evaluate

BOXED_ACCURACY_PATH: str = str(Path(__file__).resolve().parent / "boxed_accuracy")


def load_boxed_accuracy() -> evaluate.EvaluationModule:
    """The `boxed_accuracy` metric, loaded from its directory in this package."""
    return evaluate.load(BOXED_ACCURACY_PATH)
