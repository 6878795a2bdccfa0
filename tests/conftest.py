"""Every test sees 8 CPU devices: set before anything touches a JAX device."""

import jax

jax.config.update("jax_num_cpu_devices", 8)
