"""Multi-task learning: task losses, weighting / gradient methods, conflict statistics, transfer strategies.

Import the submodules directly (``medmtl.mtl.losses``, ``medmtl.mtl.weighting``, ...); this
package does no work at import time.
"""
