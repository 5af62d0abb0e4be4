"""Local `evaluate` metric: accuracy of `<think>...</think> \\boxed{}` responses.

Hub metrics cannot be downloaded here, so this lives in the tree and is loaded by path:
`evaluate.load("/abs/path/lib/synergy/metrics/boxed_accuracy")`.
"""

import datasets
import evaluate
from synergy.verify import extract_answer, format_ok, is_correct

_DESCRIPTION = """
Fraction of responses whose final answer (last \\boxed{}, else "the answer is X") matches
the reference, checked by synergy.verify (numeric fast path, then math_verify).
Also reports the fraction in the exact think-then-boxed format and how many had no answer.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of model responses (str).
    references: list of gold answers (str).
Returns:
    accuracy: fraction of correct responses (0.0 for no inputs).
    format_rate: fraction of responses passing synergy.verify.format_ok.
    unparsed: number of responses with no extractable answer.
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class BoxedAccuracy(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
        )

    def _compute(self, predictions: list[str], references: list[str]) -> dict:
        n = len(predictions)
        correct = sum(is_correct(p, r) for p, r in zip(predictions, references, strict=True))
        formatted = sum(format_ok(p) for p in predictions)
        unparsed = sum(extract_answer(p) is None for p in predictions)
        return {
            "accuracy": correct / n if n else 0.0,
            "format_rate": formatted / n if n else 0.0,
            "unparsed": unparsed,
        }
