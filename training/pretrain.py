"""Self-supervised pretraining (CLMR, PEMR).

``python -m training.pretrain`` runs ``keras-clmr pretrain`` (keras_clmr/commands/pretrain.py);
``--help`` lists its flags.
"""

from keras_clmr.commands import run

if __name__ == "__main__":
    run("pretrain", prog="python -m training.pretrain")
