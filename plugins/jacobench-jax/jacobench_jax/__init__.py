"""jacobench-jax: JAX's per-sample Jacobians, Hessians and Laplacians of the same torch model, as peers.

The strategies live in jacobench_jax.peers and reach jacobench through the entry-point group jacobench.strategies.
Importing this package imports neither jax nor folx: the first call of a peer does (jacobench_jax/backend.py).
"""
