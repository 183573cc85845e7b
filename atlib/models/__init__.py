"""Networks: the ResNets, checkpoints, the adapter for other libraries' networks, the zoo loaders.

May import atlib.core and atlib.data.
"""
