"""fluxexport: FLUX.1 modules, checkpoint readers, tiny checkpoints and the TorchScript exporter.

Runs with Debian's python3-torch 1.13 on the CPU and with PyTorch 2.x on CUDA hosts.
Entry point: ``python3 -m fluxexport {export,tiny,reference} ...``.
"""

__version__ = "0.1.0"

# How to choose the Python that runs fluxexport: printed by --help and when torch is missing.
PYTHON_HINT = """\
fluxexport runs on the Python that starts it: the installed `fluxexport` wrapper uses
$PYTHON when set, else the python3 chosen at `make install` (by default Debian's
/usr/bin/python3, whose python3-torch has no CUDA).  To export for CUDA (--device cuda),
point it at a Python with a CUDA build of PyTorch, e.g. a venv:
  PYTHON=/path/to/venv/bin/python fluxexport export --source DIR -o OUT --device cuda
From a source tree: PYTHONPATH=export /path/to/venv/bin/python -m fluxexport ..."""
