"""What is in a dataset: clips (id, path, labels, split) and the label vocabulary.

One function per source layout (MagnaTagATune, GTZAN, a folder of audio, a CSV); each
returns a ``DatasetSpec`` that ``keras_clmr.data.prepare`` decodes into shards. Nothing here
decodes audio.
"""

import ast
import collections
import csv
import dataclasses
import os
import random

from keras_clmr.audio import list_audio_files

# The 50 MagnaTagATune tags in the order of musicnn-training's output_labels_mtt.txt (also
# CLMR's onnxruntime-web MTT_LABELS): the 50 most frequent tags of annotations_final.csv,
# most frequent first. Model heads and the pons2017 ground-truth TSVs use this order.
MTAT_TAGS = (
    "guitar",
    "classical",
    "slow",
    "techno",
    "strings",
    "drums",
    "electronic",
    "rock",
    "fast",
    "piano",
    "ambient",
    "beat",
    "violin",
    "vocal",
    "synth",
    "female",
    "indian",
    "opera",
    "male",
    "singing",
    "vocals",
    "no vocals",
    "harpsichord",
    "loud",
    "quiet",
    "flute",
    "woman",
    "male vocal",
    "no vocal",
    "pop",
    "soft",
    "sitar",
    "solo",
    "man",
    "classic",
    "choir",
    "voice",
    "new age",
    "dance",
    "male voice",
    "female vocal",
    "beats",
    "harp",
    "cello",
    "no voice",
    "weird",
    "country",
    "metal",
    "female voice",
    "choral",
)

# The standard MTAT split by the first character of mp3_path (its hex folder).
MTAT_FOLDER_SPLITS = {
    **{c: "train" for c in "0123456789ab"},
    "c": "valid",
    "d": "test",
    "e": "test",
    "f": "test",
}

GTZAN_GENRES = (
    "blues",
    "classical",
    "country",
    "disco",
    "hiphop",
    "jazz",
    "metal",
    "pop",
    "reggae",
    "rock",
)

SPLITS = ("train", "valid", "test")
_SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "valid": "valid",
    "val": "valid",
    "validation": "valid",
    "dev": "valid",
    "test": "test",
    "testing": "test",
    "eval": "test",
}


@dataclasses.dataclass(frozen=True)
class Clip:
    """One audio file to prepare: a unique id, its path, its label names and its split."""

    id: str
    path: str
    labels: tuple = ()
    split: str = "train"


@dataclasses.dataclass
class DatasetSpec:
    """A dataset before decoding. ``task`` is "multilabel", "multiclass" or "none"."""

    name: str
    clips: list
    labels: tuple
    task: str
    excluded: int = 0  # clips deliberately left out (e.g. not in a filtered split list)

    def __post_init__(self):
        if self.task not in ("multilabel", "multiclass", "none"):
            raise ValueError(f"task must be multilabel, multiclass or none, got {self.task!r}.")
        ids = collections.Counter(clip.id for clip in self.clips)
        duplicates = [i for i, n in ids.items() if n > 1]
        if duplicates:
            raise ValueError(f"{self.name}: clip ids must be unique; duplicated: {duplicates[:5]}.")
        known = set(self.labels)
        for clip in self.clips:
            unknown = [label for label in clip.labels if label not in known]
            if unknown:
                raise ValueError(
                    f"{self.name}: clip {clip.id} has labels {unknown} outside the vocabulary."
                )


def normalize_split(name, where=""):
    """'val'/'validation'/'dev' -> 'valid', and so on; anything else is an error."""
    key = str(name).strip().lower()
    if key not in _SPLIT_ALIASES:
        raise ValueError(f"{where}unknown split {name!r}; use one of train, valid (val), test.")
    return _SPLIT_ALIASES[key]


# ----------------------------------------------------------------------------- MTAT


def top_tags(annotations_path, n=50):
    """The ``n`` most frequent tag columns of an MTAT annotations_final.csv, most frequent first.

    Ties keep the column order. When the result is the standard 50-tag set, it is returned
    in ``MTAT_TAGS`` order (the order pretrained heads use).
    """
    header, rows = _read_annotations(annotations_path)
    tag_columns = [c for c in header if c not in ("clip_id", "mp3_path")]
    counts = collections.Counter()
    for row in rows:
        for tag in tag_columns:
            if row[tag].strip() not in ("", "0"):
                counts[tag] += 1
    order = sorted(range(len(tag_columns)), key=lambda i: (-counts[tag_columns[i]], i))
    chosen = tuple(tag_columns[i] for i in order[:n])
    if n == len(MTAT_TAGS) and set(chosen) == set(MTAT_TAGS):
        return MTAT_TAGS
    return chosen


def _read_annotations(path):
    with open(path, newline="", encoding="utf-8") as file:
        reader = csv.DictReader(file, delimiter="\t")
        header = reader.fieldnames or []
        if "clip_id" not in header or "mp3_path" not in header:
            raise ValueError(
                f"{path}: not an MTAT annotations_final.csv (tab-separated, with clip_id and "
                f"mp3_path columns); found columns {header[:5]}..."
            )
        return header, list(reader)


def _find(source, name, flag):
    for candidate in (
        os.path.join(source, name),
        os.path.join(os.path.dirname(os.path.abspath(source)), name),
    ):
        if os.path.isfile(candidate):
            return candidate
    raise FileNotFoundError(
        f"{name} not found in {source} or its parent; pass its location with {flag}."
    )


def mtat(source, split_dir=None, annotations=None):
    """MagnaTagATune: ``source`` holds the hex folders 0-f of mp3 files (+ annotations_final.csv).

    Labels are the 50 most frequent tags (``MTAT_TAGS`` order). Splits: by folder (0-b train,
    c valid, d-f test), or, with ``split_dir``, the pons2017 lists of musicnn-training
    (index_mtt.tsv, train/val/test_gt_mtt.tsv; their labels are in ``MTAT_TAGS`` order and
    clips not listed are left out).
    """
    if not os.path.isdir(source):
        raise FileNotFoundError(
            f"{source}: not a directory; pass the folder holding the MTAT hex folders 0-f."
        )
    if split_dir:
        return _mtat_pons(source, split_dir)
    annotations = annotations or _find(source, "annotations_final.csv", "--annotations")
    tags = top_tags(annotations)
    header, rows = _read_annotations(annotations)
    clips = []
    for row in rows:
        relative = row["mp3_path"].strip()
        if not relative:
            continue
        folder = relative.replace("\\", "/").split("/")[0].lower()
        split = MTAT_FOLDER_SPLITS.get(folder[:1]) if len(folder) == 1 else None
        if split is None:
            raise ValueError(f"{annotations}: mp3_path {relative!r} is not in a hex folder 0-f.")
        labels = tuple(tag for tag in tags if row[tag].strip() not in ("", "0"))
        clips.append(Clip(row["clip_id"].strip(), os.path.join(source, relative), labels, split))
    return DatasetSpec("mtat", clips, tuple(tags), "multilabel")


def _mtat_pons(source, split_dir):
    index_path = os.path.join(split_dir, "index_mtt.tsv")
    if not os.path.isfile(index_path):
        raise FileNotFoundError(
            f"{index_path} not found; --split_dir must hold musicnn-training's "
            "index_mtt.tsv and {train,val,test}_gt_mtt.tsv."
        )
    paths = {}
    with open(index_path, encoding="utf-8") as file:
        for line in file:
            if line.strip():
                clip_id, relative = line.rstrip("\n").split("\t")[:2]
                paths[clip_id.strip()] = relative.strip()
    clips = []
    for file_split, split in (("train", "train"), ("val", "valid"), ("test", "test")):
        gt_path = os.path.join(split_dir, f"{file_split}_gt_mtt.tsv")
        if not os.path.isfile(gt_path):
            raise FileNotFoundError(f"{gt_path} not found in --split_dir.")
        with open(gt_path, encoding="utf-8") as file:
            for number, line in enumerate(file, 1):
                if not line.strip():
                    continue
                clip_id, vector = line.rstrip("\n").split("\t")[:2]
                clip_id = clip_id.strip()
                values = ast.literal_eval(vector.strip())
                if len(values) != len(MTAT_TAGS):
                    raise ValueError(
                        f"{gt_path}:{number}: expected {len(MTAT_TAGS)} labels, got {len(values)}."
                    )
                if clip_id not in paths:
                    raise ValueError(f"{gt_path}:{number}: clip {clip_id} is not in index_mtt.tsv.")
                labels = tuple(tag for tag, v in zip(MTAT_TAGS, values) if v)
                clips.append(Clip(clip_id, os.path.join(source, paths[clip_id]), labels, split))
    return DatasetSpec("mtat", clips, MTAT_TAGS, "multilabel", excluded=len(paths) - len(clips))


# ----------------------------------------------------------------------------- GTZAN


def _gtzan_root(source):
    for candidate in (
        source,
        os.path.join(source, "genres_original"),
        os.path.join(source, "Data", "genres_original"),
        os.path.join(source, "genres"),
    ):
        if os.path.isdir(candidate) and any(
            os.path.isdir(os.path.join(candidate, g)) for g in GTZAN_GENRES
        ):
            return candidate
    raise FileNotFoundError(
        f"{source}: no GTZAN genre folders (blues/, classical/, ...) here or in "
        "genres_original/; pass the folder that holds them."
    )


def _gtzan_key(text):
    """'blues/blues.00012.wav', 'blues.00012.au' or 'blues.00012' -> 'blues.00012'."""
    base = os.path.basename(text.strip().replace("\\", "/"))
    parts = base.split(".")
    return ".".join(parts[:2]) if len(parts) >= 2 else base


def gtzan(source, split_dir=None, seed=0, fractions=(0.8, 0.1)):
    """GTZAN: ``<genre>/<genre>.000NN.wav`` for 10 genres (one-hot, ``GTZAN_GENRES`` order).

    With ``split_dir`` holding the fault-filtered lists (train_filtered.txt,
    valid_filtered.txt, test_filtered.txt; one 'genre.000NN' per line, any extension or
    folder prefix), those splits are used and unlisted tracks are left out. Otherwise a
    stratified split (``fractions`` train/valid, rest test) seeded by ``seed``.
    """
    root = _gtzan_root(source)
    genres = tuple(g for g in sorted(os.listdir(root)) if os.path.isdir(os.path.join(root, g)))
    vocabulary = GTZAN_GENRES if set(genres) <= set(GTZAN_GENRES) else genres
    by_genre = {g: list_audio_files(os.path.join(root, g)) for g in genres}
    excluded = 0
    if split_dir:
        assigned = {}
        for split in SPLITS:
            path = os.path.join(split_dir, f"{split}_filtered.txt")
            if not os.path.isfile(path):
                raise FileNotFoundError(
                    f"{path} not found; --split_dir must hold train_filtered.txt, "
                    "valid_filtered.txt and test_filtered.txt."
                )
            with open(path, encoding="utf-8") as file:
                for line in file:
                    if line.strip():
                        assigned[_gtzan_key(line)] = split
        clips = []
        for genre in genres:
            for path in by_genre[genre]:
                key = _gtzan_key(path)
                if key in assigned:
                    clips.append(Clip(key, path, (genre,), assigned[key]))
                else:
                    excluded += 1
    else:
        rng = random.Random(seed)
        clips = []
        for genre in genres:
            paths = list(by_genre[genre])
            rng.shuffle(paths)
            n_train = int(round(fractions[0] * len(paths)))
            n_valid = int(round(fractions[1] * len(paths)))
            for i, path in enumerate(paths):
                split = "train" if i < n_train else "valid" if i < n_train + n_valid else "test"
                clips.append(Clip(_gtzan_key(path), path, (genre,), split))
        clips.sort(key=lambda clip: clip.id)
    return DatasetSpec("gtzan", clips, vocabulary, "multiclass", excluded=excluded)


# ----------------------------------------------------------------------------- folder, CSV


def folder(source):
    """Any tree of audio files, unlabelled, all in the "train" split (for pretraining); ids are
    the paths relative to ``source``."""
    paths = list_audio_files(source)
    if not paths:
        raise FileNotFoundError(
            f"{source}: no audio files found (looked for wav/flac/ogg/opus/mp3/...)."
        )
    clips = [Clip(os.path.relpath(p, source).replace(os.sep, "/"), p) for p in paths]
    return DatasetSpec("folder", clips, (), "none")


def _find_csv(source):
    if os.path.isfile(source):
        return source
    if not os.path.isdir(source):
        raise FileNotFoundError(f"{source}: no such CSV file or directory.")
    if os.path.isfile(os.path.join(source, "labels.csv")):
        return os.path.join(source, "labels.csv")
    found = sorted(f for f in os.listdir(source) if f.lower().endswith(".csv"))
    if len(found) != 1:
        raise FileNotFoundError(
            f"{source}: expected labels.csv or exactly one .csv file, found {found}; "
            "pass the CSV file itself as --source."
        )
    return os.path.join(source, found[0])


def csv_dataset(source, task="auto", vocabulary=None):
    """A CSV with rows ``path,labels[,split]`` (labels ';'-separated, split train/valid/test,
    default train; an optional header row starting with 'path'). Relative paths are resolved
    against the CSV's folder. ``source`` is the CSV or a folder holding labels.csv.

    The vocabulary is sorted unless ``vocabulary`` (a sequence) fixes its order. ``task``
    "auto" means multiclass when every clip has exactly one label, multilabel when any has
    more (or none), and "none" when there are no labels at all.
    """
    path = _find_csv(source)
    base = os.path.dirname(os.path.abspath(path))
    clips = []
    with open(path, newline="", encoding="utf-8") as file:
        for number, row in enumerate(csv.reader(file), 1):
            if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
                continue
            if number == 1 and row[0].strip().lower() == "path":
                continue
            if len(row) > 3:
                raise ValueError(
                    f"{path}:{number}: expected path,labels[,split], got {len(row)} fields; "
                    "separate labels with ';', not ','."
                )
            relative = row[0].strip()
            labels = tuple(
                dict.fromkeys(
                    t.strip() for t in (row[1] if len(row) > 1 else "").split(";") if t.strip()
                )
            )
            try:
                split = normalize_split(row[2]) if len(row) > 2 and row[2].strip() else "train"
            except ValueError as error:
                raise ValueError(
                    f"{path}:{number}: {error} (labels are ';'-separated; a ',' starts the "
                    "split column)"
                ) from None
            clip_id = relative.replace("\\", "/")
            clips.append(Clip(clip_id, os.path.join(base, relative), labels, split))
    if not clips:
        raise ValueError(f"{path}: no rows; expected path,labels[,split].")
    found = sorted({label for clip in clips for label in clip.labels})
    if vocabulary:
        vocabulary = tuple(vocabulary)
        missing = sorted(set(found) - set(vocabulary))
        if missing:
            raise ValueError(f"{path}: labels {missing} are not in the given vocabulary.")
    else:
        vocabulary = tuple(found)
    if task == "auto":
        if not vocabulary:
            task = "none"
        else:
            task = "multiclass" if all(len(clip.labels) == 1 for clip in clips) else "multilabel"
    elif task == "multiclass":
        bad = [clip.id for clip in clips if len(clip.labels) != 1]
        if bad:
            raise ValueError(
                f"{path}: task multiclass needs exactly one label per clip; e.g. {bad[:3]}."
            )
    return DatasetSpec("csv", clips, vocabulary, task)


def get(name, source, split_dir=None, seed=0, annotations=None, task="auto", vocabulary=None):
    """The ``DatasetSpec`` of ``name`` (mtat, gtzan, folder, csv) at ``source``."""
    if name == "mtat":
        return mtat(source, split_dir=split_dir, annotations=annotations)
    if name == "gtzan":
        return gtzan(source, split_dir=split_dir, seed=seed)
    if name == "folder":
        return folder(source)
    if name == "csv":
        return csv_dataset(source, task=task, vocabulary=vocabulary)
    raise ValueError(f"Unknown dataset {name!r}; use mtat, gtzan, folder or csv.")
