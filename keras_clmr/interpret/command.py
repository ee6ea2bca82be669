"""``keras-clmr explain filters|listen|taggram|map``: the interpret pictures from the command line.

    keras-clmr explain filters --model clmr-mtat --output spectra.png [--layers 1,4,6]
    keras-clmr explain listen --model clmr-mtat music/ other/ --output page/ [--tagger clmr-mtat]
    keras-clmr explain taggram --model musicnn-mtt song.mp3 --output taggram.png
    keras-clmr explain map --model clmr-mtat music/ --output map/ [--method tsne]

``main(argv)`` takes the arguments after ``keras-clmr`` (``["explain", "filters", ...]`` or
without the leading ``explain``) and returns the exit status: 0, or 2 with one line on stderr
for an error the user can fix.
"""

import argparse
import sys

USER_ERRORS = (ValueError, TypeError, FileNotFoundError, FileExistsError, KeyError)


def _layers(text):
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise argparse.ArgumentTypeError("give layer numbers or names, e.g. 1,4,6 or block_0")
    return tuple(int(item) if item.isdigit() else item for item in items)


def _features(text):
    if text.isdigit():
        return int(text)
    try:
        return [int(item) for item in text.split(",") if item.strip()]
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"features must be a count or numbers: {error}") from None


def _parser():
    parser = argparse.ArgumentParser(
        prog="keras-clmr explain", description="See and hear what a model learned."
    )
    sub = parser.add_subparsers(dest="picture", required=True)
    model_help = "preset name, hf://org/name[@revision] or preset folder"

    p = sub.add_parser("filters", help="filter spectra (gradient ascent, sorted by peak)")
    p.add_argument("--model", default="clmr-mtat", help=model_help)
    p.add_argument("--random-init", action="store_true", help="the same architecture, untrained")
    p.add_argument("--layers", type=_layers, default=None, help="e.g. 1,4,6 (SampleCNN default)")
    p.add_argument("--steps", type=int, default=None, help="gradient-ascent steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", "-o", required=True, help="PNG path")

    p = sub.add_parser("listen", help="listening page: top clips per feature, in the browser")
    p.add_argument("inputs", nargs="+", help="audio files, folders or prepared dataset folders")
    p.add_argument("--model", default="clmr-mtat", help=model_help)
    p.add_argument("--tagger", default=None, help="tagger whose predictions are shown")
    p.add_argument("--features", type=_features, default=None, help="a count or 3,17,40")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--output", "-o", required=True, help="page folder")
    p.add_argument("--overwrite", action="store_true")

    p = sub.add_parser("taggram", help="tags x time image of one file")
    p.add_argument("file")
    p.add_argument("--model", default=None, help=model_help + " (a tagger)")
    p.add_argument("--top-n", type=int, default=10)
    p.add_argument("--hop", type=float, default=None, help="seconds between windows")
    p.add_argument("--output", "-o", required=True, help="PNG path")

    p = sub.add_parser("map", help="2-D map of a collection (PNG + interactive HTML)")
    p.add_argument("inputs", nargs="+", help="a folder or audio files")
    p.add_argument("--model", default="clmr-mtat", help=model_help)
    p.add_argument("--method", choices=("pca", "tsne"), default="pca")
    p.add_argument("--output", "-o", required=True, help="map folder")
    p.add_argument("--overwrite", action="store_true")
    return parser


def _load(name, task="embed"):
    import keras_clmr

    return keras_clmr.load_pretrained(name, task=task)


def _run(args):
    from keras_clmr import interpret

    if args.picture == "filters":
        model = _load(args.model)
        if args.random_init:  # the same architecture with fresh (seeded) weights, for contrast
            import keras

            keras.utils.set_random_seed(args.seed)
            model = type(model).from_config(model.get_config())
        options = {} if args.steps is None else {"steps": args.steps}
        name = f"{args.model} (random init)" if args.random_init else args.model
        result = interpret.filter_spectra(
            model,
            layers=args.layers,
            seed=args.seed,
            output=args.output,
            model_name=name,
            **options,
        )
        return result.path
    if args.picture == "listen":
        tagger = _load(args.tagger, task="tag") if args.tagger else None
        page = interpret.listening_page(
            _load(args.model),
            args.inputs,
            args.output,
            tagger=tagger,
            features=args.features,
            top_k=args.top_k,
            overwrite=args.overwrite,
        )
        return page.path
    if args.picture == "taggram":
        model = _load(args.model, task="tag") if args.model else None
        return interpret.taggram(
            args.file, model=model, top_n=args.top_n, hop=args.hop, output=args.output
        ).path
    inputs = args.inputs[0] if len(args.inputs) == 1 else args.inputs
    result = interpret.embedding_map(
        inputs,
        model=_load(args.model),
        method=args.method,
        output_dir=args.output,
        overwrite=args.overwrite,
    )
    return result.html


def main(argv=None):
    """Run ``explain <picture> ...``; prints where the output is and returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "explain":
        args = args[1:]
    parsed = _parser().parse_args(args)
    from keras_clmr.audio import AudioError

    try:
        where = _run(parsed)
    except (*USER_ERRORS, AudioError) as error:
        sys.stderr.write(f"keras-clmr explain {parsed.picture}: error: {error}\n")
        return 2
    print(where)
    return 0


if __name__ == "__main__":
    sys.exit(main())
