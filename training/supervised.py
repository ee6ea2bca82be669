"""CLMR's supervised SampleCNN baseline.

``python -m training.supervised`` runs ``keras-clmr supervised``
(keras_clmr/commands/supervised.py);
``--help`` lists its flags.
"""

from keras_clmr.commands import run

if __name__ == "__main__":
    run("supervised", prog="python -m training.supervised")
