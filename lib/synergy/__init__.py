"""synergy: does long chain-of-thought SFT combine with RL? A reproducible workbench."""

import sys

__version__ = "0.1.0"

# jsonschema imports rfc3987_syntax when it is installed (jupyter-events pulls it in) only to
# check the "iri" string format, and that import compiles 38 lark grammars: 1.2-1.9 s in every
# kernel and process of a series (plotly's notebook renderer and papermill import nbformat,
# which imports jsonschema). Nothing here validates IRIs: mark the module absent, unless
# something imported it already. jsonschema then leaves the "iri" format unchecked.
sys.modules.setdefault("rfc3987_syntax", None)


def setup_notebook() -> None:
    """Display settings shared by every notebook in the series."""
    import warnings

    import pandas as pd
    import plotly.io as pio

    # Each figure carries two outputs: plotly's own mimetype, which JupyterLab draws without
    # trusting the notebook, and HTML for nbconvert (plotly.js inlined once by "notebook",
    # no CDN: the HTML works offline; nbconvert drops the mimetype).
    pio.renderers.default = "notebook+plotly_mimetype"
    pd.set_option("display.max_colwidth", 200)
    pd.set_option("display.precision", 3)
    warnings.filterwarnings("ignore", message=".*IProgress not found.*")
    quiet_libraries()


def quiet_libraries() -> None:
    """Keep our own progress bars; drop the libraries' per-file ones (weights, shards)."""
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
