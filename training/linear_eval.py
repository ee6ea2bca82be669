"""Linear / MLP probe or fine-tuning of a pretrained encoder.

``python -m training.linear_eval`` runs ``keras-clmr evaluate`` (keras_clmr/commands/evaluate.py);
``--help`` lists its flags.
"""

from keras_clmr.commands import run

if __name__ == "__main__":
    run("evaluate", prog="python -m training.linear_eval")
