"""Publish a preset folder to the Hugging Face Hub.

``python -m export.publish`` runs ``keras-clmr publish`` (keras_clmr/commands/publish.py);
``--help`` lists its flags.
"""

from keras_clmr.commands import run

if __name__ == "__main__":
    run("publish", prog="python -m export.publish")
