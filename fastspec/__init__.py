"""fastspec: fast, exact spectral similarity for small-molecule MS/MS."""
from fastspec._version import __version__
