"""Records tests/data/sox_reverb_energy.npz: libsox reverb (wet only, mono) impulse-response energy
per 10 ms over a grid of (reverberance, damping, room size, wet gain dB). Needs the sox CLI;
run in a scratch folder: python tests/data/record_sox_reverb.py"""

import itertools
import subprocess

import numpy as np
import soundfile as sf

sr = 22050
n = int(1.5 * sr)
imp = np.zeros(n, np.float32)
imp[0] = 0.5
sf.write("imp.wav", imp, sr, subtype="FLOAT")
grid = list(itertools.product([0, 50, 100], [0, 50, 100], [0, 50, 100], [0.0, -6.0]))
bins = []
for r, d, s, g in grid:
    subprocess.run(
        [
            "sox",
            "imp.wav",
            "-e",
            "floating-point",
            "out.wav",
            "reverb",
            "-w",
            str(r),
            str(d),
            str(s),
            "100",
            "0",
            str(g),
            "channels",
            "1",
        ],
        check=True,
    )
    y, _ = sf.read("out.wav", dtype="float64")
    y = y / 0.5
    e = np.add.reduceat(y**2, np.arange(0, n, int(0.01 * sr)))  # energy per 10 ms
    bins.append(e)
np.savez_compressed(
    "sox_reverb_energy.npz",
    settings=np.array(grid, np.float32),
    sample_rate=sr,
    bin_seconds=0.01,
    energy=np.array(bins, np.float32),
    sox_version="libsox 14.4.2",
)
print(len(grid), np.array(bins).shape)
