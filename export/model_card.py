"""Render model cards.

``python -m export.model_card`` runs ``keras-clmr card`` (keras_clmr/commands/card.py);
``--help`` lists its flags.
"""

from keras_clmr.commands import run

if __name__ == "__main__":
    run("card", prog="python -m export.model_card")
