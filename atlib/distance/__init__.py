"""Task distance: a dataset's features in a model, and EMD, OTDD and LogME between datasets.

May import every stage up to atlib.info.
"""
