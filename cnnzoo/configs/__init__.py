"""The configs cnnzoo ships, as package data (``*.yaml`` beside this file; the repository's
``configs/`` is a link to this folder). :mod:`cnnzoo.config.shipped` finds them by name
(``--config quickstart``) and ``cnnzoo configs`` lists them. Floor 0: holds no code and imports nothing.
"""
