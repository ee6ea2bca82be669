"""`make demo`: the whole zoo on the offline demo corpus, in a few minutes on a CPU.

1. pretrain a small CLMR on the synthetic demo corpus (training/pretrain.py);
2. linear probe of its encoder on the corpus's tags, next to the same probe on a randomly
   initialised encoder (training/linear_eval.py);

Everything goes to demo_output/ (or $DEMO_OUTPUT).
"""

import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUTPUT = os.path.abspath(os.environ.get("DEMO_OUTPUT", os.path.join(REPO, "demo_output")))
SMALL_CHANNELS = "16,16,16,32,32,32,32,32,32,64,64"
DEMO_EPOCHS = int(os.environ.get("DEMO_EPOCHS", "12"))


def stage(title):
    print(f"\n=== {title} ===", flush=True)


def pretrain():
    stage("1. Pretraining a small CLMR on the demo corpus")
    run_dir = os.path.join(OUTPUT, "pretrain")
    command = [sys.executable, "-m", "training.pretrain", "--model=clmr", "--dataset=demo",
               f"--channels={SMALL_CHANNELS}", "--projection_dim=64", "--batch_size=16",
               f"--epochs={DEMO_EPOCHS}", f"--output_dir={run_dir}"]
    if os.path.exists(os.path.join(run_dir, "checkpoints", "state.json")):
        command.append("--resume")
    print("$", " ".join(command[1:]), flush=True)
    subprocess.run(command, cwd=REPO, check=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    return run_dir


def run(*args):
    command = [sys.executable, "-m", *args]
    print("$ python -m", " ".join(args), flush=True)
    subprocess.run(command, cwd=REPO, check=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))


def linear_probe(run_dir):
    stage("2. Linear probe: pretrained vs randomly initialised encoder")
    output = os.path.join(OUTPUT, "linear_eval")
    run("training.linear_eval", f"--checkpoint={run_dir}", "--dataset=demo", "--compare_random",
        f"--output_dir={output}")
    return output


def main():
    start = time.time()
    os.makedirs(OUTPUT, exist_ok=True)
    run_dir = pretrain()
    linear_probe(run_dir)
    print(f"\nDemo finished in {time.time() - start:.0f} s. Pretrained encoder: "
          f"{os.path.join(run_dir, 'encoder.keras')}")


if __name__ == "__main__":
    main()
