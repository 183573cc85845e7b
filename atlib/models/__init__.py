"""Networks: the ResNets, checkpoints, and the adapter that gives other libraries' networks atlib's interface.

May import atlib.core and atlib.data.
"""
