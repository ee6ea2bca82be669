"""Cover-song identification with an encoder.

``python -m training.cover_eval`` runs ``keras-clmr cover`` (keras_clmr/commands/cover.py);
``--help`` lists its flags.
"""

from keras_clmr.commands import run

if __name__ == "__main__":
    run("cover", prog="python -m training.cover_eval")
