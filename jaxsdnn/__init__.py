"""jaxsdnn: sparse deep neural networks, partitioned across devices with JAX."""
