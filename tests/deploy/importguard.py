"""Runs Python code as `python3` would (-m MODULE, -c CODE or SCRIPT, then arguments) under an
import hook that refuses, to the project's own code, every module but the standard library,
torch, numpy and fluxexport: what the GPU machine is known to have (no apt, no network;
Pillow, regex, sentencepiece not certain).  A refused import raises ModuleNotFoundError, as it
would there, so an optional import that is caught still works.

    python3 tests/deploy/importguard.py -m fluxexport random-model ...
    PY="python3 tests/deploy/importguard.py" tools/gpu/device.sh smoke

What torch or numpy import for themselves comes with them and is let through: the hook looks
at the file whose code runs the import statement, and refuses only when that file is inside
this repository (or is code given with -c).  IMPORTGUARD_LOG=FILE appends one line per
refusal.
"""

import importlib
import importlib.abc
import os
import runpy
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ALLOWED = {"torch", "numpy", "fluxexport"}
_SKIP = (os.path.dirname(os.path.abspath(importlib.__file__)), os.path.abspath(__file__))


def _importer():
    """The file whose code is importing: the first frame outside importlib and this file."""
    f = sys._getframe(2)
    while f is not None:
        name = f.f_code.co_filename
        if not name.startswith("<frozen") and not os.path.abspath(name).startswith(_SKIP):
            return name
        f = f.f_back
    return None


class Guard(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        if top in sys.stdlib_module_names or top in sys.builtin_module_names or top in ALLOWED:
            return None
        who = _importer()
        ours = who is None or who.startswith("<") or \
            os.path.realpath(who).startswith(os.path.realpath(ROOT) + os.sep)
        if not ours:
            return None
        msg = (f"import guard: '{name}' (imported by {who}) is not the standard library, torch "
               f"or numpy, which is all the GPU machine is known to have")
        log = os.environ.get("IMPORTGUARD_LOG")
        if log:
            with open(log, "a") as f:
                f.write(msg + "\n")
        raise ModuleNotFoundError(msg, name=name)


def main():
    args = sys.argv[1:]
    if not args:
        sys.exit("usage: importguard.py (-m MODULE | -c CODE | SCRIPT) [ARGS...]")
    sys.meta_path.insert(0, Guard())
    if args[0] == "-m" and len(args) > 1:
        sys.argv = [args[1]] + args[2:]
        sys.path[0] = ""
        runpy.run_module(args[1], run_name="__main__", alter_sys=True)
    elif args[0] == "-c" and len(args) > 1:
        sys.argv = ["-c"] + args[2:]
        sys.path[0] = ""
        exec(compile(args[1], "<string>", "exec"), {"__name__": "__main__"})
    else:
        sys.argv = args
        sys.path[0] = os.path.dirname(os.path.abspath(args[0]))
        runpy.run_path(args[0], run_name="__main__")


if __name__ == "__main__":
    main()
