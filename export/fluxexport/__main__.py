"""Command line: fluxexport COMMAND [options] (or python3 -m fluxexport); COMMAND --help for
details.

Exit status of every command: 0 ok, 1 bad checkpoint or input, 2 bad arguments, 3 anything
else (I/O, a torch failure, or a Python without torch), 130 interrupted.
"""

import sys

from fluxexport import PYTHON_HINT

COMMANDS = {
    "export": ("fluxexport.exporter", "checkpoint (BFL or diffusers layout) -> model dir"),
    "tiny": ("fluxexport.tiny", "write tiny random checkpoints in both real layouts"),
    "tiny-tokenizers": ("fluxexport.tiny", "write only the tiny tokenizer files"),
    "reference": ("fluxexport.reference", "run the Python reference pipeline"),
    "random-model": ("fluxexport.randmodel", "a model dir with random weights (benchmarks)"),
    "lora-random": ("fluxexport.lora", "a random LoRA for a model dir, in all three layouts"),
}

EXIT_USAGE = 2
EXIT_OTHER = 3

EXIT_TEXT = """\
exit status: 0 ok, 1 bad checkpoint or input, 2 bad arguments, 3 anything else (I/O,
a torch failure, a Python without torch), 130 interrupted."""


def usage():
    lines = ["usage: fluxexport COMMAND [options]   ('fluxexport COMMAND --help' for its options)",
             "       fluxexport --help", "", "commands:"]
    lines += [f"  {name:16s} {text}" for name, (_, text) in COMMANDS.items()]
    return "\n".join(lines + ["", PYTHON_HINT, "", EXIT_TEXT]) + "\n"


def missing_module(e):
    """The message for a Python that lacks a module fluxexport needs (torch, usually)."""
    name = e.name or str(e)
    what = "PyTorch (the module 'torch')" if name.split(".")[0] == "torch" else f"the module '{name}'"
    return (f"fluxexport: {sys.executable} (Python {sys.version.split()[0]}) has no {what}.\n"
            f"Debian: apt-get install python3-torch (CPU only).\n{PYTHON_HINT}\n")


def main(argv):
    if len(argv) < 1:
        sys.stderr.write("fluxexport: no command given\n" + usage())
        return EXIT_USAGE
    if argv[0] in ("-h", "--help"):
        sys.stdout.write(usage())
        return 0
    if argv[0] not in COMMANDS:
        sys.stderr.write(f"fluxexport: unknown command '{argv[0]}' "
                         f"(commands: {', '.join(COMMANDS)}; fluxexport --help for more)\n")
        return EXIT_USAGE
    try:
        module = __import__(COMMANDS[argv[0]][0], fromlist=["main"])
        return module.main(argv[0], argv[1:])
    except ModuleNotFoundError as e:
        # Raised at import time by every command when this Python has no torch.
        sys.stderr.write(missing_module(e))
        return EXIT_OTHER


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
