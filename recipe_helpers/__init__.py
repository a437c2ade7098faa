"""Helpers the recipes share, kept apart so that ``recipes/`` lists only recipes.

``classification``: loss, metrics and the serving head every classifier exports.
``class_folders``: one scanner for folders of one subfolder per class (images, clips).
``text_files``: CSV / TSV / JSON Lines readers for text classification.
``wordnet_topics``: the BERT recipe's built-in data set.
``speech_synthesis``: the speech recipe's built-in data set, generated offline.
"""
