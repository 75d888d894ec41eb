"""Command line: python3 -m fluxexport COMMAND [options]; COMMAND --help for details."""

import sys

COMMANDS = {
    "export": ("fluxexport.exporter", "checkpoint (BFL or diffusers layout) -> model dir"),
    "tiny": ("fluxexport.tiny", "write tiny random checkpoints in both real layouts"),
    "tiny-tokenizers": ("fluxexport.tiny", "write only the tiny tokenizer files"),
    "reference": ("fluxexport.reference", "run the Python reference pipeline"),
    "random-model": ("fluxexport.randmodel", "a model dir with random weights (benchmarks)"),
}


def main(argv):
    if len(argv) < 1 or argv[0] not in COMMANDS:
        print("usage: python3 -m fluxexport COMMAND [options]\ncommands:", file=sys.stderr)
        for name, (_, text) in COMMANDS.items():
            print(f"  {name:16s} {text}", file=sys.stderr)
        return 2
    module = __import__(COMMANDS[argv[0]][0], fromlist=["main"])
    return module.main(argv[0], argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
