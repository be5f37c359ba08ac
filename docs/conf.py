"""Sphinx configuration for the mtlweight documentation.

Build (from the repository root)::

    python -m sphinx -W --keep-going -b html docs docs/_build/html
    python -m sphinx -W --keep-going -b doctest docs docs/_build/doctest

Nothing is fetched, at build time or when a page is read: no intersphinx inventory,
and MathJax is served from the build's ``_static/mathjax`` (the bundle of the
``sphinx-mathjax-offline`` package), so formulas render without a network.
Markdown (the changelog, the benchmark reports) is read by myst-parser, the MENET
command reference comes from the example's argument parser through sphinx-argparse,
and figures are drawn at build time by matplotlib's ``plot`` directive from the
scripts in ``docs/_scripts/``. The only local extension, ``docs/_ext/mtlweight_docs.py``,
does what no maintained extension does (see its docstring).
"""

from __future__ import annotations

import doctest
import importlib.util
import os
import sys
import warnings
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(DOCS / "_ext"))
sys.path.insert(0, str(DOCS / "_scripts"))
# The MENET example is a separate package; import it from the checkout if it is
# not installed (`pip install -e examples/menet`).
if (ROOT / "examples" / "menet").is_dir():
    sys.path.append(str(ROOT / "examples" / "menet"))

os.environ.setdefault("MPLBACKEND", "Agg")
# sphinx-autodoc-typehints uses a Sphinx API deprecated for Sphinx 10; not ours to fix.
warnings.filterwarnings("ignore", message=".*set_application.*", module="sphinx_autodoc_typehints")

import mtlweight  # noqa: E402

project = "mtlweight"
author = "mtlweight developers"
copyright = "2026, mtlweight developers"
release = mtlweight.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",  # before sphinx_autodoc_typehints, as that package asks
    "sphinx_autodoc_typehints",
    "sphinx.ext.mathjax",
    "sphinx.ext.doctest",
    "sphinx.ext.viewcode",
    "matplotlib.sphinxext.plot_directive",
    "myst_parser",
    "sphinxarg.ext",
    "mtlweight_docs",
]

root_doc = "index"
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
# The Markdown files under _generated/ are included by pages, not pages themselves.
exclude_patterns = ["_build", "_generated", "**/.ipynb_checkpoints"]
templates_path: list[str] = []
pygments_style = "sphinx"
pygments_dark_style = "monokai"

# -- HTML ---------------------------------------------------------------------
html_theme = "furo"
html_title = f"mtlweight {release}"
html_static_path = ["_static"]
html_css_files = ["custom.css"]
html_show_sourcelink = False
html_theme_options = {"navigation_with_keys": True}

# -- math: MathJax 3 from a local copy ----------------------------------------
# The `sphinx-mathjax-offline` package ships MathJax 3 (tex-chtml.js, its fonts and
# TeX extensions). Its own Sphinx hook is not used: it declares no parallel safety
# (a warning under `-j auto -W`) and copies the bundle into every builder's output.
# Serving its folder as a static path copies it into the HTML output only.
_offline = importlib.util.find_spec("sphinx-mathjax-offline")
if _offline is None or _offline.origin is None:
    raise RuntimeError(
        "the docs need the local MathJax bundle: pip install sphinx-mathjax-offline "
        '(or pip install -e ".[docs]")'
    )
html_static_path.append(str(Path(_offline.origin).parent / "static"))  # -> _static/mathjax/
mathjax_path = "mathjax/tex-chtml.js"

# -- Markdown (myst-parser) ---------------------------------------------------
myst_heading_anchors = 3
# The included reports start at `##` (they are sections of a page).
suppress_warnings = ["myst.header"]

# -- autodoc, napoleon, type hints --------------------------------------------
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {
    "show-inheritance": True,
    # Public methods and properties a class adds (DWA's ``epoch_end``, GradNorm's
    # ``task_weights``), without the overrides documented by the base class.
    "exclude-members": "forward, backward, compute_weights, aggregate, combine, gram_weights, "
    "get_extra_state, set_extra_state, extra_repr",
}
autodoc_preserve_defaults = True
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False
napoleon_use_ivar = True
always_document_param_types = False
typehints_document_rtype = True
typehints_use_signature = False
typehints_fully_qualified = False

# -- doctest ------------------------------------------------------------------
# Every ``.. doctest::`` and ``.. testcode::`` block of the pages runs under
# ``sphinx -b doctest``. Docstring examples (``>>>`` in the API reference) are
# not run a second time here: pytest's ``--doctest-modules`` runs them in their
# own module's namespace, where they are written to run.
doctest_test_doctest_blocks = ""
# Exception messages are compared in full (no IGNORE_EXCEPTION_DETAIL): the errors
# page shows the real messages.
doctest_default_flags = (
    doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE | doctest.DONT_ACCEPT_TRUE_FOR_1
)
doctest_global_setup = """
import warnings
import torch
torch.manual_seed(0)
import mtlweight
import mtlweight as mw
"""

# -- matplotlib plot directive (figures drawn at build time) -------------------
plot_include_source = False
plot_html_show_source_link = False
plot_html_show_formats = False
plot_formats = [("png", 100)]
plot_rcparams = {"figure.autolayout": True, "font.size": 9}
plot_apply_rcparams = True
plot_working_directory = str(ROOT)

# -- misc ---------------------------------------------------------------------
# Local files only: nothing is looked up on the network.
linkcheck_ignore = [r".*"]
