"""Timing, peak memory and machine-load figures shared by the benchmarks (plain Python)."""

import os
import statistics
import time


def cpu_times():
    """(total, idle) jiffies of the whole machine, from /proc/stat."""
    with open("/proc/stat") as file:
        fields = [float(x) for x in file.readline().split()[1:]]
    return sum(fields), fields[3] + fields[4]


def peak_rss_gb():
    """This process's peak resident memory (VmHWM), GB; None where /proc is missing."""
    try:
        with open("/proc/self/status") as file:
            for line in file:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) * 1024 / 1e9, 2)
    except OSError:
        pass
    return None


class LoadMeter:
    """The share of the machine (0..1) that other processes used between start and stop.

    Why: on a shared machine a speed figure means little without it; > 0.05 is contended.
    """

    def __enter__(self):
        self.total, self.idle = cpu_times()
        self.own = sum(os.times()[:4])
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        total, idle = cpu_times()
        wall = max(1e-9, time.perf_counter() - self.start)
        busy_s = ((total - self.total) - (idle - self.idle)) / os.sysconf("SC_CLK_TCK")
        own_s = sum(os.times()[:4]) - self.own
        self.others_share = round(max(0.0, busy_s - own_s) / wall / os.cpu_count(), 3)
        self.own_share = round(own_s / wall / os.cpu_count(), 3)
        return False


def time_steps(step, steps):
    """Run ``step()`` once to warm up, then ``steps`` timed times; a JSON-ready dict.

    ``steps=0`` times the warm-up step itself (for a peak-memory run on a busy machine; eager
    PyTorch has no compilation, so its first step costs about what the others do).
    """
    times = []
    with LoadMeter() as load:
        for _ in range(steps + 1):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
    warmup = times.pop(0) if steps else times[0]
    return {
        "step_s": round(statistics.median(times), 3),
        "timed": f"{steps} step(s) after a warm-up" if steps else "the warm-up step",
        "step_s_all": [round(t, 3) for t in times],
        "warmup_s": round(warmup, 1),
        "others_cpu_share": load.others_share,
        "own_cpu_share": load.own_share,
        "loadavg": [round(x, 2) for x in os.getloadavg()],
    }
