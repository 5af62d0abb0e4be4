"""synergy: does long chain-of-thought SFT combine with RL? A reproducible workbench."""

__version__ = "0.1.0"


def setup_notebook() -> None:
    """Display settings shared by every notebook in the series."""
    import warnings

    import pandas as pd
    import plotly.io as pio

    # "notebook" embeds plotly.js once, so the HTML rendering works offline;
    # the plotly_mimetype default is dropped by nbconvert.
    pio.renderers.default = "notebook"
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
