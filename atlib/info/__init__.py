"""Information: the Fisher of the weights and of inputs, the weight posterior Q*, inversion,
representations and Task2Vec.

May import every stage up to atlib.train.
"""
