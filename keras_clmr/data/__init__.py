"""Datasets: the offline demo corpus, audio folders, prepared shards."""
