"""The generated demo world: data in the contract, with the truth behind it kept apart."""
from .generator import World, WorldConfig, generate_world, purchase_probability, utility
from .truth import truth_metrics

__all__ = ["World", "WorldConfig", "generate_world", "purchase_probability", "utility", "truth_metrics"]
