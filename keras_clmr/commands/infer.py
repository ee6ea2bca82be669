"""Embeddings or tags for many audio files, and the list of presets.

    keras-clmr embed FILES... --model NAME [--layer max_pool] [--output out.npz|.csv|.json]
    keras-clmr tag FILES... --model NAME [--top-k 5] [--output out.npz|.csv|.json]
    keras-clmr list

FILES may be folders (searched recursively for audio). Without ``--output`` a summary is
printed. CSV is long format: ``tag`` writes one row per window and tag (file, start, end,
tag, probability; the ``--top-k`` most probable tags of each window), ``embed`` one row per
window (file, start, end, e0, e1, ...). A progress bar (seconds of audio, file i/n) goes to
stderr when it is a terminal (``--progress`` forces it, ``--no-progress`` hides it). A file
that cannot be read is reported on stderr and skipped (exit status 1); a bad model or option
exits with status 2.
"""

import argparse
import csv
import io
import json
import os
import sys

from keras_clmr.commands import _checks

OUTPUT_FORMATS = (".npz", ".csv", ".json")


def _parser():
    parser = argparse.ArgumentParser(
        prog="keras-clmr", description="Embed or tag audio files with keras_clmr models."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for command, text in (
        ("embed", "embeddings [T, D] per file, with window start times"),
        ("tag", "tag probabilities per window and per file, with the top-k tags"),
    ):
        p = sub.add_parser(command, help=text, description=text)
        p.add_argument("files", nargs="+", help="audio files or folders (searched recursively)")
        p.add_argument(
            "--model",
            default="clmr-mtat",
            help="preset name, hf://org/name[@revision] or preset folder (default: clmr-mtat)",
        )
        p.add_argument("--output", "-o", help="write results to out.npz, out.csv or out.json")
        p.add_argument(
            "--hop",
            type=_checks.hop_seconds,
            default=None,
            help="seconds between window starts (default: one window)",
        )
        p.add_argument(
            "--batch-size",
            type=_checks.batch_size,
            default=32,
            help="windows per forward pass (default: 32)",
        )
        p.add_argument(
            "--short",
            choices=("pad", "error"),
            default="pad",
            help="a file shorter than one window is zero-padded (default) or an error",
        )
        p.add_argument("--no-progress", action="store_true", help="no progress bar")
        p.add_argument(
            "--progress",
            action="store_true",
            help="a progress bar even when stderr is not a terminal (logs)",
        )
        if command == "tag":
            p.add_argument(
                "--top-k",
                "--top_k",
                dest="top_k",
                type=_checks.top_k,
                default=5,
                help="tags per file in the summary and per window in CSV (default: 5)",
            )
        else:
            p.add_argument(
                "--layer",
                default=None,
                help="an intermediate feature instead of the embedding: musicnn max_pool, "
                "mean_pool, penultimate, ...; SampleCNN block0 ... block10 (time-averaged)",
            )
    sub.add_parser("list", help="list the registered presets")
    return parser


def _expand(paths):
    from keras_clmr.audio import list_audio_files

    files = []
    for path in paths:
        if os.path.isdir(path):
            found = list_audio_files(path)
            if not found:
                print(f"warning: no audio files under {path}", file=sys.stderr)
            files += found
        else:
            files.append(path)  # missing files are reported per file later
    return files


def _write_atomic(path, write):
    """Run ``write(file)`` on a temporary file that replaces ``path`` only when complete."""
    from keras_clmr.io import atomic_path

    with atomic_path(path) as temporary, open(temporary, "wb") as file:
        write(file)


def _npz(results, command):
    import numpy as np

    def write(f):
        arrays = {
            "files": np.array([r.source for r in results]),
            "errors": np.array([r.error or "" for r in results]),
        }
        ok = [r for r in results if r.error is None]
        if ok:
            arrays.update(
                sample_rate=np.array(ok[0].sample_rate),
                window_seconds=np.array(ok[0].window_seconds),
                hop_seconds=np.array(ok[0].hop_seconds),
            )
        if command == "tag" and results:
            arrays["tags"] = np.array(results[0].tags)
        for i, r in enumerate(results):
            arrays[f"times_{i}"] = r.times
            if command == "embed":
                arrays[f"embeddings_{i}"] = r.embeddings
            else:
                arrays[f"probabilities_{i}"] = r.probabilities
                arrays[f"clip_{i}"] = r.clip
        np.savez_compressed(f, **arrays)

    return write


def _csv(results, command, top_k=5):
    import numpy as np

    def write(f):
        text = io.TextIOWrapper(f, encoding="utf-8", newline="")
        writer = csv.writer(text)
        ok = [r for r in results if r.error is None]
        if command == "embed":
            dim = ok[0].embeddings.shape[1] if ok else 0
            writer.writerow(["file", "start", "end", *[f"e{j}" for j in range(dim)]])
            for r in ok:
                for t, row in zip(r.times, r.embeddings):
                    end = f"{t + r.window_seconds:.6f}"
                    writer.writerow([r.source, f"{t:.6f}", end, *[f"{v:.7g}" for v in row]])
        else:
            writer.writerow(["file", "start", "end", "tag", "probability"])
            for r in ok:
                k = min(int(top_k), len(r.tags))
                for t, row in zip(r.times, r.probabilities):
                    start, end = f"{t:.6f}", f"{t + r.window_seconds:.6f}"
                    for j in np.argsort(-row, kind="stable")[:k]:
                        writer.writerow([r.source, start, end, r.tags[j], f"{row[j]:.6g}"])
        text.flush()
        text.detach()

    return write


def _json(results, command):
    def write(f):
        records = []
        for r in results:
            record = {
                "file": r.source,
                "error": r.error,
                "sample_rate": r.sample_rate,
                "window_seconds": r.window_seconds,
                "hop_seconds": r.hop_seconds,
                "duration_seconds": r.duration,
                "padded": r.padded,
                "times": r.times.tolist(),
            }
            if command == "embed":
                record["embeddings"] = r.embeddings.tolist()
            else:
                record["tags"] = list(r.tags)
                record["probabilities"] = r.probabilities.tolist()
                record["clip"] = dict(zip(r.tags, r.clip.tolist())) if r.error is None else {}
                record["top"] = [[name, p] for name, p in r.top]
            records.append(record)
        f.write(json.dumps(records, indent=1).encode())

    return write


def _summary(results, command):
    for r in results:
        if r.error is not None:
            continue
        if command == "embed":
            print(
                f"{r.source}: {r.embeddings.shape[0]} windows x {r.embeddings.shape[1]} dims "
                f"({r.duration:.1f} s{', padded' if r.padded else ''})"
            )
        else:
            top = ", ".join(f"{name} {p:.3f}" for name, p in r.top)
            print(f"{r.source}: {top}")


def main(argv=None):
    """``keras-clmr embed|tag|list ...``; exit status 1: some files skipped, 2: bad input."""
    args = _parser().parse_args(argv)
    if args.command == "list":
        from keras_clmr.presets import list_presets

        list_presets()
        return 0
    if args.output and os.path.splitext(args.output)[1].lower() not in OUTPUT_FORMATS:
        print(
            f"error: --output must end in one of {', '.join(OUTPUT_FORMATS)}, got {args.output}",
            file=sys.stderr,
        )
        return 2
    if args.output:
        try:
            _checks.writable_folder(os.path.dirname(os.path.abspath(args.output)), "--output")
        except _checks.CheckError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2

    from keras_clmr import inference
    from keras_clmr.hub import load_pretrained
    from keras_clmr.presets import PresetError

    files = _expand(args.files)
    if not files:
        print("error: no audio files to process", file=sys.stderr)
        return 2
    try:
        # --no-progress also silences a first use's download and conversion messages.
        model = load_pretrained(args.model, task=args.command, progress=not args.no_progress)
    except (PresetError, OSError, ValueError) as error:
        print(f"error: cannot load model {args.model!r}: {error}", file=sys.stderr)
        return 2
    options = dict(
        model=model,
        hop=args.hop,
        batch_size=args.batch_size,
        short=args.short,
        on_error="skip",
        progress=False if args.no_progress else (True if args.progress else None),
    )
    if args.command == "embed":
        try:
            results = inference.embed(files, layer=args.layer, **options)
        except ValueError as error:  # an unknown --layer
            print(f"error: {error}", file=sys.stderr)
            return 2
    else:
        results = inference.tag(files, top_k=args.top_k, **options)
    failed = [r for r in results if r.error is not None]
    for r in failed:
        print(f"skipped: {r.error}", file=sys.stderr)
    if args.output:
        extension = os.path.splitext(args.output)[1].lower()
        writer = {".npz": _npz, ".csv": _csv, ".json": _json}[extension]
        write = (
            _csv(results, args.command, getattr(args, "top_k", 5))
            if extension == ".csv"
            else writer(results, args.command)
        )
        try:
            _write_atomic(args.output, write)
        except OSError as error:
            full = "the disk is full; " if _checks.is_disk_full(error) else ""
            print(f"error: cannot write {args.output}: {full}{error}", file=sys.stderr)
            return 2
        print(
            f"wrote {args.output} ({len(results) - len(failed)} of {len(results)} files)",
            file=sys.stderr,
        )
    else:
        _summary(results, args.command)
    return 1 if failed else 0
