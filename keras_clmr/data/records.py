"""Where each clip's PCM bytes sit inside a prepared shard, and views read straight from there.

A shard is a TFRecord file (uncompressed): per record an 8-byte length, a 4-byte CRC, the
serialized tf.train.Example and a 4-byte CRC. The Example keeps a clip's int16 PCM as one
contiguous bytes field ("audio"), so its file offset is computable: ``prepare`` records it in
clips.tsv (columns ``shard`` and ``offset``), and ``scan_shard`` finds it in a shard written
before those columns existed, reading only each record's header (a few hundred bytes).

``ViewReader`` then reads views straight from local shards: a pair of 59049-sample views
reads 236 KB instead of parsing the whole ~1.3 MB record, which is what makes whole-clip
views cheap.
"""

import mmap
import os
import struct
import threading

import numpy as np

AUDIO_KEY = b"audio"
_HEADER = 12  # uint64 length + uint32 masked CRC of the length
_FOOTER = 4  # uint32 masked CRC of the data
_LEN, _VARINT, _I64, _I32 = 2, 0, 1, 5  # protobuf wire types


class ShardLayoutError(ValueError):
    """A shard whose bytes are not the records its manifest describes (truncated, replaced)."""


def _varint(buffer, position, end):
    result, shift = 0, 0
    while position < end and shift < 64:
        byte = buffer[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, position
        shift += 7
    raise ShardLayoutError("malformed varint in a serialized Example")


def _skip(buffer, position, end, wire_type):
    if wire_type == _VARINT:
        return _varint(buffer, position, end)[1]
    if wire_type == _LEN:
        length, position = _varint(buffer, position, end)
        return position + length
    if wire_type == _I64:
        return position + 8
    if wire_type == _I32:
        return position + 4
    raise ShardLayoutError(f"unsupported protobuf wire type {wire_type} in a serialized Example")


def _fields(buffer, position, end):
    """(field number, start, end) of each length-delimited field in buffer[position:end]."""
    while position < end:
        tag, position = _varint(buffer, position, end)
        if tag & 7 == _LEN:
            length, position = _varint(buffer, position, end)
            if position + length > end:
                raise ShardLayoutError("a field runs past the end of its serialized Example")
            yield tag >> 3, position, position + length
            position += length
        else:
            position = _skip(buffer, position, end, tag & 7)


def _first(buffer, position, end, number):
    for field, start, stop in _fields(buffer, position, end):
        if field == number:
            return start, stop
    return None


def audio_span(buffer, start=0, end=None, key=AUDIO_KEY):
    """(offset, byte length) of the first value of bytes feature ``key`` in the serialized
    tf.train.Example buffer[start:end] (bytes or mmap); offsets count from buffer[0]."""
    end = len(buffer) if end is None else end
    features = _first(buffer, start, end, 1)  # Example.features
    if features is not None:
        for field, entry_start, entry_end in _fields(buffer, *features):
            if field != 1:  # Features.feature map entries
                continue
            name = _first(buffer, entry_start, entry_end, 1)
            if name is None or buffer[name[0] : name[1]] != key:
                continue
            value = _first(buffer, entry_start, entry_end, 2)  # Feature
            bytes_list = value and _first(buffer, *value, 1)  # Feature.bytes_list
            data = bytes_list and _first(buffer, *bytes_list, 1)  # BytesList.value[0]
            if data is None:
                break
            return data[0], data[1] - data[0]
    raise ShardLayoutError(f"no bytes feature {key.decode()!r} in a serialized Example")


def record_overhead(serialized_length):
    """Bytes a TFRecord of ``serialized_length`` data bytes takes in its file."""
    return _HEADER + serialized_length + _FOOTER


def data_offset(record_start):
    """File offset of the serialized Example of the record starting at ``record_start``."""
    return record_start + _HEADER


def _open_map(path):
    with open(path, "rb") as file:
        if not file.seek(0, 2):
            return b""
        return mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)


def scan_shard(path):
    """(offsets int64 [n], num_samples int64 [n]) of the PCM of every record of a local shard,
    in record order, reading only record headers. ShardLayoutError for a truncated shard."""
    buffer = _open_map(path)
    size, position = len(buffer), 0
    offsets, lengths = [], []
    try:
        while position < size:
            if position + _HEADER > size:
                raise ShardLayoutError(f"{path}: truncated record header at byte {position}")
            (length,) = struct.unpack_from("<Q", buffer, position)
            start = data_offset(position)
            end = start + length
            if end + _FOOTER > size:
                raise ShardLayoutError(
                    f"{path}: the record at byte {position} ({length} bytes) runs past the end "
                    f"of the file ({size} bytes)"
                )
            offset, byte_length = audio_span(buffer, start, end)
            offsets.append(offset)
            lengths.append(byte_length // 2)
            position = end + _FOOTER
    finally:
        if isinstance(buffer, mmap.mmap):
            buffer.close()
    return np.asarray(offsets, np.int64), np.asarray(lengths, np.int64)


def _aligned_empty(shape, alignment=64):
    """float32 array aligned to ``alignment`` bytes: TensorFlow then takes a numpy_function's
    result without copying it (an unaligned 45 MB batch costs a copy of ~45 ms on 2 cores)."""
    size = int(np.prod(shape)) * 4
    raw = np.empty(size + alignment, np.uint8)
    skip = (-raw.ctypes.data) % alignment
    return raw[skip : skip + size].view(np.float32).reshape(shape)


def _read_at(descriptor, buffer, position):
    """Read ``buffer.nbytes`` bytes at byte ``position`` into ``buffer``; returns bytes read.

    ``os.preadv`` reads straight into the array (Linux, BSD); ``os.pread`` (macOS and other
    Unix without it) copies once."""
    if hasattr(os, "preadv"):
        return os.preadv(descriptor, [buffer], position)
    data = os.pread(descriptor, buffer.nbytes, position)
    buffer.view(np.uint8)[: len(data)] = np.frombuffer(data, np.uint8)
    return len(data)


class ViewReader:
    """Cuts random views out of local shards by positioned reads (numpy; the pipeline calls it
    through tf.numpy_function, one call per batch).

    ``__call__(files, offsets, num_samples, seed)`` -> float32 [batch, count, samples]: for
    each clip ``count`` windows at independent uniform starts in [0, num_samples - samples]
    (the whole clip), int16 / 32768 exactly as the record path decodes them. A clip shorter
    than ``samples`` gives its whole PCM followed by zeros. Same seed, same windows.

    Why reads (``os.preadv``) and not a memory map: every page of a mapped shard that a view
    touched counts in the process's resident memory for as long as the map lives, so over an
    epoch the RSS would grow towards the size of the dataset; a read copies only the view's
    bytes (from the page cache) into the batch's own buffer.
    """

    def __init__(self, paths, samples, count):
        self.paths = [str(p) for p in paths]
        self.samples, self.count = int(samples), int(count)
        self._files = {}
        self._lock = threading.Lock()

    def _descriptor(self, index):
        descriptor = self._files.get(index)
        if descriptor is None:
            with self._lock:  # tf.data may call from several threads
                descriptor = self._files.get(index)
                if descriptor is None:
                    descriptor = self._files[index] = os.open(self.paths[index], os.O_RDONLY)
        return descriptor

    def close(self):
        """Close the shard files (reopened on the next call)."""
        with self._lock:
            files, self._files = self._files, {}
        for descriptor in files.values():
            os.close(descriptor)

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 (interpreter shutdown)
            pass

    def starts(self, num_samples, seed):
        """Window starts int64 [batch, count] for clips of ``num_samples`` (seed: ints)."""
        rng = np.random.default_rng(np.asarray(seed, np.int64).astype(np.uint64))
        high = np.maximum(np.asarray(num_samples, np.int64) - self.samples, 0) + 1
        return rng.integers(0, high, size=(self.count, len(high))).T

    def __call__(self, files, offsets, num_samples, seed):
        samples = self.samples
        starts = self.starts(num_samples, seed)
        views = _aligned_empty((len(files), self.count, samples))
        if np.any(num_samples < samples):
            views.fill(0.0)
        scale = np.float32(1.0 / 32768.0)  # a power of two: exact, as int16 / 32768.0 in TF
        pcm = np.empty(samples, "<i2")
        for row, (file, offset, length) in enumerate(zip(files, offsets, num_samples)):
            descriptor, used = self._descriptor(int(file)), int(min(samples, length))
            for column in range(self.count):
                position = int(offset) + 2 * int(starts[row, column])
                read = _read_at(descriptor, pcm[:used], position)
                if read != 2 * used:
                    raise ShardLayoutError(
                        f"{self.paths[int(file)]}: {read} of {2 * used} bytes at byte {position} "
                        "(the shard is shorter than its index says: prepare it again)"
                    )
                np.multiply(pcm[:used], scale, out=views[row, column, :used])
        return views
