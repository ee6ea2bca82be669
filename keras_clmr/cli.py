"""The ``keras-clmr`` console script: one subcommand per task of the zoo.

    keras-clmr --help                       # this list
    keras-clmr <subcommand> --help          # that subcommand's flags
    keras-clmr pretrain --model=clmr --dataset=demo --epochs=5
    keras-clmr tag song.mp3 --model clmr-mtat

``embed``, ``tag``, ``list`` and ``explain`` take GNU-style options (``--top-k 5``); the others
take absl flags (``--flag=value``), like their ``python -m training.* / export.*`` front ends.
Only the chosen subcommand's module is imported, so the list answers without loading Keras.
TensorFlow's start-up log lines are hidden; ``--verbose`` (any subcommand) shows them.
"""

import sys

from keras_clmr.commands import COMMANDS, HELP_ARGS

PROG = "keras-clmr"
ARGPARSE_COMMANDS = ("embed", "tag", "list")


def overview():
    """The top-level help: the usage line and one line per subcommand."""
    width = max(len(name) for name in COMMANDS)
    lines = [
        f"usage: {PROG} <subcommand> [flags]    ({PROG} <subcommand> --help for its flags)",
        "",
        "subcommands:",
    ]
    lines += [f"  {name:<{width}}  {command.summary}" for name, command in COMMANDS.items()]
    return "\n".join(lines) + "\n"


def main(argv=None):
    """Dispatch ``argv`` (default ``sys.argv[1:]``) to its subcommand; returns the exit status.

    absl subcommands exit the process themselves (``absl.app.run``).
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in HELP_ARGS or args[0] == "help":
        (sys.stdout if args else sys.stderr).write(overview())
        return 0 if args else 2
    name = args[0]
    if name not in COMMANDS:
        sys.stderr.write(
            f"{PROG}: error: unknown subcommand {name!r}; choose from "
            f"{', '.join(COMMANDS)}.\nusage: {PROG} <subcommand> [flags]  ({PROG} --help)\n"
        )
        return 2
    # TensorFlow's start-up lines are hidden unless asked for: --verbose (any subcommand), or
    # evaluate/supervised's --verbose=N (Keras fit verbosity) with N > 0.
    verbose = any(arg == "--verbose" or arg in ("--verbose=1", "--verbose=2") for arg in args)
    args = [arg for arg in args if arg != "--verbose"]
    if name != "list" and not any(arg in HELP_ARGS for arg in args):
        from keras_clmr.commands._quiet import quiet_start

        quiet_start(verbose)
    if name in ARGPARSE_COMMANDS:
        from keras_clmr.commands import infer

        return infer.main(args)
    if name == "explain":  # argparse, with the pictures in keras_clmr.interpret
        from keras_clmr.commands import explain

        return explain.main(args)
    from keras_clmr.commands import run

    return run(name, [f"{PROG} {name}", *args[1:]])


if __name__ == "__main__":
    sys.exit(main())
