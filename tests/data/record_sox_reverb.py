"""Records the libsox 14.4.2 ``reverb`` references the Reverb tests compare against (needs the sox
CLI; run in a scratch folder):

    python tests/data/record_sox_reverb.py                    # sox_reverb_energy.npz only
    python tests/data/record_sox_reverb.py --music=TRACK.ogg  # and sox_reverb_music.npz

sox_reverb_energy.npz: the wet-only mono (``reverb -w R D S 100 0 G`` + ``channels 1``) impulse
response energy per 10 ms over a grid of (reverberance, damping, room size, wet gain dB), and
the first 2048 samples of two responses.

sox_reverb_music.npz: a 1 s mono 22.05 kHz excerpt of real music (16-bit) and, per setting,
the RMS of sox's wet part on it (``reverb -w R D S`` + ``channels 1``) plus that of sox's full
output (``reverb R D S`` + ``channels 1``, as torchaudio-augmentations calls it). The music:
``apt-get download singularity-music && dpkg-deb -x singularity-music_*.deb x``, track
"Awakening" by Max McCracken (Endgame: Singularity), CC BY-SA 3.0; the excerpt is stored with
that attribution.
"""

import argparse
import itertools
import subprocess

import numpy as np
import soundfile as sf

SR = 22050
MUSIC_SETTINGS = [(50, 50, 50), (99, 0, 99), (0, 99, 0), (90, 90, 20), (20, 30, 80), (70, 10, 0)]
IMPULSE_SETTINGS = [(50, 50, 50, 0.0), (90, 20, 0, -6.0)]


def sox_reverb(src, effect_args):
    subprocess.run(
        ["sox", src, "-e", "floating-point", "out.wav", "reverb", *map(str, effect_args)]
        + ["channels", "1"],
        check=True,
    )
    return sf.read("out.wav", dtype="float64")[0]


def record_impulse_responses():
    n = int(1.5 * SR)
    imp = np.zeros(n, np.float32)
    imp[0] = 0.5
    sf.write("imp.wav", imp, SR, subtype="FLOAT")
    grid = list(itertools.product([0, 50, 100], [0, 50, 100], [0, 50, 100], [0.0, -6.0]))
    bins = []
    for r, d, s, g in grid:
        y = sox_reverb("imp.wav", ["-w", r, d, s, 100, 0, g]) / 0.5
        bins.append(np.add.reduceat(y**2, np.arange(0, n, int(0.01 * SR))))  # energy per 10 ms
    heads = [
        sox_reverb("imp.wav", ["-w", r, d, s, 100, 0, g])[:2048] / 0.5
        for r, d, s, g in IMPULSE_SETTINGS
    ]
    np.savez_compressed(
        "sox_reverb_energy.npz",
        settings=np.array(grid, np.float32),
        sample_rate=SR,
        bin_seconds=0.01,
        energy=np.array(bins, np.float32),
        head_settings=np.array(IMPULSE_SETTINGS, np.float32),
        heads=np.array(heads, np.float32),
        sox_version="libsox 14.4.2",
    )
    print(len(grid), np.array(bins).shape)


def record_music(track, start_seconds=60.0):
    subprocess.run(
        ["sox", track, "-b", "16", "music.wav", "remix", "-", "rate", str(SR)]
        + ["trim", str(start_seconds), "1", "norm", "-6"],
        check=True,
    )
    excerpt, _ = sf.read("music.wav", dtype="int16")
    wet_rms, out_rms = [], []
    for r, d, s in MUSIC_SETTINGS:
        wet_rms.append(np.sqrt(np.mean(sox_reverb("music.wav", ["-w", r, d, s]) ** 2)))
        out_rms.append(np.sqrt(np.mean(sox_reverb("music.wav", [r, d, s]) ** 2)))
    np.savez_compressed(
        "sox_reverb_music.npz",
        excerpt=excerpt,
        sample_rate=SR,
        settings=np.array(MUSIC_SETTINGS, np.float32),
        wet_rms=np.array(wet_rms),
        output_rms=np.array(out_rms),
        source=f"1 s from {start_seconds} s of 'Awakening' by Max McCracken (Endgame: "
        "Singularity; Debian singularity-music 007-2), mono 22.05 kHz, peak -6 dB; CC BY-SA 3.0",
        sox_version="libsox 14.4.2",
    )
    print("wet rms", np.round(wet_rms, 4), "output rms", np.round(out_rms, 4))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--music", help="a music file sox can read (the excerpt's source)")
    args = parser.parse_args()
    record_impulse_responses()
    if args.music:
        record_music(args.music)
