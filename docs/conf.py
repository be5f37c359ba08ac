"""Sphinx configuration for the mtlweight documentation.

Build (from the repository root)::

    python -m sphinx -W --keep-going -b html docs docs/_build/html
    python -m sphinx -W --keep-going -b doctest docs docs/_build/doctest

Nothing is fetched at build time: no intersphinx inventory, no download. Figures
are drawn at build time by matplotlib's ``plot`` directive from the scripts in
``docs/_scripts/``; the API reference is generated from ``mtlweight.__all__`` by
the local extension ``docs/_ext/mtlweight_docs.py``.
"""

from __future__ import annotations

import doctest
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
    "mtlweight_docs",
]

root_doc = "index"
exclude_patterns = ["_build", "_generated/README.md", "**/.ipynb_checkpoints"]
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

# -- autodoc, napoleon, type hints --------------------------------------------
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"show-inheritance": True}
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
suppress_warnings: list[str] = []
