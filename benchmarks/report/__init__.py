"""Markdown tables and PNG plots, shaped like the IRGen paper's section 4, from run.py's results.

``markdown(result)`` (:mod:`.tables`) returns the tables as one Markdown
string; ``plots(result, out_dir)`` (:mod:`.plots`) writes PNG figures and
returns their paths. Both read a :class:`benchmarks.rows.Result`, are pure (no
prints, no global state, the input is never changed) and deterministic.
Metric values are fractions in [0, 1] and are printed as percentages with one
decimal, as in the paper; a metric a row lacks prints as "–". A table or plot
whose data is absent altogether is left out.

``render`` (:mod:`.pages`) turns stored runs into the docs' results pages.
"""

from .pages import page, render, write_table_set
from .plots import plot_files, plots
from .tables import DASH, markdown, table_set_markdown

__all__ = ["DASH", "markdown", "page", "plot_files", "plots", "render", "table_set_markdown",
           "write_table_set"]
