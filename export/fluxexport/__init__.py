"""fluxexport: FLUX.1 modules, checkpoint readers, tiny checkpoints and the TorchScript exporter.

Runs with Debian's python3-torch 1.13 on the CPU and with PyTorch 2.x on CUDA hosts.
Entry point: ``python3 -m fluxexport {export,tiny,reference} ...``.
"""

__version__ = "0.1.0"
